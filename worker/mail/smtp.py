"""SMTP delivery: pooled connections, replies sorted into retry / bounce / misconfiguration
as every transport sorts them (see ``worker.mail``)."""

from __future__ import annotations

import logging
import smtplib
import ssl
import threading
from collections.abc import Callable

from campaigns.errors import (
    AmbiguousDeliveryError,
    ConfigurationError,
    DeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from worker.mail.smtp_connection import (
    QUIT_BUDGET,
    SMTPSettings,
    abort,
    close_quietly,
    open_connection,
    quit_all,
    ssl_context,
    where,
)
from worker.mail.smtp_replies import (
    describe_after_data,
    describe_disconnect,
    describe_os_error,
    from_reply,
    short,
    text,
)
from worker.mail.transport import BeforeData, Message, outgoing

log = logging.getLogger(__name__)

Reply = tuple[int, bytes]
# On a connection: the message whose MAIL, RCPT and DATA went out behind the previous
# message's content (RFC 2920 lets a group start with content): the server has answered, or
# will, and then waits for that message's content.
_AHEAD = "retention_ahead"


def dot_stuffed(content: bytes) -> bytes:
    """RFC 5321 4.5.2: a line that starts with a period gets one more.  After every LF, bare
    ones too: a server may take those as line ends.  (A replace: a multiline regex was a
    third of the time spent handing the content over.)"""
    stuffed = content.replace(b"\n.", b"\n..")
    return b"." + stuffed if stuffed.startswith(b".") else stuffed


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

    def send(self, message: Message, *, before_data: BeforeData | None = None,
             then: Message | None = None) -> str:
        """``then``: the message this thread sends next, if known.  Where the server offers
        PIPELINING its envelope goes out behind this one's content, in the same write: one
        round trip per message instead of two.  Sending another message next costs a new
        connection (the server would be waiting for ``then``'s content)."""
        out = outgoing(message)
        sender, recipients, content = out.sender, list(out.recipients), out.data
        reused = self._current() is not None
        try:
            return self._send_on_connection(message, sender, recipients, content, before_data, then)
        except _StaleConnection as exc:
            self._discard()
            if not reused:
                raise TransientDeliveryError(f"{self._where()}: {exc}") from exc.__cause__
            log.info("SMTP connection to %s cannot be used again (%s); reconnecting",
                     self.settings.url, exc)
        try:
            return self._send_on_connection(message, sender, recipients, content, before_data, then)
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
            if key in busy or getattr(conn, _AHEAD, None) is not None:
                # Mid-transaction in another thread: a QUIT would be interleaved with its
                # commands and wait behind its reply.  Cutting the socket wakes that thread
                # at once; it records the outcome (unknown once the content has gone out)
                # and closes the connection itself.  One waiting for content after an envelope
                # sent ahead would take a QUIT as content: cut too, so no message is made.
                abort(conn)
            else:
                idle.append(conn)
        quit_all(idle, budget=min(self.settings.timeout, QUIT_BUDGET))
        self._local.conn = None

    # internals

    def _where(self) -> str:
        return where(self.settings)

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
            close_quietly(conn)
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
            close_quietly(conn)

    def _send_on_connection(
        self, message: Message, sender: str, recipients: list[str], content: bytes,
        before_data: BeforeData | None, then: Message | None,
    ) -> str:
        conn = self._current() or self._connect()
        try:
            return self._try_transaction(conn, message, sender, recipients, content, before_data, then)
        finally:
            self._idle(conn)

    def _try_transaction(
        self, conn: smtplib.SMTP, message: Message, sender: str, recipients: list[str],
        content: bytes, before_data: BeforeData | None, then: Message | None,
    ) -> str:
        """One transaction on a busy connection, its failures sorted into delivery errors."""
        try:
            return self._transaction(conn, message, sender, recipients, content, before_data, then)
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
            detail = describe_disconnect(exc, self.settings)
            raise TransientDeliveryError(f"{self._where()}: {detail}") from exc
        except smtplib.SMTPResponseException as exc:
            self._reset(conn)
            raise from_reply(exc.smtp_code, exc.smtp_error, self._where()) from exc
        except OSError as exc:
            self._discard()
            detail = describe_os_error(exc, self.settings)
            raise TransientDeliveryError(f"{self._where()}: {detail}") from exc
        except Exception:
            # before_data raised (or a bug): the server is mid-transaction; start the next clean.
            self._reset(conn)
            raise

    def _transaction(
        self, conn: smtplib.SMTP, message: Message, sender: str, recipients: list[str],
        content: bytes, before_data: BeforeData | None = None, then: Message | None = None,
    ) -> str:
        reply: bytes | str
        ahead = getattr(conn, _AHEAD, None)
        if ahead is not None:
            setattr(conn, _AHEAD, None)
            if ahead is not message:
                raise _StaleConnection("the envelope sent ahead was for a message not sent after all")
            mail = self._first_reply(conn, conn.getreply)
            rcpts = [conn.getreply() for _ in recipients]
            data: Reply | None = conn.getreply()
        else:
            options = self._options(conn, sender, recipients, len(content))
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
        code, reply = self._content(conn, content, then)
        if code != 250:
            raise self._reply_error(code, reply, "refused the message")
        return short(code, reply)

    def _options(self, conn: smtplib.SMTP, sender: str, recipients: list[str], size: int) -> list[str]:
        options: list[str] = []
        if not (sender + "".join(recipients)).isascii():
            if not conn.has_extn("smtputf8"):
                raise PermanentDeliveryError(
                    f"{self._where()} does not support SMTPUTF8, needed for the "
                    f"non-ASCII address in {sender!r} -> {recipients!r}"
                )
            options += ["SMTPUTF8", "BODY=8BITMIME"]
        if conn.has_extn("size"):
            options.append(f"SIZE={size}")
        return options

    def _ahead(self, conn: smtplib.SMTP, then: Message | None) -> bytes:
        """The envelope of ``then`` to send behind this content, or nothing."""
        if then is None or not conn.has_extn("pipelining"):
            return b""
        out = outgoing(then)
        try:
            options = self._options(conn, out.sender, list(out.recipients), len(out.data))
        except PermanentDeliveryError:
            return b""  # refused when it is sent, on its own
        return _envelope_group(out.sender, list(out.recipients), options)

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
        group = _envelope_group(sender, recipients, options)

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
            raise _StaleConnection(describe_disconnect(exc, self.settings)) from exc

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
                        ", ".join(f"<{r}> {c} {text(t)}" for r, c, t in refused))
        if data is not None and data[0] != 354:
            raise self._reply_error(data[0], data[1], "refused the message")

    def _content(self, conn: smtplib.SMTP, content: bytes, then: Message | None = None) -> Reply:
        """The message after DATA's 354, with its own wait for the final reply: where mail leaves.
        ``then``'s envelope, if any, goes in the same write (see ``send``).

        Up to the end of the upload the server cannot hold the message (it keeps only a
        message that ends with "<CRLF>.<CRLF>"), so a failure there is an ordinary
        temporary one.  After it, a timeout or a dropped connection says nothing about
        whether the server took the message: ``_HandedOver``.
        """
        payload = dot_stuffed(content)
        if not payload.endswith(b"\r\n"):
            payload += b"\r\n"
        ahead = self._ahead(conn, then)
        conn.send(payload + b".\r\n" + ahead)
        sock = conn.sock
        if sock is not None:
            sock.settimeout(self.settings.data_timeout)
        try:
            reply = conn.getreply()
            if ahead:
                setattr(conn, _AHEAD, then)  # its replies follow this one, whatever this says
            return reply
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            raise _HandedOver(describe_after_data(exc, self.settings)) from exc
        finally:
            if conn.sock is not None:
                conn.sock.settimeout(self.settings.timeout)

    def _reply_error(self, code: int, reply: bytes | str, what: str) -> DeliveryError:
        if code == 421:  # the server closes the channel after 421
            self._discard()
        return from_reply(code, reply, f"{self._where()} {what}")

    def _reset(self, conn: smtplib.SMTP) -> None:
        """Make the next send start a clean transaction, or on a new connection."""
        if getattr(self._local, "conn", None) is not conn:
            return
        if conn.sock is None or getattr(conn, _AHEAD, None) is not None:
            self._discard()  # closed, or waiting for the content of an envelope sent ahead
            return
        try:
            code, _ = conn.rset()
        except (smtplib.SMTPException, OSError):
            code = 0
        if code != 250:
            self._discard()

    def _connect(self) -> smtplib.SMTP:
        if self._ssl is None and (self.settings.security != "plain"):
            self._ssl = ssl_context(self.settings)
        conn = open_connection(self.settings, self._ssl)
        self._local.conn = conn
        with self._registry_lock:
            self._registry[id(conn)] = conn
            self._busy.add(id(conn))  # connected to send: in use from the start
        log.debug("Connected to %s", self.settings.url)
        return conn


def _envelope_group(sender: str, recipients: list[str], options: list[str]) -> bytes:
    """MAIL, every RCPT and DATA, as one pipelined group (RFC 2920)."""
    suffix = "".join(f" {option}" for option in options)
    commands = [f"MAIL FROM:<{sender}>{suffix}", *(f"RCPT TO:<{r}>" for r in recipients), "DATA"]
    return "".join(f"{command}\r\n" for command in commands).encode("utf-8")
