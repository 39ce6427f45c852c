"""SMTP delivery: pooled connections, replies sorted into retry / bounce / misconfiguration
as every transport sorts them (see ``worker.mail``)."""

from __future__ import annotations

import contextlib
import logging
import re
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from campaigns.errors import (
    AmbiguousDeliveryError,
    ConfigurationError,
    DeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from worker.mail.transport import BeforeData, Message, outgoing

log = logging.getLogger(__name__)

_ENHANCED_STATUS = re.compile(r"^\s*([245]\.\d{1,3}\.\d{1,3})\b")
_LEADING_PERIOD = re.compile(rb"(?m)^\.")
Reply = tuple[int, bytes]

# RFC 5321 4.5.3.2.6: a client should wait 10 minutes for the reply that ends DATA, since
# servers often scan or store the message before answering.
DATA_REPLY_TIMEOUT = 600.0

# close() says QUIT on idle connections and waits at most this long for all their replies
# together: a stalled server must not hold a shutdown.
QUIT_BUDGET = 0.5


@dataclass(frozen=True)
class SMTPSettings:
    host: str
    port: int
    security: Literal["plain", "starttls", "tls"] = "plain"
    username: str | None = None
    password: str | None = None
    timeout: float = 30.0  # every command
    data_timeout: float = DATA_REPLY_TIMEOUT  # the reply once the message content has gone out
    verify: bool = True
    url: str = ""  # masked, for messages

    def __repr__(self) -> str:  # never print the password
        return f"SMTPSettings({self.url or self.host!r})"





class _StaleConnection(Exception):
    """Internal: the connection died before the message was handed over."""


class _HandedOver(Exception):
    """Internal: the connection failed after the whole message content went out."""


class SMTPTransport:
    """SMTP with one connection per worker thread, reused across sends.

    A pooled connection the server has dropped in the meantime is replaced
    and the send retried once -- only when the drop happened before the
    message content went out, so a retry can never send a message twice.
    After any failed send the connection is reset (RSET) or dropped, so the
    next send starts clean.  ``close()`` ends every thread's connection at once,
    whatever the server does: idle ones with QUIT, ones another thread is using
    by cutting the socket, never by writing on it; the transport reconnects on
    the next send.
    """

    def __init__(self, settings: SMTPSettings) -> None:
        self.settings = settings
        self._local = threading.local()
        self._registry: dict[int, smtplib.SMTP] = {}  # id(conn) -> conn, for close()
        self._busy: set[int] = set()  # ids of connections a thread is sending on
        self._registry_lock = threading.Lock()
        self._ssl: ssl.SSLContext | None = None

    def __repr__(self) -> str:
        return f"SMTPTransport({self.settings.url!r})"

    # public

    def check(self) -> None:
        """Connect and log in once (a role's start): credentials the server refuses, or cannot
        take, are a ConfigurationError now rather than a failed delivery later."""
        if self._current() is None:
            self._connect()
        self._discard()

    def send(self, message: Message, *, before_data: BeforeData | None = None) -> str:
        out = outgoing(message)
        sender, recipients, content = out.sender, list(out.recipients), out.data
        reused = self._current() is not None
        try:
            return self._send_on_connection(sender, recipients, content, before_data)
        except _StaleConnection as exc:
            self._discard()
            if not reused:
                raise TransientDeliveryError(f"{self._where()}: {exc}") from exc.__cause__
            log.info("SMTP connection to %s was closed by the server; reconnecting",
                     self.settings.url)
        try:
            return self._send_on_connection(sender, recipients, content, before_data)
        except _StaleConnection as exc:
            self._discard()
            raise TransientDeliveryError(f"{self._where()}: {exc}") from exc.__cause__

    def close(self) -> None:
        with self._registry_lock:
            connections = list(self._registry.items())
            self._registry.clear()
            busy = set(self._busy)
        idle = []
        for key, conn in connections:
            if key in busy:
                # Mid-transaction in another thread: a QUIT would be interleaved with its
                # commands and wait behind its reply.  Cutting the socket wakes that thread
                # at once; it records the outcome (unknown once the content has gone out)
                # and closes the connection itself.
                _abort(conn)
            else:
                idle.append(conn)
        _quit_all(idle, budget=min(self.settings.timeout, QUIT_BUDGET))
        self._local.conn = None

    # internals

    def _where(self) -> str:
        return f"SMTP {self.settings.host}:{self.settings.port}"

    def _current(self) -> smtplib.SMTP | None:
        """This thread's connection, marked busy so close() will not write on it; or None."""
        conn: smtplib.SMTP | None = getattr(self._local, "conn", None)
        if conn is None:
            return None
        with self._registry_lock:
            retired = id(conn) not in self._registry  # by close()
            if not retired and conn.sock is not None:
                self._busy.add(id(conn))
                return conn
        if retired:
            self._local.conn = None
            _close_quietly(conn)
        else:  # closed by smtplib
            self._discard()
        return None

    def _idle(self, conn: smtplib.SMTP) -> None:
        with self._registry_lock:
            self._busy.discard(id(conn))

    def _discard(self) -> None:
        conn: smtplib.SMTP | None = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            with self._registry_lock:
                self._registry.pop(id(conn), None)
            _close_quietly(conn)

    def _send_on_connection(
        self, sender: str, recipients: list[str], content: bytes, before_data: BeforeData | None
    ) -> str:
        conn = self._current() or self._connect()
        try:
            return self._try_transaction(conn, sender, recipients, content, before_data)
        finally:
            self._idle(conn)

    def _try_transaction(
        self, conn: smtplib.SMTP, sender: str, recipients: list[str], content: bytes,
        before_data: BeforeData | None,
    ) -> str:
        """One transaction on a busy connection, its failures sorted into delivery errors."""
        try:
            return self._transaction(conn, sender, recipients, content, before_data)
        except (DeliveryError, ConfigurationError):
            self._reset(conn)
            raise
        except _StaleConnection:
            raise
        except _HandedOver as exc:
            self._discard()
            raise AmbiguousDeliveryError(
                f"{self._where()}: the message content was sent, then {exc}; the server may "
                "have accepted it, so it is not sent again"
            ) from exc.__cause__
        except smtplib.SMTPServerDisconnected as exc:
            self._discard()
            detail = _describe_disconnect(exc, self.settings)
            raise TransientDeliveryError(f"{self._where()}: {detail}") from exc
        except smtplib.SMTPResponseException as exc:
            self._reset(conn)
            raise _from_reply(exc.smtp_code, exc.smtp_error, self._where()) from exc
        except OSError as exc:
            self._discard()
            detail = _describe_os_error(exc, self.settings)
            raise TransientDeliveryError(f"{self._where()}: {detail}") from exc
        except Exception:
            # before_data raised (or a bug): the server is mid-transaction; start the next clean.
            self._reset(conn)
            raise

    def _transaction(
        self, conn: smtplib.SMTP, sender: str, recipients: list[str], content: bytes,
        before_data: BeforeData | None = None,
    ) -> str:
        reply: bytes | str
        options: list[str] = []
        if not (sender + "".join(recipients)).isascii():
            if not conn.has_extn("smtputf8"):
                raise PermanentDeliveryError(
                    f"{self._where()} does not support SMTPUTF8, needed for the "
                    f"non-ASCII address in {sender!r} -> {recipients!r}"
                )
            options += ["SMTPUTF8", "BODY=8BITMIME"]
        if conn.has_extn("size"):
            options.append(f"SIZE={len(content)}")

        if conn.has_extn("pipelining"):
            mail, rcpts, data = self._envelope_pipelined(conn, sender, recipients, options)
        else:
            mail, rcpts, data = self._envelope_in_turn(conn, sender, recipients, options)
        try:
            self._check_envelope(sender, recipients, mail, rcpts, data)
        except BaseException:
            if data is not None and data[0] == 354:
                # The server waits for content: only closing ends that without a message.
                self._discard()
            raise
        try:
            if before_data is not None:
                before_data()  # the last moment at which nothing of the message has left
        except BaseException:
            self._discard()
            raise
        code, reply = self._content(conn, content)
        if code != 250:
            raise self._reply_error(code, reply, "refused the message")
        return _short(code, reply)

    def _envelope_in_turn(
        self, conn: smtplib.SMTP, sender: str, recipients: list[str], options: list[str]
    ) -> tuple[Reply, list[Reply], Reply | None]:
        """MAIL, each RCPT and DATA, each waiting for its reply; DATA only if a recipient passed."""
        mail = self._first_reply(conn, lambda: conn.mail(sender, options))
        if mail[0] != 250:
            return mail, [], None
        rcpts: list[Reply] = []
        for rcpt in recipients:
            rcpts.append(conn.rcpt(rcpt))
            if rcpts[-1][0] == 421:
                return mail, rcpts, None
        if not any(code in (250, 251) for code, _ in rcpts):
            return mail, rcpts, None
        conn.putcmd("data")
        return mail, rcpts, conn.getreply()

    def _envelope_pipelined(
        self, conn: smtplib.SMTP, sender: str, recipients: list[str], options: list[str]
    ) -> tuple[Reply, list[Reply], Reply | None]:
        """RFC 2920: MAIL, every RCPT and DATA in one write, then their replies in order."""
        suffix = "".join(f" {option}" for option in options)
        commands = [f"MAIL FROM:<{sender}>{suffix}", *(f"RCPT TO:<{r}>" for r in recipients), "DATA"]
        group = "".join(f"{command}\r\n" for command in commands).encode("utf-8")

        def first() -> Reply:
            conn.send(group)
            return conn.getreply()

        mail = self._first_reply(conn, first)
        rcpts = [conn.getreply() for _ in recipients]
        return mail, rcpts, conn.getreply()

    def _first_reply(self, conn: smtplib.SMTP, ask: Callable[[], Reply]) -> Reply:
        # MAIL is the first command on a pooled connection: a drop here means
        # the connection had gone stale and nothing was sent yet.
        try:
            return ask()
        except smtplib.SMTPServerDisconnected as exc:
            if isinstance(exc.__context__, TimeoutError):
                raise  # a hung server, not a stale connection: retrying would hang again
            raise _StaleConnection(_describe_disconnect(exc, self.settings)) from exc

    def _check_envelope(
        self, sender: str, recipients: list[str], mail: Reply, rcpts: list[Reply], data: Reply | None
    ) -> None:
        """Raise the delivery error the envelope's replies mean; None when the content may go."""
        code, reply = mail
        if code != 250:
            raise self._reply_error(code, reply, f"refused sender <{sender}>")
        refused: list[tuple[str, int, bytes]] = []
        for rcpt, (code, reply) in zip(recipients, rcpts, strict=False):
            if code == 421:
                raise self._reply_error(code, reply, f"refused recipient <{rcpt}>")
            if code not in (250, 251):
                refused.append((rcpt, code, reply))
        if len(refused) == len(recipients):
            # Any temporary refusal makes the whole send worth retrying.
            rcpt, code, reply = min(refused, key=lambda r: r[1] // 100)
            raise self._reply_error(code, reply, f"refused recipient <{rcpt}>")
        if refused:
            log.warning("SMTP server refused some recipients, sending to the rest: %s",
                        ", ".join(f"<{r}> {c} {_text(t)}" for r, c, t in refused))
        if data is not None and data[0] != 354:
            raise self._reply_error(data[0], data[1], "refused the message")

    def _content(self, conn: smtplib.SMTP, content: bytes) -> Reply:
        """The message after DATA's 354, with its own wait for the final reply: where mail leaves.

        Up to the end of the upload the server cannot hold the message (it keeps only a
        message that ends with "<CRLF>.<CRLF>"), so a failure there is an ordinary
        temporary one.  After it, a timeout or a dropped connection says nothing about
        whether the server took the message: ``_HandedOver``.
        """
        payload = _LEADING_PERIOD.sub(b"..", content)
        if not payload.endswith(b"\r\n"):
            payload += b"\r\n"
        conn.send(payload + b".\r\n")
        sock = conn.sock
        if sock is not None:
            sock.settimeout(self.settings.data_timeout)
        try:
            return conn.getreply()
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            raise _HandedOver(_describe_after_data(exc, self.settings)) from exc
        finally:
            if conn.sock is not None:
                conn.sock.settimeout(self.settings.timeout)

    def _reply_error(self, code: int, reply: bytes | str, what: str) -> DeliveryError:
        if code == 421:  # the server closes the channel after 421
            self._discard()
        return _from_reply(code, reply, f"{self._where()} {what}")

    def _reset(self, conn: smtplib.SMTP) -> None:
        """Make the next send start a clean transaction, or on a new connection."""
        if getattr(self._local, "conn", None) is not conn:
            return
        if conn.sock is None:
            self._discard()
            return
        try:
            code, _ = conn.rset()
        except (smtplib.SMTPException, OSError):
            code = 0
        if code != 250:
            self._discard()

    def _connect(self) -> smtplib.SMTP:
        s = self.settings
        conn: smtplib.SMTP
        try:
            if s.security == "tls":
                conn = smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout,
                                        context=self._ssl_context())
            else:
                conn = smtplib.SMTP(s.host, s.port, timeout=s.timeout)
        except smtplib.SMTPConnectError as exc:
            raise _from_reply(exc.smtp_code, exc.smtp_error,
                              f"{self._where()} refused the connection") from exc
        except smtplib.SMTPServerDisconnected as exc:
            detail = _describe_disconnect(exc, s)
            raise TransientDeliveryError(f"{self._where()}: {detail}") from exc
        except ssl.SSLCertVerificationError as exc:
            raise _certificate_error(s, exc) from exc
        except OSError as exc:
            raise TransientDeliveryError(f"{self._where()}: {_describe_os_error(exc, s)}") from exc
        try:
            self._handshake(conn)
        except BaseException:
            _close_quietly(conn)
            raise
        self._local.conn = conn
        with self._registry_lock:
            self._registry[id(conn)] = conn
            self._busy.add(id(conn))  # connected to send: in use from the start
        log.debug("Connected to %s", s.url)
        return conn

    def _handshake(self, conn: smtplib.SMTP) -> None:
        s = self.settings
        try:
            conn.ehlo_or_helo_if_needed()
            if s.security == "starttls":
                if not conn.has_extn("starttls"):
                    raise ConfigurationError(
                        f"{self._where()} does not offer STARTTLS; drop ?starttls=true, "
                        f"or use smtps:// if it speaks implicit TLS ({s.url})"
                    )
                conn.starttls(context=self._ssl_context())
                conn.ehlo()
            if s.username:
                conn.login(s.username, s.password or "")
        except smtplib.SMTPAuthenticationError as exc:
            if exc.smtp_code // 100 == 4:
                raise _from_reply(exc.smtp_code, exc.smtp_error, self._where()) from exc
            raise ConfigurationError(
                f"{self._where()} rejected the credentials in {s.url}: "
                f"{exc.smtp_code} {_text(exc.smtp_error)}. Fix the user and password "
                "(percent-encoded) in RETENTION_MAIL_URL"
            ) from exc
        except smtplib.SMTPNotSupportedError as exc:
            raise ConfigurationError(
                f"{self._where()} does not support authentication ({exc}); remove the "
                f"user and password from {s.url} or use STARTTLS/smtps://"
            ) from exc
        except smtplib.SMTPServerDisconnected as exc:
            detail = _describe_disconnect(exc, s)
            raise TransientDeliveryError(f"{self._where()}: {detail}") from exc
        except smtplib.SMTPResponseException as exc:
            raise _from_reply(exc.smtp_code, exc.smtp_error, self._where()) from exc
        except ssl.SSLCertVerificationError as exc:
            raise _certificate_error(s, exc) from exc
        except OSError as exc:
            raise TransientDeliveryError(f"{self._where()}: {_describe_os_error(exc, s)}") from exc

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            context = ssl.create_default_context()
            if not self.settings.verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            self._ssl = context
        return self._ssl


# -- helpers ------------------------------------------------------------------


def _text(reply: bytes | str) -> str:
    if isinstance(reply, bytes):
        reply = reply.decode("utf-8", "replace")
    return " ".join(reply.split())


def _short(code: int, reply: bytes | str) -> str:
    return f"{code} {_text(reply)}"[:200]


def parse_enhanced_status(reply: bytes | str) -> str | None:
    """The RFC 3463 code ("5.1.1") a reply text starts with, if any."""
    match = _ENHANCED_STATUS.match(_text(reply))
    return match.group(1) if match else None


def _from_reply(code: int, reply: bytes | str, context: str) -> DeliveryError:
    """A delivery error for an SMTP reply: 5xx is permanent, anything else transient."""
    enhanced = parse_enhanced_status(reply)
    message = f"{context}: {code} {_text(reply)}"
    if 500 <= code < 600:
        return PermanentDeliveryError(message, code=code, enhanced=enhanced)
    return TransientDeliveryError(message, code=code if code > 0 else None, enhanced=enhanced)


def _describe_os_error(exc: BaseException, settings: SMTPSettings) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {settings.timeout:g}s (timeout); is the server overloaded?"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused; is the SMTP server running on that port?"
    return f"{type(exc).__name__}: {exc}"


def _describe_disconnect(exc: smtplib.SMTPServerDisconnected, settings: SMTPSettings) -> str:
    # smtplib turns socket errors (timeouts included) into SMTPServerDisconnected.
    cause = exc.__context__
    if isinstance(cause, OSError):
        return _describe_os_error(cause, settings)
    return f"connection lost ({exc})"


def _describe_after_data(exc: BaseException, settings: SMTPSettings) -> str:
    # smtplib wraps socket errors (a timeout too) in SMTPServerDisconnected, itself an OSError.
    cause = exc.__context__ if isinstance(exc, smtplib.SMTPServerDisconnected) else exc
    if isinstance(cause, TimeoutError):
        return (f"no reply within {settings.data_timeout:g}s (data_timeout; RFC 5321 "
                "allows a server 600s for this reply)")
    if isinstance(cause, OSError):
        return f"the connection failed ({type(cause).__name__}: {cause})"
    return f"the connection was lost before the reply ({exc})"


def _certificate_error(settings: SMTPSettings, exc: ssl.SSLCertVerificationError) -> Exception:
    return ConfigurationError(
        f"SMTP {settings.host}:{settings.port}: the TLS certificate is not trusted "
        f"({exc.verify_message or exc}). Install the CA certificate, or for a test server "
        f"add ?verify=false to {settings.url}"
    )


def _abort(conn: smtplib.SMTP) -> None:
    """Cut a connection another thread is blocked on, without writing a byte on it.

    shutdown() wakes that thread's read at once (end of stream); the file
    descriptor stays open for it to close, so it is never reused under it.
    ``socket.socket.shutdown`` is called directly because ``SSLSocket.shutdown``
    would also drop the TLS state the other thread is still using.
    """
    sock = conn.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _quit_all(connections: list[smtplib.SMTP], *, budget: float) -> None:
    """QUIT on each idle connection, waiting for all the replies together at most ``budget``."""
    deadline = time.monotonic() + budget
    asked = []
    for conn in connections:
        try:
            if conn.sock is not None:
                conn.sock.settimeout(budget)
                conn.putcmd("quit")
                asked.append(conn)
                continue
        except (smtplib.SMTPException, OSError):
            pass
        conn.close()
    for conn in asked:
        try:
            if conn.sock is not None:
                conn.sock.settimeout(max(0.001, deadline - time.monotonic()))
                conn.getreply()
        except (smtplib.SMTPException, OSError):
            pass
        finally:
            conn.close()


def _close_quietly(conn: smtplib.SMTP) -> None:
    """Drop a connection without a word (after a failure there is nothing polite to say)."""
    with contextlib.suppress(OSError):
        conn.close()
