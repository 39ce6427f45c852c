"""Dramatiq actors.  Messages carry delivery ids only; the database holds the rest.

Actors are declared on a broker by ``declare(broker)`` rather than at import,
so one process (or test session) can hold an in-process broker and a Redis
one without actors leaking between them.  ``worker.consumer`` is the module
to hand to Dramatiq's own CLI.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import dramatiq
from dramatiq.common import compute_backoff
from sqlmodel import Session

from campaigns.delivery.sending import MAX_ATTEMPTS, Outcome
from campaigns.errors import TransientDeliveryError
from campaigns.ingestion import CustomerIn, EventIn, parse_records, record_events, upsert_customers
from worker import observability, runtime
from worker import outgoing_webhooks as webhooks
from worker.broker import QUEUE
from worker.settings import (
    DEFAULT_MAX_BACKOFF_MS,
    DEFAULT_MIN_BACKOFF_MS,
    DEFAULT_SENDING_TIMEOUT_SECONDS,
    Settings,
)

log = logging.getLogger(__name__)

# Delivery ids per deliver_batch message: one claim and a few grouped records per batch.
BATCH = 100
# A small pass is spread over at least this many messages, so every sending thread gets some.
SPREAD = 16


def batch_size(ids: int) -> int:
    """Ids per message for a pass of ``ids``: BATCH, less for a small pass."""
    return max(1, min(BATCH, ids // SPREAD))

# A batch's time limit, in single sends' time limits.
BATCH_TIME_LIMITS = 4


def deliver(delivery_id: int) -> None:
    """Send one delivery if it is still queued (a duplicate message does nothing).

    The outbox sweeper's and your own code's message; a batch retries its temporary
    failures through it too, so Dramatiq's backoff applies per delivery.
    """
    rt = runtime.current()
    if not _within_rate(rt, [delivery_id]):
        return
    started = time.monotonic()
    with _session(rt) as session:
        try:
            outcome = rt.sender(worker=rt.heartbeat.ensure_started()).deliver(session, delivery_id)
        except TransientDeliveryError as exc:
            _count_retry(delivery_id, exc)
            raise
    _count({delivery_id: outcome}, started)


def deliver_batch(delivery_ids: list[int]) -> None:
    """Send those of ``delivery_ids`` still queued: one claim, grouped records (see Sender).

    A temporary failure sends only its own delivery again later, as a ``deliver``
    message delayed by the retry backoff; the rest of the batch is done.
    """
    rt = runtime.current()
    ids = _within_rate(rt, delivery_ids)
    if not ids:
        return
    started = time.monotonic()
    with _session(rt) as session:
        batch = rt.sender(worker=rt.heartbeat.ensure_started()).deliver_many(session, ids)
    _count(batch.outcomes, started)
    broker = dramatiq.get_broker()
    for delivery_id, (attempts, exc) in sorted(batch.retry.items()):
        _count_retry(delivery_id, exc)
        # As Dramatiq's Retries would have retried a `deliver` of it: the same backoff, and
        # the message carries the count on, so later retries keep growing.
        _, delay = compute_backoff(attempts - 1, factor=rt.settings.retry_min_backoff_ms,
                                   max_backoff=rt.settings.retry_max_backoff_ms)
        broker.enqueue(_message("deliver", (delivery_id,), retries=attempts), delay=delay)


def _within_rate(rt: runtime.Runtime, delivery_ids: list[int]) -> list[int]:
    """The ids that `max_send_rate` lets go now; the others come back later, spending no retry."""
    bucket = rt.send_limiter()
    if bucket is None:
        return delivery_ids
    granted = bucket.take(len(delivery_ids))
    rest = delivery_ids[granted:]
    if rest:
        # As many as the bucket gives back in about a second, and the rest after them.
        delay = bucket.wait_ms(min(len(rest), max(1, granted))) + random.randint(0, 200)
        actor, args = ("deliver", (rest[0],)) if len(rest) == 1 else ("deliver_batch", (rest,))
        dramatiq.get_broker().enqueue(_message(actor, args), delay=delay)
    return delivery_ids[:granted]


def _message(actor: str, args: tuple[Any, ...], **options: Any) -> dramatiq.Message[None]:
    return dramatiq.Message(queue_name=QUEUE, actor_name=actor, args=args, kwargs={}, options=options)


def _session(rt: runtime.Runtime) -> Session:
    # Every outbox step commits; re-reading the delivery and customer after each one costs a
    # fifth of the send rate and buys nothing (the claim is the only read that must be fresh).
    return Session(rt.engine, expire_on_commit=False)


def _count(outcomes: dict[int, Outcome], started: float) -> None:
    seconds = time.monotonic() - started  # a batch's sends share their latency
    for delivery_id, outcome in outcomes.items():
        if outcome == Outcome.sent:
            observability.SEND_LATENCY.observe(seconds)
        observability.SEND_OUTCOMES.labels(outcome=outcome.value).inc()
        if outcome in (Outcome.failed, Outcome.bounced):
            observability.SMTP_ERRORS.labels(error_class="permanent").inc()
        log.debug("delivery %s: %s", delivery_id, outcome)


def _count_retry(delivery_id: int, exc: Exception) -> None:
    if isinstance(exc, TransientDeliveryError):
        observability.SMTP_ERRORS.labels(error_class="temporary").inc()
        log.warning("delivery %s: temporary failure, will retry: %s", delivery_id, exc)
    observability.SEND_OUTCOMES.labels(outcome="retry").inc()


def identify(**customer: Any) -> None:
    """Create or update one customer (the fields of a customers CSV row) from your own code."""
    records, errors = parse_records(CustomerIn, [customer])
    _log_rejects("customer", errors)
    if records:
        with Session(runtime.current().engine) as session:
            upsert_customers(session, records)
            session.commit()


def track(**event: Any) -> None:
    """Record one event (customer_id, event, occurred_at, optional id and properties)."""
    rt = runtime.current()
    records, errors = parse_records(EventIn, [event])
    _log_rejects("event", errors)  # malformed: dropped, retrying cannot fix it
    if records:
        with Session(rt.engine) as session:
            result = record_events(
                session, records, non_activity_events=frozenset(rt.rules.defaults.non_activity_events)
            )
            session.commit()
        if result.unknown_customers:
            # The customer's `identify` may still be in the queue: retry later, then give up.
            raise UnknownCustomer(f"no customer with id {result.unknown_customers[0]!r} yet")


class UnknownCustomer(LookupError):
    """An event for a customer not identified yet; retried, since `identify` may be on its way."""


def _log_rejects(kind: str, errors: list[tuple[int, str]]) -> None:
    # Bad data does not get better by retrying: say why and drop it.
    for _, message in errors:
        log.error("%s rejected: %s", kind, message)


def _retry(retries: int, exc: BaseException) -> bool:
    # Permanent failures never get here (the Sender records them).  Anything
    # else — SMTP 4xx, a bug, the database away — is retried a few times; the
    # outbox sweeper keeps the delivery itself safe beyond that.
    return retries < MAX_ATTEMPTS


@dataclass(frozen=True)
class Actors:
    deliver: dramatiq.Actor[[int], None]
    deliver_batch: dramatiq.Actor[[list[int]], None]
    identify: dramatiq.Actor[..., None]
    track: dramatiq.Actor[..., None]
    send_webhook: dramatiq.Actor[[int], None]


def declare(
    broker: dramatiq.Broker,
    *,
    min_backoff_ms: int = DEFAULT_MIN_BACKOFF_MS,
    max_backoff_ms: int = DEFAULT_MAX_BACKOFF_MS,
    time_limit_ms: int = int(DEFAULT_SENDING_TIMEOUT_SECONDS * 1000),
) -> Actors:
    if "deliver" in broker.actors:
        names = ("deliver", "deliver_batch", "identify", "track", "send_webhook")
        return Actors(*(broker.actors[name] for name in names))

    def declare_one(fn: Any, name: str, queue: str = QUEUE, **options: Any) -> Any:
        return dramatiq.actor(broker=broker, queue_name=queue, actor_name=name, **options)(fn)

    return Actors(
        deliver=declare_one(
            deliver,
            "deliver",
            retry_when=_retry,
            min_backoff=min_backoff_ms,
            max_backoff=max_backoff_ms,
            time_limit=time_limit_ms,
        ),
        # Each delivery of a batch has its own retries; a batch retried whole (the database
        # away) claims again only what is still queued.  Its time limit covers a batch
        # of sends, each bounded by the SMTP timeouts.
        deliver_batch=declare_one(
            deliver_batch,
            "deliver_batch",
            max_retries=MAX_ATTEMPTS,
            min_backoff=min_backoff_ms,
            max_backoff=max_backoff_ms,
            time_limit=time_limit_ms * BATCH_TIME_LIMITS,
        ),
        # Ingestion retries what can fail for a while (the database); bad data is dropped.
        identify=declare_one(identify, "identify", max_retries=10, min_backoff=min_backoff_ms),
        track=declare_one(track, "track", max_retries=10, min_backoff=min_backoff_ms),
        # Its own queue and threads: an endpoint that hangs never holds up sending.
        send_webhook=declare_one(
            webhooks.send_webhook,
            "send_webhook",
            webhooks.WEBHOOK_QUEUE,
            max_retries=webhooks.MAX_ATTEMPTS,
            min_backoff=min_backoff_ms,
            max_backoff=max_backoff_ms,
            time_limit=int(webhooks.TIMEOUT_SECONDS * 3000),
        ),
    )


def declare_configured(broker: dramatiq.Broker, settings: Settings) -> Actors:
    """``declare`` with the retry backoff and time limit from the settings."""
    return declare(
        broker,
        min_backoff_ms=settings.retry_min_backoff_ms,
        max_backoff_ms=settings.retry_max_backoff_ms,
        # A send outliving the sending timeout is settled by the sweeper anyway.
        time_limit_ms=int(settings.sending_timeout_seconds * 1000),
    )
