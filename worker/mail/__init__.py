"""Mail transports, chosen by ``RETENTION_MAIL_URL``: ``transport_from_url`` builds one.

``transport`` says what every transport is, ``urls`` reads the URL, ``local`` holds the
Maildir and console transports, ``smtp`` the SMTP one and how its replies are sorted.
"""

from worker.mail.local import ConsoleTransport, MaildirTransport
from worker.mail.smtp import SMTPTransport
from worker.mail.smtp_connection import SMTPSettings
from worker.mail.smtp_replies import parse_enhanced_status
from worker.mail.transport import BeforeData, Message, OutgoingEmail, Transport, outgoing
from worker.mail.urls import SUPPORTED_FORMS, mask_url, transport_from_url

__all__ = [
    "SUPPORTED_FORMS",
    "BeforeData",
    "ConsoleTransport",
    "MaildirTransport",
    "Message",
    "OutgoingEmail",
    "SMTPSettings",
    "SMTPTransport",
    "Transport",
    "mask_url",
    "outgoing",
    "parse_enhanced_status",
    "transport_from_url",
]
