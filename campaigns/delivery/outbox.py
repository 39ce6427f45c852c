"""The delivery state machine.  The database is the outbox and the source of truth.

Every transition is a conditional UPDATE, so a duplicate broker message, a
racing sweeper or a retried worker can never move a delivery twice.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import col

from campaigns.delivery.pausing import reset_policy_failures
from campaigns.models import (
    CampaignState,
    Customer,
    Delivery,
    DeliveryStatus,
    Suppression,
    WorkerHeartbeat,
)
from campaigns.responses.notify import notify_many
from campaigns.sql import chunks, dialect_insert, json_rows, unindexed_text

log = logging.getLogger(__name__)

_delivery = Delivery.__table__  # type: ignore[attr-defined]

# Claims per delivery before it is given up: SMTP 4xx retries, crashes and dead workers all count.
MAX_ATTEMPTS = 6


def claim_many(
    session: Session, delivery_ids: Sequence[int], *, now: datetime, worker: str | None = None
) -> list[Delivery]:
    """``queued → sending`` for those of ``delivery_ids`` still queued and due, in one statement.

    The others are someone else's (a duplicate message, a racing worker) or not due.
    ``worker`` is the claiming process's heartbeat id: when it stops beating, its
    deliveries are settled at once rather than after the sending timeout.  Each
    claimed ``attempts`` is that claim's fencing token: every later step of it is
    applied only while the row still carries it (see ``_from_sending_many``).
    """
    if not delivery_ids:
        return []
    claimed = session.scalars(_claim(), {"ids": list(delivery_ids), "now": now, "worker": worker}).all()
    session.commit()
    return sorted(claimed, key=lambda d: d.id or 0)


@functools.cache
def _claim() -> sa.Update:
    """claim_many's statement, built once (it runs with every batch)."""
    now = sa.bindparam("now", type_=_delivery.c.updated_at.type)
    return (
        sa.update(Delivery)
        .where(
            col(Delivery.id).in_(sa.bindparam("ids", expanding=True)),
            col(Delivery.status) == DeliveryStatus.queued,
            col(Delivery.due_at) <= now,
        )
        # message_id is cleared: it is set again only when this attempt hands the message over
        # (mark_handing_over_many), so a dead worker's row tells whether mail may have left.
        .values(status=DeliveryStatus.sending, attempts=col(Delivery.attempts) + 1, updated_at=now,
                message_id=None, claimed_by=sa.bindparam("worker", type_=_delivery.c.claimed_by.type))
        .returning(Delivery)
        # The session holds none of them yet: nothing to synchronize, the rows come back whole.
        .execution_options(populate_existing=True, synchronize_session=False)
    )


def mark_handing_over_many(
    session: Session, by_message_id: Mapping[str, Delivery], *, now: datetime,
    sent: Sequence[Delivery] = (), announce_sent: bool = True,
) -> set[int]:
    """Record each Message-ID right before its message goes to the mail server, in one
    transaction; the ids still this claim's (nothing must be sent for the others).

    This is the line between the two ways a worker can die mid-send: before it, no byte of
    the message has left, so the delivery can safely be sent again; after it, the server
    may have accepted the message.

    A worker killed after it loses every one of them to `unknown`, sent or not: the
    caller marks only the few it sends next (see ``Sender``), which bounds that loss.
    ``sent``: handed-over deliveries the server accepted, recorded (``finish_sent``) in
    the same transaction.
    """
    if sent:
        finish_sent(session, sent, now=now, commit=False, announce=announce_sent)
    return _from_sending_many(session, list(by_message_id.values()), {"updated_at": now},
                              per_row={"message_id": {d.id: mid for mid, d in by_message_id.items()}})


def _from_sending_many(
    session: Session, deliveries: Sequence[Delivery], values: Mapping[str, object], *,
    per_row: Mapping[str, Mapping[int | None, object]] | None = None, give_back_attempt: bool = False,
    announce: str | None = None, commit: bool = True,
) -> set[int]:
    """Apply ``values`` to those of ``deliveries`` still ``sending`` under their claim; the ids changed.

    ``per_row``: column -> value by delivery id, for what differs from row to row.
    ``give_back_attempt``: the claim's attempt is not counted (a deferral).
    ``announce`` names the webhook event the change is, recorded in the same transaction.
    A worker presumed dead whose delivery was settled and claimed again by another
    one finds ``sending`` with a higher ``attempts``: nothing of it is applied, so it
    can neither hand the message over a second time nor overwrite the other's outcome.
    (``attempts`` only grows across claims: a deferral gives back its own claim's count.)
    """
    if not deliveries:
        return set()
    per_row = per_row or {}
    statement = _fenced_update(session.get_bind().dialect.name, tuple(sorted(values)),
                               tuple(sorted(per_row)), give_back_attempt)
    rows = [[d.id, d.attempts, *(per_row[k][d.id] for k in sorted(per_row))] for d in deliveries]
    params = {f"v_{key}": value for key, value in values.items()}
    params["rows"] = json.dumps(rows)
    changed = set(session.scalars(statement, params))
    if announce:
        reason = values.get("last_error")
        notify_many(session, announce, [
            {"key": f"{announce}:{d.id}", "customer_id": d.customer_id, "delivery_id": d.id,
             "campaign_id": d.campaign_id, "data": {"reason": reason} if reason else None}
            for d in deliveries if d.id in changed
        ], at=cast(datetime, values["updated_at"]))
    if commit:
        session.commit()
    return changed


@functools.lru_cache(maxsize=64)
def _fenced_update(
    dialect: str, constants: tuple[str, ...], per_row: tuple[str, ...], give_back_attempt: bool
) -> sa.Update:
    """``_from_sending_many``'s UPDATE … RETURNING for one set of columns, built once: the
    claims (id, attempts) and the per-row values come as one JSON parameter."""
    batch = json_rows(dialect, [("id", sa.Integer()), ("attempts", sa.Integer()),
                                *((key, _delivery.c[key].type) for key in per_row)])
    values: dict[str, Any] = {key: sa.bindparam(f"v_{key}", type_=_delivery.c[key].type)
                              for key in constants}
    values.update({key: batch.c[key] for key in per_row})
    if give_back_attempt:
        values["attempts"] = _delivery.c.attempts - 1
    return (
        sa.update(_delivery)
        .where(_delivery.c.id == batch.c.id, _delivery.c.attempts == batch.c.attempts,
               unindexed_text(_delivery.c.status) == DeliveryStatus.sending.value)
        .values(values)
        .returning(_delivery.c.id)
    )


def _from_sending(
    session: Session, delivery: Delivery, values: dict[str, object], *, give_back_attempt: bool = False,
    announce: str | None = None,
) -> bool:
    return delivery.id in _from_sending_many(session, [delivery], values,
                                             give_back_attempt=give_back_attempt, announce=announce)


def finish_sent(
    session: Session, deliveries: Sequence[Delivery], *, now: datetime, commit: bool = True,
    announce: bool = True,
) -> set[int]:
    """Record several handed-over deliveries as sent, in one transaction; the ids recorded.

    Their Message-IDs were written by the hand-over mark.  A send also ends each
    campaign's run of policy rejections.  ``announce``: record the `sent` webhook events
    (the sender leaves them out while no endpoint of rules.yaml wants them: a row per
    email written only to be deleted by the fan-out).
    """
    changed = _from_sending_many(
        session, deliveries, {"status": DeliveryStatus.sent, "updated_at": now, "sent_at": now,
                              "last_error": None},
        announce="sent" if announce else None, commit=False,
    )
    reset_policy_failures(session, {d.campaign_id for d in deliveries})
    if commit:
        session.commit()
    return changed


def finish(
    session: Session,
    delivery: Delivery,
    status: DeliveryStatus,
    *,
    now: datetime,
    error: str | None = None,
    message_id: str | None = None,
) -> None:
    values: dict[str, object] = {"status": status, "updated_at": now, "last_error": error}
    if status == DeliveryStatus.sent:
        values["sent_at"] = now
    if message_id:
        values["message_id"] = message_id
    _from_sending(session, delivery, values, announce=_ANNOUNCED.get(status))


_ANNOUNCED = {DeliveryStatus.sent: "sent", DeliveryStatus.bounced: "bounced"}


def release(
    session: Session,
    delivery: Delivery,
    *,
    now: datetime,
    error: str | None,
    due_at: datetime | None = None,
    enqueued: bool = True,
) -> None:
    """``sending → queued``: to be retried (``enqueued``: a broker retry is on its way) or deferred."""
    values: dict[str, object] = {
        "status": DeliveryStatus.queued,
        "updated_at": now,
        "last_error": error,
        "enqueued_at": now if enqueued else None,
    }
    if due_at is not None:
        values["due_at"] = due_at
    # A deferral is not an attempt: give it back.
    _from_sending(session, delivery, values, give_back_attempt=not enqueued)


def suppression_reason(session: Session, customer: Customer) -> str | None:
    if customer.unsubscribed_at is not None:
        return "unsubscribed"
    found = session.scalar(
        sa.select(col(Suppression.reason)).where(col(Suppression.email) == customer.email.lower())
    )
    return f"suppressed: {found}" if found else None


def suppress(session: Session, email: str, reason: str, *, now: datetime, commit: bool = True) -> bool:
    """Add an address to the suppression list and stop what is queued for it.

    Idempotent; True when the address was not suppressed before.  ``commit=False``
    leaves the transaction open for a caller that writes more in the same one.
    """
    address = email.strip().lower()
    insert = dialect_insert(session, Suppression)
    added = session.execute(
        insert.values(email=address, reason=reason[:255], created_at=now)
        .on_conflict_do_nothing(index_elements=["email"])
        # RETURNING, not rowcount: an ORM-enabled INSERT does not report rowcount on every driver.
        .returning(col(Suppression.id))
    ).first()
    customer_ids = sa.select(col(Customer.id)).where(sa.func.lower(col(Customer.email)) == address)
    session.execute(
        sa.update(Delivery)
        .where(
            col(Delivery.customer_id).in_(customer_ids),
            col(Delivery.status).in_((DeliveryStatus.queued, DeliveryStatus.held)),
        )
        .values(status=DeliveryStatus.suppressed, last_error=reason[:255], updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if commit:
        session.commit()
    return added is not None


@dataclass
class Settled:
    """What ``abandon_stale_sending`` did with the deliveries of workers that stopped."""

    unknown: list[int] = field(default_factory=list)  # handed over: may have arrived, never resent
    requeued: list[int] = field(default_factory=list)  # never left: queued again, to be enqueued
    failed: list[int] = field(default_factory=list)  # killed their worker on every attempt


def abandon_stale_sending(
    session: Session, *, now: datetime, after: timedelta, dead_after: timedelta | None = None,
    max_attempts: int = MAX_ATTEMPTS,
) -> Settled:
    """Settle deliveries stuck in ``sending`` because their worker stopped.

    A delivery is stuck when the worker process that claimed it has not renewed its
    heartbeat for ``dead_after`` (or has removed it), or, whatever the heartbeat says
    (a claim made without one, a hung send), when it has been ``sending`` for ``after``.

    - The worker had handed the message over (``message_id`` is set): the SMTP
      server may have accepted it, so sending it again could mail the customer
      twice.  The policy is to hold it as ``unknown`` for review, counted in the
      log and in `/metrics`; it is never resent.
    - The worker died before that: no mail can have left, so the delivery goes
      back to ``queued`` (marked enqueued now: the caller enqueues ``requeued``,
      and if it cannot, the sweeper does later) -- unless it has used up its
      attempts, as a delivery that kills its worker every time does: that one is
      ``failed`` rather than retried forever.
    """
    stuck = [col(Delivery.updated_at) < now - after]
    if dead_after is not None:
        alive = sa.select(col(WorkerHeartbeat.worker_id)).where(
            col(WorkerHeartbeat.beat_at) >= now - dead_after
        )
        stuck.append(sa.and_(col(Delivery.claimed_by).is_not(None), col(Delivery.claimed_by).not_in(alive)))
    stale = (col(Delivery.status) == DeliveryStatus.sending, sa.or_(*stuck))
    rows = session.execute(
        sa.select(col(Delivery.id), col(Delivery.message_id), col(Delivery.attempts)).where(*stale)
    ).all()
    handed_over = [row.id for row in rows if row.message_id is not None]
    never_sent = [row.id for row in rows if row.message_id is None and row.attempts < max_attempts]
    poison = [row.id for row in rows if row.message_id is None and row.attempts >= max_attempts]
    # Each UPDATE repeats the conditions: a slow worker that is still alive may have moved on.
    settled = Settled()

    def settle(ids: list[int], handed: bool, values: dict[str, object]) -> list[int]:
        if not ids:
            return []
        mark = col(Delivery.message_id).is_not(None) if handed else col(Delivery.message_id).is_(None)
        changed = session.scalars(
            sa.update(Delivery)
            .where(col(Delivery.id).in_(ids), *stale, mark)
            .values(updated_at=now, **values)
            .returning(col(Delivery.id))
            .execution_options(synchronize_session=False)
        )
        return sorted(i for i in changed if i is not None)

    settled.unknown = settle(handed_over, True, {
        "status": DeliveryStatus.unknown,
        "last_error": "the worker stopped during the send; it may or may not have been delivered",
    })
    settled.requeued = settle(never_sent, False, {
        "status": DeliveryStatus.queued,
        "enqueued_at": now,
        "last_error": "the worker stopped before handing the message over; sent again",
    })
    settled.failed = settle(poison, False, {
        "status": DeliveryStatus.failed,
        "last_error": f"the worker died during each of {max_attempts} attempts; not retried",
    })
    session.commit()
    if settled.requeued:
        log.warning("%d deliveries were left in `sending` by a worker that died before handing them "
                    "to the mail server; queued again: ids %s", len(settled.requeued), settled.requeued[:20])
    if settled.failed:
        log.error("%d deliveries killed their worker on each of %d attempts; marked failed: ids %s",
                  len(settled.failed), max_attempts, settled.failed[:20])
    return settled


def stale_queued(
    session: Session, *, now: datetime, stale_after: timedelta, limit: int = 10_000
) -> list[int]:
    """Queued and due deliveries whose broker message may be lost; marks them re-enqueued.

    A duplicate message is harmless (the claim is conditional), a lost one is
    not: this is what makes the database, not the broker, the source of truth.
    """
    paused = sa.select(col(CampaignState.campaign_id)).where(col(CampaignState.paused_at).is_not(None))
    ids = list(
        session.scalars(
            sa.select(col(Delivery.id))
            .where(
                col(Delivery.status) == DeliveryStatus.queued,
                col(Delivery.due_at) <= now,
                col(Delivery.campaign_id).not_in(paused),
                sa.or_(col(Delivery.enqueued_at).is_(None), col(Delivery.enqueued_at) < now - stale_after),
            )
            .order_by(col(Delivery.id))
            .limit(limit)
        )
    )
    for chunk in chunks(ids):
        session.execute(
            sa.update(Delivery)
            .where(col(Delivery.id).in_(chunk))
            .values(enqueued_at=now)
            .execution_options(synchronize_session=False)
        )
    session.commit()
    return [i for i in ids if i is not None]
