"""Provider webhooks against a real running web role (uvicorn on a free port, real HTTP).

The payloads are the providers' documented samples (Amazon SES via SNS,
SendGrid's event webhook, Postmark's bounce and spam-complaint webhooks,
Mailgun's event webhooks) with the sample addresses and ids replaced by ours.
Signatures are made the providers' way with keys made here: an RSA key and
certificate served over HTTP on loopback for SNS (the test allows that URL
through RETENTION_SES_CERT_URL_PATTERN, so the real fetch-and-verify path runs),
an ECDSA key for SendGrid, an HMAC key for Mailgun.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import http.server
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from sqlmodel import Session, col, func, select

from campaigns.models import (
    Bounce,
    CampaignState,
    Customer,
    Delivery,
    DeliveryStatus,
    Interaction,
    InteractionKind,
    Suppression,
    WebhookEvent,
    utcnow,
)
from tests.factories import add_sent_delivery
from tests.support.web import bound_socket, uvicorn_serving
from tests.test_cli import retention
from worker import runtime as runtime_module
from worker.settings import Settings
from worker.sns import string_to_sign
from worker.web import create_app

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "bounce-api-key"
MAILGUN_KEY = "key-mailgun-signing-test"
POSTMARK_AUTH = "postmark:s3cret"
TOPIC = "arn:aws:sns:us-east-1:123456789012:ses-notifications"


# ---------------------------------------------------------------- a fake-free SNS: our own CA on loopback


@dataclass
class CertServer:
    """Serves the SNS signing certificate and records SubscribeURL visits, on a free port."""

    key: rsa.RSAPrivateKey
    base_url: str
    visits: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def cert_server() -> Iterator[CertServer]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.us-east-1.amazonaws.com")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=30)).sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    visits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # the stdlib's name
            visits.append(self.path)
            body = pem if self.path.endswith(".pem") else b"<ConfirmSubscriptionResponse/>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield CertServer(key, f"http://127.0.0.1:{server.server_address[1]}", visits)
    finally:
        server.shutdown()
        server.server_close()


def sign_sns(cert: CertServer, message: dict[str, Any], version: str = "1") -> dict[str, Any]:
    signed = {**message, "SignatureVersion": version,
              "SigningCertURL": f"{cert.base_url}/SimpleNotificationService-test.pem"}
    digest = hashes.SHA1() if version == "1" else hashes.SHA256()
    signed["Signature"] = base64.b64encode(
        cert.key.sign(string_to_sign(signed), padding.PKCS1v15(), digest)).decode()
    return signed


def sns_notification(cert: CertServer, ses: dict[str, Any], version: str = "1") -> dict[str, Any]:
    return sign_sns(cert, {
        "Type": "Notification", "MessageId": f"sns-{time.monotonic_ns()}", "TopicArn": TOPIC,
        "Message": json.dumps(ses), "Timestamp": "2026-12-01T10:00:00.000Z",
        "UnsubscribeURL": f"{cert.base_url}/?Action=Unsubscribe",
    }, version)


# ---------------------------------------------------------------- the web role


@dataclass
class Served:
    rt: runtime_module.Runtime
    base_url: str
    sendgrid_key: ec.EllipticCurvePrivateKey

    def post(self, path: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request(self.base_url + path, data=data, method="POST",
                                         headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def get(self, path: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(self.base_url + path, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())


@pytest.fixture
def served(tmp_path, database_url, cert_server) -> Iterator[Served]:
    sendgrid_key = ec.generate_private_key(ec.SECP256R1())
    public = sendgrid_key.public_key().public_bytes(serialization.Encoding.DER,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo)
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    sock, base_url = bound_socket()
    settings = Settings(
        database_url=database_url, mail_url="console://", public_url=base_url, rules=rules,
        templates=ROOT / "templates", secret_key="webhook-test-key", api_key=API_KEY,
        ses_cert_url_pattern=f"^{cert_server.base_url}/", ses_topic_arns=TOPIC,
        sendgrid_public_key=base64.b64encode(public).decode(), postmark_webhook_auth=POSTMARK_AUTH,
        mailgun_signing_key=MAILGUN_KEY, soft_bounce_limit=3, complaint_pause_min_sends=20,
    )
    rt = runtime_module.build(settings)
    try:
        with uvicorn_serving(create_app(rt), sock):
            yield Served(rt, base_url, sendgrid_key)
    finally:
        rt.close()


RULES = """
defaults:
  sender: "Acme <hello@acme.example>"
  timezone: UTC
campaigns:
  - id: we-miss-you
    template: we_miss_you
    when:
      status: active
      days_inactive: {at_least: 30}
"""


def sent_delivery(rt, email: str, campaign_id: str = "we-miss-you") -> Delivery:
    with Session(rt.engine) as session:
        return add_sent_delivery(session, email=email, campaign_id=campaign_id, sent_at=utcnow())


def state(rt, delivery: Delivery) -> dict[str, Any]:
    with Session(rt.engine) as session:
        row = session.get(Delivery, delivery.id)
        customer = session.get(Customer, row.customer_id)
        return {
            "status": row.status,
            "suppressed": session.scalar(select(Suppression.reason).where(
                Suppression.email == customer.email.lower())),
            "unsubscribed": customer.unsubscribed_at is not None,
            "complaints": session.scalar(select(func.count()).select_from(Interaction).where(
                Interaction.delivery_id == delivery.id, Interaction.kind == InteractionKind.complaint)),
            "bounces": session.scalar(select(func.count()).select_from(Bounce).where(
                Bounce.email == customer.email.lower())),
        }


def nothing_written(rt) -> bool:
    with Session(rt.engine) as session:
        return (session.scalar(select(func.count()).select_from(Bounce)) == 0
                and session.scalar(select(func.count()).select_from(Suppression)) == 0)


# ---------------------------------------------------------------- Amazon SES (documented samples)


def ses_bounce(email: str, message_id: str) -> dict[str, Any]:
    # The "bounce notification with a DSN" sample of the SES developer guide.
    return {
        "notificationType": "Bounce",
        "bounce": {
            "bounceType": "Permanent", "reportingMTA": "dns; email.example.com",
            "bouncedRecipients": [{"emailAddress": email, "status": "5.1.1", "action": "failed",
                                   "diagnosticCode": f"smtp; 550 5.1.1 <{email}>... User"}],
            "bounceSubType": "General", "timestamp": "2016-01-27T14:59:38.237Z",
            "feedbackId": "00000138111222aa-33322211-cccc-cccc-cccc-ddddaaaa068a-000000",
            "remoteMtaIp": "127.0.2.0",
        },
        "mail": {
            "timestamp": "2016-01-27T14:59:38.237Z", "source": "hello@acme.example",
            "sourceArn": "arn:aws:ses:us-east-1:888888888888:identity/acme.example",
            "sourceIp": "127.0.3.0", "sendingAccountId": "888888888888",
            "messageId": "00000138111222aa-33322211-cccc-cccc-cccc-ddddaaaa0680-000000",
            "destination": [email], "headersTruncated": False,
            "headers": [{"name": "From", "value": "Acme <hello@acme.example>"},
                        {"name": "To", "value": email},
                        {"name": "Message-ID", "value": message_id},
                        {"name": "X-Retention-Campaign", "value": "we-miss-you"}],
            "commonHeaders": {"from": ["Acme <hello@acme.example>"], "to": [email],
                              "messageId": message_id, "subject": "We miss you"},
        },
    }


def ses_complaint(email: str, message_id: str) -> dict[str, Any]:
    # The "complaint notification with a feedback report" sample of the SES developer guide.
    return {
        "notificationType": "Complaint",
        "complaint": {
            "userAgent": "AnyCompany Feedback Loop (V0.01)",
            "complainedRecipients": [{"emailAddress": email}],
            "complaintFeedbackType": "abuse", "arrivalDate": "2016-01-27T14:59:38.237Z",
            "timestamp": "2016-01-27T14:59:38.237Z",
            "feedbackId": f"000001378603177f-18c07c78-fa81-4a58-9dd1-fedc3cb8f49a-{email}",
        },
        "mail": {
            "timestamp": "2016-01-27T14:59:38.237Z", "messageId": "000001378603177f-7a5433e7-8edb-42ae",
            "source": "hello@acme.example", "destination": [email], "headersTruncated": False,
            "headers": [{"name": "Message-ID", "value": message_id}],
            "commonHeaders": {"to": [email], "messageId": message_id, "subject": "We miss you"},
        },
    }


def ses_delivery(email: str, message_id: str) -> dict[str, Any]:
    return {
        "notificationType": "Delivery",
        "mail": {"timestamp": "2016-01-27T14:59:38.237Z", "messageId": "0000014644fe5ef6-9a483358",
                 "source": "hello@acme.example", "destination": [email],
                 "commonHeaders": {"messageId": message_id}},
        "delivery": {"timestamp": "2016-01-27T14:59:38.237Z", "recipients": [email],
                     "processingTimeMillis": 546, "reportingMTA": "a8-70.smtp-out.amazonses.com",
                     "smtpResponse": "250 ok:  Message 64111812 accepted", "remoteMtaIp": "127.0.2.0"},
    }


@pytest.mark.parametrize("version", ["1", "2"], ids=["sha1", "sha256"])
def test_ses_hard_bounce_bounces_the_delivery_and_suppresses_once(served, cert_server, version):
    delivery = sent_delivery(served.rt, "jane@example.com")
    notification = sns_notification(cert_server, ses_bounce("jane@example.com", delivery.message_id), version)
    status, body = served.post("/webhooks/ses", notification, {"x-amz-sns-message-type": "Notification"})
    assert (status, body["applied"]) == (200, 1)
    after = state(served.rt, delivery)
    assert after["status"] == DeliveryStatus.bounced
    assert after["suppressed"].startswith("hard bounce (ses): 5.1.1")
    # SNS delivers at least once: the same notification again changes nothing.
    status, body = served.post("/webhooks/ses", notification)
    assert (status, body["applied"], body["duplicates"]) == (200, 0, 1)
    assert state(served.rt, delivery) == after
    assert after["bounces"] == 1


def test_ses_complaint_unsubscribes_suppresses_and_records_a_response(served, cert_server):
    delivery = sent_delivery(served.rt, "richard@example.com")
    notification = sns_notification(cert_server, ses_complaint("richard@example.com", delivery.message_id))
    assert served.post("/webhooks/ses", notification)[0] == 200
    assert served.post("/webhooks/ses", notification)[1]["duplicates"] == 1
    after = state(served.rt, delivery)
    assert after == {"status": DeliveryStatus.sent, "suppressed": "spam complaint (ses)",
                     "unsubscribed": True,
                     "complaints": 1, "bounces": 1}


def test_ses_delivery_notification_changes_nothing(served, cert_server):
    delivery = sent_delivery(served.rt, "ok@example.com")
    notification = sns_notification(cert_server, ses_delivery("ok@example.com", delivery.message_id))
    status, body = served.post("/webhooks/ses", notification)
    assert (status, body["reports"]) == (200, 0)
    assert state(served.rt, delivery)["status"] == DeliveryStatus.sent
    assert nothing_written(served.rt)


def test_forged_sns_messages_are_refused_and_write_nothing(served, cert_server):
    delivery = sent_delivery(served.rt, "victim@example.com")
    genuine = sns_notification(cert_server, ses_bounce("victim@example.com", delivery.message_id))
    tampered = {**genuine, "Message": genuine["Message"].replace("Permanent", "Transient")}
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    wrong_key = {**genuine, "Signature": base64.b64encode(other_key.sign(
        string_to_sign(genuine), padding.PKCS1v15(), hashes.SHA1())).decode()}
    foreign_cert = {**genuine, "SigningCertURL": "https://attacker.example/cert.pem"}
    other_topic = sign_sns(cert_server, {**{k: v for k, v in genuine.items() if k != "Signature"},
                                         "TopicArn": "arn:aws:sns:us-east-1:999999999999:elsewhere"})
    visits = len(cert_server.visits)
    for forged, why in [(tampered, "does not match"), (wrong_key, "does not match"),
                        (foreign_cert, "not an SNS certificate address"), (other_topic, "not in")]:
        status, body = served.post("/webhooks/ses", forged)
        assert status == 403, forged
        assert why in body["detail"]
    assert "attacker.example" not in "".join(cert_server.visits[visits:])
    assert nothing_written(served.rt)
    assert state(served.rt, delivery)["status"] == DeliveryStatus.sent


def test_sns_subscription_confirmation_is_verified_then_confirmed(served, cert_server):
    subscribe = f"{cert_server.base_url}/?Action=ConfirmSubscription&TopicArn={TOPIC}&Token=2336412f37"
    confirmation = sign_sns(cert_server, {
        "Type": "SubscriptionConfirmation", "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
        "Token": "2336412f37", "TopicArn": TOPIC,
        "Message": f"You have chosen to subscribe to the topic {TOPIC}.\nTo confirm the subscription, "
                   "visit the SubscribeURL included in this message.",
        "SubscribeURL": subscribe, "Timestamp": "2012-04-26T20:45:04.751Z",
    })
    forged = {**confirmation, "SubscribeURL": subscribe + "&evil=1"}
    before = len(cert_server.visits)
    assert served.post("/webhooks/ses", forged)[0] == 403
    assert not any("ConfirmSubscription" in v for v in cert_server.visits[before:])
    status, body = served.post("/webhooks/ses", confirmation)
    assert (status, body) == (200, {"subscribed": TOPIC})
    assert any(v.startswith("/?Action=ConfirmSubscription") for v in cert_server.visits[before:])


# ---------------------------------------------------------------- SendGrid


def sendgrid_post(served: Served, events: list[dict[str, Any]], *, tamper: bool = False) -> tuple[int, Any]:
    body = json.dumps(events).encode()
    timestamp = str(int(time.time()))
    signature = served.sendgrid_key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    if tamper:
        body = body.replace(b"bounce", b"bounc3")
    return served.post("/webhooks/sendgrid", body, {
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
        "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
    })


def test_sendgrid_events_bounce_complain_and_deliver(served):
    bounced = sent_delivery(served.rt, "bounce@example.com")
    complained = sent_delivery(served.rt, "spam@example.com")
    delivered = sent_delivery(served.rt, "fine@example.com")
    # The Event Webhook reference's samples: one event of each kind in one batch.
    events = [
        {"email": "fine@example.com", "timestamp": 1513299569, "smtp-id": delivered.message_id,
         "event": "processed", "category": "cat facts", "sg_event_id": "sg_event_id_processed",
         "sg_message_id": "sg_message_id"},
        {"email": "fine@example.com", "timestamp": 1513299569, "smtp-id": delivered.message_id,
         "event": "delivered", "category": "cat facts", "sg_event_id": "sg_event_id_delivered",
         "sg_message_id": "sg_message_id", "response": "250 OK"},
        {"email": "fine@example.com", "timestamp": 1513299569, "smtp-id": delivered.message_id,
         "event": "deferred", "category": "cat facts", "sg_event_id": "sg_event_id_deferred",
         "sg_message_id": "sg_message_id", "response": "400 try again later", "attempt": "5"},
        {"email": "bounce@example.com", "timestamp": 1513299569, "smtp-id": bounced.message_id,
         "event": "bounce", "category": "cat facts", "sg_event_id": "sg_event_id_bounce",
         "sg_message_id": "sg_message_id", "reason": "500 unknown recipient", "status": "5.0.0",
         "type": "bounce", "bounce_classification": "Invalid Address"},
        {"email": "spam@example.com", "timestamp": 1513299569, "smtp-id": complained.message_id,
         "event": "spamreport", "category": "cat facts", "sg_event_id": "sg_event_id_spamreport",
         "sg_message_id": "sg_message_id"},
    ]
    assert sendgrid_post(served, events, tamper=True)[0] == 403
    assert nothing_written(served.rt)
    status, body = sendgrid_post(served, events)
    assert (status, body["reports"], body["applied"]) == (200, 2, 2)
    assert sendgrid_post(served, events)[1]["duplicates"] == 2
    assert state(served.rt, bounced)["status"] == DeliveryStatus.bounced
    assert state(served.rt, bounced)["suppressed"] == "hard bounce (sendgrid): 5.0.0 500 unknown recipient"
    assert state(served.rt, complained)["unsubscribed"]
    assert state(served.rt, delivered) == {"status": DeliveryStatus.sent, "suppressed": None,
                                           "unsubscribed": False, "complaints": 0, "bounces": 0}
    with Session(served.rt.engine) as session:  # what the outgoing webhooks will announce, once each
        announced = session.exec(select(WebhookEvent).where(col(WebhookEvent.kind) != "sent")).all()
    assert sorted((e.kind, e.delivery_id) for e in announced) == [
        ("bounced", bounced.id), ("complained", complained.id)]


def test_sendgrid_without_a_signature_is_refused_when_a_key_is_configured(served):
    status, body = served.post("/webhooks/sendgrid", [{"email": "x@example.com", "event": "spamreport"}])
    assert status == 403 and "X-Twilio-Email-Event-Webhook-Signature" in body["detail"]
    assert nothing_written(served.rt)


# ---------------------------------------------------------------- Postmark


def postmark_headers(auth: str = POSTMARK_AUTH) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}


def test_postmark_bounce_spam_complaint_and_delivery_webhooks(served):
    hard = sent_delivery(served.rt, "john@example.com")
    spam = sent_delivery(served.rt, "jack@example.com")
    # Postmark's documented bounce webhook sample.
    bounce = {
        "RecordType": "Bounce", "MessageStream": "outbound", "ID": 4323372036854775807,
        "Type": "HardBounce", "TypeCode": 1, "Name": "Hard bounce", "Tag": "Test",
        "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483", "Metadata": {"a_key": "a_value"},
        "ServerID": 23, "Description": "The server was unable to deliver your message (ex: unknown user, "
        "mailbox not found).", "Details": "Test bounce details", "Email": "john@example.com",
        "From": "sender@example.com", "BouncedAt": "2019-11-05T16:33:54.9070259Z", "DumpAvailable": True,
        "Inactive": True, "CanActivate": True, "Subject": "Test subject", "Content": "Return-Path:....",
    }
    complaint = {
        "RecordType": "SpamComplaint", "MessageStream": "outbound", "ID": 42, "Type": "SpamComplaint",
        "TypeCode": 512, "Name": "Spam complaint", "Tag": "Test",
        "MessageID": "00000000-0000-0000-0000-000000000000", "Metadata": {"a_key": "a_value"},
        "ServerID": 1234, "Description": "", "Details": "Test spam complaint details",
        "Email": "jack@example.com", "From": "sender@example.com",
        "BouncedAt": "2019-11-05T16:33:54.9070259Z",
        "DumpAvailable": True, "Inactive": True, "CanActivate": False, "Subject": "Test subject",
        "Content": "<Abuse report dump>",
    }
    delivery = {
        "RecordType": "Delivery", "ServerID": 23, "MessageStream": "outbound",
        "MessageID": "00000000-0000-0000-0000-000000000000", "Recipient": "john@example.com",
        "Tag": "welcome",
        "DeliveredAt": "2019-11-05T16:33:54.9070259Z", "Details": "Test delivery webhook details",
        "Metadata": {"a_key": "a_value"},
    }
    assert served.post("/webhooks/postmark", bounce)[0] == 401
    assert served.post("/webhooks/postmark", bounce, postmark_headers("postmark:wrong"))[0] == 401
    assert nothing_written(served.rt)
    for payload in (bounce, complaint, delivery, bounce, complaint):
        assert served.post("/webhooks/postmark", payload, postmark_headers())[0] == 200
    assert state(served.rt, hard)["status"] == DeliveryStatus.bounced
    assert state(served.rt, hard)["bounces"] == 1
    assert state(served.rt, spam) == {"status": DeliveryStatus.sent,
                                      "suppressed": "spam complaint (postmark)",
                                      "unsubscribed": True, "complaints": 1, "bounces": 1}


# ---------------------------------------------------------------- Mailgun


def mailgun_signed(event_data: dict[str, Any], *, key: str = MAILGUN_KEY) -> dict[str, Any]:
    timestamp = str(int(time.time()))
    token = hashlib.sha256(str(time.monotonic_ns()).encode()).hexdigest()[:50]
    signature = hmac.new(key.encode(), f"{timestamp}{token}".encode(), hashlib.sha256).hexdigest()
    return {"signature": {"timestamp": timestamp, "token": token, "signature": signature},
            "event-data": event_data}


def mailgun_event(event: str, email: str, message_id: str, **extra: Any) -> dict[str, Any]:
    # The shape of Mailgun's webhook payload samples (event-data).
    return {
        "account": {"id": "1234567890303a4bd1f33898"}, "domain": {"name": "acme.example"},
        "event": event, "id": f"G9Bn5sl1TC6W7Fw8P{event}{email}", "timestamp": 1521233195.375624,
        "log-level": "error" if event == "failed" else "info", "recipient": email,
        "recipient-domain": email.split("@")[1], "tags": [], "user-variables": {},
        "envelope": {"sender": "hello@acme.example", "targets": email, "transport": "smtp"},
        "message": {"headers": {"to": email, "message-id": message_id.strip("<>"),
                                "from": "Acme <hello@acme.example>", "subject": "We miss you"},
                    "attachments": [], "size": 111},
        **extra,
    }


def test_mailgun_failed_complained_and_delivered_events(served):
    failed = sent_delivery(served.rt, "alice@example.com")
    complained = sent_delivery(served.rt, "bob@example.com")
    events = [
        mailgun_event("failed", "alice@example.com", failed.message_id, severity="permanent",
                      reason="bounce", **{"delivery-status": {
                          "attempt-no": 1, "code": 550, "message": "5.1.1 The email account that you tried "
                          "to reach does not exist", "description": "", "session-seconds": 0.1}}),
        mailgun_event("complained", "bob@example.com", complained.message_id),
        mailgun_event("delivered", "bob@example.com", complained.message_id,
                      **{"delivery-status": {"code": 250, "message": "OK"}}),
    ]
    for event in events:
        status, _ = served.post("/webhooks/mailgun", mailgun_signed(event))
        assert status == 200
    assert served.post("/webhooks/mailgun", mailgun_signed(events[0]))[1]["duplicates"] == 1
    assert state(served.rt, failed)["status"] == DeliveryStatus.bounced
    assert "5.1.1 The email account" in state(served.rt, failed)["suppressed"]
    assert state(served.rt, complained)["unsubscribed"]


def test_forged_mailgun_signatures_are_refused_and_write_nothing(served):
    delivery = sent_delivery(served.rt, "carol@example.com")
    event = mailgun_event("complained", "carol@example.com", delivery.message_id)
    wrong_key = mailgun_signed(event, key="not-the-key")
    replayed_on_other_data = copy.deepcopy(mailgun_signed(event))
    replayed_on_other_data["signature"]["token"] = "0" * 50
    for forged in (wrong_key, replayed_on_other_data, {"event-data": event}):
        assert served.post("/webhooks/mailgun", forged)[0] == 403
    assert nothing_written(served.rt)
    assert not state(served.rt, delivery)["unsubscribed"]


# ---------------------------------------------------------------- the generic endpoint and the rules


def test_generic_bounce_endpoint_needs_the_api_key(served):
    body = {"email": "x@example.com", "type": "hard", "message_id": "<a@b>", "reason": "550"}
    assert served.post("/webhooks/bounce", body)[0] == 401
    assert served.post("/webhooks/bounce", body, {"Authorization": "Bearer wrong"})[0] == 401
    status, answer = served.post("/webhooks/bounce", {**body, "type": "bad"},
                                 {"Authorization": f"Bearer {API_KEY}"})
    assert status == 400 and "hard, soft or complaint" in answer["detail"]
    assert nothing_written(served.rt)


def test_soft_bounces_suppress_after_the_configured_number(served):
    delivery = sent_delivery(served.rt, "full@example.com")
    auth = {"Authorization": f"Bearer {API_KEY}"}
    for attempt in range(1, 4):
        body = {"email": "full@example.com", "type": "soft", "message_id": delivery.message_id,
                "reason": f"452 4.2.2 mailbox full (try {attempt})", "id": f"soft-{attempt}"}
        assert served.post("/webhooks/bounce", body, auth)[0] == 200
        assert served.post("/webhooks/bounce", body, auth)[1]["duplicates"] == 1  # a repeat counts once
        suppressed = state(served.rt, delivery)["suppressed"]
        assert (suppressed is not None) == (attempt == 3), attempt
    assert suppressed.startswith("3 soft bounces within 30 days")
    assert state(served.rt, delivery)["status"] == DeliveryStatus.sent  # soft: the message may have arrived


def test_complaint_rate_over_the_threshold_pauses_the_campaign_until_approved(served, tmp_path, caplog):
    rt = served.rt
    deliveries = [sent_delivery(rt, f"reader{i}@example.com") for i in range(20)]
    auth = {"Authorization": f"Bearer {API_KEY}"}
    complaint = {"email": "reader0@example.com", "type": "complaint", "message_id": deliveries[0].message_id}
    with caplog.at_level(logging.ERROR, logger="campaigns.responses.bounces"):
        status, body = served.post("/webhooks/bounce", complaint, auth)
    assert status == 200
    why = "spam complaint rate 5.00% (1 of 20 sends) is over 0.30%"
    assert why in body["paused"]["we-miss-you"]
    assert f"campaign we-miss-you paused: {why}" in caplog.text
    status, health = served.get("/healthz")
    assert health["paused_campaigns"]["we-miss-you"].startswith(why)
    with urllib.request.urlopen(served.base_url + "/metrics", timeout=10) as response:
        assert 'retention_bounces{campaign="we-miss-you",kind="complaint"} 1.0' in response.read().decode()

    # What is queued for the campaign stays queued while it is paused.
    with Session(rt.engine) as session:
        waiting = add_sent_delivery(session, email="next@example.com", sent_at=utcnow()).id
        session.get(Delivery, waiting).status = DeliveryStatus.queued
        session.commit()
    with Session(rt.engine) as session:
        assert rt.sender().deliver(session, waiting).value == "deferred"

    env = {"RETENTION_DATABASE_URL": rt.settings.database_url, "RETENTION_RULES": str(rt.settings.rules),
           "RETENTION_TEMPLATES": str(rt.settings.templates), "RETENTION_SECRET_KEY": "webhook-test-key"}
    answer = retention(tmp_path, "approve", "we-miss-you", env=env)
    assert f"we-miss-you: resumed (it was paused: {why}" in answer.stdout
    assert served.get("/healthz")[1]["paused_campaigns"] == {}
    # Counting starts afresh at the approval: one more complaint over 20 new sends is needed.
    second = {"email": "reader1@example.com", "type": "complaint", "message_id": deliveries[1].message_id}
    assert served.post("/webhooks/bounce", second, auth)[1]["paused"] == {}
    with Session(rt.engine) as session:
        assert session.get(CampaignState, "we-miss-you").paused_at is None
        assert session.scalar(select(func.count()).select_from(Suppression).where(
            col(Suppression.email).in_(["reader0@example.com", "reader1@example.com"]))) == 2
