"""An event read without pydantic, for the CSV rows and API items that are plainly valid.

The events counterpart of ``fast_customers``: ``EventIn`` costs more per row than
storing the event.  For a header whose columns are the known ones (or properties
by another name), ``event_reader`` returns a reader that checks each cell as the
model would, remembering the few distinct properties cells (a file repeats
them); ``parse_events`` does the same for the ingestion API's JSON items.  Both
answer None for anything they are not sure about, which then goes through
``EventIn``, so every reject and its message stay the model's own.
tests/test_fast_events.py holds them to the model's results.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from campaigns.ingestion.records import EventIn, parse_records


class EventValues(NamedTuple):
    """What ``record_events`` reads of an ``EventIn``, under the same attribute names."""

    customer_id: str
    event: str
    occurred_at: datetime
    client_id: str | None
    properties: dict[str, Any]


Reader = Callable[[Sequence[str]], EventValues | None]

_MEMO_LIMIT = 4096  # distinct values remembered per column; beyond that, converted each time
_LIMITS = {
    name: next(m.max_length for m in EventIn.model_fields[name].metadata if hasattr(m, "max_length"))
    for name in ("customer_id", "event", "client_id")
}
_KNOWN = ("customer_id", "event", "occurred_at", "id", "properties")
# Names the model also accepts but the fast path leaves to it (client_id by its field name).
_LEFT_TO_MODEL = frozenset(EventIn.model_fields) - set(_KNOWN)


def _properties(memo: dict[str, dict[str, Any] | None]) -> Callable[[str], dict[str, Any] | None]:
    """A properties cell as its JSON object, or None (the model says what is wrong).

    Rows with the same cell share one dict: nothing changes a record's properties once read,
    and the writer converts a repeated object to JSON text once.
    """

    def read(cell: str) -> dict[str, Any] | None:
        value = memo.get(cell, memo)
        if value is memo:
            try:
                parsed = json.loads(cell)
            except ValueError:
                parsed = None
            value = parsed if isinstance(parsed, dict) else None
            if len(memo) < _MEMO_LIMIT:
                memo[cell] = value
        return value

    return read


def event_reader(columns: Sequence[str]) -> Reader | None:
    """A reader for rows under this header (the importer's column names), or None when the
    header has a column only the model reads right."""
    if any(name in _LEFT_TO_MODEL for name in columns):
        return None
    position = {name: columns.index(name) if name in columns else -1 for name in _KNOWN}
    customer_at, event_at, time_at = position["customer_id"], position["event"], position["occurred_at"]
    id_at, properties_at = position["id"], position["properties"]
    extras = [(i, name) for i, name in enumerate(columns) if name and name not in _KNOWN]
    width = len(columns)
    customer_limit, event_limit, id_limit = _LIMITS["customer_id"], _LIMITS["event"], _LIMITS["client_id"]
    properties_of = _properties({})

    def read(cells: Sequence[str]) -> EventValues | None:
        count = len(cells)
        if count > width or count <= max(customer_at, event_at, time_at):
            return None
        customer_id = cells[customer_at].strip()
        event = cells[event_at].strip()
        if not (customer_id and event) or len(customer_id) > customer_limit or len(event) > event_limit:
            return None
        try:
            occurred_at = datetime.fromisoformat(cells[time_at].strip())
        except ValueError:  # an empty cell too
            return None
        client_id = cells[id_at].strip() if 0 <= id_at < count else ""
        if len(client_id) > id_limit:
            return None
        properties: dict[str, Any] = {}
        if 0 <= properties_at < count and (cell := cells[properties_at].strip()):
            parsed = properties_of(cell)
            if parsed is None:
                return None
            properties = parsed
        if extras:
            found = {name: cell for i, name in extras if i < count and (cell := cells[i].strip())}
            if found:
                properties = {**properties, **found}  # as the model folds them in
        return EventValues(customer_id, event, occurred_at, client_id or None, properties)

    return read


_ITEM_KEYS = frozenset(_KNOWN)


def parse_events(items: Iterable[Any]) -> tuple[list[EventIn | EventValues], list[tuple[int, str]]]:
    """``parse_records(EventIn, items)`` for JSON items, the plainly valid ones without the model."""
    good: list[EventIn | EventValues] = []
    bad: list[tuple[int, str]] = []
    for index, item in enumerate(items):
        fast = _item(item) if type(item) is dict else None
        if fast is not None:
            good.append(fast)
            continue
        records, errors = parse_records(EventIn, [item])
        good.extend(records)
        bad.extend((index, message) for _, message in errors)
    return good, bad


def _item(item: Mapping[str, Any]) -> EventValues | None:
    """An item of only the known keys, all text (properties an object), as ``EventIn`` reads it."""
    if not _ITEM_KEYS.issuperset(item):
        return None  # other keys are properties: the model folds them in
    customer_id, event, occurred_at = item.get("customer_id"), item.get("event"), item.get("occurred_at")
    client_id, properties = item.get("id"), item.get("properties", _NONE)
    if type(customer_id) is not str or type(event) is not str or type(occurred_at) is not str:
        return None  # numbers as ids, a missing field: the model's to convert or refuse
    customer_id, event = customer_id.strip(), event.strip()
    if not (customer_id and event) or len(customer_id) > _LIMITS["customer_id"] \
            or len(event) > _LIMITS["event"]:
        return None
    try:
        when = datetime.fromisoformat(occurred_at.strip())
    except ValueError:
        return None
    if client_id is not None:
        if type(client_id) is not str:
            return None
        client_id = client_id.strip()
        if not client_id or len(client_id) > _LIMITS["client_id"]:
            return None
    if properties is _NONE:
        properties = {}
    elif type(properties) is not dict or any(type(k) is not str or k != k.strip() for k in properties):
        return None  # the model strips the keys' spaces
    return EventValues(customer_id, event, when, client_id, properties)


_NONE: Any = object()
