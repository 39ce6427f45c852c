"""Announce what customers did to the webhooks: one outbox row, in the caller's transaction.

Any recorder calls ``notify`` before it commits (sending, unsubscribes, clicks, surveys,
conversions, bounces and complaints from any source).  Nothing here talks to the network:
the worker fans the rows out to the endpoints of ``webhooks:`` in rules.yaml and sends them
on a queue of their own, so a slow endpoint never slows the recorder.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from campaigns.models import WebhookEvent
from campaigns.rules import WEBHOOK_EVENT_KINDS
from campaigns.sql import dialect_insert

_event = WebhookEvent.__table__  # type: ignore[attr-defined]


def notify(
    session: Session,
    kind: str,
    *,
    at: datetime,
    key: str | None = None,
    customer_id: int | None = None,
    delivery_id: int | None = None,
    campaign_id: str | None = None,
    data: dict[str, Any] | None = None,
) -> None:
    """Record that ``kind`` happened (``unsubscribed``, ``bounced``, …); does not commit.

    ``key`` names what the event answers (``bounced:<delivery id>``): recording the same
    thing again is announced once.  Without a key every call is an event of its own (a
    second click is a second click).  ``customer_id`` is Customer.id; the webhook body
    carries the customer's own id and email.
    """
    notify_many(session, kind, [{"key": key, "customer_id": customer_id, "delivery_id": delivery_id,
                                 "campaign_id": campaign_id, "data": data}], at=at)


def notify_many(session: Session, kind: str, events: Sequence[Mapping[str, Any]], *, at: datetime) -> None:
    """``notify`` for several events of one kind in one statement (a chunk of sent emails).

    Each event has ``notify``'s keyword arguments: ``key``, ``customer_id``, ``delivery_id``,
    ``campaign_id``, ``data``; any may be left out.
    """
    if kind not in WEBHOOK_EVENT_KINDS:
        raise ValueError(f"unknown webhook event {kind!r} (known: {', '.join(WEBHOOK_EVENT_KINDS)})")
    if not events:
        return
    rows = [
        {"key": e.get("key") or f"{kind}:{uuid.uuid4().hex}", "kind": kind,
         "customer_id": e.get("customer_id"), "delivery_id": e.get("delivery_id"),
         "campaign_id": e.get("campaign_id"), "data": e.get("data") or {}, "occurred_at": at}
        for e in events
    ]
    session.execute(dialect_insert(session, _event).on_conflict_do_nothing(index_elements=["key"]), rows)
