"""Providers' bounce and complaint webhooks: ``POST /webhooks/{ses,sendgrid,postmark,mailgun,bounce}``.

Each request is authenticated the provider's way before its body is read as a
payload, and a request that fails that is refused (401/403) having written
nothing:

- ``/webhooks/ses``: an SNS message, its RSA signature checked against the
  certificate at ``SigningCertURL`` (worker/sns.py); a ``SubscriptionConfirmation``
  is confirmed by visiting its ``SubscribeURL``.
- ``/webhooks/sendgrid``: the Signed Event Webhook's ECDSA signature
  (``X-Twilio-Email-Event-Webhook-Signature`` over timestamp + body) when
  ``RETENTION_SENDGRID_PUBLIC_KEY`` is set.
- ``/webhooks/postmark``: HTTP basic auth, ``RETENTION_POSTMARK_WEBHOOK_AUTH``.
- ``/webhooks/mailgun``: HMAC-SHA256 of ``signature.timestamp + signature.token``
  with ``RETENTION_MAILGUN_SIGNING_KEY``.
- ``/webhooks/bounce``: the API key, for any other relay or a script.

The payloads are parsed by ``campaigns.responses.provider_reports`` and applied
by ``campaigns.responses.bounces``; a database that is down answers 503, so the
provider retries.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from campaigns.models import utcnow
from campaigns.responses import provider_reports as providers
from campaigns.responses.bounces import BounceReport
from worker.api import require_api_key
from worker.deliverability import apply_reports, bounce_policy
from worker.runtime import Runtime
from worker.sns import SnsError, SnsVerifier

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
SENDGRID_SIGNATURE = "X-Twilio-Email-Event-Webhook-Signature"
SENDGRID_TIMESTAMP = "X-Twilio-Email-Event-Webhook-Timestamp"


def webhooks_router(rt: Runtime, *, sns: SnsVerifier | None = None) -> APIRouter:
    router = APIRouter(prefix="/webhooks")
    settings = rt.settings
    verifier = sns or SnsVerifier(
        cert_url_pattern=settings.ses_cert_url_pattern,
        topic_arns=[t.strip() for t in settings.ses_topic_arns.split(",") if t.strip()],
    )

    async def apply(source: str, parse: Callable[[], list[BounceReport]]) -> JSONResponse:
        try:
            reports = parse()
        except providers.PayloadError as exc:
            log.warning("%s webhook: %s", source, exc)
            raise HTTPException(400, f"not a {source} notification: {exc}") from None
        policy, now = bounce_policy(settings), utcnow()

        def run() -> dict[str, object]:
            with Session(rt.engine) as session:
                return apply_reports(session, reports, policy=policy, now=now).as_dict()

        try:
            counts = await run_in_threadpool(run)
        except (sa.exc.DBAPIError, sa.exc.TimeoutError) as exc:
            log.error("%s webhook: database unavailable (%s)", source, type(exc).__name__)
            raise HTTPException(503, "database unavailable: nothing was stored, retry later",
                                headers={"Retry-After": "30"}) from None
        return JSONResponse({"reports": len(reports), **counts})

    @router.post("/ses")
    async def ses(request: Request) -> JSONResponse:
        message = _json(await _body(request))
        if not isinstance(message, dict):
            raise HTTPException(400, "an SNS message is a JSON object")
        try:
            await run_in_threadpool(verifier.verify, message)
        except SnsError as exc:
            log.warning("refused an SNS message: %s", exc)
            raise HTTPException(403, f"SNS signature not accepted: {exc}") from None
        kind = message["Type"]
        if kind == "SubscriptionConfirmation":
            try:
                await run_in_threadpool(verifier.confirm_subscription, message)
            except (SnsError, OSError) as exc:
                log.error("could not confirm the SNS subscription: %s", exc)
                raise HTTPException(502, f"could not confirm the subscription: {exc}") from None
            return JSONResponse({"subscribed": message.get("TopicArn")})
        if kind == "UnsubscribeConfirmation":
            log.warning("SNS unsubscribed this endpoint from %s", message.get("TopicArn"))
            return JSONResponse({"unsubscribed": message.get("TopicArn")})
        return await apply("ses", lambda: providers.ses_reports(_ses_notification(message)))

    @router.post("/sendgrid")
    async def sendgrid(request: Request) -> JSONResponse:
        body = await _body(request)
        if settings.sendgrid_public_key:
            _verify_sendgrid(settings.sendgrid_public_key, request, body)
        events = _json(body)
        return await apply("sendgrid", lambda: providers.sendgrid_reports(events))

    @router.post("/postmark")
    async def postmark(request: Request) -> JSONResponse:
        auth = _configured(settings.postmark_webhook_auth, "Postmark", "RETENTION_POSTMARK_WEBHOOK_AUTH",
                           "user:password and put them in the webhook URL")
        _verify_basic_auth(auth, request)
        payload = _json(await _body(request))
        return await apply("postmark", lambda: providers.postmark_reports(payload))

    @router.post("/mailgun")
    async def mailgun(request: Request) -> JSONResponse:
        key = _configured(settings.mailgun_signing_key, "Mailgun", "RETENTION_MAILGUN_SIGNING_KEY",
                          "the domain's HTTP webhook signing key")
        payload = _json(await _body(request))
        _verify_mailgun(key, payload)
        return await apply("mailgun", lambda: providers.mailgun_reports(payload))

    @router.post("/bounce")
    async def generic(request: Request) -> JSONResponse:
        require_api_key(settings.api_key, request, "the bounce webhook")
        body = _json(await _body(request))
        return await apply("bounce", lambda: [providers.generic_report(body)])

    return router


# ---------------------------------------------------------------- signatures


def _configured(secret: str, provider: str, setting: str, value: str) -> str:
    """The provider's secret; without one its webhook is off (403) rather than open to anyone."""
    if not secret:
        raise HTTPException(403, f"the {provider} webhook is disabled: set {setting} to {value}")
    return secret


def _verify_sendgrid(public_key: str, request: Request, body: bytes) -> None:
    signature, timestamp = request.headers.get(SENDGRID_SIGNATURE), request.headers.get(SENDGRID_TIMESTAMP)
    if not signature or not timestamp:
        raise HTTPException(403, f"unsigned: {SENDGRID_SIGNATURE} and {SENDGRID_TIMESTAMP} are required")
    try:
        key = serialization.load_der_public_key(base64.b64decode(public_key))
    except (ValueError, binascii.Error):
        log.error("RETENTION_SENDGRID_PUBLIC_KEY is not a base64 public key; refusing SendGrid events")
        raise HTTPException(500, "RETENTION_SENDGRID_PUBLIC_KEY is not a base64 DER public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise HTTPException(500, "RETENTION_SENDGRID_PUBLIC_KEY is not an ECDSA key")
    try:
        key.verify(base64.b64decode(signature), timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError, binascii.Error):
        log.warning("refused SendGrid events: bad signature")
        raise HTTPException(403, "the SendGrid signature does not match") from None


def _verify_basic_auth(expected: str, request: Request) -> None:
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    try:
        given = base64.b64decode(encoded, validate=True) if scheme.lower() == "basic" else b""
    except (ValueError, binascii.Error):
        given = b""
    if not given or not hmac.compare_digest(given, expected.encode()):
        raise HTTPException(401, "missing or wrong credentials (put user:password in the webhook URL)",
                            headers={"WWW-Authenticate": 'Basic realm="webhooks"'})


def _verify_mailgun(signing_key: str, payload: Any) -> None:
    signed = payload.get("signature") if isinstance(payload, dict) else None
    if not isinstance(signed, dict) or not all(isinstance(signed.get(k), str | int) for k in
                                               ("timestamp", "token", "signature")):
        raise HTTPException(403, "unsigned: the body has no signature {timestamp, token, signature}")
    expected = hmac.new(signing_key.encode(), f"{signed['timestamp']}{signed['token']}".encode(),
                        hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, str(signed["signature"])):
        log.warning("refused a Mailgun event: bad signature")
        raise HTTPException(403, "the Mailgun signature does not match")


# ---------------------------------------------------------------- bodies


async def _body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise HTTPException(413, f"body over {MAX_BODY_BYTES // 1024} KiB")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise HTTPException(413, f"body over {MAX_BODY_BYTES // 1024} KiB")
    return bytes(body)


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        raise HTTPException(
            400, f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except (ValueError, UnicodeDecodeError):
        raise HTTPException(400, "the body is not UTF-8 JSON") from None


def _ses_notification(message: dict[str, Any]) -> Any:
    try:
        return json.loads(str(message.get("Message", "")))
    except json.JSONDecodeError:
        raise providers.PayloadError("the SNS Message is not an SES notification (JSON)") from None
