"""Providers' bounce and complaint notifications (parsed JSON, signatures already checked) → reports.

Field names are each provider's documented ones:

- Amazon SES through SNS: the ``Message`` of an SNS notification is the SES
  notification: ``notificationType`` (or ``eventType`` with event publishing)
  ``Bounce`` / ``Complaint`` / ``Delivery``; ``bounce.bounceType`` ``Permanent`` /
  ``Transient`` / ``Undetermined`` with ``bouncedRecipients[].emailAddress``;
  ``complaint.complainedRecipients[].emailAddress``; the original headers in
  ``mail.commonHeaders.messageId`` and ``mail.headers[]``.
- SendGrid event webhook: a JSON array of events with ``event`` (``bounce``,
  ``dropped``, ``spamreport``, ``delivered``…), ``email``, ``sg_event_id``,
  ``smtp-id`` (our Message-ID), ``type`` (``bounce`` or ``blocked``), ``reason``.
- Postmark bounce and spam-complaint webhooks: ``RecordType`` (``Bounce``,
  ``SpamComplaint``, ``Delivery``), ``Type`` (``HardBounce``, ``SoftBounce``…),
  ``ID``, ``Email``, ``Description``, ``Details``, ``BouncedAt``.
- Mailgun webhooks: ``event-data`` with ``event`` (``failed``, ``complained``,
  ``delivered``), ``severity`` (``permanent`` / ``temporary``), ``id``,
  ``recipient``, ``message.headers.message-id``, ``delivery-status``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from campaigns.errors import RetentionError
from campaigns.models import BounceKind
from campaigns.responses.bounces import BounceReport, report_key

CAMPAIGN_HEADER = "X-Retention-Campaign"


class PayloadError(RetentionError, ValueError):
    """A notification that does not have the documented shape; the message says what is missing."""


# ---------------------------------------------------------------- Amazon SES


def ses_reports(notification: Any) -> list[BounceReport]:
    """Reports in one SES notification (the parsed ``Message`` of the SNS envelope)."""
    notification = _mapping(notification, "the SES notification")
    kind = notification.get("notificationType") or notification.get("eventType")
    mail = _mapping(notification.get("mail", {}), "mail")
    listed = mail.get("headers")
    headers = {str(h.get("name", "")).lower(): str(h.get("value", ""))
               for h in (listed if isinstance(listed, list) else []) if isinstance(h, Mapping)}
    common = _mapping(mail.get("commonHeaders", {}), "mail.commonHeaders")
    message_id = common.get("messageId") or headers.get("message-id")
    campaign = headers.get(CAMPAIGN_HEADER.lower())
    if kind == "Bounce":
        bounce = _mapping(notification.get("bounce"), "bounce")
        bounce_kind = BounceKind.hard if bounce.get("bounceType") == "Permanent" else BounceKind.soft
        feedback = str(bounce.get("feedbackId") or mail.get("messageId") or "")
        return [
            BounceReport(
                kind=bounce_kind, source="ses", key=report_key("ses", feedback, email), email=email,
                message_id=message_id, campaign_id=campaign,
                reason=" ".join(str(r.get(k)) for k in ("status", "diagnosticCode") if r.get(k))
                or f"{bounce.get('bounceType')}/{bounce.get('bounceSubType')}",
                occurred_at=_iso(bounce.get("timestamp")),
            )
            for r, email in _recipients(bounce, "bouncedRecipients")
        ]
    if kind == "Complaint":
        complaint = _mapping(notification.get("complaint"), "complaint")
        if complaint.get("complaintFeedbackType") == "not-spam":
            return []  # RFC 5965: the recipient says it is *not* spam
        feedback = str(complaint.get("feedbackId") or mail.get("messageId") or "")
        return [
            BounceReport(
                kind=BounceKind.complaint, source="ses", key=report_key("ses", feedback, email), email=email,
                message_id=message_id, campaign_id=campaign,
                reason=str(complaint.get("complaintFeedbackType") or "complaint"),
                occurred_at=_iso(complaint.get("timestamp")),
            )
            for _r, email in _recipients(complaint, "complainedRecipients")
        ]
    if kind in ("Delivery", "Send", "Open", "Click", "DeliveryDelay", "Reject", "Rendering Failure",
                "Subscription"):
        return []
    raise PayloadError(f"not an SES notification: notificationType {kind!r} (expected Bounce, Complaint "
                       "or Delivery)")


def _recipients(section: Mapping[str, Any], key: str) -> list[tuple[Mapping[str, Any], str]]:
    listed = section.get(key)
    if not isinstance(listed, list):
        raise PayloadError(f"{key} is missing or not a list")
    return [(r, str(r["emailAddress"])) for r in listed if isinstance(r, Mapping) and r.get("emailAddress")]


# ---------------------------------------------------------------- SendGrid

# `dropped` means SendGrid did not send it; these reasons say the address is known bad.
_SENDGRID_BAD_ADDRESS = ("Bounced Address", "Invalid")


def sendgrid_reports(events: Any) -> list[BounceReport]:
    if not isinstance(events, list):
        raise PayloadError("a SendGrid event webhook posts a JSON array of events")
    reports = []
    for index, event in enumerate(events):
        event = _mapping(event, f"[{index}]")
        name, email = event.get("event"), str(event.get("email") or "")
        if name == "bounce":
            kind = BounceKind.soft if event.get("type") == "blocked" else BounceKind.hard
        elif name == "dropped" and str(event.get("reason", "")) in _SENDGRID_BAD_ADDRESS:
            kind = BounceKind.hard
        elif name == "spamreport":
            kind = BounceKind.complaint
        else:
            continue  # delivered, deferred (SendGrid retries), processed, open, click…
        if not email:
            raise PayloadError(f"[{index}].email is missing")
        event_id = str(event.get("sg_event_id") or f"{event.get('sg_message_id')}:{name}")
        reports.append(BounceReport(
            kind=kind, source="sendgrid", key=report_key("sendgrid", event_id, email), email=email,
            message_id=event.get("smtp-id") or None,
            reason=" ".join(str(event[k]) for k in ("status", "reason") if event.get(k)) or str(name),
            occurred_at=_epoch(event.get("timestamp")),
        ))
    return reports


# ---------------------------------------------------------------- Postmark

_POSTMARK_HARD = {"HardBounce", "BadEmailAddress", "ManuallyDeactivated", "Blocked", "DMARCPolicy"}
_POSTMARK_SOFT = {"SoftBounce", "Transient", "DnsError", "Unknown", "ChallengeVerification"}
_POSTMARK_COMPLAINT = {"SpamComplaint", "SpamNotification"}


def postmark_reports(payload: Any) -> list[BounceReport]:
    payload = _mapping(payload, "the body")
    record_type, bounce_type = payload.get("RecordType"), str(payload.get("Type") or "")
    if record_type not in (None, "Bounce", "SpamComplaint"):
        return []  # Delivery, Open, Click, SubscriptionChange
    if record_type == "SpamComplaint" or bounce_type in _POSTMARK_COMPLAINT:
        kind = BounceKind.complaint
    elif bounce_type in _POSTMARK_HARD:
        kind = BounceKind.hard
    elif bounce_type in _POSTMARK_SOFT:
        kind = BounceKind.soft
    else:
        return []  # AutoResponder, OpenRelayTest, VirusNotification…: not about the address
    email = str(payload.get("Email") or "")
    if not email or payload.get("ID") is None:
        raise PayloadError("a Postmark bounce has Email and ID")
    metadata = payload.get("Metadata") if isinstance(payload.get("Metadata"), Mapping) else {}
    return [BounceReport(
        kind=kind, source="postmark", key=report_key("postmark", f"{record_type}:{payload['ID']}", email),
        email=email, campaign_id=(metadata or {}).get("campaign"),
        reason=" ".join(str(payload[k]) for k in ("Type", "Details") if payload.get(k)),
        occurred_at=_iso(payload.get("BouncedAt")),
    )]


# ---------------------------------------------------------------- Mailgun


def mailgun_reports(payload: Any) -> list[BounceReport]:
    data = _mapping(_mapping(payload, "the body").get("event-data"), "event-data")
    name, email = data.get("event"), str(data.get("recipient") or "")
    if name == "failed":
        kind = BounceKind.hard if data.get("severity") == "permanent" else BounceKind.soft
    elif name == "complained":
        kind = BounceKind.complaint
    else:
        return []  # delivered, accepted, opened, clicked, unsubscribed (our own links handle that)
    if not email or not data.get("id"):
        raise PayloadError("event-data.recipient and event-data.id are required")
    message = data.get("message") if isinstance(data.get("message"), Mapping) else {}
    headers = (message or {}).get("headers") or {}
    status = data.get("delivery-status") if isinstance(data.get("delivery-status"), Mapping) else {}
    reason = " ".join(str(v) for v in ((status or {}).get("code"), (status or {}).get("message")
                                       or (status or {}).get("description"), data.get("reason")) if v)
    return [BounceReport(
        kind=kind, source="mailgun", key=report_key("mailgun", str(data["id"]), email), email=email,
        message_id=headers.get("message-id") if isinstance(headers, Mapping) else None,
        reason=reason or str(name), occurred_at=_epoch(data.get("timestamp")),
    )]


# ---------------------------------------------------------------- generic


def generic_report(body: Any) -> BounceReport:
    """``{"email", "type": "hard|soft|complaint", "message_id", "reason"}`` (and an optional ``id``)."""
    body = _mapping(body, "the body")
    email, kind = body.get("email"), body.get("type")
    if not isinstance(email, str) or "@" not in email:
        raise PayloadError('"email" must be an email address')
    if kind not in tuple(BounceKind):
        raise PayloadError(f'"type" must be hard, soft or complaint, got {kind!r}')
    message_id = body.get("message_id")
    if message_id is not None and not isinstance(message_id, str):
        raise PayloadError('"message_id" must be a string')
    own_id = str(body.get("id") or f"{message_id or ''}:{kind}")
    return BounceReport(kind=BounceKind(kind), source="api", key=report_key("api", own_id, email),
                        email=email, message_id=message_id or None, reason=str(body.get("reason") or ""))


# ---------------------------------------------------------------- helpers


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise PayloadError(f"{where} must be a JSON object")
    return value


def _iso(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _epoch(value: Any) -> datetime | None:
    try:
        return datetime.fromtimestamp(float(value), UTC)
    except (TypeError, ValueError, OverflowError):
        return None
