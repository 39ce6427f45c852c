"""Outgoing webhooks: fan-out, signing (Standard Webhooks) and sending with retries.

Messages go on a queue of their own (``WEBHOOK_QUEUE``) consumed by worker threads of
their own, so an endpoint that hangs or is down holds only those threads: sending
emails and planning go on at full speed.  Each attempt is recorded; a failure is
retried with Dramatiq's exponential backoff, ``MAX_ATTEMPTS`` attempts in all, then the
message is ``failed`` and ``retention webhooks`` lists it.
"""

from __future__ import annotations

import http.client
import logging
import os
import time
from datetime import timedelta
from urllib.parse import urlsplit

import dramatiq
from sqlmodel import Session
from standardwebhooks.webhooks import Webhook as Signer

from campaigns.models import WebhookAttempt, WebhookMessage, utcnow
from campaigns.responses import webhooks as outbox
from campaigns.rules import Rules, Webhook
from worker import runtime

log = logging.getLogger(__name__)

WEBHOOK_QUEUE = "retention-webhooks"
WEBHOOK_THREADS = 4
MAX_ATTEMPTS = 8
TIMEOUT_SECONDS = 10.0
# Longer than any backoff: a pending message untouched this long lost its broker message.
STALE_AFTER = timedelta(hours=2)
MAX_ANSWER_BYTES = 4096


class WebhookFailed(Exception):
    """An attempt that did not get a 2xx; raised so Dramatiq retries it with backoff."""


def secret_problem(webhook: Webhook) -> str | None:
    """Why this endpoint's secret cannot sign, or None."""
    value = os.environ.get(webhook.secret_env, "")
    if not value:
        return f"the environment variable {webhook.secret_env} (secret_env) is not set"
    try:
        Signer(value)
    except Exception:  # the library raises binascii.Error or its own for a malformed secret
        return (f"{webhook.secret_env} is not a Standard Webhooks secret: write whsec_ and base64, e.g. "
                "python3 -c \"import base64,secrets;print('whsec_'+base64.b64encode(secrets.token_bytes(32))"
                ".decode())\"")
    return None


def dispatch(rt: runtime.Runtime, actor: dramatiq.Actor[[int], None]) -> int:
    """Fan recorded events out and enqueue them (and any lost ones); returns how many went."""
    if not rt.rules.webhooks:
        return 0
    now = utcnow()
    with Session(rt.engine) as session:
        ids = outbox.fan_out(session, rt.rules.webhooks, now=now)
        ids += outbox.stale_pending(session, now=now, after=STALE_AFTER)
    for message_id in ids:
        actor.send(message_id)
    return len(ids)


def send_webhook(message_id: int) -> None:
    """One attempt at one message; a failure raises, and Dramatiq retries with backoff."""
    rt = runtime.current()
    with Session(rt.engine, expire_on_commit=False) as session:
        message = session.get(WebhookMessage, message_id)
        if message is None or message.status != outbox.PENDING:
            return  # delivered or given up already: a duplicate broker message
        endpoint = _endpoint(rt.rules, message.url)
        started = time.monotonic()
        status_code: int | None = None
        if endpoint is None:
            error: str | None = "the endpoint is no longer in rules.yaml `webhooks:`"
        else:
            error = secret_problem(endpoint)
            if error is None:
                status_code, error = _post(endpoint, message_id, message.body)
        attempts = message.attempts + 1
        session.add(WebhookAttempt(message_id=message_id, attempted_at=utcnow(), status_code=status_code,
                                   error=error, duration_ms=int((time.monotonic() - started) * 1000)))
        message.attempts, message.updated_at, message.last_error = attempts, utcnow(), error
        if error is None:
            message.status, message.delivered_at = outbox.DELIVERED, message.updated_at
        elif attempts >= MAX_ATTEMPTS or endpoint is None:
            message.status = outbox.FAILED
            log.error("webhook %s to %s failed for good after %d attempts: %s",
                      message.kind, message.url, attempts, error)
        session.add(message)
        session.commit()
        if message.status == outbox.PENDING:
            log.warning("webhook %s to %s: attempt %d failed, will retry: %s",
                        message.kind, message.url, attempts, error)
            raise WebhookFailed(error)


def _endpoint(rules: Rules, url: str) -> Webhook | None:
    return next((w for w in rules.webhooks if w.url == url), None)


def _post(endpoint: Webhook, message_id: int, body: str) -> tuple[int | None, str | None]:
    """(status code, error or None): 2xx is success; redirects are not followed (the spec says so)."""
    webhook_id = outbox.webhook_id(message_id)
    now = utcnow()
    signature = Signer(os.environ[endpoint.secret_env]).sign(webhook_id, now, body)
    headers = {"Content-Type": "application/json", "User-Agent": "retention-worker-webhooks",
               "webhook-id": webhook_id, "webhook-timestamp": str(int(now.timestamp())),
               "webhook-signature": signature}
    parts = urlsplit(endpoint.url)
    connection_type = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = connection_type(parts.netloc, timeout=TIMEOUT_SECONDS)
    try:
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection.request("POST", path, body=body.encode(), headers=headers)
        response = connection.getresponse()
        answer = response.read(MAX_ANSWER_BYTES).decode(errors="replace").strip()
    except (OSError, http.client.HTTPException) as exc:
        return None, f"{type(exc).__name__}: {exc}"[:500]
    finally:
        connection.close()
    if 200 <= response.status < 300:
        return response.status, None
    return response.status, f"HTTP {response.status}: {answer[:300]}"
