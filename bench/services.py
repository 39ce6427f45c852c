"""The servers a benchmark run needs, each private to the run and gone after it.

A redis-server on a free port (never the machine's 6379), Postfix's smtp-sink
on a free port, and a throwaway PostgreSQL database on the local server.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
SMTP_SINK = Path("/usr/sbin/smtp-sink")
DEFAULT_POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


class ServiceError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, process: subprocess.Popen[bytes], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServiceError(f"{what} exited with code {process.returncode} before listening")
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    process.terminate()
    raise ServiceError(f"{what} did not listen on {HOST}:{port} within {timeout}s")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ------------------------------------------------------------------ Redis


@contextmanager
def redis_server() -> Iterator[str]:
    """A redis-server that keeps nothing on disk; yields its redis:// URL."""
    executable = shutil.which("redis-server")
    if executable is None:
        raise ServiceError("redis-server is not installed: apt-get install -y redis-server")
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as directory:
        port = free_port()
        process = subprocess.Popen(
            [executable, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no",
             "--dir", directory, "--logfile", str(Path(directory) / "redis.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_port(port, process, "redis-server")
            yield f"redis://{HOST}:{port}/0"
        finally:
            stop(process)


def redis_version() -> str:
    executable = shutil.which("redis-server")
    if executable is None:
        return "not installed"
    out = subprocess.run([executable, "--version"], capture_output=True, text=True).stdout
    match = re.search(r"v=(\S+)", out)
    return match.group(1) if match else out.strip()


# ------------------------------------------------------------------ smtp-sink


def install_smtp_sink() -> None:
    """Install Postfix (for its smtp-sink) without configuring or starting a mail server."""
    if SMTP_SINK.exists():
        return
    if os.geteuid() != 0:
        raise ServiceError(f"{SMTP_SINK} is missing and installing postfix needs root: "
                           "run `sudo apt-get install -y postfix` (choose 'No configuration')")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["debconf-set-selections"], input=b"postfix postfix/main_mailer_type select "
                   b"No configuration\n", check=True, env=env)
    log.info("installing postfix for smtp-sink (apt-get)")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-qq", "postfix"], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    if not SMTP_SINK.exists():
        raise ServiceError(f"postfix is installed but {SMTP_SINK} is not there")


@contextmanager
def smtp_sink() -> Iterator[tuple[str, int]]:
    """smtp-sink on a free port: accepts and discards every message. Yields (host, port)."""
    install_smtp_sink()
    port = free_port()
    command = [str(SMTP_SINK)]
    if os.geteuid() == 0:
        command += ["-u", "nobody"]  # smtp-sink refuses to keep root privileges
    # Backlog 256: every worker thread and the reference loop connect at once.
    command += [f"{HOST}:{port}", "256"]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    try:
        wait_for_port(port, process, "smtp-sink")
        yield HOST, port
    finally:
        stop(process)


def install_py_spy() -> None:
    """py-spy (the `bench` extra) into this interpreter's environment, when missing."""
    import sys

    if (Path(sys.executable).parent / "py-spy").exists():
        return
    log.info("installing py-spy (pip install 'retention-worker[bench]' does the same)")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "py-spy>=0.4"], check=True)


# ------------------------------------------------------------------ PostgreSQL


@dataclass(frozen=True)
class Postgres:
    admin_url: str

    def available(self) -> str | None:
        """None when the server answers, else why not."""
        engine = sa.create_engine(self.admin_url, poolclass=NullPool)
        try:
            with engine.connect():
                return None
        except sa.exc.OperationalError as exc:
            return f"PostgreSQL at {make_url(self.admin_url).render_as_string()} does not answer: {exc.orig}"
        finally:
            engine.dispose()

    def version(self) -> str:
        engine = sa.create_engine(self.admin_url, poolclass=NullPool)
        try:
            with engine.connect() as connection:
                return str(connection.scalar(sa.text("SHOW server_version"))).split()[0]
        except sa.exc.OperationalError:
            return "not available"
        finally:
            engine.dispose()

    @contextmanager
    def database(self) -> Iterator[str]:
        """A new database, dropped afterwards (with anything still connected to it)."""
        name = f"bench_{uuid.uuid4().hex[:10]}"
        admin = sa.create_engine(self.admin_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(self.admin_url).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as connection:
                connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


def postgres_from_env() -> Postgres:
    return Postgres(os.environ.get("BENCH_POSTGRES_URL", DEFAULT_POSTGRES_ADMIN_URL))
