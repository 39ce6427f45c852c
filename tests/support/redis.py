"""A private redis-server for the test session.

The machine's own Redis (127.0.0.1:6379) may hold someone else's data, so tests never
touch it: the session starts its own server on a free port, and every test gets a
database of its own on that server.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support.services import skip_or_fail, stop_process

HOST = "127.0.0.1"
# Database 0 is left to whoever uses `RedisServer.url`; tests get 1..DATABASES-1.
DATABASES = 64
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


class RedisServerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def ping(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def find_redis_server() -> str:
    executable = shutil.which("redis-server")
    if executable is None:
        skip_or_fail(
            "redis-server is not on PATH: install it (Debian/Ubuntu: apt-get install "
            "redis-server; macOS: brew install redis) or run scripts/test, which does"
        )
    return executable


class RedisServer:
    """One redis-server process that keeps nothing on disk, restartable on the same port."""

    def __init__(self, executable: str, directory: Path, port: int | None = None) -> None:
        self.executable = executable
        self.directory = directory
        self.port = port if port is not None else free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return self.url_for(0)

    def url_for(self, db: int) -> str:
        return f"redis://{HOST}:{self.port}/{db}"

    @property
    def log_file(self) -> Path:
        return self.directory / "redis.log"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        if self.running:
            return
        self._process = subprocess.Popen(
            [
                self.executable,
                "--port", str(self.port),
                "--bind", HOST,
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
                "--dir", str(self.directory),
                "--logfile", str(self.log_file),
                "--databases", str(DATABASES),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RedisServerError(
                    f"redis-server on port {self.port} exited with code "
                    f"{self._process.returncode}; its log says:\n{self._log_tail()}"
                )
            if ping(self.port):
                return
            time.sleep(0.02)
        self.stop()
        raise RedisServerError(
            f"redis-server on port {self.port} did not answer PING within {START_TIMEOUT}s; "
            f"its log says:\n{self._log_tail()}"
        )

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            stop_process(process, STOP_TIMEOUT)

    def flushdb(self, db: int) -> None:
        with redis.Redis.from_url(self.url_for(db)) as client:
            client.flushdb()

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log file)"


def start_redis_server(directory: Path, attempts: int = 3) -> RedisServer:
    """Start a server on a free port, trying again if another process took the port first."""
    executable = find_redis_server()
    for attempt in range(1, attempts + 1):
        server = RedisServer(executable, directory)
        try:
            server.start()
        except RedisServerError:
            if attempt == attempts:
                raise
            continue
        return server
    raise RedisServerError("unreachable: attempts must be at least 1")


class DatabasePool:
    """Hands out database numbers round-robin, each flushed before a test gets it.

    Round-robin rather than reuse-first, so a client an earlier test left behind
    writes into a database no current test is reading.
    """

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self._next = 1

    def acquire(self) -> int:
        db = self._next
        self._next = self._next % (DATABASES - 1) + 1
        self.server.start()  # a chaos test may have left it stopped
        self.server.flushdb(db)
        return db

    def release(self, db: int) -> None:
        if self.server.running:
            self.server.flushdb(db)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis_server(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def _redis_databases(redis_server: RedisServer) -> DatabasePool:
    return DatabasePool(redis_server)


@pytest.fixture
def redis_url(_redis_databases: DatabasePool) -> Iterator[str]:
    """A redis:// URL of a database only this test uses, empty at the start."""
    db = _redis_databases.acquire()
    try:
        yield _redis_databases.server.url_for(db)
    finally:
        _redis_databases.release(db)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # So that `pytest -m "not redis"` deselects every test that needs the server.
    for item in items:
        if "redis_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.redis)
