"""The test fixtures themselves: private Redis, per-test databases, skip-or-fail."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from tests.support.database import (
    PostgresAdmin,
    schema_url,
    temporary_schema,
)
from tests.support.redis import DATABASES, DatabasePool, RedisServer, find_redis_server, ping
from tests.support.services import skip_or_fail

# --- skip_or_fail -------------------------------------------------------------------


def test_missing_service_skips_on_a_developer_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no frobnicator"):
        skip_or_fail("no frobnicator")


def test_missing_service_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"no frobnicator \(CI=true"):
        skip_or_fail("no frobnicator")


def test_missing_redis_server_binary_fails_in_ci_with_install_hint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="apt-get install redis-server"):
        find_redis_server()


# --- Redis --------------------------------------------------------------------------


def test_redis_server_is_private_and_answers_ping(redis_server: RedisServer) -> None:
    assert redis_server.port != 6379
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    with redis.Redis.from_url(redis_server.url) as client:
        assert client.ping() is True


def test_redis_url_points_at_a_database_of_its_own(
    redis_server: RedisServer, redis_url: str
) -> None:
    url = urlsplit(redis_url)
    assert (url.hostname, url.port) == ("127.0.0.1", redis_server.port)
    assert url.path not in ("", "/", "/0")


@pytest.mark.parametrize("run", ["first", "second"])
def test_redis_url_starts_empty_whatever_an_earlier_test_wrote(redis_url: str, run: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        assert client.dbsize() == 0
        client.set("left-behind", run)


def test_redis_database_is_flushed_when_handed_out_again(redis_server: RedisServer) -> None:
    pool = DatabasePool(redis_server)
    db = pool.acquire()
    pool.release(db)
    with redis.Redis.from_url(redis_server.url_for(db)) as late_client:
        late_client.set("written-after-release", "1")  # a client a test forgot to close
    handed_out = [pool.acquire() for _ in range(DATABASES - 1)]
    assert handed_out[-1] == db
    with redis.Redis.from_url(redis_server.url_for(db)) as client:
        assert client.dbsize() == 0


def test_redis_server_restarts_on_the_same_port(redis_server: RedisServer) -> None:
    port = redis_server.port
    redis_server.stop()
    try:
        assert not ping(port)
    finally:
        redis_server.start()
    assert redis_server.port == port
    assert ping(port)


def test_redis_url_restarts_a_server_an_earlier_test_left_stopped(
    redis_server: RedisServer, request: pytest.FixtureRequest
) -> None:
    redis_server.stop()
    url: str = request.getfixturevalue("redis_url")
    with redis.Redis.from_url(url) as client:
        assert client.ping() is True


# --- Databases ----------------------------------------------------------------------


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = sa.create_engine(database_url)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.mark.parametrize("run", ["first", "second"])
def test_database_url_starts_empty_whatever_an_earlier_test_created(
    engine: Engine, run: str
) -> None:
    probe = sa.Table("probe", sa.MetaData(), sa.Column("run", sa.String(10)))
    with engine.begin() as connection:
        assert sa.inspect(connection).get_table_names() == []
        probe.create(connection)
        connection.execute(probe.insert().values(run=run))


@pytest.mark.postgres
def test_postgres_url_tables_land_in_the_test_schema_not_public(postgres_url: str) -> None:
    schema = _schema_of(postgres_url)
    engine = sa.create_engine(postgres_url)
    try:
        with engine.begin() as connection:
            connection.execute(sa.text("CREATE TABLE probe (id integer)"))
            assert connection.execute(sa.text("SELECT current_schema()")).scalar() == schema
            public = sa.inspect(connection).get_table_names(schema="public")
            assert "probe" not in public
            assert sa.inspect(connection).get_table_names(schema=schema) == ["probe"]
    finally:
        engine.dispose()


def _schema_of(url: str) -> str:
    options = make_url(url).query["options"]
    if not isinstance(options, str):
        raise TypeError(f"one options parameter expected in {url}")
    return options.removeprefix("-csearch_path=")


def _schema_exists(admin: Engine, schema: str) -> bool:
    with admin.connect() as connection:
        found = connection.execute(
            sa.text("SELECT 1 FROM information_schema.schemata WHERE schema_name = :name"),
            {"name": schema},
        ).first()
    return found is not None


@pytest.mark.postgres
def test_temporary_schema_is_dropped_even_with_a_connection_left_in_a_transaction(
    postgres_admin: PostgresAdmin,
) -> None:
    admin, base_url = postgres_admin
    with temporary_schema(admin, base_url) as url:
        schema = _schema_of(url)
        engine = sa.create_engine(url)
        leaked = engine.connect()
        leaked.execute(sa.text("CREATE TABLE probe (id integer)"))
        leaked.execute(sa.text("INSERT INTO probe VALUES (1)"))  # still uncommitted: holds locks
        assert _schema_exists(admin, schema)
    assert not _schema_exists(admin, schema)
    leaked.invalidate()
    engine.dispose()


def test_schema_url_sets_search_path_without_percent_signs_for_alembic() -> None:
    url = schema_url("postgresql+psycopg://u@127.0.0.1:5432/db?sslmode=disable", "test_abc")
    assert "%" not in url
    query = make_url(url).query
    assert query["options"] == "-csearch_path=test_abc"
    assert query["sslmode"] == "disable"


def test_schema_url_refuses_a_base_url_that_sets_options_itself() -> None:
    with pytest.raises(ValueError, match="must not set options: the test fixtures set them"):
        schema_url("postgresql+psycopg://u@h/db?options=-cstatement_timeout%3D5", "test_abc")
