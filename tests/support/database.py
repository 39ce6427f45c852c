"""Database URLs for tests: a fresh SQLite file, or a fresh PostgreSQL schema.

PostgreSQL comes from RETENTION_TEST_POSTGRES_URL, a `postgresql+psycopg://` URL of a
throwaway database (.ci/run creates one). Each test gets its own schema there, selected
through the connection's search_path, so tests never see each other's tables and the
database itself is never flushed. The fixtures create no tables.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from tests.support.services import skip_or_fail

POSTGRES_URL_ENV = "RETENTION_TEST_POSTGRES_URL"
APPLICATION_NAME_PREFIX = "retention-test-"


def sqlite_url_in(directory: Path) -> str:
    return f"sqlite:///{directory}/test.db"


def schema_url(base_url: str, schema: str) -> str:
    """`base_url` with every connection's search_path set to `schema`.

    The option is written with a literal `=` rather than `%3D`: SQLAlchemy parses both,
    and a URL without `%` survives Alembic's ConfigParser (`set_main_option`) unescaped.
    The application_name lets teardown find connections a test forgot to close.
    """
    query = make_url(base_url).query
    clashes = sorted({"options", "application_name"} & set(query))
    if clashes:
        raise ValueError(
            f"{POSTGRES_URL_ENV} must not set {', '.join(clashes)}: the test fixtures set "
            "them per test; remove them from the URL"
        )
    separator = "&" if "?" in base_url else "?"
    return (
        f"{base_url}{separator}options=-csearch_path={schema}"
        f"&application_name={APPLICATION_NAME_PREFIX}{schema}"
    )


@contextmanager
def temporary_schema(admin: Engine, base_url: str) -> Iterator[str]:
    """Create a uniquely named schema, yield a URL that uses it, then drop it with its tables."""
    schema = f"test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield schema_url(base_url, schema)
    finally:
        _drop_schema(admin, schema)


def _drop_schema(admin: Engine, schema: str) -> None:
    with admin.connect() as connection:
        # A connection still open in a transaction would hold locks that block the DROP.
        connection.execute(
            sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = :name AND pid <> pg_backend_pid()"
            ),
            {"name": APPLICATION_NAME_PREFIX + schema},
        )
        connection.execute(sa.text("SET lock_timeout = '10s'"))
        connection.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


def postgres_admin_engine(url: str) -> Engine:
    engine = sa.create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect():
            pass
    except OperationalError as exc:
        engine.dispose()
        pytest.fail(
            f"{POSTGRES_URL_ENV} is set but PostgreSQL does not answer there: {exc.orig}. "
            "Fix the URL, start the server, or unset the variable to skip PostgreSQL tests",
            pytrace=False,
        )
    return engine


class PostgresAdmin(NamedTuple):
    """An AUTOCOMMIT engine on the throwaway database, and the URL it came from."""

    engine: Engine
    base_url: str


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[PostgresAdmin]:
    url = os.environ.get(POSTGRES_URL_ENV, "").strip()
    if not url:
        skip_or_fail(
            f"{POSTGRES_URL_ENV} is not set: point it at a throwaway PostgreSQL database "
            "(postgresql+psycopg://USER@HOST:5432/DB), or run .ci/run, which creates one"
        )
    engine = postgres_admin_engine(url)
    try:
        yield PostgresAdmin(engine, url)
    finally:
        engine.dispose()


@pytest.fixture
def postgres_url(postgres_admin: PostgresAdmin) -> Iterator[str]:
    """A PostgreSQL URL whose connections see an empty schema of this test's own."""
    with temporary_schema(postgres_admin.engine, postgres_admin.base_url) as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return sqlite_url_in(tmp_path)


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    ]
)
def database_url(request: pytest.FixtureRequest) -> str:
    """An empty database on each backend the project supports, one test run per backend."""
    if request.param == "sqlite":
        url: str = request.getfixturevalue("sqlite_url")
    else:
        url = request.getfixturevalue("postgres_url")
    return url


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # database_url's postgresql case is marked by its param; direct users of postgres_url here.
    for item in items:
        if "postgres_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)
