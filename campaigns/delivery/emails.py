"""Assemble a rendered template into a standards-conforming email.

Every message has a text part (and an HTML alternative when the template has
one), a deterministic Message-ID, and RFC 8058 one-click unsubscribe headers.

``build_email`` gives an ``EmailMessage`` (previews, test sends); ``build_outgoing`` gives the
same message as an :class:`OutgoingEmail`, its envelope and wire bytes written directly,
which is what the send path uses: four times cheaper than the ``email`` package's
generator for the same bytes.

Serialize an ``EmailMessage`` with its own policy (``bytes(msg)``, ``msg.as_bytes()``,
``smtplib.send_message``) or with :data:`WIRE_POLICY`.  Python's default
78-column folding would turn a long ``List-Unsubscribe`` URL into RFC 2047
encoded words, which mail clients do not decode back into a link; 998 (the RFC
5322 hard limit) keeps it intact.
"""

from __future__ import annotations

import copy
import email.generator
import email.policy
import email.quoprimime
import email.utils
import io
import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.header import Header
from email.headerregistry import Address
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


def _transfer_encoding(text: str, lines: list[str] | None = None) -> str:
    # 7bit when possible; otherwise quoted-printable, which every relay
    # accepts (8bit needs 8BITMIME) and keeps mostly-ASCII text readable.
    if text.isascii() and max(map(len, text.splitlines() if lines is None else lines), default=0) <= 998:
        return "7bit"
    return "quoted-printable"


@dataclass(frozen=True)
class OutgoingEmail:
    """One message as it travels: the SMTP envelope and the content, built once.

    ``data`` has CRLF line ends and is not dot-stuffed (that is the SMTP transport's
    business).  ``smtputf8``: an address is not ASCII, so the server must offer SMTPUTF8.
    """

    sender: str
    recipients: tuple[str, ...]
    message_id: str
    data: bytes
    smtputf8: bool = False


def build_outgoing(
    *, rendered: RenderedMessage, sender: str, to: str, message_id: str,
    unsubscribe_url: str, headers: Mapping[str, str] | None = None,
    date: datetime | None = None,
) -> OutgoingEmail:
    """``build_email``'s message, as the bytes a transport sends; the same errors.

    A ``Return-Path`` header (VERP) becomes the envelope sender, as RFC 5321 4.4 has it:
    the final MTA writes the header.
    """
    from_address = parse_address(sender)
    try:
        to_address = parse_address(to)
    except ValueError as exc:
        raise PermanentDeliveryError(str(exc), enhanced="5.1.3") from exc
    extra = dict(headers or {})
    return_path = extra.pop("Return-Path", None)
    if not (from_address.addr_spec + to_address.addr_spec + (return_path or "")).isascii():
        # Rare (SMTPUTF8): the email package knows how to write UTF-8 headers.
        message = build_email(rendered=rendered, sender=sender, to=to, message_id=message_id,
                              unsubscribe_url=unsubscribe_url, headers=headers, date=date)
        return outgoing(message)
    if not unsubscribe_url.startswith(("https://", "http://")):
        raise ValueError(f"unsubscribe URL {unsubscribe_url!r} must be absolute http(s)")
    mid = message_id if message_id.startswith("<") else f"<{message_id}>"
    lines = [
        f"From: {_address(from_address)}",
        f"To: {_address(to_address)}",
        f"Subject: {_unstructured(' '.join(rendered.subject.split()))}",
        f"Date: {email.utils.format_datetime((date or datetime.now(UTC)).astimezone(UTC))}",
        f"Message-ID: {mid}",
        f"List-Unsubscribe: <{_one_line(unsubscribe_url)}>",
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
    ]
    for name, value in extra.items():
        if name.lower() in _RESERVED_HEADERS:
            raise ValueError(f"header {name!r} is set by build_email and cannot be overridden")
        lines.append(f"{_one_line(name)}: {_unstructured(_one_line(value))}")
    lines.append("MIME-Version: 1.0")
    if rendered.html is None:
        body = _part("plain", rendered.text)
    else:
        boundary = f"=_{random.getrandbits(96):024x}"  # unguessable enough; urandom costs more
        lines.append(f'Content-Type: multipart/alternative; boundary="{boundary}"')
        body = (f"\r\n--{boundary}\r\n{_part('plain', rendered.text)}\r\n--{boundary}\r\n"
                f"{_part('html', rendered.html)}\r\n--{boundary}--\r\n")
    head = "\r\n".join(lines)
    envelope_from = parse_address(return_path).addr_spec if return_path else from_address.addr_spec
    return OutgoingEmail(sender=envelope_from, recipients=(to_address.addr_spec,), message_id=mid,
                         data=f"{head}\r\n{body}".encode("ascii"))


def outgoing(message: EmailMessage | OutgoingEmail) -> OutgoingEmail:
    """The envelope and wire bytes of a message: Return-Path (or From) and every address in To.

    As ``smtplib.send_message`` does, Bcc never travels in the headers, nor does Return-Path
    (RFC 5321 4.4: it travels as MAIL FROM; the final MTA writes the header).
    """
    if isinstance(message, OutgoingEmail):
        return message
    sender = ""
    for header in ("Return-Path", "From"):
        values = [str(v) for v in message.get_all(header, [])]
        addresses = [addr for _, addr in email.utils.getaddresses(values) if addr]
        if addresses:
            sender = addresses[0]
            break
    recipients = tuple(
        addr for _, addr in email.utils.getaddresses([str(v) for v in message.get_all("To", [])]) if addr
    )
    if not sender:
        raise PermanentDeliveryError(
            "The message has no From address; set defaults.sender (or the campaign's "
            "sender) in rules.yaml to 'Name <address@example.com>'"
        )
    if not recipients:
        raise PermanentDeliveryError("The message has no To address; nothing to send")
    msg = copy.copy(message)
    for header in ("Bcc", "Resent-Bcc", "Return-Path"):
        del msg[header]
    international = not (sender + "".join(recipients)).isascii()
    policy = msg.policy
    if international and isinstance(policy, email.policy.EmailPolicy):
        policy = policy.clone(utf8=True)
    buffer = io.BytesIO()
    email.generator.BytesGenerator(buffer, policy=policy).flatten(msg, linesep="\r\n")
    return OutgoingEmail(sender=sender, recipients=recipients, message_id=str(message["Message-ID"] or ""),
                         data=buffer.getvalue(), smtputf8=international)


def _lines(text: str) -> list[str]:
    """``text`` split at CRLF, CR or LF (not at the other breaks str.splitlines knows)."""
    # str.split is several times faster than a regex over a whole body.
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.split("\n")


def _part(subtype: str, text: str) -> str:
    lines = _lines(text)
    if lines and lines[-1] == "":
        lines.pop()
    cte = _transfer_encoding(text, lines)
    if cte == "7bit":
        content = "\r\n".join(lines) + "\r\n" if lines else ""
    else:
        content = email.quoprimime.body_encode(
            "\n".join(lines).encode("utf-8").decode("latin-1"), eol="\r\n") + "\r\n"
    return (f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
            f"Content-Transfer-Encoding: {cte}\r\n\r\n{content}")


def _address(address: Address) -> str:
    # formataddr quotes what needs quoting and encodes a non-ASCII name (RFC 2047).
    return email.utils.formataddr((address.display_name, address.addr_spec), charset="utf-8")


def _unstructured(value: str) -> str:
    if value.isascii():
        return value
    return Header(value, "utf-8", header_name="Subject").encode(linesep="\r\n")


def _one_line(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError(f"header value {value!r} contains a line break")
    return value
