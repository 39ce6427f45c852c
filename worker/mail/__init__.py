"""Mail transports: where a rendered message goes, chosen by ``RETENTION_MAIL_URL``.

Every transport answers ``send(message) -> str`` with a short reply worth
recording on the delivery, and sorts failures into the two outcomes the
worker acts on: ``TransientDeliveryError`` (retry later) and
``PermanentDeliveryError`` (record a bounce, never retry).  A broken
deployment (bad URL, rejected credentials, untrusted certificate) raises
``ConfigurationError`` instead, so no delivery is blamed for it.
"""

from worker.mail.local import ConsoleTransport, MaildirTransport
from worker.mail.smtp import SMTPSettings, SMTPTransport, parse_enhanced_status
from worker.mail.transport import BeforeData, Transport, envelope
from worker.mail.urls import SUPPORTED_FORMS, mask_url, transport_from_url

__all__ = [
    "SUPPORTED_FORMS",
    "BeforeData",
    "ConsoleTransport",
    "MaildirTransport",
    "SMTPSettings",
    "SMTPTransport",
    "Transport",
    "envelope",
    "mask_url",
    "parse_enhanced_status",
    "transport_from_url",
]
