"""Bounce and complaint *emails* (what lands in a bounce mailbox) → reports.

- Delivery status notifications (RFC 3464, ``multipart/report;
  report-type=delivery-status``) and the many non-standard bounces older MTAs
  send: the failed recipients come from flufl.bounce, which knows both; the
  status code and diagnostic of each from the ``message/delivery-status`` part.
- Abuse reports (ARF, RFC 5965, ``report-type=feedback-report``): the
  ``message/feedback-report`` part names the feedback type and, unless the
  mailbox provider redacted it, the recipient (``Original-Rcpt-To``).

Either way the returned email's own headers (a ``message/rfc822`` or
``text/rfc822-headers`` part) give its Message-ID and campaign, and the address
the bounce was sent to gives the delivery when VERP is on.
"""

from __future__ import annotations

import email.utils
from email.message import Message
from email.parser import HeaderParser

from flufl.bounce import all_failures

from campaigns.delivery.verp import verp_delivery_id
from campaigns.models import BounceKind
from campaigns.responses.bounces import BounceReport, report_key
from campaigns.responses.provider_reports import CAMPAIGN_HEADER

SOURCE = "mailbox"
# Headers in which the receiving MTA leaves the envelope recipient (the VERP address).
_ENVELOPE_TO = ("Delivered-To", "X-Original-To", "Envelope-To", "To")


def parse_bounce_message(msg: Message, *, report_id: str, verp: str = "") -> list[BounceReport] | None:
    """The reports in one email; [] when it is a report that asks for nothing (a delivery
    notice, a "not spam" report); None when it is no bounce or complaint this can read."""
    delivery_id = verp_delivery_id(verp, _envelope_recipients(msg)) if verp else None
    if msg.get_content_type() == "multipart/report" and \
            msg.get_param("report-type", "", header="content-type") == "feedback-report":
        return _abuse_report(msg, report_id=report_id, delivery_id=delivery_id)
    return _bounce(msg, report_id=report_id, delivery_id=delivery_id)


def classify_status(status: str) -> BounceKind:
    """A DSN status code (RFC 3463) → hard or soft.

    5.1.x (bad mailbox or domain) and other permanent failures are hard; a full
    mailbox (5.2.2), a policy or spam block (5.7.x: about the message, not the
    address) and every 4.x.x are soft.
    """
    code = status.strip()
    if not code.startswith("5") or code.startswith(("5.2.2", "5.7")):
        return BounceKind.soft
    return BounceKind.hard


# ---------------------------------------------------------------- DSNs


def _bounce(msg: Message, *, report_id: str, delivery_id: int | None) -> list[BounceReport] | None:
    temporary, permanent = all_failures(msg)
    details = _delivery_status(msg)
    if not temporary and not permanent:
        # A DSN that only says "delivered" / "relayed" is read, and asks for nothing.
        return [] if details and all(d[0] not in ("failed", "delayed") for d in details.values()) else None
    original = _original_headers(msg)
    reports = []
    for raw, permanent_failure in [*((a, True) for a in permanent), *((a, False) for a in temporary)]:
        address = raw.decode("ascii", "replace")
        action, status, diagnostic = details.get(address.lower(), ("", "", ""))
        if not permanent_failure:
            kind = BounceKind.soft
        else:
            kind = classify_status(status) if status else BounceKind.hard
        reports.append(BounceReport(
            kind=kind, source=SOURCE, key=report_key(SOURCE, report_id, address), email=address,
            message_id=original.get("Message-ID"), campaign_id=original.get(CAMPAIGN_HEADER),
            delivery_id=delivery_id,
            reason=" ".join(p for p in (status, diagnostic) if p) or action or "failed",
        ))
    return reports


def _delivery_status(msg: Message) -> dict[str, tuple[str, str, str]]:
    """Recipient → (action, status, diagnostic) from every message/delivery-status part."""
    found: dict[str, tuple[str, str, str]] = {}
    for part in msg.walk():
        if part.get_content_type() != "message/delivery-status" or not part.is_multipart():
            continue
        for block in part.get_payload():
            if not isinstance(block, Message):
                continue
            recipient = block.get("Final-Recipient") or block.get("Original-Recipient")
            if not recipient:
                continue
            address = email.utils.parseaddr(str(recipient).partition(";")[2].strip())[1].lower()
            found[address] = (str(block.get("Action", "")).strip().lower(),
                              str(block.get("Status", "")).strip(),
                              " ".join(str(block.get("Diagnostic-Code", "")).split()))
    return found


# ---------------------------------------------------------------- ARF


def _abuse_report(msg: Message, *, report_id: str, delivery_id: int | None) -> list[BounceReport] | None:
    feedback = _first_part(msg, "message/feedback-report")
    if feedback is None:
        return None
    feedback_type = str(feedback.get("Feedback-Type", "")).strip().lower()
    if not feedback_type:
        return None
    if feedback_type == "not-spam":
        return []
    original = _original_headers(msg)
    addresses = [a for _, a in email.utils.getaddresses(
        [str(v) for v in feedback.get_all("Original-Rcpt-To", []) + feedback.get_all("Removal-Recipient", [])]
    ) if a]
    if not addresses:
        # Redacted (RFC 6590), as most providers do: the returned email's own headers still say.
        addresses = [a for _, a in email.utils.getaddresses([str(v) for v in original.get_all("To", [])])
                     if a]
    message_id = original.get("Message-ID")
    if not addresses and (message_id or delivery_id is not None):
        addresses = [""]  # matched by Message-ID or VERP alone
    return [
        BounceReport(
            kind=BounceKind.complaint, source=SOURCE, key=report_key(SOURCE, report_id, address or "-"),
            email=address, message_id=message_id, campaign_id=original.get(CAMPAIGN_HEADER),
            delivery_id=delivery_id, reason=f"ARF {feedback_type}",
        )
        for address in dict.fromkeys(addresses)
    ] or None


# ---------------------------------------------------------------- helpers


def _first_part(msg: Message, content_type: str) -> Message | None:
    """A message/* part's inner header block (the email package nests it as a one-item list)."""
    for part in msg.walk():
        if part.get_content_type() != content_type:
            continue
        payload = part.get_payload()
        if isinstance(payload, list) and payload and isinstance(payload[0], Message):
            return payload[0]
        if isinstance(payload, str):
            return HeaderParser().parsestr(payload)
    return None


def _original_headers(msg: Message) -> Message:
    """The headers of the email the report is about, or an empty message when it has none."""
    for content_type in ("message/rfc822", "text/rfc822-headers"):
        found = _first_part(msg, content_type)
        if found is not None:
            return found
    return Message()


def _envelope_recipients(msg: Message) -> list[str]:
    values = [str(v) for header in _ENVELOPE_TO for v in msg.get_all(header, [])]
    return [address for _, address in email.utils.getaddresses(values) if address]
