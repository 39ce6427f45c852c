"""Webhook outbox: fan recorded events out to the subscribed endpoints; list what was sent.

``fan_out`` turns events that ``notify`` recorded into one message per subscribed
endpoint, with the JSON body fixed at that moment, so every retry sends the same bytes
under the same ``webhook-id``.  Events nobody subscribes to are dropped.  The sending
itself (HTTP, signatures, retries) is the worker's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import col

from campaigns.models import Customer, WebhookAttempt, WebhookEvent, WebhookMessage
from campaigns.rules import Webhook
from campaigns.sql import dialect_insert

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
FAN_OUT_BATCH = 1000

_message = WebhookMessage.__table__  # type: ignore[attr-defined]


def webhook_id(message_id: int) -> str:
    """The Standard Webhooks ``webhook-id``: the same on every retry, so receivers can dedupe."""
    return f"msg_{message_id}"


def body_of(event: WebhookEvent, external_id: str | None, email: str | None) -> str:
    """The JSON a receiver gets: ``{"type", "timestamp", "data"}`` as Standard Webhooks suggests."""
    data = {"customer_id": external_id, "email": email, "campaign_id": event.campaign_id,
            "delivery_id": event.delivery_id, **event.data}
    return json.dumps({"type": event.kind, "timestamp": event.occurred_at.isoformat(), "data": data},
                      sort_keys=True, default=str, ensure_ascii=False)


def fan_out(session: Session, endpoints: Sequence[Webhook], *, now: datetime) -> list[int]:
    """Messages for events not fanned out yet; returns the new messages' ids.  Commits."""
    created: list[int] = []
    while True:
        rows = session.execute(
            sa.select(WebhookEvent, col(Customer.external_id), col(Customer.email))
            .outerjoin(Customer, col(Customer.id) == col(WebhookEvent.customer_id))
            .where(col(WebhookEvent.dispatched_at).is_(None))
            .order_by(col(WebhookEvent.id))
            .limit(FAN_OUT_BATCH)
        ).all()
        if not rows:
            return created
        messages = [
            {"event_id": event.id, "url": endpoint.url, "kind": event.kind, "body": body,
             "status": PENDING, "attempts": 0, "created_at": now, "updated_at": now}
            for event, external_id, email in rows
            for body in (body_of(event, external_id, email),)
            for endpoint in endpoints if endpoint.wants(event.kind)
        ]
        ids = [event.id for event, _, _ in rows]
        if messages:
            insert = dialect_insert(session, _message).on_conflict_do_nothing(
                index_elements=["event_id", "url"]).returning(_message.c.id)
            for message in messages:  # RETURNING with executemany is not on every driver
                created.extend(session.execute(insert, message).scalars())
        subscribed = {m["event_id"] for m in messages}
        unwanted = [i for i in ids if i not in subscribed]
        if unwanted:
            session.execute(sa.delete(WebhookEvent).where(col(WebhookEvent.id).in_(unwanted)))
        if subscribed:
            session.execute(sa.update(WebhookEvent).where(col(WebhookEvent.id).in_(sorted(subscribed)))
                            .values(dispatched_at=now))
        session.commit()


def stale_pending(session: Session, *, now: datetime, after: timedelta) -> list[int]:
    """Pending messages untouched for ``after``: their broker message was lost (a restart)."""
    return list(session.scalars(
        sa.select(col(WebhookMessage.id)).where(
            col(WebhookMessage.status) == PENDING, col(WebhookMessage.updated_at) < now - after)
        .order_by(col(WebhookMessage.id)).limit(10_000)
    ))


@dataclass(frozen=True)
class AttemptRow:
    attempted_at: datetime
    message_id: int
    kind: str
    url: str
    status: str  # the message's status now
    attempt: int
    status_code: int | None
    error: str | None
    duration_ms: int


def recent_attempts(session: Session, *, limit: int = 50, failures_only: bool = False) -> list[AttemptRow]:
    """The latest attempts, newest first (failures only: no 2xx answer)."""
    number = sa.func.row_number().over(
        partition_by=col(WebhookAttempt.message_id), order_by=col(WebhookAttempt.id)).label("attempt")
    numbered = sa.select(WebhookAttempt, number).subquery()
    query = (
        sa.select(numbered, col(WebhookMessage.kind), col(WebhookMessage.url), col(WebhookMessage.status))
        .join(WebhookMessage, col(WebhookMessage.id) == numbered.c.message_id)
        .order_by(numbered.c.id.desc()).limit(limit)
    )
    if failures_only:
        query = query.where(sa.or_(numbered.c.status_code.is_(None),
                                   ~numbered.c.status_code.between(200, 299)))
    return [
        AttemptRow(row.attempted_at, row.message_id, row.kind, row.url, row.status, row.attempt,
                   row.status_code, row.error, row.duration_ms)
        for row in session.execute(query)
    ]


def counts_by_status(session: Session) -> dict[str, int]:
    return {status: count for status, count in session.execute(
        sa.select(col(WebhookMessage.status), sa.func.count()).group_by(col(WebhookMessage.status)))}
