"""Activity an import stores for later: PendingActivity rows, and their fold into customers.

An events batch that applied its activity at once rewrote every customer it named, batch
after batch; an import appends these rows instead and folds them once at its end.  The
planner folds before each pass, so what an interrupted import left is never missed.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

import campaigns.ingestion.bulk as bulk
from campaigns.ingestion.activity import (
    MIN_CADENCE_DAYS,
    Activity,
    activity_values,
    apply_activity,
    lock_activity_counts,
    median_gap_days,
    recent_active_days_of,
)
from campaigns.models import Customer, PendingActivity

_customer = Customer.__table__  # type: ignore[attr-defined]
_pending = PendingActivity.__table__  # type: ignore[attr-defined]


def store_pending_activity(session: Session, active: Activity) -> None:
    """Store new activity as PendingActivity rows, for ``fold_pending_activity`` to apply.

    For imports: a row per customer per batch costs an append, where applying it at once
    rewrites the customer's row and index pages batch after batch.
    """
    if active:
        bulk.append_rows(session, _pending, [
            {"customer_id": customer_id, "latest_at": latest, "count": count}
            for customer_id, (latest, count) in active.items()
        ])


def fold_pending_activity(
    session: Session, *, non_activity_events: frozenset[str], now: datetime | None = None
) -> int:
    """Apply and delete every PendingActivity row; the number of customers updated.

    Safe beside imports and other folds.  Does not commit.
    """
    # The usual case before a pass: nothing pending.  One cheap read, where the fold's
    # statements cost a cold pass their compiling and SQLite's write lock.
    if session.execute(_any_pending()).first() is None:
        return 0
    stamp = now or datetime.now(UTC)
    if session.get_bind().dialect.name == "sqlite":
        return _fold_in_sql(session, non_activity_events, stamp)
    # PostgreSQL: each row is claimed by the DELETE that returns it (a concurrent fold
    # gets the others), then the customers are locked in id order, like every other writer's.
    active: dict[int, tuple[datetime, int]] = {}
    claim = sa.delete(_pending).returning(_pending.c.customer_id, _pending.c.latest_at, _pending.c.count)
    for customer_id, latest, count in session.execute(claim):
        seen = active.get(customer_id)
        active[customer_id] = (latest, count) if seen is None else (max(seen[0], latest), seen[1] + count)
    counts = lock_activity_counts(session, active)
    apply_activity(session, {customer_id: active[customer_id] for customer_id in counts},
                   non_activity_events=non_activity_events, now=stamp, stored_counts=counts)
    return len(counts)


@functools.cache
def _any_pending() -> sa.Select[tuple[int]]:
    return sa.select(_pending.c.id).limit(1)


def _fold_in_sql(session: Session, non_activity_events: frozenset[str], now: datetime) -> int:
    """SQLite: the fold as one UPDATE … FROM the pending rows grouped by customer.

    Its first statement is a write, so the transaction holds SQLite's one write lock from
    the start: no pending row can arrive between the UPDATE and the DELETE.
    """
    folded: int = session.connection().execute(_fold_update(), {"now": now}).rowcount
    if folded:
        due = list(session.execute(_cadence_due()).scalars())
        days = recent_active_days_of(session, due, non_activity_events=non_activity_events)
        bulk.executemany(session, _set_cadence(), [
            {"b_id": customer_id, "b_cadence": median_gap_days(found)} for customer_id, found in days.items()
        ])
    session.execute(sa.delete(_pending))
    return folded


@functools.cache
def _fold_update() -> sa.Update:
    pending = (
        sa.select(_pending.c.customer_id, sa.func.max(_pending.c.latest_at).label("latest"),
                  sa.func.sum(_pending.c.count).label("count"))
        .group_by(_pending.c.customer_id)
        .subquery("pending")
    )
    return (
        sa.update(_customer)
        .where(_customer.c.id == pending.c.customer_id)
        .values(**activity_values(pending.c.latest, pending.c.count))
    )


@functools.cache
def _cadence_due() -> sa.Select[int]:
    """After ``_fold_update``: the folded customers with enough activity events for a cadence."""
    return sa.select(_customer.c.id).where(
        _customer.c.id.in_(sa.select(_pending.c.customer_id)),
        _customer.c.activity_count >= MIN_CADENCE_DAYS,
    )


@functools.cache
def _set_cadence() -> sa.Update:
    return (sa.update(_customer).where(_customer.c.id == sa.bindparam("b_id"))
            .values(cadence_days=sa.bindparam("b_cadence")))
