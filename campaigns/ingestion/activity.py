"""Activity bookkeeping: last activity, activity count, cadence, cancellation.

Everything here is incremental: a batch of new events touches only the
customers it names, and a customer's cadence is recomputed from their most
recent active days, never from their whole history.
"""

from __future__ import annotations

import functools
import itertools
import json
import statistics
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

import campaigns.ingestion.bulk as bulk
from campaigns.models import Customer, CustomerStatus, Event
from campaigns.sql import chunks, json_rows

# A cadence describes recent habits: the gaps between the last CADENCE_DAYS + 1 active days.
CADENCE_DAYS = 20
# Fewer distinct active days than this leaves the cadence unknown (null).
MIN_CADENCE_DAYS = 3
_PAGE = 256  # newest events read per customer and round trip
_UNION_WIDTH = 50  # customers per UNION ALL statement
_NO_CUSTOMER = -1
_LATERAL_WIDTH = 1000  # customers per LATERAL statement (PostgreSQL)

_customer = Customer.__table__  # type: ignore[attr-defined]
_event = Event.__table__  # type: ignore[attr-defined]


def median_gap_days(days: Iterable[date]) -> float | None:
    """Median gap in days between distinct dates; None with fewer than three of them."""
    distinct = sorted(set(days))
    if len(distinct) < MIN_CADENCE_DAYS:
        return None
    gaps = [(later - earlier).days for earlier, later in itertools.pairwise(distinct)]
    return float(statistics.median(gaps))


def later_of(
    column: ColumnElement[datetime], value: ColumnElement[datetime], *, value_may_be_null: bool = True
) -> sa.Case[datetime]:
    """SQL for max(column, value) that treats null as "earlier than anything".

    Written as CASE rather than GREATEST/MAX so it means the same on SQLite and PostgreSQL
    (PostgreSQL's GREATEST ignores nulls, SQLite's scalar MAX returns null).
    """
    if not value_may_be_null:
        return sa.case((column.is_(None), value), (value > column, value), else_=column)
    return sa.case(
        (column.is_(None), value),
        (value.is_(None), column),
        (value > column, value),
        else_=column,
    )


# Customer.id -> (the newest activity event's time, how many activity events) of new events.
Activity = Mapping[int, tuple[datetime, int]]


def activity_of(times_by_customer: Mapping[int, Sequence[datetime]]) -> dict[int, tuple[datetime, int]]:
    """Activity from each customer's new activity event times."""
    return {customer_id: (max(times), len(times))
            for customer_id, times in times_by_customer.items() if times}


def apply_activity(
    session: Session,
    active: Activity,
    *,
    non_activity_events: frozenset[str] = frozenset(),
    now: datetime | None = None,
    stored_counts: Mapping[int, int] | None = None,
) -> None:
    """Record newly stored activity events for several customers at once.

    ``active`` counts only activity events that were just stored (events already counted
    must not be passed again).  last_active_at only moves forward, so an out-of-order old
    event cannot make a customer look less active.  The events must already be in the
    session's transaction: cadence is read back from them.

    ``stored_counts`` (Customer.id -> activity_count as this transaction sees it, before
    these events) spares reading the events of customers who cannot have a cadence yet.
    """
    if not active:
        return
    days = recent_active_days_of(session, _may_have_cadence(active, stored_counts),
                                 non_activity_events=non_activity_events)
    stamp = now or datetime.now(UTC)

    def cadence(customer_id: int) -> tuple[bool, float | None]:
        # (read, value): a customer not read keeps the cadence they have (null).
        found = days.get(customer_id)
        return (False, None) if found is None else (True, median_gap_days(found))

    if session.get_bind().dialect.name == "postgresql":
        # One statement for the batch (the rows are locked already, in id order).
        batch = [[customer_id, newest.isoformat(), count, *cadence(customer_id)]
                 for customer_id, (newest, count) in sorted(active.items())]
        session.execute(_activity_from_json(), {"batch": json.dumps(batch), "now": stamp})
        return
    params = []
    for customer_id, (newest, count) in sorted(active.items()):  # one lock order for every writer
        read, value = cadence(customer_id)
        params.append({"b_id": customer_id, "b_latest": newest, "b_count": count,
                       "b_read": read, "b_cadence": value})
    latest = sa.bindparam("b_latest", type_=_customer.c.last_active_at.type)
    bulk.executemany(
        session,
        sa.update(_customer)
        .where(_customer.c.id == sa.bindparam("b_id"))
        .values(
            last_active_at=later_of(_customer.c.last_active_at, latest, value_may_be_null=False),
            activity_count=_customer.c.activity_count + sa.bindparam("b_count"),
            cadence_days=sa.case((sa.bindparam("b_read", type_=sa.Boolean), sa.bindparam("b_cadence")),
                                 else_=_customer.c.cadence_days),
            updated_at=stamp,
        ),
        params,
    )


def lock_activity_counts(session: Session, customer_ids: Iterable[int]) -> dict[int, int]:
    """PostgreSQL: lock these customers' rows in id order; their activity_count as of now.

    Concurrent batches for one customer take turns from here to their commit: each then
    recomputes the cadence from every event committed before it, instead of racing and
    losing some.  One order for every locker, so they cannot deadlock.  The lock is
    PostgreSQL's FOR NO KEY UPDATE, as an UPDATE of these columns takes: events being
    stored for these customers elsewhere (their foreign-key check) are not held up by it.
    """
    ids = json.dumps(sorted(customer_ids))
    return {customer_id: count for customer_id, count in session.execute(_lock_counts(), {"ids": ids})}


@functools.cache
def _lock_counts() -> sa.Select[int, int]:
    ids = sa.text("ARRAY(SELECT CAST(json_array_elements_text(CAST(:ids AS JSON)) AS INTEGER))")
    return (sa.select(_customer.c.id, _customer.c.activity_count)
            .where(_customer.c.id == sa.func.any(ids))
            .order_by(_customer.c.id).with_for_update(key_share=True))


def _may_have_cadence(active: Activity, stored_counts: Mapping[int, int] | None) -> list[int]:
    """The customers whose cadence must be read back from their events.

    A cadence needs MIN_CADENCE_DAYS distinct active days, hence at least as many activity
    events, and activity_count counts every activity event stored (this module is the only
    one to change it): a customer whose stored count plus the new events falls short keeps
    a null cadence without a look at their events.  (An event name later taken out of
    ``non_activity_events`` makes that customer's older events of that name count for the
    cadence but not in activity_count: their cadence then shows from their third counted
    activity event on.)
    """
    if stored_counts is None:
        return list(active)
    return [customer_id for customer_id, (_, count) in active.items()
            if stored_counts.get(customer_id, MIN_CADENCE_DAYS) + count >= MIN_CADENCE_DAYS]


@functools.cache
def _activity_from_json() -> sa.Update:
    """PostgreSQL: apply_activity's update with the batch as one JSON parameter of
    ``[id, latest, count, cadence read?, cadence]`` rows (psycopg dumps a list parameter item by item in
    Python; json.dumps does it in C)."""
    batch = json_rows("postgresql", [
        ("id", sa.Integer()), ("latest", postgresql.TIMESTAMP(timezone=True)), ("count", sa.Integer()),
        ("read", sa.Boolean()), ("cadence", sa.Float()),
    ], param="batch")
    return (
        sa.update(_customer)
        .where(_customer.c.id == batch.c.id)
        .values(
            **activity_values(batch.c.latest, batch.c.count),
            cadence_days=sa.case((batch.c.read, batch.c.cadence), else_=_customer.c.cadence_days),
        )
    )


def activity_values(latest: ColumnElement[datetime], count: ColumnElement[int]) -> dict[str, Any]:
    """The customer columns a set of new activity events changes, for an UPDATE whose rows
    come from a table of (latest, count) per customer; ``:now`` stamps updated_at."""
    return {
        "last_active_at": later_of(_customer.c.last_active_at, latest, value_may_be_null=False),
        "activity_count": _customer.c.activity_count + count,
        "updated_at": sa.bindparam("now", type_=_customer.c.updated_at.type),
    }


def _not_one_of(names: frozenset[str]) -> ColumnElement[bool]:
    # Plain comparisons, not NOT IN (…): an IN list is re-rendered at every execution, and
    # the cadence statements run a few thousand times per import.
    return sa.and_(*(_event.c.name != sa.literal(name) for name in sorted(names)))


def _newest_activity(
    customer: sa.BindParameter[int], non_activity_events: frozenset[str], *, paged: bool = False
) -> sa.Select[tuple[int, datetime]]:
    query = (
        sa.select(_event.c.customer_id, _event.c.occurred_at)
        .where(_event.c.customer_id == customer)
        .order_by(_event.c.occurred_at.desc())
        .limit(_PAGE)
    )
    if non_activity_events:
        query = query.where(_not_one_of(non_activity_events))
    if paged:
        query = query.where(
            _event.c.occurred_at < sa.bindparam("before", type_=_event.c.occurred_at.type)
        )
    return query


def _utc_day_text(page: Any) -> sa.Select[tuple[int, str]]:
    # SQLite stores naive UTC text ("2026-03-01 14:30:00.000000"): its first ten characters
    # are the UTC date, read without parsing the whole time.
    return sa.select(page.c.customer_id, sa.func.substr(page.c.occurred_at, 1, 10))


# Built once and reused: constructing a 50-branch statement per batch costs more than running it.
@functools.lru_cache(maxsize=32)
def _first_pages(non_activity_events: frozenset[str]) -> sa.CompoundSelect[tuple[int, str]]:
    return sa.union_all(*(
        _utc_day_text(_newest_activity(sa.bindparam(f"c{n}", type_=sa.Integer), non_activity_events)
                      .subquery())
        for n in range(_UNION_WIDTH)
    ))


@functools.lru_cache(maxsize=32)
def _first_pages_lateral(non_activity_events: frozenset[str]) -> sa.Select[tuple[int, date]]:
    """PostgreSQL: the same first pages as one LATERAL join over an array of ids."""
    ids = (
        sa.func.unnest(sa.bindparam("ids", type_=postgresql.ARRAY(sa.Integer)))
        .table_valued("customer_id")
        .render_derived(name="ids")
    )
    newest = sa.select(_event.c.occurred_at).where(_event.c.customer_id == ids.c.customer_id)
    if non_activity_events:
        newest = newest.where(_not_one_of(non_activity_events))
    page = newest.order_by(_event.c.occurred_at.desc()).limit(_PAGE).lateral("page")
    day = sa.cast(sa.func.timezone("UTC", page.c.occurred_at), sa.Date)
    return sa.select(ids.c.customer_id, day).select_from(ids.join(page, sa.true()))


@functools.lru_cache(maxsize=32)
def _next_page(non_activity_events: frozenset[str]) -> sa.Select[tuple[int, datetime]]:
    return _newest_activity(sa.bindparam("cid", type_=sa.Integer), non_activity_events, paged=True)


def _add_days(days: list[date], newest_first: Iterable[datetime], limit: int) -> None:
    for occurred_at in newest_first:
        day = occurred_at.astimezone(UTC).date()
        if not days or days[-1] != day:
            if len(days) == limit:
                return
            days.append(day)


def recent_active_days_of(
    session: Session,
    customer_ids: Iterable[int],
    *,
    non_activity_events: frozenset[str],
    limit: int = CADENCE_DAYS + 1,
) -> dict[int, list[date]]:
    """Each customer's most recent distinct active days (UTC dates), newest first.

    The first page of every customer's newest events comes from one statement for many
    customers (a UNION ALL of small per-customer index range scans on SQLite, a LATERAL
    join on PostgreSQL), as UTC dates computed by the database; only a customer whose page
    ends inside their busiest days needs more, read by ``recent_active_days``.
    """
    found: dict[int, list[date]] = {}
    ids = list(dict.fromkeys(customer_ids))
    lateral = session.get_bind().dialect.name == "postgresql"
    width = _LATERAL_WIDTH if lateral else _UNION_WIDTH
    for chunk in chunks(ids, width):
        statement: sa.Executable
        params: dict[str, Any]
        if lateral:
            statement, params = _first_pages_lateral(non_activity_events), {"ids": chunk}
        else:
            # A short last chunk is padded with an id no row has: one shape, compiled once.
            statement = _first_pages(non_activity_events)
            params = {f"c{n}": chunk[n] if n < len(chunk) else _NO_CUSTOMER
                      for n in range(width)}
        pages: dict[int, list[date]] = {cid: [] for cid in chunk}
        for customer_id, day in session.execute(statement, params):
            pages[customer_id].append(day if isinstance(day, date) else date.fromisoformat(day))
        for cid in chunk:
            page = pages[cid]
            days = sorted(set(page), reverse=True)[:limit]
            if len(page) == _PAGE and len(days) < limit:
                days = recent_active_days(
                    session, cid, non_activity_events=non_activity_events, limit=limit
                )
            found[cid] = days
    return found


def recent_active_days(
    session: Session,
    customer_id: int,
    *,
    non_activity_events: frozenset[str],
    limit: int = CADENCE_DAYS + 1,
) -> list[date]:
    """One customer's most recent distinct active days (UTC dates), newest first.

    Reads events newest first a page at a time; a page that ends inside one very busy day
    continues before that day, so a heavy user costs a few index range scans, not a full scan.
    """
    days: list[date] = []
    before = datetime.max.replace(tzinfo=UTC)
    while True:
        params = {"cid": customer_id, "before": before}
        page = [row.occurred_at for row in session.execute(_next_page(non_activity_events), params)]
        _add_days(days, page, limit)
        if len(page) < _PAGE or len(days) >= limit:
            return days
        # Restart before the oldest day seen: it may be incomplete, but it is already counted.
        before = datetime.combine(days[-1], time(), tzinfo=UTC)


def cancel_customers(
    session: Session, cancelled_at: Mapping[int, datetime], *, now: datetime | None = None
) -> None:
    """Mark customers cancelled at the given times (the later one wins if already cancelled)."""
    if not cancelled_at:
        return
    at = sa.bindparam("b_at", type_=_customer.c.cancelled_at.type)
    session.execute(
        sa.update(_customer)
        .where(_customer.c.id == sa.bindparam("b_id"))
        .values(
            status=CustomerStatus.cancelled.value,
            cancelled_at=later_of(_customer.c.cancelled_at, at, value_may_be_null=False),
            updated_at=now or datetime.now(UTC),
        ),
        [{"b_id": customer_id, "b_at": when} for customer_id, when in sorted(cancelled_at.items())],
    )

