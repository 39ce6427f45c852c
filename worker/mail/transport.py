"""What every mail transport is: ``send(message) -> reply`` and ``close()``, plus the envelope."""

from __future__ import annotations

import email.generator
import email.policy
import email.utils
from collections.abc import Callable
from email.message import EmailMessage
from typing import Protocol

from campaigns.errors import (
    PermanentDeliveryError,
)

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


