"""Tools for injecting faults into real processes and servers.

- ``ChaosSink``: the test SMTP server, able to hold a session at a chosen step
  (RCPT, or after accepting DATA but before saying so) until the test has
  killed the client, and to be slow on purpose.
- ``TcpProxy``: a loopback TCP proxy that can be cut and restored, to take a
  PostgreSQL or SMTP server "down" for the processes that talk through it.
- ``RedisProcess``: a redis-server of the test's own, stoppable and
  restartable on the same port, with or without persistence.
- ``Proc``: a `retention …` (or python) subprocess whose output lines are
  collected as they come, so a test can wait for one.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import pytest
import redis
import sqlalchemy as sa
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlmodel import Session as DbSession
from sqlmodel import select

from campaigns.delivery import outbox
from campaigns.models import Delivery, utcnow
from tests.factories import add_customer
from tests.support.redis import HOST, find_redis_server, free_port, ping
from tests.support.services import stop_process
from tests.support.smtp import SMTPSink
from worker.daemon import Roles, start_roles
from worker.runtime import Runtime

RETENTION = Path(sys.executable).parent / "retention"
PYTHON = sys.executable
T = TypeVar("T")

# For tests about one backend only (the database_url fixture is indirect-parametrized).
SQLITE_ONLY = pytest.mark.parametrize("database_url", [pytest.param("sqlite", id="sqlite")],
                                      indirect=True)
POSTGRES_ONLY = pytest.mark.parametrize(
    "database_url", [pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres)],
    indirect=True,
)


# ---------------------------------------------------------------- waiting


def wait_until(
    predicate: Callable[[], T], *, timeout: float, what: str | Callable[[], str], interval: float = 0.05
) -> T:
    """The first truthy value of ``predicate()``; AssertionError naming ``what`` after ``timeout``.

    ``what`` may be a callable, to describe the state at the time of the failure.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            described = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout}s waiting for {described}")
        time.sleep(interval)


# ---------------------------------------------------------------- SMTP


class ChaosSink(SMTPSink):
    """An SMTPSink that can hold one session at a chosen step, and answer slowly.

    ``hold("rcpt")``: the next RCPT TO waits (before any message content is
    sent) until ``resume()``.  ``hold("accepted")``: the next DATA is stored
    as accepted, then the 250 reply waits until ``resume()`` -- the window
    where the server has the mail and the client does not know it yet.
    ``reached`` is set when a held session arrives.
    """

    def __init__(self) -> None:
        super().__init__()
        self.rcpt_counts: collections.Counter[str] = collections.Counter()
        self.data_started: list[float] = []  # monotonic time of each DATA, accepted or refused
        self.reached = threading.Event()
        self._resume = threading.Event()
        self._hold: str | None = None
        # Seconds to wait, after storing a message, before replying 250 (a slow server).
        self.reply_delay: Callable[[], float] = lambda: 0.0

    def hold(self, step: str) -> None:
        if step not in ("rcpt", "accepted"):
            raise ValueError(f"unknown step {step!r}: hold 'rcpt' or 'accepted'")
        self.reached.clear()
        self._resume.clear()
        self._hold = step

    def resume(self) -> None:
        self._resume.set()

    def received_ids(self) -> list[str]:
        """Message-IDs of the accepted messages, in order."""
        return [str(m.parsed["Message-ID"]) for m in self.messages]

    async def _held(self, step: str) -> None:
        if self._hold != step:
            return
        self._hold = None  # one session only
        self.reached.set()
        deadline = time.monotonic() + 60
        while not self._resume.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str,
        rcpt_options: list[str],
    ) -> str:
        with self._changed:
            self.rcpt_counts[address.lower()] += 1
        await self._held("rcpt")
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self._changed:
            self.data_started.append(time.monotonic())
        reply = await super().handle_DATA(server, session, envelope)
        if reply.startswith("250"):
            await self._held("accepted")
        delay = self.reply_delay()
        if delay:
            await asyncio.sleep(delay)
        return reply


# ---------------------------------------------------------------- TCP proxy


class TcpProxy:
    """127.0.0.1:``port`` → ``target``; ``down()`` refuses and cuts, ``up()`` serves again.

    While down, the port is closed (connection refused, as with a stopped
    server) and every open connection has been cut mid-stream.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.up()

    def up(self) -> None:
        if self._listener is not None:
            return
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((HOST, self.port))
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), name="proxy-accept", daemon=True).start()

    def down(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
            listener.close()
        with self._lock:
            cut, self._sockets = list(self._sockets), set()
        for sock in cut:
            _close(sock)

    def close(self) -> None:
        self.down()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # down()
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _close(client)
                continue
            with self._lock:
                if self._listener is not listener:  # went down meanwhile
                    _close(client)
                    _close(upstream)
                    return
                self._sockets.update((client, upstream))
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, target), name="proxy-pump",
                                 daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            _close(source)
            _close(target)
            with self._lock:
                self._sockets.discard(source)
                self._sockets.discard(target)


def _close(sock: socket.socket) -> None:
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with suppress(OSError):
        sock.close()


def through_proxy(database_url: str, proxy: TcpProxy) -> str:
    """The same PostgreSQL URL, reaching the server through ``proxy``."""
    parsed = sa.engine.make_url(database_url)
    return parsed.set(host=HOST, port=proxy.port).render_as_string(hide_password=False)


# ---------------------------------------------------------------- Redis


class RedisProcess:
    """A redis-server of the test's own: stop() and start() keep the port.

    ``persistent=True`` writes every command to an append-only file (fsync
    always), as a production Redis with AOF does, so a restart keeps the
    queued messages; without it a restart loses them, like a flush.
    """

    def __init__(self, directory: Path, *, persistent: bool) -> None:
        self.executable = find_redis_server()
        self.directory = directory
        self.persistent = persistent
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://{HOST}:{self.port}/{db}"

    def start(self) -> None:
        if self._process is not None:
            return
        durability = (["--appendonly", "yes", "--appendfsync", "always"] if self.persistent
                      else ["--appendonly", "no"])
        self._process = subprocess.Popen(
            [self.executable, "--port", str(self.port), "--bind", HOST, "--save", "",
             *durability, "--dir", str(self.directory),
             "--logfile", str(self.directory / "redis.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: ping(self.port), timeout=10, what=f"redis-server on port {self.port}")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            stop_process(process)  # SIGTERM first: with AOF, Redis syncs the file and exits

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url(), socket_timeout=5)


# ---------------------------------------------------------------- processes


class Proc:
    """A subprocess whose stdout and stderr lines are collected as they arrive."""

    def __init__(self, args: list[str], *, env: dict[str, str], cwd: Path) -> None:
        self.args = args
        self.popen = subprocess.Popen(
            args, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, errors="replace",
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, name="proc-output", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def count(self, pattern: str) -> int:
        regex = re.compile(pattern)
        return sum(1 for line in list(self.lines) if regex.search(line))

    def wait_for_line(self, pattern: str, *, timeout: float = 30, after: int = 0) -> str:
        """The first output line (from index ``after`` on) that matches ``pattern``."""
        regex = re.compile(pattern)

        def found() -> str | None:
            for line in list(self.lines)[after:]:
                if regex.search(line):
                    return line
            if not self.alive:
                self._reader.join(timeout=2)
                raise AssertionError(f"{self.args[1:3]} exited with {self.popen.returncode} before "
                                     f"printing /{pattern}/; its output:\n{self.output}")
            return None

        return str(wait_until(found, timeout=timeout, what=f"/{pattern}/ from {self.args[1:3]}"))

    def kill(self) -> None:
        """SIGKILL: no clean-up, no finally blocks, as when the machine or the OOM killer strikes."""
        if self.alive:
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)

    def terminate(self, timeout: float = 60) -> int:
        if self.alive:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        finally:
            self._reader.join(timeout=5)


class Processes:
    """Starts `retention` subprocesses for one test and kills whatever is left at its end."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.started: list[Proc] = []

    def retention(self, *args: str, env: dict[str, str]) -> Proc:
        return self.command([str(RETENTION), *args], env=env)

    def worker(self, env: dict[str, str], threads: int = 1) -> Proc:
        """A `retention worker`, returned once it consumes."""
        proc = self.retention("worker", "--threads", str(threads), env=env)
        proc.wait_for_line("retention daemon running")
        return proc

    def command(self, args: list[str], *, env: dict[str, str]) -> Proc:
        proc = Proc(args, env=env, cwd=self.cwd)
        self.started.append(proc)
        return proc

    def kill_all(self) -> None:
        for proc in self.started:
            with suppress(Exception):
                proc.kill()


def env_for(rt: Runtime, **overrides: str) -> dict[str, str]:
    """The environment that makes a `retention` process use the same setup as ``rt``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETENTION_")}
    s = rt.settings
    env.update({
        "RETENTION_DATABASE_URL": s.database_url,
        "RETENTION_BROKER_URL": s.broker_url,
        "RETENTION_MAIL_URL": s.mail_url,
        "RETENTION_RULES": str(s.rules),
        "RETENTION_TEMPLATES": str(s.templates),
        "RETENTION_SECRET_KEY": s.secret_key,
        "RETENTION_PUBLIC_URL": s.public_url,
        "RETENTION_RETRY_MIN_BACKOFF_MS": str(s.retry_min_backoff_ms),
        "RETENTION_RETRY_MAX_BACKOFF_MS": str(s.retry_max_backoff_ms),
        "RETENTION_LOG_LEVEL": "INFO",
        # Dramatiq's consumer waits this long (ms) before reconnecting to a broker that went away.
        "dramatiq_restart_delay": "200",
        "COLUMNS": "200",
    })
    env.update(overrides)
    return env


# ---------------------------------------------------------------- the outbox


@dataclass(frozen=True)
class Row:
    id: int
    customer_id: int
    status: str
    attempts: int
    message_id: str | None
    last_error: str | None


def deliveries(rt: Runtime) -> list[Row]:
    with DbSession(rt.engine) as session:
        return [
            Row(d.id or 0, d.customer_id, d.status, d.attempts, d.message_id, d.last_error)
            for d in session.exec(select(Delivery).order_by(Delivery.id))  # type: ignore[arg-type]
        ]


def statuses(rt: Runtime) -> collections.Counter[str]:
    return collections.Counter(row.status for row in deliveries(rt))


def settle_dead_workers(rt: Runtime) -> list[int]:
    """What the next pass does once the sending timeout has passed: the unknown ones."""
    with DbSession(rt.engine) as session:
        return outbox.abandon_stale_sending(session, now=utcnow(), after=timedelta(0)).unknown


def sweep(rt: Runtime, enqueue: Callable[[list[int]], int]) -> list[int]:
    """The outbox sweeper as if its stale time had passed: every queued, due delivery again."""
    with DbSession(rt.engine) as session:
        ids = outbox.stale_queued(session, now=utcnow(), stale_after=timedelta(0))
    if ids:
        enqueue(ids)
    return ids


def jitter(low: float, high: float, seed: int) -> Callable[[], float]:
    rng = random.Random(seed)
    return lambda: rng.uniform(low, high)


def add_inactive(rt: Runtime, count: int, **fields: object) -> list[int]:
    """Customers the default rules' we-miss-you campaign mails on the next pass."""
    with DbSession(rt.engine) as session:
        ids = [add_customer(session, inactive_days=45, **fields).id or 0 for _ in range(count)]
        session.commit()
    return ids


@contextmanager
def producer(rt: Runtime) -> Iterator[Roles]:
    """A broker connection that enqueues but does not consume (the planner's side)."""
    roles = start_roles(rt, workers=0, consume=False)
    try:
        yield roles
    finally:
        roles.stop()
