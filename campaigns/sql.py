"""SQL shared by every stage: dialect functions, the customer's reference moments, upserts.

The project runs on SQLite and PostgreSQL.  What differs between them lives
here once: functions compiled per dialect (``days_since`` …), the dialect's
``INSERT … ON CONFLICT`` construct, and the size of an ``IN (…)`` list.

The moments a customer's measures are counted from are here too, because the
planner (``days_inactive``, ``lapsed``), explain and the reports must agree on
them to the customer: a second copy that drifts would make `explain` or a
report contradict what the planner sends.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement
from sqlmodel import col

from campaigns.errors import ConfigurationError
from campaigns.models import Customer, UTCDateTime

T = TypeVar("T")

# Keys per `IN (…)` list: below SQLite's old limit of 999 bound variables (older
# builds are still around), and small statements that never hold locks for long.
ID_CHUNK = 900


def chunks(ids: Sequence[T], size: int = ID_CHUNK) -> Iterator[Sequence[T]]:
    """``ids`` in consecutive slices of at most ``size`` (for `IN` lists)."""
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


def dialect_insert(session: Session, table: Any) -> Any:
    """The dialect's INSERT (with ``on_conflict_do_*``) for a table or model class."""
    name = session.get_bind().dialect.name
    if name == "sqlite":
        return sqlite.insert(table)
    if name == "postgresql":
        return postgresql.insert(table)
    raise ConfigurationError(
        f"the retention worker supports SQLite and PostgreSQL, not {name!r}: "
        "set RETENTION_DATABASE_URL to one"
    )


# ---------------------------------------------------------------- reference moments


def signup_moment() -> ColumnElement[datetime]:
    """When the customer joined; imported without a signup date: when we first heard of them."""
    return sa.func.coalesce(col(Customer.signed_up_at), col(Customer.created_at), type_=UTCDateTime())


# Where inactivity (`days_inactive`, `lapsed`, `overdue_ratio`) is counted from, the first
# known of: the last activity; never active yet, the signup; imported without one, the
# first record of the customer.
INACTIVE_SINCE = ("last_active_at", "signed_up_at", "created_at")


def inactive_since() -> ColumnElement[datetime]:
    """The INACTIVE_SINCE moment of each customer, in SQL (planner, explain, reports)."""
    return sa.func.coalesce(*(col(getattr(Customer, name)) for name in INACTIVE_SINCE), type_=UTCDateTime())


def inactive_since_of(customer: Customer) -> datetime | None:
    """The same moment for one loaded customer (a template's ``customer.days_inactive``)."""
    moments: list[datetime | None] = [getattr(customer, name) for name in INACTIVE_SINCE]
    return next((moment for moment in moments if moment is not None), None)


def cancel_moment() -> ColumnElement[datetime]:
    """When a cancelled customer left: the cancellation, else the last thing we know of them."""
    return sa.func.coalesce(
        col(Customer.cancelled_at), col(Customer.last_active_at), col(Customer.signed_up_at),
        col(Customer.created_at), type_=UTCDateTime(),
    )


# ---------------------------------------------------------------- dialect functions


class days_since(FunctionElement[float]):  # lower-case: reads like the SQL function it is
    """Fractional days from a timestamp column to a moment, in each dialect's own arithmetic."""

    type = sa.Float()
    inherit_cache = True
    name = "days_since"


@compiles(days_since, "sqlite")
def _days_since_sqlite(element: days_since, compiler: Any, **kw: Any) -> str:
    column, moment = list(element.clauses)
    return f"(julianday({compiler.process(moment, **kw)}) - julianday({compiler.process(column, **kw)}))"


@compiles(days_since)
def _days_since_default(element: days_since, compiler: Any, **kw: Any) -> str:
    column, moment = list(element.clauses)
    return (
        f"(EXTRACT(EPOCH FROM ({compiler.process(moment, **kw)} - "
        f"{compiler.process(column, **kw)})) / 86400.0)"
    )


class as_number(FunctionElement[float]):  # lower-case: reads like the SQL function it is
    """Text to a number, or NULL when it is not one (never an error mid-query)."""

    type = sa.Float()
    inherit_cache = True
    name = "as_number"


@compiles(as_number, "sqlite")
def _as_number_sqlite(element: as_number, compiler: Any, **kw: Any) -> str:
    text = f"trim({compiler.process(next(iter(element.clauses)), **kw)})"
    return f"(CASE WHEN {text} = '' OR {text} GLOB '*[^0-9.eE+-]*' THEN NULL ELSE CAST({text} AS REAL) END)"


@compiles(as_number)
def _as_number_default(element: as_number, compiler: Any, **kw: Any) -> str:
    text = f"trim({compiler.process(next(iter(element.clauses)), **kw)})"
    return (
        f"(CASE WHEN {text} ~ '^[-+]?([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][-+]?[0-9]+)?$' "
        f"THEN CAST({text} AS DOUBLE PRECISION) END)"
    )


class attribute_text(FunctionElement[str]):  # lower-case: reads like the SQL function it is
    """An attribute as the text a CSV cell would hold: JSON true is 'true', 42 is '42'.

    Attributes arrive typed from the API (JSON booleans and numbers) and as text from CSV;
    comparing both as text makes `attributes.beta: true` mean the same whatever the source.
    """

    type = sa.String()
    inherit_cache = True
    name = "attribute_text"


@compiles(attribute_text, "sqlite")
def _attribute_text_sqlite(element: attribute_text, compiler: Any, **kw: Any) -> str:
    document, key = (compiler.process(c, **kw) for c in element.clauses)
    path = f"'$.\"' || {key} || '\"'"
    # json_extract gives 1/0 for JSON booleans; json_type tells them from numbers.
    return (
        f"(CASE json_type({document}, {path}) WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' "
        f"ELSE CAST(json_extract({document}, {path}) AS TEXT) END)"
    )


@compiles(attribute_text)
def _attribute_text_default(element: attribute_text, compiler: Any, **kw: Any) -> str:
    document, key = (compiler.process(c, **kw) for c in element.clauses)
    return f"(CAST({document} AS JSON) ->> {key})"


class epoch_seconds(FunctionElement[int]):  # lower-case: reads like the SQL function it is
    """Whole seconds since 1970 of a timestamp."""

    type = sa.BigInteger()
    inherit_cache = True
    name = "epoch_seconds"


@compiles(epoch_seconds, "sqlite")
def _epoch_sqlite(element: epoch_seconds, compiler: Any, **kw: Any) -> str:
    return f"CAST(strftime('%s', {compiler.process(next(iter(element.clauses)), **kw)}) AS INTEGER)"


@compiles(epoch_seconds)
def _epoch_default(element: epoch_seconds, compiler: Any, **kw: Any) -> str:
    return f"CAST(EXTRACT(EPOCH FROM {compiler.process(next(iter(element.clauses)), **kw)}) AS BIGINT)"
