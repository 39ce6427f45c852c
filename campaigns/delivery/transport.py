"""What the sender needs from a mail transport; the transports themselves are in worker/mail/."""

from __future__ import annotations

from collections.abc import Callable
from email.message import EmailMessage
from typing import Protocol, runtime_checkable

from campaigns.delivery.emails import OutgoingEmail

# Called right before the message content leaves (SMTP DATA, the Maildir write).  The
# sender records there that mail may have left; raising aborts the send with nothing sent.
BeforeData = Callable[[], None]

# What a transport sends: the send path's prebuilt OutgoingEmail, or an EmailMessage (test
# sends, your own code), whose envelope and bytes ``emails.outgoing`` derives.
Message = EmailMessage | OutgoingEmail


@runtime_checkable
class Transport(Protocol):
    def send(self, message: Message, *, before_data: BeforeData | None = None,
             then: Message | None = None) -> str:
        """Deliver one message; return the server's reply or an id to record.  ``then``: the
        message sent next on this thread, if known, which a transport may start early (SMTP
        PIPELINING); another one sent instead must still go out right."""
        ...

    def close(self) -> None:
        """Release connections at once, even those other threads are sending on (those are
        cut, never written to); the transport may still be used afterwards."""
        ...
