"""SMTP connections: settings, opening one (TLS, EHLO, login), and ending them without waiting."""

from __future__ import annotations

import contextlib
import smtplib
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Literal

from campaigns.errors import ConfigurationError, TransientDeliveryError
from worker.mail.smtp_replies import (
    certificate_error,
    describe_disconnect,
    describe_os_error,
    from_reply,
    text,
)

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


def open_connection(s: SMTPSettings, context: ssl.SSLContext | None) -> smtplib.SMTP:
    """A connected, greeted (EHLO), secured and logged-in connection; delivery errors otherwise."""
    conn: smtplib.SMTP
    try:
        if s.security == "tls":
            conn = smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout, context=context)
        else:
            conn = smtplib.SMTP(s.host, s.port, timeout=s.timeout)
    except smtplib.SMTPConnectError as exc:
        raise from_reply(exc.smtp_code, exc.smtp_error, f"{where(s)} refused the connection") from exc
    except smtplib.SMTPServerDisconnected as exc:
        detail = describe_disconnect(exc, s)
        raise TransientDeliveryError(f"{where(s)}: {detail}") from exc
    except ssl.SSLCertVerificationError as exc:
        raise certificate_error(s, exc) from exc
    except OSError as exc:
        raise TransientDeliveryError(f"{where(s)}: {describe_os_error(exc, s)}") from exc
    try:
        _handshake(conn, s, context)
    except BaseException:
        close_quietly(conn)
        raise
    return conn


def _handshake(conn: smtplib.SMTP, s: SMTPSettings, context: ssl.SSLContext | None) -> None:
    try:
        conn.ehlo_or_helo_if_needed()
        if s.security == "starttls":
            if not conn.has_extn("starttls"):
                raise ConfigurationError(
                    f"{where(s)} does not offer STARTTLS; drop ?starttls=true, "
                    f"or use smtps:// if it speaks implicit TLS ({s.url})"
                )
            conn.starttls(context=context)
            conn.ehlo()
        if s.username:
            conn.login(s.username, s.password or "")
    except smtplib.SMTPAuthenticationError as exc:
        if exc.smtp_code // 100 == 4:
            raise from_reply(exc.smtp_code, exc.smtp_error, where(s)) from exc
        raise ConfigurationError(
            f"{where(s)} rejected the credentials in {s.url}: "
            f"{exc.smtp_code} {text(exc.smtp_error)}. Fix the user and password "
            "(percent-encoded) in RETENTION_MAIL_URL"
        ) from exc
    except smtplib.SMTPNotSupportedError as exc:
        raise ConfigurationError(
            f"{where(s)} does not support authentication ({exc}); remove the "
            f"user and password from {s.url} or use STARTTLS/smtps://"
        ) from exc
    except smtplib.SMTPServerDisconnected as exc:
        detail = describe_disconnect(exc, s)
        raise TransientDeliveryError(f"{where(s)}: {detail}") from exc
    except smtplib.SMTPResponseException as exc:
        raise from_reply(exc.smtp_code, exc.smtp_error, where(s)) from exc
    except ssl.SSLCertVerificationError as exc:
        raise certificate_error(s, exc) from exc
    except OSError as exc:
        raise TransientDeliveryError(f"{where(s)}: {describe_os_error(exc, s)}") from exc


def ssl_context(settings: SMTPSettings) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if not settings.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def where(settings: SMTPSettings) -> str:
    return f"SMTP {settings.host}:{settings.port}"


def abort(conn: smtplib.SMTP) -> None:
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


def quit_all(connections: list[smtplib.SMTP], *, budget: float) -> None:
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


def close_quietly(conn: smtplib.SMTP) -> None:
    """Drop a connection without a word (after a failure there is nothing polite to say)."""
    with contextlib.suppress(OSError):
        conn.close()
