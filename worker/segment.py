"""Segment-compatible tracking API: ``POST /v1/{identify,track,page,screen,group,alias,batch}``.

Existing Segment SDKs and CDP destinations (RudderStack, Jitsu, …) work unchanged when
their host points here.  What each message type becomes is in ``campaigns.ingestion.segment``.

Authentication as Segment's: HTTP Basic with the API key as user name (any password),
or ``writeKey`` in the body, which is what analytics-python sends.  Bodies may be gzip
(``Content-Encoding: gzip``).  Answers follow what the SDKs retry: 200 once anything is
stored (``{"success": true, …}`` with the rejected messages listed), 4xx for what
retrying cannot fix (key, JSON, size, nothing valid), 503 when the database is away.
Error bodies carry ``code`` and ``message``, which the SDKs read.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import zlib
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlmodel import Session

from campaigns.ingestion.segment import TYPES, TrackingResult, record_messages
from campaigns.models import utcnow
from worker.http_io import BadContentLength, BodyTooLarge, DatabaseUnavailable, in_session, read_body
from worker.runtime import Runtime

log = logging.getLogger(__name__)

# Segment takes 500 KB a batch; CDPs that batch harder get room, decompressed too.
MAX_BODY_BYTES = 4 * 1024 * 1024


class Refused(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def segment_router(rt: Runtime) -> APIRouter:
    router = APIRouter(prefix="/v1")

    async def handle(request: Request, kind: str | None) -> JSONResponse:
        try:
            body = await _json_body(request)
            _authorize(rt.settings.api_key, request, body)
            if kind is None:
                messages = body.get("batch")
                if not isinstance(messages, list) and isinstance(body.get("type"), str):
                    messages = [body]  # one message, as webhook-style CDP destinations post them
                if not isinstance(messages, list):
                    raise Refused(400, "invalid_request", 'send {"batch": [ {…}, … ]}')
            else:
                messages = [{**body, "type": kind}]
            context = body.get("context") if kind is None and isinstance(body.get("context"), dict) else None
            result = await _store(rt, messages, context)
        except Refused as refused:
            return JSONResponse({"success": False, "code": refused.code, "message": refused.message},
                                status_code=refused.status, headers=refused.headers)
        errors = [{"index": i, "error": m} for i, m in result.errors]
        answer = {"success": True, "stored": {"customers": result.customers, "events": result.events},
                  "duplicates": result.duplicates, "acknowledged": result.acknowledged,
                  "rejected": result.rejected, "errors": errors}
        if messages and result.rejected == len(messages):
            # Nothing usable: a 4xx, which the SDKs do not retry (retrying cannot fix it).
            first = errors[0]["error"]
            return JSONResponse({**answer, "success": False, "code": "invalid_request",
                                 "message": first if kind else f"batch[{errors[0]['index']}].{first}"},
                                status_code=400)
        return JSONResponse(answer)

    def endpoint(kind: str | None) -> Any:
        async def receive(request: Request) -> JSONResponse:
            return await handle(request, kind)

        receive.__name__ = f"segment_{kind or 'batch'}"
        return receive

    for kind in TYPES:
        router.add_api_route(f"/{kind}", endpoint(kind), methods=["POST"])
    router.add_api_route("/batch", endpoint(None), methods=["POST"])
    return router


async def _json_body(request: Request) -> dict[str, Any]:
    too_large = Refused(413, "too_large", f"the body is over {MAX_BODY_BYTES // (1024 * 1024)} MiB")
    try:
        data = await read_body(request, MAX_BODY_BYTES)
    except BodyTooLarge:
        raise too_large from None
    except BadContentLength:
        raise Refused(400, "invalid_request", "the Content-Length is not a number") from None
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding == "gzip":
        data = _gunzip(data)
    elif encoding not in ("", "identity"):
        raise Refused(415, "unsupported_encoding", f"Content-Encoding {encoding!r}: send gzip or plain JSON")
    try:
        body = json.loads(data)
    except json.JSONDecodeError as exc:
        raise Refused(400, "invalid_json",
                      f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except (ValueError, UnicodeDecodeError):
        raise Refused(400, "invalid_json", "the body is not UTF-8 JSON") from None
    if not isinstance(body, dict):
        raise Refused(400, "invalid_request", "the body must be a JSON object")
    return body


def _gunzip(data: bytes) -> bytes:
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        # Bounded: a small gzip bomb must not become gigabytes in memory.
        out = inflater.decompress(data, MAX_BODY_BYTES + 1)
    except zlib.error as exc:
        raise Refused(400, "invalid_gzip", f"Content-Encoding is gzip but the body is not ({exc})") from None
    if len(out) > MAX_BODY_BYTES or inflater.unconsumed_tail:
        raise Refused(413, "too_large",
                      f"the body is over {MAX_BODY_BYTES // (1024 * 1024)} MiB uncompressed")
    if not inflater.eof:
        raise Refused(400, "invalid_gzip", "the gzip body is truncated")
    return out


def _authorize(configured: str, request: Request, body: dict[str, Any]) -> None:
    if not configured:
        raise Refused(403, "disabled", "the tracking API is disabled: set RETENTION_API_KEY to enable it")
    given = _given_key(request.headers.get("authorization", ""), body)
    # Constant-time comparison: the key must not leak through response timing.
    if given is None or not hmac.compare_digest(given.encode(), configured.encode()):
        raise Refused(401, "unauthorized",
                      "missing or wrong write key: use HTTP Basic auth with the API key as user name",
                      headers={"WWW-Authenticate": 'Basic realm="retention"'})


def _given_key(header: str, body: dict[str, Any]) -> str | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip(), validate=True).decode().partition(":")[0]
        except (binascii.Error, UnicodeDecodeError):
            return None
    if scheme.lower() == "bearer":
        return value.strip()
    key = body.get("writeKey")
    return key if isinstance(key, str) else None


async def _store(rt: Runtime, messages: list[Any], context: dict[str, Any] | None) -> TrackingResult:
    non_activity = frozenset(rt.rules.defaults.non_activity_events)
    received_at = utcnow()

    def work(session: Session) -> TrackingResult:
        return record_messages(session, messages, non_activity_events=non_activity,
                               received_at=received_at, batch_context=context)

    try:
        return await in_session(rt.engine, work, commit=True, batch=True)
    except DatabaseUnavailable:
        raise Refused(503, "unavailable", "database unavailable: nothing was stored, retry later",
                      headers={"Retry-After": "30"}) from None
