"""Email addresses: the one validator behind rules.yaml senders, ingested customers and composing.

The syntax check is email-validator's (RFC 5322/6531 as mail servers apply
them, without DNS look-ups), so an address the rules or the ingestion accept
is one a message can be composed for.
"""

from __future__ import annotations

import email.utils
from email.headerregistry import Address

from email_validator import EmailNotValidError, validate_email

from campaigns.errors import InvalidAddress

EXAMPLE = '"Acme <hello@acme.example>"'


def parse_address(text: str) -> Address:
    """``Acme <hello@acme.example>`` or ``hello@acme.example`` as an Address.

    Raises InvalidAddress (a ValueError) naming the value and what is wrong with it.
    """
    if "\r" in text or "\n" in text:
        raise InvalidAddress(f"invalid email address {text!r}: it contains a line break")
    name, _ = email.utils.parseaddr(text)
    # The mailbox as written: parseaddr quietly drops what it cannot parse ("a b@x" -> "ab@x").
    stripped = text.strip()
    if stripped.endswith(">") and "<" in stripped:
        mailbox = stripped[stripped.rindex("<") + 1 : -1].strip()
    else:
        mailbox, name = stripped, ""
    mailbox = check_mailbox(mailbox, shown=text)
    try:
        return Address(display_name=name, addr_spec=mailbox)
    except (ValueError, IndexError) as exc:
        raise InvalidAddress(f"invalid email address {text!r}: {exc}") from None


def check_mailbox(mailbox: str, *, shown: str | None = None) -> str:
    """``mailbox`` (a bare ``name@domain``) when valid; InvalidAddress saying why not."""
    try:
        validate_email(mailbox, check_deliverability=False)
    except EmailNotValidError as exc:
        shown = mailbox if shown is None else shown
        raise InvalidAddress(f"invalid email address {shown!r}: {exc}") from None
    return mailbox


def is_mailbox(mailbox: str) -> bool:
    try:
        check_mailbox(mailbox)
    except ValueError:
        return False
    return True
