"""An events CSV row read without pydantic, for the rows that are plainly valid.

The events counterpart of ``fast_customers``: ``EventIn`` costs more per row than
storing the event.  For a header whose columns are the known ones (or properties
by another name), ``event_reader`` returns a reader that checks each cell as the
model would, remembering the few distinct properties cells (a file repeats
them).  It answers None for any row it is not sure about; that row then goes
through ``EventIn``, so every reject and its message stay the model's own.
tests/test_fast_events.py holds the two to the same results.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from campaigns.ingestion.records import EventIn


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
