"""The envelope of a message; what a transport is lives in campaigns.delivery.transport."""

from __future__ import annotations

import email.utils
from email.message import EmailMessage

from campaigns.delivery.transport import BeforeData, Transport
from campaigns.errors import PermanentDeliveryError

__all__ = ["BeforeData", "Transport", "envelope"]


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


