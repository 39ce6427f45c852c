"""Alembic environment.

`retention db upgrade` (and every start) passes its engine or connection.  A
developer's ``alembic`` command (alembic.ini at the repository root) uses that
file's ``sqlalchemy.url`` when set, else ``RETENTION_DATABASE_URL``, as
``retention`` itself does.

On PostgreSQL an upgrade holds a transaction-scoped advisory lock: several
processes starting at once (a worker and a scheduler on each machine) upgrade
one after another, and the later ones find the schema current.
"""

from __future__ import annotations

from logging.config import fileConfig
from typing import Any, Literal

import sqlalchemy as sa
from alembic import context
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel
from sqlmodel.sql.sqltypes import AutoString

import campaigns.models  # registers the tables, for autogenerate
from worker.database import make_engine

config = context.config
if config.config_file_name is not None:  # the developers' alembic.ini; `retention` configures its own
    fileConfig(config.config_file_name, disable_existing_loggers=False)
target_metadata = SQLModel.metadata

# Any fixed 64-bit number; other applications sharing the database must not use it.
MIGRATION_LOCK_KEY = 0x7265_7465_6E74_696F  # "retentio"


def _plain_types(type_: str, obj: Any, _autogen_context: Any) -> str | Literal[False]:
    """Autogenerate writes plain SQLAlchemy types, so a migration never imports the models
    (whose classes change later, while a migration must stay as it was)."""
    if type_ != "type":
        return False
    if isinstance(obj, campaigns.models.UTCDateTime):
        return "sa.DateTime(timezone=True)"
    if isinstance(obj, AutoString):
        return f"sa.String(length={obj.length})" if obj.length else "sa.String()"
    return False


def _database_url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from worker.settings import load_settings

    return load_settings().database_url


def _migrate(connection: Connection) -> None:
    context.configure(
        connection=connection, target_metadata=target_metadata, render_item=_plain_types,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _migrate(connection)
        return
    engine = config.attributes.get("engine")
    owned = engine is None
    if engine is None:
        engine = make_engine(_database_url())
    try:
        with engine.begin() as conn:
            _migrate(conn)
    finally:
        if owned:
            engine.dispose()


def run_migrations_offline() -> None:
    """``alembic upgrade --sql``: the SQL, printed rather than run."""
    context.configure(url=_database_url(), target_metadata=target_metadata, render_item=_plain_types,
                      literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
