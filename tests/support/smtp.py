"""A real SMTP server in the test process (aiosmtpd) whose replies tests can script.

Listed in ``tests/conftest.py`` as a pytest plugin; gives the fixtures
``smtp_sink`` (a started :class:`SMTPSink`), ``silent_smtp_server`` (a port that
accepts TCP connections and never answers) and ``tls_certificate``.
"""

from __future__ import annotations

import asyncio
import collections
import email.parser
import email.policy
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Literal, cast

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.support.services import skip_or_fail

TLSMode = Literal["implicit", "starttls"]


@dataclass(frozen=True)
class ReceivedMessage:
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes

    @property
    def parsed(self) -> EmailMessage:
        parser = email.parser.BytesParser(policy=email.policy.default)
        return cast(EmailMessage, parser.parsebytes(self.raw))


@dataclass(frozen=True)
class Certificate:
    certfile: Path
    keyfile: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.certfile, self.keyfile)
        return context


class _BoundController(Controller):
    """A Controller serving on a socket bound before start, so the port is never raced."""

    def __init__(self, handler: Any, sock: socket.socket, **kwargs: Any) -> None:
        self._sock = sock
        host, port = sock.getsockname()[:2]
        super().__init__(handler, hostname=host, port=port, **kwargs)

    def _create_server(self) -> Any:
        return self.loop.create_server(self._factory_invoker, sock=self._sock,
                                       ssl=self.ssl_context)


class SMTPSink:
    """Accepts mail on 127.0.0.1 and records it; replies can be scripted per test.

    ``tls="implicit"`` serves SMTPS, ``tls="starttls"`` offers STARTTLS; both
    need ``certificate`` (see the ``tls_certificate`` fixture).  ``pipelining``
    offers PIPELINING (RFC 2920) in the EHLO reply, as Postfix does.
    """

    def __init__(self, *, tls: TLSMode | None = None,
                 certificate: Certificate | None = None, pipelining: bool = False) -> None:
        if tls and certificate is None:
            raise ValueError(f"tls={tls!r} needs a certificate (use the tls_certificate fixture)")
        self.tls = tls
        self.pipelining = pipelining
        self.messages: list[ReceivedMessage] = []
        self.attempts = 0  # DATA transactions, accepted or refused
        self.connections = 0  # SMTP sessions that greeted with EHLO/HELO
        self.quits = 0  # sessions the client ended politely with QUIT
        self._data_replies: collections.deque[str] = collections.deque()
        self._rejected: dict[str, str] = {}
        self._servers: list[SMTP] = []
        self._changed = threading.Condition()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.host, self.port = sock.getsockname()[:2]
        kwargs: dict[str, Any] = {"server_hostname": "sink.test", "ready_timeout": 10.0}
        if tls == "implicit" and certificate:
            kwargs["ssl_context"] = certificate.server_context()
        elif tls == "starttls" and certificate:
            kwargs["tls_context"] = certificate.server_context()
        self._controller = _BoundController(self, sock, **kwargs)
        self._running = False

    # lifecycle

    def start(self) -> SMTPSink:
        self._controller.start()
        self._running = True
        return self

    def stop(self) -> None:
        if self._running:
            self._running = False
            self._controller.stop()

    def __enter__(self) -> SMTPSink:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        scheme = "smtps" if self.tls == "implicit" else "smtp"
        query = "?starttls=true" if self.tls == "starttls" else ""
        return f"{scheme}://{self.host}:{self.port}{query}"

    # scripting

    def fail_next(self, n: int, reply: str = "451 4.3.0 Try again later") -> None:
        """The next ``n`` DATA transactions are answered with ``reply``."""
        with self._changed:
            self._data_replies.extend([reply] * n)

    def reject_recipient(self, address: str, reply: str = "550 5.1.1 User unknown") -> None:
        """Every RCPT TO for ``address`` is answered with ``reply``."""
        with self._changed:
            self._rejected[address.lower()] = reply

    def disconnect_all(self) -> None:
        """Close every open client connection, as a server dropping idle clients does."""

        async def close() -> None:
            for server in self._servers:
                if server.transport is not None:
                    server.transport.close()

        asyncio.run_coroutine_threadsafe(close(), self._controller.loop).result(timeout=5)

    def wait_for(self, count: int, timeout: float = 10) -> list[ReceivedMessage]:
        """At least ``count`` accepted messages, waiting up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.messages) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"expected {count} message(s) within {timeout}s, got {len(self.messages)}"
                    )
                self._changed.wait(left)
            return list(self.messages)

    # aiosmtpd handler hooks (run on the server's event loop thread)

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
        responses: list[str],
    ) -> list[str]:
        self._count_connection(server)
        session.host_name = hostname
        if self.pipelining:
            responses.insert(1, "250-PIPELINING")
        return responses

    async def handle_HELO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str
    ) -> str:
        self._count_connection(server)
        session.host_name = hostname
        return f"250 {server.hostname}"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str,
        rcpt_options: list[str],
    ) -> str:
        with self._changed:
            reply = self._rejected.get(address.lower())
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self._changed:
            self.attempts += 1
            if self._data_replies:
                return self._data_replies.popleft()
            raw = envelope.original_content or b""
            self.messages.append(
                ReceivedMessage(str(envelope.mail_from), list(envelope.rcpt_tos), raw)
            )
            number = len(self.messages)
            self._changed.notify_all()
        return f"250 2.0.0 Ok: queued as SINK{number}"

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self._changed:
            self.quits += 1
        return "221 Bye"

    def _count_connection(self, server: SMTP) -> None:
        # A client says EHLO again after STARTTLS; count each connection once.
        if getattr(server, "_sink_counted", False):
            return
        server._sink_counted = True  # type: ignore[attr-defined]
        self._servers.append(server)
        with self._changed:
            self.connections += 1


class SilentServer:
    """Completes TCP handshakes (the kernel's listen backlog) and never says a word."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.host, self.port = self._sock.getsockname()[:2]

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    def close(self) -> None:
        self._sock.close()


@pytest.fixture
def smtp_sink() -> Iterator[SMTPSink]:
    with SMTPSink() as sink:
        yield sink


@pytest.fixture
def silent_smtp_server() -> Iterator[SilentServer]:
    server = SilentServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def tls_certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """A self-signed certificate for 127.0.0.1 (made with the openssl binary)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        skip_or_fail("the openssl binary is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert = Certificate(folder / "cert.pem", folder / "key.pem")
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(cert.keyfile), "-out", str(cert.certfile)],
        check=True, capture_output=True,
    )
    return cert
