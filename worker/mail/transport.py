"""What a transport is lives in campaigns.delivery.transport; the envelope in campaigns.delivery.emails."""

from __future__ import annotations

from campaigns.delivery.emails import OutgoingEmail, outgoing
from campaigns.delivery.transport import BeforeData, Message, Transport

__all__ = ["BeforeData", "Message", "OutgoingEmail", "Transport", "outgoing"]
