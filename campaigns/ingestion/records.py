"""Customers and events in: record validation, batched upserts and CSV import.

The CSV importer, the HTTP API and the ``track`` actor share ``CustomerIn`` /
``EventIn`` and ``upsert_customers`` / ``record_events``, so a record means the
same thing whichever way it arrives.

Times without an offset are read in the customer's time zone when it is known
(the record's own ``timezone``, else the stored one), else as UTC.  That is why
the models may hold naive datetimes: the zone is only known once the customer
has been looked up, inside the upsert.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

import campaigns.ingestion.bulk as bulk
from campaigns.addresses import is_mailbox
from campaigns.ingestion.activity import apply_activity, cancel_customers, later_of
from campaigns.models import Customer, CustomerStatus, Event
from campaigns.sql import chunks, dialect_insert
from campaigns.timezones import check_timezone

log = logging.getLogger(__name__)

CANCEL_EVENT = "cancelled"
# Events dated later than this after the server's clock are refused: an event from the future
# would make its customer active forever.  The margin covers clocks that run a little fast.
FUTURE_TOLERANCE = timedelta(minutes=15)

_customer = Customer.__table__  # type: ignore[attr-defined]
_event = Event.__table__  # type: ignore[attr-defined]



def parse_datetime(value: object) -> datetime:
    """ISO 8601 text (or a date/datetime) to a datetime; naive when the text has no offset."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime.combine(value, time())
    if not isinstance(value, str):
        raise ValueError(f"not a date/time: {value!r}")
    try:
        return datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(
            f"not an ISO 8601 date/time: {value!r} "
            "(write e.g. 2024-03-01, 2024-03-01T14:30 or 2024-03-01T14:30:00+01:00)"
        ) from None


def to_utc(value: datetime, zone: str | None) -> datetime:
    """Aware UTC; a naive value is read as wall-clock time in ``zone`` (UTC when None)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=ZoneInfo(zone) if zone else UTC)
    return value.astimezone(UTC)


def validation_message(exc: ValidationError) -> str:
    """One line a marketer can act on: ``email: not an email address ('bob@')``."""
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(p) for p in error["loc"]) or "record"
        if error["type"] == "missing":
            message = "is required"
        else:
            message = str(error["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


# ---------------------------------------------------------------- records

_DATETIME_FIELDS = ("signed_up_at", "cancelled_at", "last_active_at")


class CustomerIn(BaseModel):
    """One customer as the company sends it.  Fields not sent are left alone on update."""

    model_config = ConfigDict(
        validate_by_name=True, validate_by_alias=True, str_strip_whitespace=True, extra="forbid"
    )

    external_id: str = Field(alias="id", min_length=1, max_length=255)
    email: str = Field(max_length=320)
    first_name: str | None = Field(default=None, max_length=255)
    last_name: str | None = Field(default=None, max_length=255)
    plan: str | None = Field(default=None, max_length=100)
    status: CustomerStatus | None = None
    timezone: str | None = Field(default=None, max_length=64)
    locale: str | None = Field(default=None, max_length=35)
    signed_up_at: datetime | None = None
    cancelled_at: datetime | None = None
    last_active_at: datetime | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _extra_fields_are_attributes(cls, data: Any) -> Any:
        return _fold_extra(data, _CUSTOMER_KEYS, "attributes")

    @field_validator("external_id", mode="before")
    @classmethod
    def _id_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        if not is_mailbox(value):
            raise ValueError(f"not an email address ({value!r})")
        return value

    @field_validator("status", mode="before")
    @classmethod
    def _status(cls, value: Any) -> Any:
        if isinstance(value, str):
            normalized = value.strip().lower()
            if normalized not in CustomerStatus.__members__:
                raise ValueError(f"must be 'active' or 'cancelled', not {value!r}")
            return normalized
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str | None) -> str | None:
        return None if value is None else check_timezone(value)

    @field_validator(*_DATETIME_FIELDS, mode="before")
    @classmethod
    def _datetime(cls, value: Any) -> Any:
        return None if value is None else parse_datetime(value)

    @field_validator("attributes")
    @classmethod
    def _attributes(cls, value: dict[str, Any]) -> dict[str, Any]:
        # null means "nothing to say": merging it would differ between SQLite and PostgreSQL.
        return {str(k): v for k, v in value.items() if v is not None}

    @model_validator(mode="after")
    def _settle(self) -> CustomerIn:
        if self.timezone:
            for name in _DATETIME_FIELDS:
                value = getattr(self, name)
                if value is not None:
                    setattr(self, name, to_utc(value, self.timezone))
        # A cancellation date without a status column means the customer cancelled.
        if self.cancelled_at is not None and "status" not in self.model_fields_set:
            self.status = CustomerStatus.cancelled
        return self

    def present_values(self) -> dict[str, Any]:
        """Column values for the fields this record actually carries."""
        values = {name: getattr(self, name) for name in self.model_fields_set}
        values.pop("status", None)  # an explicit null status means "unchanged"
        if self.status is not None:  # may have been inferred after validation
            values["status"] = self.status.value
        return values


class EventIn(BaseModel):
    """One event.  ``customer_id`` is the company's id (Customer.external_id)."""

    model_config = ConfigDict(
        validate_by_name=True, validate_by_alias=True, str_strip_whitespace=True, extra="forbid"
    )

    customer_id: str = Field(min_length=1, max_length=255)
    event: str = Field(min_length=1, max_length=100)
    occurred_at: datetime
    client_id: str | None = Field(default=None, alias="id", min_length=1, max_length=255)
    properties: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _extra_fields_are_properties(cls, data: Any) -> Any:
        return _fold_extra(data, _EVENT_KEYS, "properties", parse=_json_object)

    @field_validator("customer_id", "client_id", mode="before")
    @classmethod
    def _id_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("occurred_at", mode="before")
    @classmethod
    def _datetime(cls, value: Any) -> Any:
        return parse_datetime(value)

    @field_validator("properties", mode="before")
    @classmethod
    def _properties(cls, value: Any) -> Any:
        return _json_object(value) if isinstance(value, str) else value


# Keys a record may carry by name or alias; anything else is an attribute / a property.
def _fold_extra(
    data: Any, known: frozenset[str], into: str, parse: Callable[[str], Any] | None = None
) -> Any:
    """A record whose unknown keys went into its ``into`` mapping (attributes, properties);
    ``parse`` reads that mapping when it came as text (a CSV cell)."""
    if not isinstance(data, Mapping):
        return data
    extra = {k: v for k, v in data.items() if k not in known}
    if not extra:
        return data
    cleaned = {k: v for k, v in data.items() if k in known}
    inner = cleaned.get(into)
    if parse is not None and isinstance(inner, str):
        inner = parse(inner)
    cleaned[into] = {**inner, **extra} if isinstance(inner, Mapping) else extra
    return cleaned


_CUSTOMER_KEYS = frozenset({"id", *CustomerIn.model_fields})
_EVENT_KEYS = frozenset({"id", *EventIn.model_fields})


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at character {exc.pos + 1})") from None
    if not isinstance(value, dict):
        raise ValueError('must be a JSON object, e.g. {"plan": "pro"}')
    return value


Record = TypeVar("Record", CustomerIn, EventIn)


def parse_records(
    model: type[Record], items: Iterable[Mapping[str, Any]]
) -> tuple[list[Record], list[tuple[int, str]]]:
    """Validate raw items (e.g. an API body): the good records and (index, message) for the rest."""
    good: list[Record] = []
    bad: list[tuple[int, str]] = []
    for index, item in enumerate(items):
        try:
            good.append(model.model_validate(item))
        except ValidationError as exc:
            bad.append((index, validation_message(exc)))
    return good, bad


# ---------------------------------------------------------------- writing


@dataclass
class UpsertResult:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0  # known customers whose record changed nothing
    duplicates: int = 0  # the same customer again later in the batch (its fields were merged)


@dataclass
class EventResult:
    inserted: int = 0
    duplicates: int = 0  # already stored (same client id), or repeated within the batch
    errors: list[tuple[int, str]] = field(default_factory=list)  # (index in records, message)
    # Customer ids nobody has identified (yet): an event may arrive before its customer.
    unknown_customers: list[str] = field(default_factory=list)


def _merged_attributes(session: Session, existing: Any, incoming: Any) -> Any:
    # Key by key; SQLite's merge-patch also merges nested objects, PostgreSQL's || does not.
    empty: Any = sa.literal_column("'{}'")
    if session.get_bind().dialect.name == "sqlite":
        return sa.func.json_patch(sa.func.coalesce(existing, empty), incoming)
    jsonb = postgresql.JSONB
    merged = sa.func.coalesce(sa.cast(existing, jsonb), sa.cast(empty, jsonb)).op("||")(
        sa.cast(incoming, jsonb)
    )
    return sa.cast(merged, sa.JSON)


def _known_customers(
    session: Session, external_ids: Iterable[str], *, lock: bool = False
) -> dict[str, Any]:
    """external_id -> row(id, external_id, timezone) for those that exist, in few queries.

    ``lock`` takes the customers' rows (PostgreSQL; SQLite serializes writers anyway) so
    that concurrent batches for one customer take turns: each then recomputes the cadence
    from every event committed before it, instead of racing and losing some.
    """
    found: dict[str, Any] = {}
    keys = sorted(set(external_ids))
    for chunk in chunks(keys):
        query = sa.select(_customer.c.id, _customer.c.external_id, _customer.c.timezone).where(
            _customer.c.external_id.in_(chunk)
        )
        if lock:
            # One order for every locker: batches touching the same customers cannot deadlock.
            query = query.order_by(_customer.c.id).with_for_update()
        for row in session.execute(query):
            found[row.external_id] = row
    return found


def upsert_customers(
    session: Session, records: Sequence[CustomerIn], *, now: datetime | None = None
) -> UpsertResult:
    """Insert new customers and update known ones, touching only the fields each record has.

    Idempotent, and safe against a concurrent insert of the same customer (ON CONFLICT).
    Attributes are merged key by key; last_active_at only moves forward.  Does not commit.
    """
    stamp = now or datetime.now(UTC)
    pending: dict[str, dict[str, Any]] = {}
    duplicates = 0
    for record in records:
        values = record.present_values()
        previous = pending.get(record.external_id)
        if previous is not None:  # the same customer twice in one batch: later fields win
            duplicates += 1
            attributes = {**previous.get("attributes", {}), **values.get("attributes", {})}
            values = {**previous, **values}
            if attributes:
                values["attributes"] = attributes
        pending[record.external_id] = values
    if not pending:
        return UpsertResult(duplicates=duplicates)
    known = _known_customers(session, pending)

    groups: dict[frozenset[str], list[dict[str, Any]]] = defaultdict(list)
    for external_id, values in sorted(pending.items()):  # one lock order for every writer
        stored = known.get(external_id)
        zone = values.get("timezone") or (stored.timezone if stored is not None else None)
        for name in _DATETIME_FIELDS:
            if values.get(name) is not None:
                values[name] = to_utc(values[name], zone)
        row = {
            "first_name": None, "last_name": None, "plan": None,
            "status": CustomerStatus.active.value, "timezone": None, "locale": None,
            "signed_up_at": None, "cancelled_at": None, "last_active_at": None,
            "activity_count": 0, "cadence_days": None, "attributes": {},
            "unsubscribed_at": None, "created_at": stamp, "updated_at": stamp,
            **values,
        }
        groups[frozenset(values)].append(row)

    written: set[str] = set()
    for present, rows in groups.items():
        insert = dialect_insert(session, _customer)
        excluded = insert.excluded
        updates: dict[str, Any] = {}
        changes: list[ColumnElement[bool]] = []
        for name in present - {"external_id"}:
            if name == "attributes":
                updates[name] = _merged_attributes(session, _customer.c.attributes, excluded[name])
                changes.append(_attributes_change(session, _customer.c.attributes, updates[name]))
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
        statement = insert.on_conflict_do_update(
            index_elements=["external_id"], set_=updates, where=sa.or_(*changes) if changes else sa.false()
        ).returning(_customer.c.external_id)
        written.update(session.execute(statement, rows).scalars())
    inserted = sum(1 for external_id in pending if external_id not in known)
    updated = sum(1 for external_id in written if external_id in known)
    return UpsertResult(inserted=inserted, updated=updated, unchanged=len(known) - updated,
                        duplicates=duplicates)


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


def _attributes_change(session: Session, existing: Any, merged: Any) -> ColumnElement[bool]:
    if session.get_bind().dialect.name == "sqlite":
        # json() is the stored text in json_patch's own spelling: equal text, equal object.
        return sa.func.json(sa.func.coalesce(existing, sa.literal_column("'{}'"))).is_distinct_from(merged)
    jsonb = postgresql.JSONB
    return sa.cast(sa.func.coalesce(existing, sa.literal_column("'{}'")), jsonb).is_distinct_from(
        sa.cast(merged, jsonb)
    )


def derived_client_id(customer_id: str, name: str, occurred_at: datetime, properties: Any) -> str:
    """A stable id for an event sent without one, so importing a file twice stores it once."""
    key = json.dumps(
        [customer_id, name, occurred_at.astimezone(UTC).isoformat(), properties],
        sort_keys=True, default=str, ensure_ascii=False,
    )
    return "auto:" + hashlib.sha256(key.encode()).hexdigest()[:40]


def record_events(
    session: Session,
    records: Sequence[EventIn],
    *,
    non_activity_events: frozenset[str],
    now: datetime | None = None,
) -> EventResult:
    """Store events once each and update the customers' activity and cancellations.

    An event without an id gets one derived from its content (customer, name, time,
    properties), so resending it is harmless.  Only events stored by this call count as
    activity.  Unknown customers are reported per record.  Does not commit.
    """
    stamp = now or datetime.now(UTC)
    result = EventResult()
    known = _known_customers(session, (r.customer_id for r in records), lock=True)
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
        occurred_at = to_utc(record.occurred_at, customer.timezone)
        if occurred_at > stamp + FUTURE_TOLERANCE:
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

    stored = set(bulk.insert_returning(session, _event, list(rows.values()), conflict="client_id",
                                       returning="client_id"))
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
    apply_activity(session, activity, non_activity_events=non_activity_events, now=stamp)
    cancel_customers(session, cancellations, now=stamp)
    return result


# ---------------------------------------------------------------- CSV
