"""Email addresses: the one validator behind rules.yaml senders, ingested customers and composing.

The syntax check is email-validator's (RFC 5322/6531 as mail servers apply
them, without DNS look-ups), so an address the rules or the ingestion accept
is one a message can be composed for.
"""

from __future__ import annotations

import email.utils
import functools
from email.headerregistry import Address

from email_validator import EmailNotValidError, validate_email
from email_validator.rfc_constants import DOT_ATOM_TEXT, EMAIL_MAX_LENGTH, LOCAL_PART_MAX_LENGTH

from campaigns.errors import InvalidAddress

EXAMPLE = '"Acme <hello@acme.example>"'


# Composing asks for the same sender with every email: the parsed form is remembered.
@functools.lru_cache(maxsize=4096)
def parse_address(text: str) -> Address:
    """``Acme <hello@acme.example>`` or ``hello@acme.example`` as an Address.

    Raises InvalidAddress (a ValueError) naming the value and what is wrong with it.
    """
    if "\r" in text or "\n" in text:
        raise InvalidAddress(f"invalid email address {text!r}: it contains a line break")
    # The mailbox as written: parseaddr quietly drops what it cannot parse ("a b@x" -> "ab@x").
    stripped = text.strip()
    if stripped.endswith(">") and "<" in stripped:
        name, _ = email.utils.parseaddr(text)
        mailbox = stripped[stripped.rindex("<") + 1 : -1].strip()
    else:
        mailbox, name = stripped, ""
    if _plainly_valid(mailbox):
        # A dot-atom needs no parsing by the email package (its parser is most of the cost).
        local, _, domain = mailbox.partition("@")
        return Address(display_name=name, username=local, domain=domain)
    mailbox = check_mailbox(mailbox, shown=text)
    try:
        return Address(display_name=name, addr_spec=mailbox)
    except (ValueError, IndexError) as exc:
        raise InvalidAddress(f"invalid email address {text!r}: {exc}") from None


def check_mailbox(mailbox: str, *, shown: str | None = None) -> str:
    """``mailbox`` (a bare ``name@domain``) when valid; InvalidAddress saying why not."""
    if _plainly_valid(mailbox):
        return mailbox
    try:
        validate_email(mailbox, check_deliverability=False)
    except EmailNotValidError as exc:
        shown = mailbox if shown is None else shown
        raise InvalidAddress(f"invalid email address {shown!r}: {exc}") from None
    return mailbox


def is_mailbox(mailbox: str) -> bool:
    if _plainly_valid(mailbox):
        return True
    try:
        check_mailbox(mailbox)
    except ValueError:
        return False
    return True


def _plainly_valid(mailbox: str) -> bool:
    """True only for an address email-validator accepts, decided without running it in full.

    An import validates a million addresses over a few thousand domains; the domain's part
    of the work (IDNA, special-use names) is most of the cost.  For the common shape, an
    ASCII dot-atom before a single @-sign, email-validator's verdict comes down to the
    domain's verdict and the address's length, so the domain is judged once (by
    email-validator itself, on a probe address) and remembered.  Anything else, and
    every invalid address, goes through the full validator, which also words the error.
    """
    local, at, domain = mailbox.partition("@")
    if not (at and mailbox.isascii() and len(local) <= LOCAL_PART_MAX_LENGTH and "@" not in domain
            and DOT_ATOM_TEXT.match(local)):
        return False
    forms = _domain_forms(domain)
    # validate_email_length: the address as given, normalized, and with the IDNA ASCII domain.
    return forms is not None and len(local) + 1 + forms <= EMAIL_MAX_LENGTH


@functools.lru_cache(maxsize=1 << 16)
def _domain_forms(domain: str) -> int | None:
    """The longest (in UTF-8 bytes) of a valid domain's forms; None when the domain fails."""
    try:
        probe = validate_email("a@" + domain, check_deliverability=False)
    except EmailNotValidError:
        return None
    return max(len(domain), len(probe.domain.encode()), len(probe.ascii_domain))
