"""Bulk writes for imports, without SQLAlchemy's per-value processing.

Core's executemany sends every value of every row through its type processors
(``UTCDateTime``, SQLite's DATETIME formatting, JSON) and builds a parameter
dict per row; on an import that costs more than the database's own work.  Here
the statement is compiled once per batch, each value is converted once into
what the driver stores (the same text SQLAlchemy would have written), and the
rows go to the driver in one call: its executemany on SQLite, COPY into a
temporary table and one ``INSERT … SELECT`` on PostgreSQL (a statement per
batch instead of one per row).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from campaigns.models import UTCDateTime
from campaigns.sql import dialect_insert

Convert = Callable[[Any], Any]
# Adds the ON CONFLICT clause to the dialect's INSERT (rows as VALUES, or selected from COPY).
OnConflict = Callable[[Any], Any]
_ROWS_PER_STATEMENT = 500  # multi-row VALUES: 500 × a dozen columns stays far below SQLite's limit


def _sqlite_datetime(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: attach a time zone before storing it")
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    # SQLAlchemy's SQLite DATETIME text, so stored values compare as before.
    return value.replace(tzinfo=None).isoformat(" ", "microseconds")


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: attach a time zone before storing it")
    return value


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _converter(type_: Any, dialect: str) -> Convert | None:
    if isinstance(type_, UTCDateTime):
        return _memoized(_sqlite_datetime if dialect == "sqlite" else _utc)
    if isinstance(type_, sa.JSON):
        return _json
    return None


def _memoized(convert: Convert) -> Convert:
    """Per call: an import stamps every row with the same created_at, converted once.

    Unbounded, but it lives for one batch only.
    """
    seen: dict[Any, Any] = {}

    def once(value: Any) -> Any:
        found = seen.get(value)
        if found is None:
            found = seen[value] = convert(value)
        return found

    return once


def _tuples(rows: Sequence[Mapping[str, Any]], names: Sequence[str], converters: Sequence[Convert | None]
            ) -> list[tuple[Any, ...]]:
    pick = itemgetter(*names)
    converted = [(i, c) for i, c in enumerate(converters) if c is not None]
    out: list[tuple[Any, ...]] = []
    for row in rows:
        values = list(pick(row)) if len(names) > 1 else [pick(row)]
        for i, convert in converted:
            values[i] = convert(values[i])
        out.append(tuple(values))
    return out


def executemany(session: Session, statement: Any, rows: Sequence[Mapping[str, Any]]) -> int:
    """Run ``statement`` (an INSERT or UPDATE with bind parameters) once per row; rows changed.

    Every row must carry the same keys; bind parameters no row names take the value bound
    in the statement itself (``.values(updated_at=now)``).
    """
    if not rows:
        return 0
    connection = session.connection()
    dialect = connection.dialect
    keys = list(rows[0]) if isinstance(statement, sa.Insert) else None  # the VALUES an INSERT names
    compiled = statement.compile(dialect=dialect, column_keys=keys)
    binds = {name: bind for bind, name in compiled.bind_names.items()}  # rendered name → parameter
    names = list(compiled.positiontup) if compiled.positional else list(binds)
    fixed = {name: compiled.params[name] for name in names if name not in rows[0]}
    if fixed:
        rows = [{**row, **fixed} for row in rows]
    params: list[Any] = _tuples(rows, names, [_converter(binds[n].type, dialect.name) for n in names])
    if not compiled.positional:
        params = [dict(zip(names, values, strict=True)) for values in params]
    return int(connection.exec_driver_sql(str(compiled), params).rowcount)


def write_rows(session: Session, table: sa.Table, rows: Sequence[Mapping[str, Any]], *,
               on_conflict: OnConflict) -> int:
    """``INSERT … ON CONFLICT …`` (the clause from ``on_conflict``) for many rows; rows written.

    Counts rows inserted or updated (an ``ON CONFLICT DO UPDATE … WHERE`` that keeps a row
    as it was does not count).  Every row carries the same keys.
    """
    if not rows:
        return 0
    if session.get_bind().dialect.name == "postgresql":
        with _Staged(session, table, rows) as staged:
            # Through the driver: psycopg's rowcount is -1 when SQLAlchemy executes an
            # INSERT … SELECT itself.
            connection = session.connection()
            compiled = on_conflict(staged.insert).compile(dialect=connection.dialect)
            return int(connection.exec_driver_sql(str(compiled), compiled.params).rowcount)
    return executemany(session, on_conflict(dialect_insert(session, table)), rows)


def insert_returning(
    session: Session, table: sa.Table, rows: Sequence[Mapping[str, Any]], *, conflict: str, returning: str
) -> list[Any]:
    """``INSERT … ON CONFLICT (conflict) DO NOTHING RETURNING returning`` for many rows at once.

    The returned values are those of the rows actually inserted.  SQLite gets multi-row
    VALUES (its driver's executemany cannot return rows), PostgreSQL COPY.
    """
    if not rows:
        return []
    if session.get_bind().dialect.name == "postgresql":
        with _Staged(session, table, rows) as staged:
            statement = staged.insert.on_conflict_do_nothing(index_elements=[conflict])
            return list(session.execute(statement.returning(table.c[returning])).scalars())
    connection = session.connection()
    columns = list(rows[0])
    convert = [_converter(table.c[name].type, "sqlite") for name in columns]
    one = "(" + ", ".join(["?"] * len(columns)) + ")"
    quoted = ", ".join(connection.dialect.identifier_preparer.quote(name) for name in columns)
    found: list[Any] = []
    for start in range(0, len(rows), _ROWS_PER_STATEMENT):
        chunk = _tuples(rows[start : start + _ROWS_PER_STATEMENT], columns, convert)
        sql = (f"INSERT INTO {table.name} ({quoted}) VALUES {', '.join([one] * len(chunk))} "
               f"ON CONFLICT ({conflict}) DO NOTHING RETURNING {returning}")
        found.extend(connection.exec_driver_sql(sql, tuple(v for row in chunk for v in row)).scalars())
    return found


class _Staged:
    """PostgreSQL: the rows COPYed into a temporary table shaped like ``table``'s columns.

    ``insert`` is the INSERT into ``table`` selecting them, for an ON CONFLICT clause.
    The temporary table lives until the end of the block (and at the latest of the
    transaction), so the next batch starts from an empty one.
    """

    def __init__(self, session: Session, table: sa.Table, rows: Sequence[Mapping[str, Any]]) -> None:
        self.session, self.table, self.rows = session, table, rows
        self.columns = list(rows[0])
        self.name = f"_staged_{table.name}"
        staged = sa.Table(self.name, sa.MetaData(), *(sa.Column(n, table.c[n].type) for n in self.columns))
        self.insert = dialect_insert(session, table).from_select(self.columns, sa.select(*staged.c))

    def __enter__(self) -> _Staged:
        connection = self.session.connection()
        quote = connection.dialect.identifier_preparer.quote
        quoted = ", ".join(quote(n) for n in self.columns)
        cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
        cursor.execute(f"CREATE TEMPORARY TABLE {self.name} ON COMMIT DROP AS "
                       f"SELECT {quoted} FROM {quote(self.table.name)} WITH NO DATA")
        convert = [_converter(self.table.c[n].type, "postgresql") for n in self.columns]
        with cursor.copy(f"COPY {self.name} ({quoted}) FROM STDIN") as copy:
            for values in _tuples(self.rows, self.columns, convert):
                copy.write_row(values)
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.session.connection().exec_driver_sql(f"DROP TABLE {self.name}")
