"""``RETENTION_MAIL_URL``: parse it, mask its password, build the transport it names."""

from __future__ import annotations

import os
from typing import Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from campaigns.errors import (
    ConfigurationError,
)
from worker.mail.local import ConsoleTransport, MaildirTransport
from worker.mail.smtp import SMTPTransport
from worker.mail.smtp_connection import DATA_REPLY_TIMEOUT, SMTPSettings
from worker.mail.transport import Transport

SUPPORTED_FORMS = (
    "maildir://PATH (maildir://./outbox, maildir:///var/mail/outbox), "
    "smtp://[USER:PASSWORD@]HOST[:PORT][?starttls=true&timeout=30&data_timeout=600&verify=false], "
    "smtps://[USER:PASSWORD@]HOST[:465][?timeout=30&data_timeout=600&verify=false], "
    "console://"
)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}




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
    ``data_timeout`` (seconds, default 600 as RFC 5321 asks) bounds the wait
    for the reply after the message content; when it runs out, the server may
    have the message, so the delivery is recorded as ``unknown``, not retried.
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
    known = ("starttls", "timeout", "data_timeout", "verify")
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise _url_error(url, f"unknown option(s) {', '.join(unknown)}; known: {', '.join(known)}")

    starttls = _bool_option(url, options, "starttls", default=False)
    if scheme == "smtps" and starttls:
        raise _url_error(url, "smtps:// is already TLS; drop starttls or use smtp://")
    security: Literal["plain", "starttls", "tls"] = (
        "tls" if scheme == "smtps" else "starttls" if starttls else "plain"
    )
    timeout = _seconds_option(url, options, "timeout", default=30.0)
    data_timeout = _seconds_option(url, options, "data_timeout", default=DATA_REPLY_TIMEOUT)

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
        data_timeout=data_timeout,
        verify=_bool_option(url, options, "verify", default=True),
        url=mask_url(url),
    )


def _seconds_option(url: str, options: dict[str, str], key: str, *, default: float) -> float:
    try:
        seconds = float(options.get(key, default))
    except ValueError:
        raise _url_error(url, f"{key} must be seconds, got {options[key]!r}") from None
    if not seconds > 0:
        raise _url_error(url, f"{key} must be a positive number of seconds")
    return seconds


def _bool_option(url: str, options: dict[str, str], key: str, *, default: bool) -> bool:
    if key not in options:
        return default
    value = options[key].lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise _url_error(url, f"{key} must be true or false, got {options[key]!r}")


