"""What the customer data actually holds: values, attribute keys and event names seen.

`retention check` compares rules and templates against it (a condition value no
customer has matches nobody), and reports say when a breakdown names nothing.
Every function reads a bounded amount, so it stays cheap on a large base.
"""

from __future__ import annotations

from collections.abc import Iterable
from difflib import get_close_matches
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import col

from campaigns.models import Customer, Event

# Columns whose values are a small vocabulary worth checking condition values against.
VOCABULARY_FIELDS = {
    "plan": col(Customer.plan),
    "status": col(Customer.status),
    "locale": col(Customer.locale),
    "timezone": col(Customer.timezone),
}
MAX_VALUES = 50  # more distinct values than this is free text, not a vocabulary
_ATTRIBUTE_SCAN = 5_000


def has_customers(session: Session) -> bool:
    return session.execute(sa.select(col(Customer.id)).limit(1)).first() is not None


def distinct_values(session: Session, field: str) -> list[str] | None:
    """Values of a column or ``attributes.KEY`` seen in the data; None when too many to be a list."""
    if field.startswith("attributes."):
        column: Any = col(Customer.attributes)[field.removeprefix("attributes.")].as_string()
    else:
        column = VOCABULARY_FIELDS[field]
    rows = session.execute(
        sa.select(column).where(column.is_not(None)).distinct().limit(MAX_VALUES + 1)
    ).scalars()
    values = sorted({str(v) for v in rows})
    return None if len(values) > MAX_VALUES else values


def attribute_keys(session: Session) -> list[str]:
    """Attribute keys of (a bounded scan of) the customers."""
    keys: set[str] = set()
    for attributes in session.execute(
        sa.select(col(Customer.attributes)).where(col(Customer.attributes).is_not(None)).limit(_ATTRIBUTE_SCAN)
    ).scalars():
        if isinstance(attributes, dict):
            keys.update(attributes)
    return sorted(keys)


def has_attribute(session: Session, key: str) -> bool:
    present = col(Customer.attributes)[key].as_string().is_not(None)
    return session.execute(sa.select(col(Customer.id)).where(present).limit(1)).first() is not None


def event_names(session: Session) -> list[str]:
    return sorted(
        str(name)
        for name in session.execute(sa.select(col(Event.name)).distinct().limit(1000)).scalars()
    )


def did_you_mean(value: str, known: Iterable[str]) -> str:
    """`; did you mean 'x'?` for the closest known value (case-insensitively), or nothing."""
    options = list(known)
    lowered = {option.lower(): option for option in options}
    if value.lower() in lowered:
        return f"; did you mean {lowered[value.lower()]!r}?"
    close = get_close_matches(value, options, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""
