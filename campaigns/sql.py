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

from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement

from campaigns.errors import ConfigurationError
from campaigns.models import CUSTOMER, Customer, UTCDateTime

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
    return insert_for(session.get_bind().dialect.name, table)


def insert_for(name: str, table: Any) -> Any:
    """``dialect_insert`` by the dialect's name, for statements built once per dialect."""
    if name == "sqlite":
        return sqlite.insert(table)
    if name == "postgresql":
        return postgresql.insert(table)
    raise ConfigurationError(
        f"the retention worker supports SQLite and PostgreSQL, not {name!r}: "
        "set RETENTION_DATABASE_URL to one"
    )


def json_rows(dialect: str, columns: Sequence[tuple[str, Any]], *, param: str = "rows") -> sa.Subquery:
    """A table of rows passed as one JSON parameter, ``[[v1, v2, …], …]``, named ``batch``.

    For statements run with every chunk of a hot path: built and compiled once, where an
    ``IN`` list of tuples or a ``CASE`` per row is built and coerced item by item on every
    call.  ``columns``: (name, SQL type) of each position.
    """
    rows = sa.bindparam(param, type_=sa.String)
    cells: list[ColumnElement[Any]]
    if dialect == "postgresql":
        items = (sa.func.json_array_elements(sa.cast(rows, postgresql.JSON))
                 .table_valued("value").render_derived(name="item"))
        cells = [items.c.value.op("->>")(sa.literal_column(str(n))) for n in range(len(columns))]
    else:
        items = sa.func.json_each(rows).table_valued("value")
        cells = [sa.func.json_extract(items.c.value, sa.literal_column(f"'$[{n}]'"))
                 for n in range(len(columns))]
    typed = [sa.cast(cell, type_).label(name) for cell, (name, type_) in zip(cells, columns, strict=True)]
    return sa.select(*typed).select_from(items).subquery("batch")


def constant(value: str | int) -> ColumnElement[Any]:
    """One of the code's own constants (a status, a verdict) written into the SQL.

    Not a bound parameter: nothing to process at each execution, nothing to compile but the
    text.  Never for values from rules.yaml or the database, which stay bound.
    """
    if isinstance(value, int):
        return sa.literal_column(str(int(value)), sa.Integer())
    if not value.replace("_", "").isalnum():
        raise ValueError(f"constant {value!r} is not a plain word: bind it instead")
    return sa.literal_column(f"'{value}'", sa.String())


# ---------------------------------------------------------------- reference moments


def signup_moment() -> ColumnElement[datetime]:
    """When the customer joined; imported without a signup date: when we first heard of them."""
    return sa.func.coalesce(CUSTOMER.c.signed_up_at, CUSTOMER.c.created_at, type_=UTCDateTime())


# Where inactivity (`days_inactive`, `lapsed`, `overdue_ratio`) is counted from, the first
# known of: the last activity; never active yet, the signup; imported without one, the
# first record of the customer.
INACTIVE_SINCE = ("last_active_at", "signed_up_at", "created_at")


def inactive_since() -> ColumnElement[datetime]:
    """The INACTIVE_SINCE moment of each customer, in SQL (planner, explain, reports)."""
    return sa.func.coalesce(*(CUSTOMER.c[name] for name in INACTIVE_SINCE), type_=UTCDateTime())


def inactive_since_of(customer: Customer) -> datetime | None:
    """The same moment for one loaded customer (a template's ``customer.days_inactive``)."""
    moments: list[datetime | None] = [getattr(customer, name) for name in INACTIVE_SINCE]
    return next((moment for moment in moments if moment is not None), None)


def cancel_moment() -> ColumnElement[datetime]:
    """When a cancelled customer left: the cancellation, else the last thing we know of them."""
    return sa.func.coalesce(
        CUSTOMER.c.cancelled_at, CUSTOMER.c.last_active_at, CUSTOMER.c.signed_up_at,
        CUSTOMER.c.created_at, type_=UTCDateTime(),
    )


# ---------------------------------------------------------------- dialect functions

F = TypeVar("F", bound=type[FunctionElement[Any]])


def per_dialect(*, sqlite: Callable[..., str], default: Callable[..., str]) -> Callable[[F], F]:
    """Compile a function element to SQLite's SQL or to PostgreSQL's (the default).

    Each side gets the element's arguments already compiled, in order, and returns the SQL.
    """

    def register(cls: F) -> F:
        element_class: Any = cls  # FunctionElement declares neither attribute
        element_class.name = cls.__name__
        element_class.inherit_cache = True  # the SQL depends on the arguments only: cache it
        for dialects, render in (("sqlite",), sqlite), ((), default):

            def compile_sql(
                element: Any, compiler: Any, render: Callable[..., str] = render, **kw: Any
            ) -> str:
                return render(*(compiler.process(clause, **kw) for clause in element.clauses))

            compiles(cls, *dialects)(compile_sql)
        return cls

    return register


def fixed_sql(template: str) -> Callable[[F], F]:
    """Compile a function element to ``template`` on every dialect, ``{0}``, ``{1}`` … being
    its arguments, compiled in order.

    For SQL whose shape never varies (the planner's per-customer guards): one ``format``
    instead of building and compiling a tree of Core elements, which is most of what a
    freshly started pass spends before its first query (bench P1).  Anything that changes
    the SQL must be an argument, never a Python attribute: the compiled form is cached on
    the arguments alone.
    """

    def register(cls: F) -> F:
        element_class: Any = cls
        element_class.name = cls.__name__
        element_class.inherit_cache = True

        def compile_sql(element: Any, compiler: Any, **kw: Any) -> str:
            # post_process_text doubles the template's own % for pyformat drivers (psycopg).
            text: str = compiler.post_process_text(template)
            return text.format(
                *(compiler.process(clause, **kw) for clause in element.clauses)
            )

        compiles(cls)(compile_sql)
        return cls

    return register


def _sqlite_attribute_text(document: str, key: str) -> str:
    path = f"'$.\"' || {key} || '\"'"
    # json_extract gives 1/0 for JSON booleans; json_type tells them from numbers.
    return (
        f"(CASE json_type({document}, {path}) WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' "
        f"ELSE CAST(json_extract({document}, {path}) AS TEXT) END)"
    )


def _number_or_null(text: str, *, sqlite: bool) -> str:
    text = f"trim({text})"
    if sqlite:
        return (
            f"(CASE WHEN {text} = '' OR {text} GLOB '*[^0-9.eE+-]*' THEN NULL "
            f"ELSE CAST({text} AS REAL) END)"
        )
    return (
        f"(CASE WHEN {text} ~ '^[-+]?([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][-+]?[0-9]+)?$' "
        f"THEN CAST({text} AS DOUBLE PRECISION) END)"
    )


@per_dialect(
    sqlite=lambda column, moment: f"(julianday({moment}) - julianday({column}))",
    default=lambda column, moment: f"(EXTRACT(EPOCH FROM ({moment} - {column})) / 86400.0)",
)
class days_since(FunctionElement[float]):  # lower-case: reads like the SQL function it is
    """Fractional days from a timestamp column to a moment, in each dialect's own arithmetic."""

    type = sa.Float()


@per_dialect(
    sqlite=lambda text: _number_or_null(text, sqlite=True),
    default=lambda text: _number_or_null(text, sqlite=False),
)
class as_number(FunctionElement[float]):
    """Text to a number, or NULL when it is not one (never an error mid-query)."""

    type = sa.Float()


@per_dialect(
    sqlite=_sqlite_attribute_text,
    default=lambda document, key: f"(CAST({document} AS JSON) ->> {key})",
)
class attribute_text(FunctionElement[str]):
    """An attribute as the text a CSV cell would hold: JSON true is 'true', 42 is '42'.

    Attributes arrive typed from the API (JSON booleans and numbers) and as text from CSV;
    comparing both as text makes `attributes.beta: true` mean the same whatever the source.
    """

    type = sa.String()


@per_dialect(
    sqlite=lambda moment: f"CAST(strftime('%s', {moment}) AS INTEGER)",
    default=lambda moment: f"CAST(EXTRACT(EPOCH FROM {moment}) AS BIGINT)",
)
class epoch_seconds(FunctionElement[int]):
    """Whole seconds since 1970 of a timestamp."""

    type = sa.BigInteger()


@per_dialect(sqlite=lambda column: f"+{column}", default=lambda column: column)
class unindexed_text(FunctionElement[str]):
    """A text column that SQLite must not search an index for (its unary +).

    For a term like ``status = 'sending'`` beside a key lookup: SQLite would otherwise
    walk every row of that status in the index and probe the few keys for each.
    """

    type = sa.String()
