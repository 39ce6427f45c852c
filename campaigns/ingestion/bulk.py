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
# SQLite settings while an import batch is written and committed.  A batch of 10,000 events
# dirties the rows and index entries of as many random customers (30-40 MB of pages): in
# SQLite's default 2 MB page cache they spill to the WAL mid-transaction and are read back.
# (How often the WAL is checkpointed is the connection's own setting, made where it is opened.)
BATCH_PRAGMAS = {"cache_size": -65_536}  # 64 MiB


def batch_pragmas(session: Session) -> None:
    """SQLite: BATCH_PRAGMAS on the transaction's connection until it goes back to the pool.

    The connection's own values come back when it is checked in (after the commit or
    rollback that ends the batch), so no other user of the pool inherits them.
    """
    engine = session.get_bind()
    if engine.dialect.name != "sqlite":
        return
    connection = session.connection()
    info = connection.connection.info
    if "batch_pragmas" in info:
        return
    if not sa.event.contains(engine, "checkin", _restore_pragmas):
        sa.event.listen(engine, "checkin", _restore_pragmas)
    info["batch_pragmas"] = {name: connection.exec_driver_sql(f"PRAGMA {name}").scalar_one()
                             for name in BATCH_PRAGMAS}
    for name, value in BATCH_PRAGMAS.items():
        connection.exec_driver_sql(f"PRAGMA {name}={int(value)}")


def _restore_pragmas(dbapi_connection: Any, record: Any) -> None:
    previous = record.info.pop("batch_pragmas", None) if record is not None else None
    if previous and dbapi_connection is not None:
        for name, value in previous.items():
            dbapi_connection.execute(f"PRAGMA {name}={int(value)}")


def _sqlite_datetime(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: attach a time zone before storing it")
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    # SQLAlchemy's SQLite DATETIME text (naive UTC), so stored values compare as before;
    # the offset cut off the aware text is always +00:00 here.
    return value.isoformat(" ", "microseconds")[:26]


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: attach a time zone before storing it")
    return value


_JSON_MEMO = 4096  # distinct objects remembered per batch


def _json() -> Convert:
    """JSON text, written once per object: a batch's rows share their properties dicts
    (``fast_events`` reads a repeated cell once).  The memo holds each object, so its id
    cannot be reused while remembered."""
    seen: dict[int, tuple[Any, str]] = {}

    def convert(value: Any) -> str | None:
        if value is None:
            return None
        hit = seen.get(id(value))
        if hit is not None and hit[0] is value:
            return hit[1]
        text = json.dumps(value)
        if len(seen) < _JSON_MEMO:
            seen[id(value)] = (value, text)
        return text

    return convert


def _converter(type_: Any, dialect: str) -> Convert | None:
    if isinstance(type_, UTCDateTime):
        return _repeats_once(_sqlite_datetime if dialect == "sqlite" else _utc)
    if isinstance(type_, sa.JSON):
        return _json()
    return None


def _repeats_once(convert: Convert) -> Convert:
    """``convert`` that reuses its last answer for the same object again: a batch stamps
    every row with the one ``now`` (created_at, updated_at)."""
    last: list[Any] = [object(), None]

    def once(value: Any) -> Any:
        if value is not last[0]:
            last[:] = value, convert(value)
        return last[1]

    return once


def _converted(convert: Convert | None, value: Any) -> Any:
    return value if convert is None else convert(value)


def _tuples(rows: Sequence[Mapping[str, Any]], names: Sequence[str], converters: Sequence[Convert | None],
            fixed: Mapping[int, Any] | None = None) -> list[tuple[Any, ...]]:
    """Each row's values for ``names`` as the driver takes them; ``fixed`` values (by their
    position in the result) are the same for every row."""
    pick = itemgetter(*names)
    inserted = sorted((fixed or {}).items())
    converted = [(i, c) for i, c in enumerate(converters) if c is not None]
    out: list[tuple[Any, ...]] = []
    for row in rows:
        values = list(pick(row)) if len(names) > 1 else [pick(row)]
        for i, convert in converted:
            values[i] = convert(values[i])
        for i, value in inserted:
            values.insert(i, value)
        out.append(tuple(values))
    return out


def executemany(session: Session, statement: Any, rows: Sequence[Mapping[str, Any]],
                constants: Mapping[str, Any] | None = None) -> int:
    """Run ``statement`` (an INSERT or UPDATE with bind parameters) once per row; rows changed.

    Every row must carry the same keys; an INSERT also sets the columns in ``constants`` to
    the same value in every row.  Other bind parameters no row names take the value bound in
    the statement itself (``.values(updated_at=now)``).
    """
    if not rows:
        return 0
    constants = constants or {}
    connection = session.connection()
    dialect = connection.dialect
    # The VALUES an INSERT names.
    keys = [*rows[0], *constants] if isinstance(statement, sa.Insert) else None
    compiled = statement.compile(dialect=dialect, column_keys=keys)
    binds = {name: bind for bind, name in compiled.bind_names.items()}  # rendered name → parameter
    names = list(compiled.positiontup) if compiled.positional else list(binds)
    given = [name for name in names if name in rows[0]]
    converters = {name: _converter(binds[name].type, dialect.name) for name in names}
    fixed = {i: _converted(converters[name], constants[name] if name in constants else compiled.params[name])
             for i, name in enumerate(names) if name not in rows[0]}
    params: list[Any] = _tuples(rows, given, [converters[name] for name in given], fixed)
    if not compiled.positional:
        params = [dict(zip(names, values, strict=True)) for values in params]
    return int(connection.exec_driver_sql(str(compiled), params).rowcount)


def write_rows(session: Session, table: sa.Table, rows: Sequence[Mapping[str, Any]], *,
               on_conflict: OnConflict, constants: Mapping[str, Any] | None = None) -> int:
    """``INSERT … ON CONFLICT …`` (the clause from ``on_conflict``) for many rows; rows written.

    Counts rows inserted or updated (an ``ON CONFLICT DO UPDATE … WHERE`` that keeps a row
    as it was does not count).  Every row carries the same keys; the columns in
    ``constants`` take the same value in every row.
    """
    if not rows:
        return 0
    if session.get_bind().dialect.name == "postgresql":
        with _Staged(session, table, rows, constants) as staged:
            # Through the driver: psycopg's rowcount is -1 when SQLAlchemy executes an
            # INSERT … SELECT itself.
            connection = session.connection()
            compiled = on_conflict(staged.insert).compile(dialect=connection.dialect)
            return int(connection.exec_driver_sql(str(compiled), compiled.params).rowcount)
    return executemany(session, on_conflict(dialect_insert(session, table)), rows, constants)


def append_rows(session: Session, table: sa.Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """A plain INSERT of many rows that nothing can conflict with: COPY on PostgreSQL (its
    executemany is a round trip of parsing per row), the driver's executemany on SQLite."""
    if not rows:
        return
    if session.get_bind().dialect.name != "postgresql":
        executemany(session, sa.insert(table), rows)
        return
    columns = list(rows[0])
    quote = session.connection().dialect.identifier_preparer.quote
    cursor = session.connection().connection.driver_connection.cursor()  # type: ignore[union-attr]
    convert = [_converter(table.c[n].type, "postgresql") for n in columns]
    with cursor.copy(f"COPY {quote(table.name)} ({', '.join(quote(n) for n in columns)}) FROM STDIN") as copy:
        for values in _tuples(rows, columns, convert):
            copy.write_row(values)


def insert_new(
    session: Session, table: sa.Table, rows: Sequence[Mapping[str, Any]], *, conflict: str, key: str
) -> list[Any]:
    """``INSERT … ON CONFLICT (conflict) DO NOTHING`` for many rows; the ``key`` values of
    the rows actually inserted.

    PostgreSQL: COPY, then one ``INSERT … SELECT … RETURNING``.  SQLite: the driver's
    executemany (a multi-row ``VALUES … RETURNING`` costs 1.8× as much: SQLite parses each
    statement of thousands of parameters afresh).  Its rowcount says how many rows went in;
    when some did not, the new ones are the last rowcount ids, as the table's integer key
    hands out the next id above the largest, and the transaction holds the only write lock.
    """
    if not rows:
        return []
    if session.get_bind().dialect.name == "postgresql":
        with _Staged(session, table, rows) as staged:
            statement = staged.insert.on_conflict_do_nothing(index_elements=[conflict])
            return list(session.execute(statement.returning(table.c[key])).scalars())
    (identity,) = table.primary_key.columns
    if identity.name in rows[0]:
        raise ValueError(f"insert_new assigns {table.name}.{identity.name} itself: leave it out of the rows")
    statement = dialect_insert(session, table).on_conflict_do_nothing(index_elements=[conflict])
    inserted = executemany(session, statement, rows)
    if inserted == len(rows):
        return [row[key] for row in rows]
    if not inserted:
        return []
    newest = sa.select(table.c[key]).order_by(identity.desc()).limit(inserted)
    return list(session.execute(newest).scalars())


class _Staged:
    """PostgreSQL: the rows COPYed into a temporary table shaped like ``table``'s columns.

    ``insert`` is the INSERT into ``table`` selecting them, for an ON CONFLICT clause.
    The temporary table lives until the end of the block (and at the latest of the
    transaction), so the next batch starts from an empty one.
    """

    def __init__(self, session: Session, table: sa.Table, rows: Sequence[Mapping[str, Any]],
                 constants: Mapping[str, Any] | None = None) -> None:
        self.session, self.table, self.rows = session, table, rows
        self.given = list(rows[0])
        self.constants = dict(constants or {})
        self.columns = [*self.given, *self.constants]
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
        convert = {n: _converter(self.table.c[n].type, "postgresql") for n in self.columns}
        fixed = {len(self.given) + i: _converted(convert[n], value)
                 for i, (n, value) in enumerate(self.constants.items())}
        with cursor.copy(f"COPY {self.name} ({quoted}) FROM STDIN") as copy:
            for values in _tuples(self.rows, self.given, [convert[n] for n in self.given], fixed):
                copy.write_row(values)
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.session.connection().exec_driver_sql(f"DROP TABLE {self.name}")
