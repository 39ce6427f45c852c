"""What SMTP replies and socket failures mean: retry (4xx), permanent (5xx), misconfiguration;
each with a message that says what happened."""

from __future__ import annotations

import re
import smtplib
import ssl
from typing import TYPE_CHECKING

from campaigns.errors import ConfigurationError, DeliveryError, PermanentDeliveryError, TransientDeliveryError

if TYPE_CHECKING:
    from worker.mail.smtp_connection import SMTPSettings

_ENHANCED_STATUS = re.compile(r"^\s*([245]\.\d{1,3}\.\d{1,3})\b")


def text(reply: bytes | str) -> str:
    if isinstance(reply, bytes):
        reply = reply.decode("utf-8", "replace")
    return " ".join(reply.split())


def short(code: int, reply: bytes | str) -> str:
    return f"{code} {text(reply)}"[:200]


def parse_enhanced_status(reply: bytes | str) -> str | None:
    """The RFC 3463 code ("5.1.1") a reply text starts with, if any."""
    match = _ENHANCED_STATUS.match(text(reply))
    return match.group(1) if match else None


def from_reply(code: int, reply: bytes | str, context: str) -> DeliveryError:
    """A delivery error for an SMTP reply: 5xx is permanent, anything else transient."""
    enhanced = parse_enhanced_status(reply)
    message = f"{context}: {code} {text(reply)}"
    if 500 <= code < 600:
        return PermanentDeliveryError(message, code=code, enhanced=enhanced)
    return TransientDeliveryError(message, code=code if code > 0 else None, enhanced=enhanced)


def describe_os_error(exc: BaseException, settings: SMTPSettings) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {settings.timeout:g}s (timeout); is the server overloaded?"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused; is the SMTP server running on that port?"
    return f"{type(exc).__name__}: {exc}"


def describe_disconnect(exc: smtplib.SMTPServerDisconnected, settings: SMTPSettings) -> str:
    # smtplib turns socket errors (timeouts included) into SMTPServerDisconnected.
    cause = exc.__context__
    if isinstance(cause, OSError):
        return describe_os_error(cause, settings)
    return f"connection lost ({exc})"


def describe_after_data(exc: BaseException, settings: SMTPSettings) -> str:
    # smtplib wraps socket errors (a timeout too) in SMTPServerDisconnected, itself an OSError.
    cause = exc.__context__ if isinstance(exc, smtplib.SMTPServerDisconnected) else exc
    if isinstance(cause, TimeoutError):
        return (f"no reply within {settings.data_timeout:g}s (data_timeout; RFC 5321 "
                "allows a server 600s for this reply)")
    if isinstance(cause, OSError):
        return f"the connection failed ({type(cause).__name__}: {cause})"
    return f"the connection was lost before the reply ({exc})"


def certificate_error(settings: SMTPSettings, exc: ssl.SSLCertVerificationError) -> Exception:
    return ConfigurationError(
        f"SMTP {settings.host}:{settings.port}: the TLS certificate is not trusted "
        f"({exc.verify_message or exc}). Install the CA certificate, or for a test server "
        f"add ?verify=false to {settings.url}"
    )
