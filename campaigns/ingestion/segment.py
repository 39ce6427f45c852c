"""Segment tracking-API messages (identify, track, page, screen, group, alias) as records.

The mapping, one message type at a time:

- ``identify`` upserts the customer ``userId``: the traits ``email``, ``firstName`` /
  ``first_name``, ``lastName`` / ``last_name``, ``plan``, ``status``, ``createdAt`` (→
  ``signed_up_at``), ``timezone`` and ``locale`` are columns, every other trait an
  attribute; ``context.timezone`` and ``context.locale`` fill the columns when the traits
  do not.  ``email`` is only required the first time a user is identified.
- ``track`` stores the event ``event`` with its ``properties``; ``messageId`` is the
  event's id, so an SDK's retry stores it once.  ``page`` and ``screen`` are stored as
  events named ``page`` and ``screen`` (``name`` and ``category`` join the properties).
- ``group`` and ``alias``, and any message with only an ``anonymousId``, are acknowledged
  and not stored: campaigns mail known customers.

The identifies of a batch are stored before its events, so a batch may introduce a user
and report their first event together, as the SDKs do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from campaigns.ingestion.customers import upsert_customers
from campaigns.ingestion.events import record_events
from campaigns.ingestion.records import CustomerIn, EventIn, parse_records
from campaigns.models import Customer

STORED_AS_EVENTS = ("track", "page", "screen")
ACKNOWLEDGED = ("group", "alias")
TYPES = ("identify", *STORED_AS_EVENTS, *ACKNOWLEDGED)

# Trait → customer column; the spec's camelCase and our own snake_case both work.
_TRAIT_COLUMNS = {
    "email": "email",
    "firstName": "first_name", "first_name": "first_name",
    "lastName": "last_name", "last_name": "last_name",
    "plan": "plan", "status": "status",
    "createdAt": "signed_up_at", "created_at": "signed_up_at", "signed_up_at": "signed_up_at",
    "timezone": "timezone", "locale": "locale",
}
_CONTEXT_COLUMNS = ("timezone", "locale")


@dataclass
class TrackingResult:
    """What became of a list of messages; ``errors`` are (index, message) for the caller."""

    customers: int = 0
    events: int = 0
    duplicates: int = 0
    acknowledged: int = 0  # group, alias, anonymous-only: answered, not stored
    errors: list[tuple[int, str]] = field(default_factory=list)

    @property
    def rejected(self) -> int:
        return len({index for index, _ in self.errors})


def record_messages(
    session: Session,
    messages: Sequence[Any],
    *,
    non_activity_events: frozenset[str],
    received_at: datetime | None = None,
    batch_context: Mapping[str, Any] | None = None,
) -> TrackingResult:
    """Store a list of Segment messages; bad ones are reported by index.  Does not commit.

    ``received_at`` stands in for a missing ``timestamp``; ``batch_context`` is the
    ``context`` of a ``/v1/batch`` body, which every message's own context overrides.
    """
    now = received_at or datetime.now(UTC)
    result = TrackingResult()
    identifies: list[tuple[int, dict[str, Any]]] = []
    events: list[tuple[int, dict[str, Any]]] = []
    for index, message in enumerate(messages):
        problem = _shape_problem(message)
        if problem:
            result.errors.append((index, problem))
            continue
        kind = message["type"]
        user_id = message.get("userId")
        if kind in ACKNOWLEDGED or user_id in (None, ""):
            result.acknowledged += 1
            continue
        context = {**(batch_context or {}), **_mapping(message.get("context"))}
        if kind == "identify":
            identifies.append((index, _customer_fields(str(user_id), message, context)))
        else:
            fields = _event_fields(str(user_id), kind, message, now)
            if isinstance(fields, str):
                result.errors.append((index, fields))
            else:
                events.append((index, fields))

    _fill_known_emails(session, identifies, result)
    customers, bad = parse_records(CustomerIn, [fields for _, fields in identifies])
    result.errors.extend((identifies[i][0], _spec_names(message)) for i, message in bad)
    if customers:
        result.customers = len(customers)
        upsert_customers(session, customers, now=now)

    records, bad = parse_records(EventIn, [fields for _, fields in events])
    invalid = {i for i, _ in bad}
    result.errors.extend((events[i][0], _spec_names(message)) for i, message in bad)
    places = [events[i][0] for i in range(len(events)) if i not in invalid]
    if records:
        stored = record_events(session, records, non_activity_events=non_activity_events, now=now)
        result.events, result.duplicates = stored.inserted, stored.duplicates
        result.errors.extend((places[i], _spec_names(message)) for i, message in stored.errors)
    result.errors.sort()
    return result


def _mapping(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def _shape_problem(message: Any) -> str | None:
    if not isinstance(message, Mapping):
        return "each message must be a JSON object"
    kind = message.get("type")
    if kind not in TYPES:
        return f"type: must be one of {', '.join(TYPES)}, not {kind!r}"
    for name in ("traits", "properties", "context"):
        if message.get(name) is not None and not isinstance(message[name], Mapping):
            return f"{name}: must be a JSON object"
    return None


def _customer_fields(user_id: str, message: Mapping[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {"id": user_id}
    attributes: dict[str, Any] = {}
    for key, value in _mapping(message.get("traits")).items():
        column = _TRAIT_COLUMNS.get(key)
        if column is not None:
            if value is not None and value != "":
                fields[column] = value
        elif key not in ("id", "userId"):  # the user id is userId, not a trait
            attributes[key] = value
    for name in _CONTEXT_COLUMNS:
        if name not in fields and isinstance(context.get(name), str) and context[name]:
            fields[name] = context[name]
    if attributes:
        fields["attributes"] = attributes
    return fields


def _event_fields(
    user_id: str, kind: str, message: Mapping[str, Any], now: datetime
) -> dict[str, Any] | str:
    properties = _mapping(message.get("properties"))
    if kind == "track":
        name = message.get("event")
        if not isinstance(name, str) or not name.strip():
            return "event: is required for track (the event's name)"
    else:
        name = kind
        for key in ("name", "category"):
            if message.get(key) is not None:
                properties.setdefault(key, message[key])
    occurred_at = message.get("timestamp") or message.get("originalTimestamp") or now
    fields: dict[str, Any] = {
        "customer_id": user_id, "event": name, "occurred_at": occurred_at, "properties": properties,
    }
    if message.get("messageId") not in (None, ""):
        fields["id"] = str(message["messageId"])
    return fields


def _fill_known_emails(
    session: Session, identifies: list[tuple[int, dict[str, Any]]], result: TrackingResult
) -> None:
    """A known user's identify needs no email trait: use the stored one.  Unknown ones are reported."""
    missing = {fields["id"] for _, fields in identifies if "email" not in fields}
    if not missing:
        return
    table = Customer.__table__  # type: ignore[attr-defined]
    stored: dict[str, str] = {}
    ordered = sorted(missing)
    for start in range(0, len(ordered), 900):
        query = sa.select(table.c.external_id, table.c.email).where(
            table.c.external_id.in_(ordered[start : start + 900])
        )
        stored.update({row.external_id: row.email for row in session.execute(query)})
    kept = []
    for index, fields in identifies:
        if "email" not in fields:
            if fields["id"] not in stored:
                result.errors.append((index, "traits.email: is required the first time a user is identified"))
                continue
            fields["email"] = stored[fields["id"]]
        kept.append((index, fields))
    identifies[:] = kept


_SPEC_NAMES = {
    "customer_id:": "userId:", "occurred_at:": "timestamp:", "id:": "messageId:", "event:": "event:",
    "email:": "traits.email:", "first_name:": "traits.firstName:", "last_name:": "traits.lastName:",
    "plan:": "traits.plan:", "status:": "traits.status:", "signed_up_at:": "traits.createdAt:",
    "timezone:": "timezone:", "locale:": "locale:",
}


def _spec_names(message: str) -> str:
    """Our field names in a validation message, put back as the spec's (``timestamp:``)."""
    head, sep, rest = message.partition(" ")
    return _SPEC_NAMES.get(head, head) + sep + rest if sep else message
