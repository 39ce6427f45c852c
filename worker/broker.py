"""The Dramatiq broker: Redis when ``RETENTION_BROKER_URL`` is set, in-process otherwise."""

from __future__ import annotations

import logging
from typing import Any
from uuid import uuid4

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.common import current_millis
from dramatiq.middleware import Middleware

from campaigns.sql import chunks

log = logging.getLogger(__name__)

QUEUE = "retention"


def build_broker(url: str) -> dramatiq.Broker:
    if url:
        return RedisBroker(url=url)
    # The in-process queue of `retention run`: same actors, same retries, no server.
    return StubBroker()


def install_broker(url: str) -> dramatiq.Broker:
    """Make the broker global (Dramatiq binds actors to it when they are declared)."""
    broker = build_broker(url)
    dramatiq.set_broker(broker)
    return broker


class _SecondWorkerMeant(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "_WorkerMiddleware" not in record.getMessage()


def start_worker(broker: dramatiq.Broker, queue: str, threads: int) -> dramatiq.Worker:
    """A consumer of ``queue`` with threads of its own (sending and webhooks each get one, so a
    slow webhook endpoint never takes a sending thread).  Dramatiq warns when a broker gets a
    second worker's middleware; here that is by design, so the warning does not reach the log."""
    logger = logging.getLogger(f"dramatiq.broker.{type(broker).__name__}")
    if not any(isinstance(f, _SecondWorkerMeant) for f in logger.filters):
        logger.addFilter(_SecondWorkerMeant())
    worker = dramatiq.Worker(broker, queues={queue}, worker_threads=threads, worker_timeout=100)
    worker.start()
    return worker


def is_in_process(broker: dramatiq.Broker) -> bool:
    return isinstance(broker, StubBroker)


def enqueue_many(actor: dramatiq.Actor[Any, None], ids: list[int], *, batch: int | None = None) -> int:
    """Put one message per id (or per ``batch`` ids, as a list) on the broker; how many ids went.

    On Redis the messages go through one pipeline per ``ENQUEUE_CHUNK`` ids
    (Dramatiq itself has no bulk enqueue: ``actor.send`` costs a round trip
    and a Lua call per message); other brokers get one ``send`` per id.
    """
    broker = actor.broker
    args: list[tuple[Any, ...]] = (
        [(delivery_id,) for delivery_id in ids] if batch is None
        else [(list(chunk),) for chunk in chunks(ids, batch)]
    )
    if isinstance(broker, RedisBroker):
        for chunk in chunks(args, ENQUEUE_CHUNK):
            _enqueue_redis_chunk(broker, actor, list(chunk))
        return len(ids)
    for one in args:
        actor.send(*one)
    return len(ids)


# Big enough that the round trip vanishes, small enough that one MULTI holds
# Redis for well under a millisecond and a chunk's payloads stay a few hundred KB.
ENQUEUE_CHUNK = 1000


def _enqueue_redis_chunk(
    broker: RedisBroker, actor: dramatiq.Actor[Any, None], args: list[tuple[Any, ...]]
) -> None:
    """Write what ``RedisBroker.enqueue`` writes for each message's ``args``, in one MULTI/EXEC.

    Dramatiq's ``dispatch.lua`` "enqueue" does, per message: ZADD the broker id
    to ``__heartbeats__``, HSET ``<ns>:<queue>.msgs`` redis_message_id -> data,
    RPUSH ``<ns>:<queue>`` redis_message_id.  Here the same keys get the same
    values, the heartbeat once per chunk.  Data is written before ids, and the
    transaction makes a chunk all-or-nothing, so a consumer never pops an id
    whose data is missing and a dropped connection leaves no orphans (the
    outbox sweeper re-enqueues a chunk that failed).  What the script also
    does, now and then, is queue maintenance (requeueing dead workers'
    messages, expiring dead letters): a 1-in-1000 chance per command that the
    workers' own fetches already give it, so producers skipping it loses nothing.
    """
    queue_name = actor.queue_name
    # As RedisBroker.enqueue: a fresh redis_message_id per enqueue, since a
    # retried message keeps its message_id but must not collide in Redis.
    messages: list[dramatiq.Message[None]] = [
        dramatiq.Message(
            queue_name=queue_name, actor_name=actor.actor_name, args=one, kwargs={},
            options={"redis_message_id": str(uuid4())},
        )
        for one in args
    ]
    before, after = _enqueue_hooks(broker)
    if before:
        for message in messages:
            broker.emit_before("enqueue", message, None)
    namespace = broker.namespace
    pipe = broker.client.pipeline(transaction=True)
    pipe.zadd(f"{namespace}:__heartbeats__", {broker.broker_id: current_millis()})
    pipe.hset(
        f"{namespace}:{queue_name}.msgs",
        mapping={m.options["redis_message_id"]: m.encode() for m in messages},
    )
    pipe.rpush(f"{namespace}:{queue_name}", *(m.options["redis_message_id"] for m in messages))
    pipe.execute()
    log.debug("enqueued %d messages on queue %r in one pipeline", len(messages), queue_name)
    if after:
        for message in messages:
            broker.emit_after("enqueue", message, None)


def _enqueue_hooks(broker: dramatiq.Broker) -> tuple[bool, bool]:
    """Whether any middleware overrides before_enqueue / after_enqueue.

    Calling the base class's no-op hooks for 100k messages costs more than
    writing them to Redis; when a middleware does override one (Prometheus
    counts enqueues), every message goes through ``emit_before``/``emit_after``
    exactly as ``RedisBroker.enqueue`` would send it.
    """

    def overridden(hook: str) -> bool:
        base = getattr(Middleware, hook)
        return any(getattr(type(m), hook, base) is not base for m in broker.middleware)

    return overridden("before_enqueue"), overridden("after_enqueue")
