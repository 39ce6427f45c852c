"""Assemble a rendered template into a standards-conforming email.

Every message has a text part (and an HTML alternative when the template has
one), a deterministic Message-ID, and RFC 8058 one-click unsubscribe headers.

Serialize with the message's own policy (``bytes(msg)``, ``msg.as_bytes()``,
``smtplib.send_message``) or with :data:`WIRE_POLICY`.  Python's default
78-column folding would turn a long ``List-Unsubscribe`` URL into RFC 2047
encoded words, which mail clients do not decode back into a link; 998 (the RFC
5322 hard limit) keeps it intact.
"""

from __future__ import annotations

import email.policy
import email.utils
from collections.abc import Mapping
from datetime import UTC, datetime
from email.message import EmailMessage

from campaigns.addresses import parse_address
from campaigns.delivery.rendering import RenderedMessage
from campaigns.errors import PermanentDeliveryError

POLICY = email.policy.default.clone(max_line_length=998)
WIRE_POLICY = email.policy.SMTP.clone(max_line_length=998)

# Headers build_email owns; letting callers override them would break the
# guarantees above (one-click unsubscribe, deterministic Message-ID).
_RESERVED_HEADERS = frozenset(
    h.lower() for h in (
        "From", "To", "Subject", "Date", "Message-ID", "List-Unsubscribe",
        "List-Unsubscribe-Post", "MIME-Version", "Content-Type", "Content-Transfer-Encoding",
    )
)


def sender_domain(sender: str) -> str:
    """The domain of the sender address, for Message-IDs: ``acme.example``."""
    return parse_address(sender).domain.lower()


def build_email(
    *, rendered: RenderedMessage, sender: str, to: str, message_id: str,
    unsubscribe_url: str, headers: Mapping[str, str] | None = None,
    date: datetime | None = None,
) -> EmailMessage:
    """One email, ready for any transport.

    A malformed recipient raises PermanentDeliveryError (enhanced code 5.1.3,
    so the address gets suppressed); a malformed sender or extra header is a
    programming or configuration mistake and raises ValueError.
    """
    from_address = parse_address(sender)
    try:
        to_address = parse_address(to)
    except ValueError as exc:
        raise PermanentDeliveryError(str(exc), enhanced="5.1.3") from exc
    if not unsubscribe_url.startswith(("https://", "http://")):
        raise ValueError(f"unsubscribe URL {unsubscribe_url!r} must be absolute http(s)")

    msg = EmailMessage(policy=POLICY)
    msg["From"] = from_address
    msg["To"] = to_address
    msg["Subject"] = " ".join(rendered.subject.split())
    msg["Date"] = email.utils.format_datetime((date or datetime.now(UTC)).astimezone(UTC))
    msg["Message-ID"] = message_id if message_id.startswith("<") else f"<{message_id}>"
    msg["List-Unsubscribe"] = f"<{unsubscribe_url}>"
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    for name, value in (headers or {}).items():
        if name.lower() in _RESERVED_HEADERS:
            raise ValueError(f"header {name!r} is set by build_email and cannot be overridden")
        msg[name] = value

    msg.set_content(rendered.text, cte=_transfer_encoding(rendered.text))
    if rendered.html is not None:
        msg.add_alternative(rendered.html, subtype="html", cte=_transfer_encoding(rendered.html))
    return msg


def _transfer_encoding(text: str) -> str:
    # 7bit when possible; otherwise quoted-printable, which every relay
    # accepts (8bit needs 8BITMIME) and keeps mostly-ASCII text readable.
    if text.isascii() and all(len(line) <= 998 for line in text.splitlines()):
        return "7bit"
    return "quoted-printable"
