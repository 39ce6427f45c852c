"""A customers CSV row read without pydantic, for the rows that are plainly valid.

``CustomerIn`` costs about as much per row as SQLite's own insert.  For a header
whose columns are all plain ones (the known fields, or attributes by another
name), ``customer_reader`` returns a reader that converts each row's cells
column by column, remembering the few distinct values of columns such as plan,
status or timezone.  It answers None for any row it is not sure about; that row
then goes through ``CustomerIn``, so every reject and its message stay the
model's own.  tests/test_fast_customers.py holds the two to the same results.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from campaigns.addresses import is_mailbox
from campaigns.ingestion.records import DATETIME_FIELDS, CustomerIn
from campaigns.models import CustomerStatus
from campaigns.timezones import check_timezone

# (external id, the values CustomerIn.present_values() would give), or None: ask CustomerIn.
CustomerValues = tuple[str, dict[str, Any]]
Reader = Callable[[Sequence[str]], CustomerValues | None]
# A cell's value, or _UNSURE when the model must judge the row.
Convert = Callable[[str], Any]

_UNSURE: Any = object()
_MEMO_LIMIT = 4096  # distinct values remembered per column; beyond that, converted each time
_TEXT_LIMITS = {
    name: next(m.max_length for m in CustomerIn.model_fields[name].metadata if hasattr(m, "max_length"))
    for name in ("external_id", "email", "first_name", "last_name", "plan", "timezone", "locale")
}
_STATUS = {member.value: member.value for member in CustomerStatus}


def _text(limit: int) -> Convert:
    def convert(cell: str) -> Any:
        return cell if len(cell) <= limit else _UNSURE

    return convert


def _email(cell: str) -> Any:
    return cell if len(cell) <= _TEXT_LIMITS["email"] and is_mailbox(cell) else _UNSURE


def _timezone(cell: str) -> Any:
    if len(cell) > _TEXT_LIMITS["timezone"]:
        return _UNSURE
    try:
        return check_timezone(cell)
    except Exception:  # the model says what is wrong
        return _UNSURE


def _status(cell: str) -> Any:
    return _STATUS.get(cell.lower(), _UNSURE)


def _datetime(cell: str) -> Any:
    try:
        return datetime.fromisoformat(cell)
    except ValueError:
        return _UNSURE


def _remembered(convert: Convert) -> Convert:
    """``convert`` for a column with few distinct values: each answered once."""
    memo: dict[str, Any] = {}

    def remembered(cell: str) -> Any:
        value = memo.get(cell, memo)
        if value is memo:
            value = convert(cell)
            if len(memo) < _MEMO_LIMIT:
                memo[cell] = value
        return value

    return remembered


_CONVERTERS: dict[str, Convert] = {
    "external_id": _text(_TEXT_LIMITS["external_id"]),
    "email": _email,
    "first_name": _text(_TEXT_LIMITS["first_name"]),
    "last_name": _text(_TEXT_LIMITS["last_name"]),
    "plan": _text(_TEXT_LIMITS["plan"]),
    "status": _status,
    "timezone": _timezone,
    "locale": _text(_TEXT_LIMITS["locale"]),
    **{name: _datetime for name in DATETIME_FIELDS},
}
# Columns with few distinct values: each value converted once per import.
_FEW_VALUES = frozenset({"first_name", "last_name", "plan", "status", "timezone", "locale"})
# The CSV's names for the model's fields; a column of another name is an attribute.
_FIELD_OF = {"id": "external_id", **{name: name for name in _CONVERTERS if name != "external_id"}}
# Names the model also accepts but the fast path leaves to it (a field by its own name, or the
# attributes mapping as a cell of text).
_LEFT_TO_MODEL = frozenset(CustomerIn.model_fields) - set(_FIELD_OF.values()) | {"external_id"}


def customer_reader(columns: Sequence[str]) -> Reader | None:
    """A reader for rows under this header (the importer's column names), or None when the
    header has a column only the model reads right."""
    if any(name in _LEFT_TO_MODEL for name in columns):
        return None
    # (position, field) for the known columns, (position, name) for the attribute columns.
    fields = [(i, _FIELD_OF[name], _converter(_FIELD_OF[name]))
              for i, name in enumerate(columns) if name in _FIELD_OF]
    extras = [(i, name) for i, name in enumerate(columns) if name and name not in _FIELD_OF]
    width = len(columns)

    def read(cells: Sequence[str]) -> CustomerValues | None:
        if len(cells) > width:
            return None
        values: dict[str, Any] = {}
        count = len(cells)
        for i, name, convert in fields:
            if i < count and (cell := cells[i].strip()):
                value = convert(cell)
                if value is _UNSURE:
                    return None
                values[name] = value
        external_id = values.get("external_id")
        if external_id is None or "email" not in values:
            return None
        if extras:
            attributes = {name: cell for i, name in extras if i < count and (cell := cells[i].strip())}
            if attributes:
                values["attributes"] = attributes
        if "status" not in values and values.get("cancelled_at") is not None:
            values["status"] = CustomerStatus.cancelled.value  # as CustomerIn infers it
        return external_id, values

    return read


def _converter(name: str) -> Convert:
    # A memo per reader: remembered values must not outlive an import.
    return _remembered(_CONVERTERS[name]) if name in _FEW_VALUES else _CONVERTERS[name]
