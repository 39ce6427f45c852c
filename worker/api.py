"""Ingestion API: ``POST /api/v1/customers`` and ``POST /api/v1/events``.

A batch with bad items stores the good ones and reports each bad one by its
place in the batch (``customers[3].email: not an email address``): one
malformed record must not cost the other 999.  A batch in which nothing is
valid answers 422, so a client that sends garbage notices.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from sqlmodel import Session

from campaigns.ingestion import CustomerIn, parse_events, parse_records, record_events, upsert_customers
from worker.http_io import BadContentLength, BodyTooLarge, DatabaseUnavailable, in_session, read_body
from worker.runtime import Runtime

log = logging.getLogger(__name__)

MAX_ITEMS = 1000
MAX_BODY_BYTES = 4 * 1024 * 1024
T = TypeVar("T")


def require_api_key(configured: str, request: Request, what: str) -> None:
    """401/403 unless the request carries ``Authorization: Bearer <RETENTION_API_KEY>``."""
    if not configured:
        raise HTTPException(403, f"{what} is disabled: set RETENTION_API_KEY to enable it")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    # Constant-time comparison: the key must not leak through response timing.
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), configured.encode()):
        raise HTTPException(
            401,
            "missing or wrong API key (send `Authorization: Bearer KEY`)",
            headers={"WWW-Authenticate": "Bearer"},
        )


def api_router(rt: Runtime) -> APIRouter:
    router = APIRouter(prefix="/api/v1")

    def authorized(request: Request) -> None:
        require_api_key(rt.settings.api_key, request, "the ingestion API")

    async def items(request: Request, key: str) -> list[Any]:
        try:
            body = await read_body(request, MAX_BODY_BYTES)
        except BodyTooLarge:
            raise HTTPException(
                413, f"body over {MAX_BODY_BYTES // (1024 * 1024)} MiB: send smaller batches"
            ) from None
        except BadContentLength:
            raise HTTPException(400, "the Content-Length header is not a number") from None
        try:
            data = json.loads(body)
        except json.JSONDecodeError as exc:
            raise HTTPException(
                422, f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
            ) from None
        except (ValueError, UnicodeDecodeError):
            raise HTTPException(422, "the body is not UTF-8 JSON") from None
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise HTTPException(422, f'send {{"{key}": [ {{…}}, … ]}}')
        if len(data[key]) > MAX_ITEMS:
            raise HTTPException(413, f"at most {MAX_ITEMS} {key} per call, got {len(data[key])}")
        return list(data[key])

    async def stored(work: Callable[[Session], T]) -> T:
        try:
            return await in_session(rt.engine, work, commit=True, batch=True)
        except DatabaseUnavailable:
            raise HTTPException(
                503, "database unavailable: nothing was stored, retry later", headers={"Retry-After": "30"}
            ) from None

    def answer(key: str, total: int, errors: Sequence[tuple[int, str]], **counts: int) -> JSONResponse:
        listed = [{"index": i, "error": f"{key}[{i}].{message}"} for i, message in sorted(errors)]
        accepted = total - len({i for i, _ in errors})
        return JSONResponse(
            {"accepted": accepted, "rejected": len(listed), **counts, "errors": listed},
            status_code=200 if accepted or not total else 422,
        )

    @router.post("/customers", dependencies=[Depends(authorized)])
    async def customers(request: Request) -> JSONResponse:
        raw = await items(request, "customers")
        good, bad = parse_records(CustomerIn, raw)
        result = await stored(lambda s: upsert_customers(s, good)) if good else None
        return answer(
            "customers",
            len(raw),
            bad,
            inserted=result.inserted if result else 0,
            updated=result.updated if result else 0,
            unchanged=result.unchanged if result else 0,
            duplicates=result.duplicates if result else 0,
        )

    @router.post("/events", dependencies=[Depends(authorized)])
    async def events(request: Request) -> JSONResponse:
        raw = await items(request, "events")
        good, bad = parse_events(raw)
        invalid = {i for i, _ in bad}
        places = [i for i in range(len(raw)) if i not in invalid]  # good[k] came from raw[places[k]]
        non_activity = frozenset(rt.rules.defaults.non_activity_events)
        result = await stored(lambda s: record_events(s, good, non_activity_events=non_activity))
        bad.extend((places[i], message) for i, message in result.errors)
        return answer("events", len(raw), bad, inserted=result.inserted, duplicates=result.duplicates)

    return router
