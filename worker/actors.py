"""Dramatiq actors.  Messages carry delivery ids only; the database holds the rest.

Actors are declared on a broker by ``declare(broker)`` rather than at import,
so one process (or test session) can hold an in-process broker and a Redis
one without actors leaking between them.  ``worker.consumer`` is the module
to hand to Dramatiq's own CLI.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import dramatiq
from sqlmodel import Session

from campaigns.errors import TransientDeliveryError
from campaigns.sending import MAX_ATTEMPTS
from worker import runtime
from worker.broker import QUEUE

log = logging.getLogger(__name__)

DEFAULT_MIN_BACKOFF_MS = 15_000
DEFAULT_MAX_BACKOFF_MS = 3_600_000


def deliver(delivery_id: int) -> None:
    """Send one delivery if it is still queued (a duplicate message does nothing)."""
    rt = runtime.current()
    with Session(rt.engine) as session:
        try:
            outcome = rt.sender().deliver(session, delivery_id)
        except TransientDeliveryError as exc:
            log.warning("delivery %s: temporary failure, will retry: %s", delivery_id, exc)
            raise
    log.debug("delivery %s: %s", delivery_id, outcome)


def _retry(retries: int, exc: BaseException) -> bool:
    # Permanent failures never get here (the Sender records them).  Anything
    # else — SMTP 4xx, a bug, the database away — is retried a few times; the
    # outbox sweeper keeps the delivery itself safe beyond that.
    return retries < MAX_ATTEMPTS


@dataclass(frozen=True)
class Actors:
    deliver: dramatiq.Actor[[int], None]


def declare(
    broker: dramatiq.Broker, *, min_backoff_ms: int = DEFAULT_MIN_BACKOFF_MS,
    max_backoff_ms: int = DEFAULT_MAX_BACKOFF_MS,
) -> Actors:
    existing = broker.actors.get("deliver") if hasattr(broker, "actors") else None
    if existing is not None:
        return Actors(deliver=existing)
    return Actors(
        deliver=dramatiq.actor(  # type: ignore[call-overload]
            deliver, broker=broker, queue_name=QUEUE, actor_name="deliver",
            retry_when=_retry, min_backoff=min_backoff_ms, max_backoff=max_backoff_ms,
            time_limit=5 * 60_000,
        ),
    )
