"""Engines, sessions and migrations."""

from __future__ import annotations

import logging
import secrets
import threading
import weakref
from contextlib import AbstractContextManager, nullcontext
from importlib import resources
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Engine
from sqlmodel import Session

from campaigns.errors import ConfigurationError
from campaigns.models import AppSetting

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000
SQLITE_CHECKPOINT_PAGES = 30_000  # of 4 KiB: a WAL of up to ~120 MB between checkpoints


def make_engine(url: str, **kwargs: Any) -> Engine:
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ConfigurationError(f"RETENTION_DATABASE_URL {url!r} is not a database URL") from exc
    if parsed.get_backend_name() == "sqlite":
        # Workers, planner and web write concurrently: wait for the lock instead of failing.
        kwargs.setdefault("connect_args", {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        engine = sa.create_engine(url, **kwargs)
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.drivername == "postgresql":
        # Plain postgresql:// would pick psycopg2, which is not a dependency.
        url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    kwargs.setdefault("pool_pre_ping", True)
    # psycopg prepares a statement after 5 runs and keeps the generic plan; plans made while
    # tables were small stay bad after an import.
    kwargs.setdefault("connect_args", {"prepare_threshold": None})
    return sa.create_engine(url, **kwargs)


def batch_writer(engine: Engine) -> AbstractContextManager[object]:
    """Held around one batch write transaction in this process: SQLite's write lock taken in turn.

    SQLite lets one writer in; one that finds the lock taken sleeps in its busy handler, in
    steps of up to 100 ms, and leaves the lock idle meanwhile.  Batches of one process queue
    on this lock instead and start the moment the one before commits.  (Other processes
    still wait in the busy handler.)  PostgreSQL locks rows, not the database: no lock.
    """
    if engine.dialect.name != "sqlite":
        return nullcontext()
    return _writer_locks.setdefault(engine, threading.Lock())


_writer_locks: weakref.WeakKeyDictionary[Engine, threading.Lock] = weakref.WeakKeyDictionary()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    # With synchronous=NORMAL a checkpoint is the only fsync.  SQLite's default runs one after
    # every commit past 1000 WAL pages: every commit of an API batch or import batch, whose
    # random customers and index entries dirty more pages than that.
    cursor.execute(f"PRAGMA wal_autocheckpoint={SQLITE_CHECKPOINT_PAGES}")
    cursor.close()


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(resources.files("worker.migrations")))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest migration (safe to call on every start)."""
    try:
        with engine.begin() as connection:
            config = alembic_config(engine)
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        raise ConfigurationError(unreachable(engine.url, exc)) from None


def unreachable(url: sa.engine.URL, exc: BaseException) -> str:
    """One line: which database could not be used, why, and what to do."""
    shown = url.render_as_string(hide_password=True)
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0] if str(exc).strip() else ""
    if url.get_backend_name() == "sqlite":
        folder = Path(url.database or ".").absolute().parent
        if not folder.is_dir():
            return (f"cannot open the database {shown}: the folder {folder} does not exist "
                    "(create it, or set RETENTION_DATABASE_URL)")
        return f"cannot open the database {shown}: {reason} (check RETENTION_DATABASE_URL)"
    if "does not exist" in reason:
        return (f"cannot use the database {shown}: {reason} (create it, e.g. `createdb {url.database}`, "
                "or set RETENTION_DATABASE_URL)")
    return (f"cannot reach the database {shown}: {reason} (is the server running? "
            "check RETENTION_DATABASE_URL)")


def read_setting(engine: Engine, key: str) -> str | None:
    with Session(engine) as session:
        row = session.get(AppSetting, key)
        return row.value if row is not None else None


def write_setting(engine: Engine, key: str, value: str) -> None:
    with Session(engine) as session:
        row = session.get(AppSetting, key)
        if row is None:
            session.add(AppSetting(key=key, value=value))
        else:
            row.value = value
        try:
            session.commit()
        except sa.exc.IntegrityError:  # another process inserted it first: theirs is as good
            session.rollback()


def ensure_secret_key(engine: Engine, configured: list[str]) -> list[str]:
    """The configured keys, or one generated on first run and stored in the database.

    Stored in the database rather than a file so that every machine of a
    several-machine deployment signs and verifies with the same key.
    """
    if configured:
        return configured
    with Session(engine) as session:
        stored = session.get(AppSetting, "secret_key")
        if stored is None:
            session.add(AppSetting(key="secret_key", value=secrets.token_urlsafe(32)))
            try:
                session.commit()
                log.warning(
                    "RETENTION_SECRET_KEY is not set: generated one and stored it in the database. "
                    "Set RETENTION_SECRET_KEY to manage it yourself."
                )
            except sa.exc.IntegrityError:
                session.rollback()  # another process generated it first
            stored = session.get(AppSetting, "secret_key")
        if stored is None:  # pragma: no cover - only if the row vanished in between
            raise ConfigurationError("could not store a generated secret key")
        return [stored.value]
