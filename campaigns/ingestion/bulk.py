"""Bulk writes for imports, without SQLAlchemy's per-value processing.

Core's executemany sends every value of every row through its type processors
(``UTCDateTime``, SQLite's DATETIME formatting, JSON) and builds a parameter
dict per row; on an import that costs more than the database's own work.  Here
the statement is compiled once per batch, each value is converted once into
what the driver stores (the same text SQLAlchemy would have written), and the
rows go to the driver's own executemany.
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

Convert = Callable[[Any], Any]
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
        return _sqlite_datetime if dialect == "sqlite" else _utc
    if isinstance(type_, sa.JSON):
        return _json
    return None


def executemany(session: Session, statement: Any, rows: Sequence[Mapping[str, Any]]) -> None:
    """Run ``statement`` (an INSERT or UPDATE with bind parameters) once per row.

    Every row must carry the same keys; bind parameters no row names take the value bound
    in the statement itself (``.values(updated_at=now)``).
    """
    if not rows:
        return
    connection = session.connection()
    dialect = connection.dialect
    keys = list(rows[0]) if isinstance(statement, sa.Insert) else None  # the VALUES an INSERT names
    compiled = statement.compile(dialect=dialect, column_keys=keys)
    binds = {name: bind for bind, name in compiled.bind_names.items()}  # rendered name → parameter
    names = list(compiled.positiontup) if compiled.positional else list(binds)
    fixed = {name: compiled.params[name] for name in names if name not in rows[0]}
    if fixed:
        rows = [{**row, **fixed} for row in rows]
    converted = [(i, _memoized(c) if isinstance(binds[name].type, UTCDateTime) else c)
                 for i, name in enumerate(names)
                 if (c := _converter(binds[name].type, dialect.name)) is not None]
    pick = itemgetter(*names)
    params: list[Any] = []
    for row in rows:
        values = list(pick(row)) if len(names) > 1 else [pick(row)]
        for i, convert in converted:
            values[i] = convert(values[i])
        params.append(tuple(values) if compiled.positional else dict(zip(names, values, strict=True)))
    connection.exec_driver_sql(str(compiled), params)


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


def insert_returning(
    session: Session, table: sa.Table, rows: Sequence[Mapping[str, Any]], *, conflict: str, returning: str
) -> list[Any]:
    """``INSERT … ON CONFLICT (conflict) DO NOTHING RETURNING returning`` for many rows at once.

    Rows go as multi-row VALUES (the driver's executemany cannot return rows on SQLite);
    the returned values are those of the rows actually inserted.
    """
    if not rows:
        return []
    connection = session.connection()
    dialect = connection.dialect.name
    columns = list(rows[0])
    convert = [_converter(table.c[name].type, dialect) for name in columns]
    placeholder = "?" if connection.dialect.positional and connection.dialect.paramstyle == "qmark" else "%s"
    one = "(" + ", ".join([placeholder] * len(columns)) + ")"
    quoted = ", ".join(connection.dialect.identifier_preparer.quote(name) for name in columns)
    found: list[Any] = []
    for start in range(0, len(rows), _ROWS_PER_STATEMENT):
        chunk = rows[start : start + _ROWS_PER_STATEMENT]
        values: list[Any] = []
        for row in chunk:
            values.extend(c(row[n]) if c else row[n] for n, c in zip(columns, convert, strict=True))
        sql = (f"INSERT INTO {table.name} ({quoted}) VALUES {', '.join([one] * len(chunk))} "
               f"ON CONFLICT ({conflict}) DO NOTHING RETURNING {returning}")
        found.extend(connection.exec_driver_sql(sql, tuple(values)).scalars())
    return found
