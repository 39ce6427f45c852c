"""Mail transports: where a rendered message goes, chosen by ``RETENTION_MAIL_URL``.

Every transport answers ``send(message) -> str`` with a short reply worth
recording on the delivery, and sorts failures into the two outcomes the
worker acts on: ``TransientDeliveryError`` (retry later) and
``PermanentDeliveryError`` (record a bounce, never retry).  A broken
deployment (bad URL, rejected credentials, untrusted certificate) raises
``ConfigurationError`` instead, so no delivery is blamed for it.
"""

from __future__ import annotations

import copy
import email.generator
import email.policy
import email.utils
import io
import logging
import mailbox
import os
import re
import smtplib
import ssl
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Literal, Protocol, TextIO
from urllib.parse import parse_qsl, unquote, urlsplit

from campaigns.errors import (
    ConfigurationError,
    DeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
)

log = logging.getLogger(__name__)

SUPPORTED_FORMS = (
    "maildir://PATH (maildir://./outbox, maildir:///var/mail/outbox), "
    "smtp://[USER:PASSWORD@]HOST[:PORT][?starttls=true&timeout=30&verify=false], "
    "smtps://[USER:PASSWORD@]HOST[:465][?timeout=30&verify=false], "
    "console://"
)

_ENHANCED_STATUS = re.compile(r"^\s*([245]\.\d{1,3}\.\d{1,3})\b")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


# Called right before the message content leaves (SMTP DATA, the Maildir write).  The
# sender records there that mail may have left; raising aborts the send with nothing sent.
BeforeData = Callable[[], None]


class Transport(Protocol):
    def send(self, message: EmailMessage, *, before_data: BeforeData | None = None) -> str:
        """Deliver one message; return the server's reply or an id to record."""
        ...

    def close(self) -> None:
        """Release connections; the transport may still be used afterwards."""
        ...


# -- URLs ---------------------------------------------------------------------


def mask_url(url: str) -> str:
    """``url`` with the password replaced by ``***``, safe for logs and errors."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    # The last "@" ends the credentials even when the password holds a raw "@" or "/".
    userinfo, at, hostpart = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{hostpart}"


def transport_from_url(url: str) -> Transport:
    """Build the transport a mail URL names.

    Supported forms:

    - ``maildir://PATH`` -- write into a Maildir that any mail client opens.
      ``maildir://./outbox`` is relative to the current directory,
      ``maildir:///var/mail/outbox`` absolute.  Created when missing.
    - ``smtp://USER:PASSWORD@HOST:PORT?starttls=true`` -- SMTP, upgraded with
      STARTTLS when ``starttls=true`` (then the port defaults to 587, else 25).
      User and password are optional and URL-decoded: percent-encode ``@``,
      ``:``, ``%`` and the like in them.
    - ``smtps://USER:PASSWORD@HOST:465`` -- SMTP over implicit TLS.
    - ``console://`` -- print each message to stdout (dry runs and demos).

    SMTP query options: ``timeout`` (seconds, default 30) bounds every socket
    operation -- connecting, each command and the message upload.
    ``verify=false`` skips certificate and host name verification; it is meant
    for test servers with self-signed certificates and exposes real
    credentials and mail to interception, so never use it in production.

    Raises ``ConfigurationError`` (naming the URL with its password masked) for
    an unknown scheme or a malformed URL.
    """
    url = url.strip()
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise _url_error(url, "it has no scheme")
    if scheme == "maildir":
        return MaildirTransport(_maildir_path(url, rest))
    if scheme == "console":
        if rest.strip("/"):
            raise _url_error(url, "console:// takes no host or path")
        return ConsoleTransport()
    if scheme in ("smtp", "smtps"):
        return SMTPTransport(_smtp_settings(url, scheme, rest))
    raise _url_error(url, f"unknown scheme {scheme!r}")


def _url_error(url: str, reason: str) -> ConfigurationError:
    return ConfigurationError(
        f"Invalid mail URL {mask_url(url)!r} (RETENTION_MAIL_URL): {reason}. "
        f"Supported forms: {SUPPORTED_FORMS}"
    )


def _maildir_path(url: str, rest: str) -> str:
    path = unquote(rest)
    if not path:
        raise _url_error(url, "the maildir path is empty")
    # Resolve now so a later chdir cannot move the outbox.
    return os.path.abspath(os.path.expanduser(path))


@dataclass(frozen=True)
class SMTPSettings:
    host: str
    port: int
    security: Literal["plain", "starttls", "tls"] = "plain"
    username: str | None = None
    password: str | None = None
    timeout: float = 30.0
    verify: bool = True
    url: str = ""  # masked, for messages

    def __repr__(self) -> str:  # never print the password
        return f"SMTPSettings({self.url or self.host!r})"


def _smtp_settings(url: str, scheme: str, rest: str) -> SMTPSettings:
    userinfo, at, hostpart = rest.rpartition("@")
    hostport, _, query = hostpart.partition("?")
    hostport, _, path = hostport.partition("/")
    if path:
        raise _url_error(url, f"an SMTP URL takes no path, got '/{path}'")
    try:
        parsed = urlsplit(f"//{hostport}")
        host, port = parsed.hostname, parsed.port
    except ValueError as exc:
        raise _url_error(url, f"bad host or port ({exc})") from None
    if not host:
        raise _url_error(url, "the host is missing")

    options: dict[str, str] = {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise _url_error(url, f"cannot parse the query {query!r}") from None
    for key, value in pairs:
        if key in options:
            raise _url_error(url, f"option {key!r} is given twice")
        options[key] = value
    unknown = sorted(set(options) - {"starttls", "timeout", "verify"})
    if unknown:
        raise _url_error(
            url, f"unknown option(s) {', '.join(unknown)}; known: starttls, timeout, verify"
        )

    starttls = _bool_option(url, options, "starttls", default=False)
    if scheme == "smtps" and starttls:
        raise _url_error(url, "smtps:// is already TLS; drop starttls or use smtp://")
    security: Literal["plain", "starttls", "tls"] = (
        "tls" if scheme == "smtps" else "starttls" if starttls else "plain"
    )
    try:
        timeout = float(options.get("timeout", "30"))
    except ValueError:
        raise _url_error(url, f"timeout must be seconds, got {options['timeout']!r}") from None
    if not timeout > 0:
        raise _url_error(url, "timeout must be a positive number of seconds")

    username = password = None
    if at:
        user_raw, colon, password_raw = userinfo.partition(":")
        username = unquote(user_raw) or None
        password = unquote(password_raw) if colon else None
        if password and not username:
            raise _url_error(url, "a password needs a user name")
    default_port = {"tls": 465, "starttls": 587, "plain": 25}[security]
    return SMTPSettings(
        host=host,
        port=port or default_port,
        security=security,
        username=username,
        password=password,
        timeout=timeout,
        verify=_bool_option(url, options, "verify", default=True),
        url=mask_url(url),
    )


def _bool_option(url: str, options: dict[str, str], key: str, *, default: bool) -> bool:
    if key not in options:
        return default
    value = options[key].lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise _url_error(url, f"{key} must be true or false, got {options[key]!r}")


# -- envelope -----------------------------------------------------------------


def envelope(message: EmailMessage) -> tuple[str, list[str]]:
    """(sender, recipients): Return-Path or From, and every address in To."""
    sender = ""
    for header in ("Return-Path", "From"):
        values = [str(v) for v in message.get_all(header, [])]
        addresses = [addr for _, addr in email.utils.getaddresses(values) if addr]
        if addresses:
            sender = addresses[0]
            break
    recipients = [
        addr
        for _, addr in email.utils.getaddresses([str(v) for v in message.get_all("To", [])])
        if addr
    ]
    if not sender:
        raise PermanentDeliveryError(
            "The message has no From address; set defaults.sender (or the campaign's "
            "sender) in rules.yaml to 'Name <address@example.com>'"
        )
    if not recipients:
        raise PermanentDeliveryError("The message has no To address; nothing to send")
    return sender, recipients


# -- maildir and console ------------------------------------------------------


class MaildirTransport:
    """Deliver into a Maildir (``new/``), readable by ``mailbox.Maildir`` and mail clients."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._maildir = mailbox.Maildir(path, create=True)
        except OSError as exc:
            raise ConfigurationError(
                f"Cannot create the Maildir {path!r} ({exc.strerror or exc}); point "
                "RETENTION_MAIL_URL at a writable directory, e.g. maildir://./outbox"
            ) from exc
        # Maildir names unique files with a class-wide counter that is not
        # thread-safe; two threads could race on the same temporary name.
        self._lock = threading.Lock()

    def send(self, message: EmailMessage, *, before_data: BeforeData | None = None) -> str:
        envelope(message)  # the same checks as SMTP, so a dry run catches them
        if before_data is not None:
            before_data()
        try:
            with self._lock:
                key = self._maildir.add(message)
        except OSError as exc:
            raise TransientDeliveryError(
                f"Cannot write to the Maildir {self.path!r}: {exc.strerror or exc}"
            ) from exc
        return f"maildir:{key}"

    def close(self) -> None:
        self._maildir.close()

    def __repr__(self) -> str:
        return f"MaildirTransport({self.path!r})"


class ConsoleTransport:
    """Print each message to a stream (stdout by default) for dry runs."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def send(self, message: EmailMessage, *, before_data: BeforeData | None = None) -> str:
        envelope(message)
        if before_data is not None:
            before_data()
        stream = self._stream or sys.stdout
        text = message.as_string()
        with self._lock:  # keep concurrent messages from interleaving
            stream.write(f"{'-' * 30} message {'-' * 30}\n{text}\n")
            stream.flush()
        return "console"

    def close(self) -> None:
        pass


# -- SMTP ---------------------------------------------------------------------


class _StaleConnection(Exception):
    """Internal: the connection died before the message was handed over."""


class SMTPTransport:
    """SMTP with one connection per worker thread, reused across sends.

    A pooled connection the server has dropped in the meantime is replaced
    and the send retried once -- only when the drop happened before the
    message content went out, so a retry can never send a message twice.
    After any failed send the connection is reset (RSET) or dropped, so the
    next send starts clean.  ``close()`` ends every thread's connection; the
    transport reconnects on the next send.
    """

    def __init__(self, settings: SMTPSettings) -> None:
        self.settings = settings
        self._local = threading.local()
        self._registry: dict[int, smtplib.SMTP] = {}  # id(conn) -> conn, for close()
        self._registry_lock = threading.Lock()
        self._ssl: ssl.SSLContext | None = None

    def __repr__(self) -> str:
        return f"SMTPTransport({self.settings.url!r})"

    # public

    def send(self, message: EmailMessage, *, before_data: BeforeData | None = None) -> str:
        sender, recipients = envelope(message)
        content = _flatten(message, sender, recipients)
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
            connections = list(self._registry.values())
            self._registry.clear()
        for conn in connections:
            _close_quietly(conn, polite=True)
        self._local.conn = None

    # internals

    def _where(self) -> str:
        return f"SMTP {self.settings.host}:{self.settings.port}"

    def _current(self) -> smtplib.SMTP | None:
        conn: smtplib.SMTP | None = getattr(self._local, "conn", None)
        if conn is not None and conn.sock is None:  # closed by close() or smtplib
            self._discard()
            return None
        return conn

    def _discard(self) -> None:
        conn: smtplib.SMTP | None = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            with self._registry_lock:
                self._registry.pop(id(conn), None)
            _close_quietly(conn, polite=False)

    def _send_on_connection(
        self, sender: str, recipients: list[str], content: bytes, before_data: BeforeData | None
    ) -> str:
        conn = self._current() or self._connect()
        try:
            return self._transaction(conn, sender, recipients, content, before_data)
        except (DeliveryError, ConfigurationError):
            self._reset(conn)
            raise
        except _StaleConnection:
            raise
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

        # MAIL is the first command on a pooled connection: a drop here means
        # the connection had gone stale and nothing was sent yet.
        try:
            code, reply = conn.mail(sender, options)
        except smtplib.SMTPServerDisconnected as exc:
            if isinstance(exc.__context__, TimeoutError):
                raise  # a hung server, not a stale connection: retrying would hang again
            raise _StaleConnection(_describe_disconnect(exc, self.settings)) from exc
        if code != 250:
            raise self._reply_error(code, reply, f"refused sender <{sender}>")

        refused: list[tuple[str, int, bytes]] = []
        for rcpt in recipients:
            code, reply = conn.rcpt(rcpt)
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

        if before_data is not None:
            before_data()  # the last moment at which nothing of the message has left
        try:
            code, reply = conn.data(content)
        except smtplib.SMTPDataError as exc:  # the DATA command itself was refused
            code, reply = exc.smtp_code, exc.smtp_error
        if code != 250:
            raise self._reply_error(code, reply, "refused the message")
        return _short(code, reply)

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
            _close_quietly(conn, polite=False)
            raise
        self._local.conn = conn
        with self._registry_lock:
            self._registry[id(conn)] = conn
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


def _flatten(message: EmailMessage, sender: str, recipients: list[str]) -> bytes:
    # As smtplib.send_message does: Bcc never travels in the headers.
    msg = copy.copy(message)
    del msg["Bcc"]
    del msg["Resent-Bcc"]
    international = not (sender + "".join(recipients)).isascii()
    policy = msg.policy
    if international and isinstance(policy, email.policy.EmailPolicy):
        policy = policy.clone(utf8=True)
    buffer = io.BytesIO()
    email.generator.BytesGenerator(buffer, policy=policy).flatten(msg, linesep="\r\n")
    return buffer.getvalue()


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


def _certificate_error(settings: SMTPSettings, exc: ssl.SSLCertVerificationError) -> Exception:
    return ConfigurationError(
        f"SMTP {settings.host}:{settings.port}: the TLS certificate is not trusted "
        f"({exc.verify_message or exc}). Install the CA certificate, or for a test server "
        f"add ?verify=false to {settings.url}"
    )


def _close_quietly(conn: smtplib.SMTP, *, polite: bool) -> None:
    try:
        if polite and conn.sock is not None:
            conn.quit()
    except (smtplib.SMTPException, OSError):
        pass
    finally:
        conn.close()
