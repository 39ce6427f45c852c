"""Dramatiq actors.  Messages carry delivery ids only; the database holds the rest.

Run them on their own with the plain Dramatiq CLI (Redis broker)::

    RETENTION_BROKER_URL=redis://localhost:6379/0 dramatiq worker.actors

Importing this module binds the actors to the global broker, building it
from ``RETENTION_BROKER_URL`` if the caller has not installed one: that is
what Dramatiq's CLI needs from the module it is given.
"""

from __future__ import annotations

import logging
import os

import dramatiq
from sqlmodel import Session

from campaigns.errors import TransientDeliveryError
from campaigns.sending import MAX_ATTEMPTS
from worker import runtime
from worker.broker import QUEUE, install_broker

log = logging.getLogger(__name__)


def _broker() -> dramatiq.Broker:
    try:
        from dramatiq.broker import global_broker
    except ImportError:  # pragma: no cover
        global_broker = None
    if global_broker is not None:
        return global_broker
    return install_broker(os.environ.get("RETENTION_BROKER_URL", ""))


def _retry_transient(retries: int, exc: BaseException) -> bool:
    # Permanent failures are recorded by the Sender and never raised; anything
    # else (a bug, the database away) is retried a few times too, then dead-lettered
    # while the sweeper keeps the delivery itself safe in the outbox.
    return retries < MAX_ATTEMPTS and not isinstance(exc, dramatiq.errors.RateLimitExceeded)


def _backoff_ms(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


broker = _broker()


@dramatiq.actor(
    broker=broker, queue_name=QUEUE, actor_name="deliver",
    retry_when=_retry_transient,
    min_backoff=_backoff_ms("RETENTION_RETRY_MIN_BACKOFF_MS", 15_000),
    max_backoff=_backoff_ms("RETENTION_RETRY_MAX_BACKOFF_MS", 3_600_000),
    time_limit=5 * 60_000,
)
def deliver(delivery_id: int) -> None:
    rt = runtime.current()
    with Session(rt.engine) as session:
        try:
            outcome = rt.sender().deliver(session, delivery_id)
        except TransientDeliveryError as exc:
            log.warning("delivery %s: temporary failure, will retry: %s", delivery_id, exc)
            raise
    log.debug("delivery %s: %s", delivery_id, outcome)
