"""Customers in: batched upserts that touch only the fields each record carries.

Times without an offset are read in the customer's time zone when it is known
(the record's own ``timezone``, else the stored one), else as UTC.  The stored
zone is only known once the customer has been looked up, here.
"""

from __future__ import annotations

import functools
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

import campaigns.ingestion.bulk as bulk
from campaigns.ingestion.activity import later_of
from campaigns.ingestion.records import DATETIME_FIELDS, CustomerIn, to_utc
from campaigns.models import Customer, CustomerStatus

_customer = Customer.__table__  # type: ignore[attr-defined]
# What a new customer's columns hold when the record leaves them out (the others are null).
_NEW_CUSTOMER: dict[str, Any] = {"status": CustomerStatus.active.value, "activity_count": 0, "attributes": {}}

# PostgreSQL: the text array of the JSON array of strings bound as :ids.
_JSON_TEXTS = sa.text("ARRAY(SELECT json_array_elements_text(CAST(:ids AS JSON)))")
# SQLite: the same strings, as the rows of json_each.
_SQLITE_JSON_TEXTS: sa.Select[Any] = sa.select(sa.literal_column("value")).select_from(
    sa.text("json_each(:ids)"))


@dataclass
class UpsertResult:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0  # known customers whose record changed nothing
    duplicates: int = 0  # the same customer again later in the batch (its fields were merged)


def known_customers(
    session: Session, external_ids: Iterable[str], *, zones: bool = True, counts: bool = True
) -> dict[str, Any]:
    """external_id -> row(id, external_id, timezone, activity_count) for those that exist.

    Without ``zones`` the timezone is null, without ``counts`` the activity_count: a lookup
    without both reads the external_id index alone, not every customer's row as well.
    """
    keys = json.dumps(sorted(set(external_ids)))
    postgres = session.get_bind().dialect.name == "postgresql"
    return {row.external_id: row for row in session.execute(_known(postgres, zones, counts), {"ids": keys})}


@functools.cache
def _known(postgres: bool, zones: bool, counts: bool) -> sa.Select[Any]:
    # The ids as one JSON array, not an IN list rendered afresh for every chunk: json.dumps
    # writes it in C (psycopg would dump a list parameter item by item).
    return sa.select(
        _customer.c.id, _customer.c.external_id,
        _customer.c.timezone if zones else sa.null().label("timezone"),
        _customer.c.activity_count if counts else sa.null().label("activity_count"),
    ).where(
        _customer.c.external_id == sa.func.any(_JSON_TEXTS) if postgres
        else _customer.c.external_id.in_(_SQLITE_JSON_TEXTS)
    )


def upsert_customers(
    session: Session, records: Sequence[CustomerIn], *, now: datetime | None = None
) -> UpsertResult:
    """Insert new customers and update known ones, touching only the fields each record has.

    Idempotent, and safe against a concurrent insert of the same customer (ON CONFLICT).
    Attributes are merged key by key; last_active_at only moves forward.  Does not commit.
    """
    return upsert_customer_values(session, [(r.external_id, r.present_values()) for r in records],
                                  now=now)


def upsert_customer_values(
    session: Session, records: Sequence[tuple[str, dict[str, Any]]], *, now: datetime | None = None
) -> UpsertResult:
    """``upsert_customers`` for records given as (external id, ``CustomerIn.present_values()``).

    The dicts are the caller's to give away: they are changed.
    """
    stamp = now or datetime.now(UTC)
    pending: dict[str, dict[str, Any]] = {}
    duplicates = 0
    for external_id, values in records:
        previous = pending.get(external_id)
        if previous is not None:  # the same customer twice in one batch: later fields win
            duplicates += 1
            attributes = {**previous.get("attributes", {}), **values.get("attributes", {})}
            values = {**previous, **values}
            if attributes:
                values["attributes"] = attributes
        pending[external_id] = values
    if not pending:
        return UpsertResult(duplicates=duplicates)
    known = known_customers(session, pending)

    # New and known customers apart: the count of rows written among the known ones is the
    # number updated (the ON CONFLICT clause leaves a row that would not change alone).
    groups: dict[tuple[frozenset[str], bool], list[dict[str, Any]]] = defaultdict(list)
    for external_id, values in sorted(pending.items()):  # one lock order for every writer
        stored = known.get(external_id)
        zone = values.get("timezone") or (stored.timezone if stored is not None else None)
        for name in DATETIME_FIELDS:
            if values.get(name) is not None:
                values[name] = to_utc(values[name], zone)
        present = frozenset(values)
        values["created_at"] = values["updated_at"] = stamp
        groups[(present, stored is not None)].append(values)

    dialect = session.get_bind().dialect.name
    updated = 0
    for (present, is_known), rows in groups.items():
        defaults = {name: value for name, value in _NEW_CUSTOMER.items() if name not in present}
        written = bulk.write_rows(session, _customer, rows, constants=defaults,
                                  on_conflict=functools.partial(_update_present, dialect, present))
        if is_known:
            updated += written
    inserted = sum(1 for external_id in pending if external_id not in known)
    return UpsertResult(inserted=inserted, updated=updated, unchanged=len(known) - updated,
                        duplicates=duplicates)


def _update_present(dialect: str, present: frozenset[str], insert: Any) -> Any:
    """The ON CONFLICT clause: update the fields a record carries, when that changes them."""
    excluded = insert.excluded
    updates: dict[str, Any] = {}
    changes: list[ColumnElement[bool]] = []
    for name in sorted(present - {"external_id"}):
        if name == "attributes":
            updates[name] = _merged_attributes(dialect, _customer.c.attributes, excluded[name])
            changes.append(_attributes_change(dialect, _customer.c.attributes, updates[name]))
            continue
        if name == "last_active_at":
            updates[name] = later_of(_customer.c.last_active_at, excluded.last_active_at)
        elif name == "status":
            updates[name] = _kept_cancellation(excluded)
        else:
            updates[name] = excluded[name]
        changes.append(_customer.c[name].is_distinct_from(updates[name]))
    updates["updated_at"] = excluded.updated_at
    # A row whose values would all stay the same is left alone, and counted as unchanged.
    return insert.on_conflict_do_update(
        index_elements=["external_id"], set_=updates, where=sa.or_(*changes) if changes else sa.false()
    )


def _merged_attributes(dialect: str, existing: Any, incoming: Any) -> Any:
    # Key by key; SQLite's merge-patch also merges nested objects, PostgreSQL's || does not.
    empty: Any = sa.literal_column("'{}'")
    if dialect == "sqlite":
        return sa.func.json_patch(sa.func.coalesce(existing, empty), incoming)
    jsonb = postgresql.JSONB
    merged = sa.func.coalesce(sa.cast(existing, jsonb), sa.cast(empty, jsonb)).op("||")(
        sa.cast(incoming, jsonb)
    )
    return sa.cast(merged, sa.JSON)


def _kept_cancellation(excluded: Any) -> ColumnElement[Any]:
    """The status to store: a record's ``active`` does not undo a cancellation recorded later.

    A daily export re-run says "active" for a customer who cancelled since it was made; only
    newer evidence reactivates: the record's own last_active_at after the cancellation.
    """
    stored = _customer.c
    undone_by_old_data = sa.and_(
        excluded.status == CustomerStatus.active.value,
        stored.status == CustomerStatus.cancelled.value,
        stored.cancelled_at.is_not(None),
        sa.or_(excluded.last_active_at.is_(None), excluded.last_active_at <= stored.cancelled_at),
    )
    return sa.case((undone_by_old_data, stored.status), else_=excluded.status)


def _attributes_change(dialect: str, existing: Any, merged: Any) -> ColumnElement[bool]:
    if dialect == "sqlite":
        # json() is the stored text in json_patch's own spelling: equal text, equal object.
        return sa.func.json(sa.func.coalesce(existing, sa.literal_column("'{}'"))).is_distinct_from(merged)
    jsonb = postgresql.JSONB
    return sa.cast(sa.func.coalesce(existing, sa.literal_column("'{}'")), jsonb).is_distinct_from(
        sa.cast(merged, jsonb)
    )
