"""What the pages and the ingestion API share per request: a bounded body, database work off the loop.

Both refuse a body over their limit without reading it whole, and run their
database work in a worker thread, where an unavailable database becomes
``DatabaseUnavailable`` for the caller to answer 503 in its own words.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import nullcontext
from typing import TypeVar

import sqlalchemy as sa
from fastapi import Request
from sqlalchemy.engine import Engine
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from worker.database import batch_writer

log = logging.getLogger(__name__)

T = TypeVar("T")


class BodyTooLarge(Exception):
    """The request declares or sends more than the limit."""


class BadContentLength(Exception):
    """The request's Content-Length is not a number."""


class DatabaseUnavailable(Exception):
    """The database did not answer; nothing was written."""


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, or BodyTooLarge as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadContentLength(declared)
        if int(declared) > limit:
            raise BodyTooLarge(declared)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(len(body))
    return bytes(body)


async def in_session(
    engine: Engine, work: Callable[[Session], T], *, commit: bool = False, batch: bool = False
) -> T:
    """``work(session)`` in a worker thread, committed when ``commit``.

    ``batch``: the work writes a batch (up to a thousand rows), in turn with this process's
    other batches (``batch_writer``).
    """

    def run() -> T:
        with batch_writer(engine) if batch else nullcontext(), Session(engine) as session:
            result = work(session)
            if commit:
                session.commit()
            return result

    try:
        return await run_in_threadpool(run)
    except (sa.exc.DBAPIError, sa.exc.TimeoutError) as exc:
        log.error("database unavailable while answering %s", type(exc).__name__)
        raise DatabaseUnavailable(type(exc).__name__) from exc
