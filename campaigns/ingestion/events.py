"""Events in: stored once each, then the customers' activity and cancellations updated.

An event's ``customer_id`` is the company's id (Customer.external_id); times without an
offset are read in that customer's time zone.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

import campaigns.ingestion.bulk as bulk
from campaigns.ingestion.activity import (
    activity_of,
    apply_activity,
    cancel_customers,
    lock_activity_counts,
)
from campaigns.ingestion.customers import known_customers
from campaigns.ingestion.fast_events import EventValues
from campaigns.ingestion.pending import store_pending_activity
from campaigns.ingestion.records import EventIn, to_utc
from campaigns.models import Event

CANCEL_EVENT = "cancelled"
# Events dated later than this after the server's clock are refused: an event from the future
# would make its customer active forever.  The margin covers clocks that run a little fast.
FUTURE_TOLERANCE = timedelta(minutes=15)

_event = Event.__table__  # type: ignore[attr-defined]


@dataclass
class EventResult:
    inserted: int = 0
    duplicates: int = 0  # already stored (same client id), or repeated within the batch
    errors: list[tuple[int, str]] = field(default_factory=list)  # (index in records, message)
    # Customer ids nobody has identified (yet): an event may arrive before its customer.
    unknown_customers: list[str] = field(default_factory=list)


def derived_client_id(customer_id: str, name: str, occurred_at: datetime, properties: Any) -> str:
    """A stable id for an event sent without one, so importing a file twice stores it once."""
    key = json.dumps(
        [customer_id, name, occurred_at.astimezone(UTC).isoformat(), properties],
        sort_keys=True, default=str, ensure_ascii=False,
    )
    return "auto:" + hashlib.sha256(key.encode()).hexdigest()[:40]


def record_events(
    session: Session,
    records: Sequence[EventIn | EventValues],
    *,
    non_activity_events: frozenset[str],
    now: datetime | None = None,
    defer_activity: bool = False,
) -> EventResult:
    """Store events once each and update the customers' activity and cancellations.

    An event without an id gets one derived from its content (customer, name, time,
    properties), so resending it is harmless.  Only events stored by this call count as
    activity.  Unknown customers are reported per record.  Does not commit.

    ``defer_activity`` (imports) leaves the activity as PendingActivity rows for
    ``fold_pending_activity``; cancellations are applied at once either way.
    """
    stamp = now or datetime.now(UTC)
    latest_allowed = stamp + FUTURE_TOLERANCE
    result = EventResult()
    version = None if defer_activity else _commits_by_others(session)
    # A customer's zone matters only to a time without an offset; the stored counts only to
    # activity applied now.  A lookup needing neither reads the external_id index alone.
    known = known_customers(session, (r.customer_id for r in records),
                            zones=any(r.occurred_at.tzinfo is None for r in records),
                            counts=not defer_activity)
    rows: dict[str, dict[str, Any]] = {}
    for index, record in enumerate(records):
        customer = known.get(record.customer_id)
        if customer is None:
            result.unknown_customers.append(record.customer_id)
            result.errors.append((
                index,
                f"customer_id: no customer with id {record.customer_id!r} "
                "(import the customer before their events)",
            ))
            continue
        occurred_at = record.occurred_at
        if occurred_at.tzinfo is not UTC:  # the usual offset, +00:00, is UTC already
            occurred_at = to_utc(occurred_at, customer.timezone)
        if occurred_at > latest_allowed:
            result.errors.append((
                index,
                f"occurred_at: {occurred_at:%Y-%m-%dT%H:%M:%SZ} is in the future (now "
                f"{stamp:%Y-%m-%dT%H:%M:%SZ}); send when the event happened, with its UTC offset",
            ))
            continue
        client_id = record.client_id or derived_client_id(
            record.customer_id, record.event, occurred_at, record.properties
        )
        if client_id in rows:
            result.duplicates += 1
            continue
        rows[client_id] = {
            "customer_id": customer.id, "name": record.event, "occurred_at": occurred_at,
            "client_id": client_id, "properties": record.properties, "created_at": stamp,
        }
    if not rows:
        return result

    stored = bulk.insert_new(session, _event, list(rows.values()), conflict="client_id", key="client_id")
    result.inserted = len(stored)
    result.duplicates += len(rows) - len(stored)

    activity: dict[int, list[datetime]] = defaultdict(list)
    cancellations: dict[int, datetime] = {}
    for client_id in stored:
        row = rows[client_id]
        if row["name"] not in non_activity_events:
            activity[row["customer_id"]].append(row["occurred_at"])
        if row["name"] == CANCEL_EVENT:
            previous = cancellations.get(row["customer_id"])
            if previous is None or row["occurred_at"] > previous:
                cancellations[row["customer_id"]] = row["occurred_at"]
    if defer_activity:
        cancel_customers(session, cancellations, now=stamp)
        store_pending_activity(session, activity_of(activity))
        return result
    counts: dict[int, int] | None
    if version is None:
        # PostgreSQL: the rows are locked only now, after the events are in, so that a
        # concurrent batch for the same customers waits for this one's updates and commit
        # alone.  Cancellations too: one lock order for everything this transaction updates.
        counts = lock_activity_counts(session, activity.keys() | cancellations.keys())
    else:
        # SQLite reads outside a transaction until the INSERT takes the write lock: the
        # counts read with the customers hold only if no other connection committed between.
        counts = ({customer.id: customer.activity_count for customer in known.values()}
                  if _commits_by_others(session) == version else None)
    cancel_customers(session, cancellations, now=stamp)
    apply_activity(session, activity_of(activity), non_activity_events=non_activity_events,
                   now=stamp, stored_counts=counts)
    return result


def _commits_by_others(session: Session) -> int | None:
    """SQLite: a number that changes whenever another connection commits; None elsewhere."""
    if session.get_bind().dialect.name != "sqlite":
        return None
    return int(session.connection().exec_driver_sql("PRAGMA data_version").scalar_one())
