"""`enqueue_many`: pipelined enqueue that Dramatiq's own Redis workers consume unchanged."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Middleware, MiddlewareError

from worker.broker import ENQUEUE_CHUNK, QUEUE, enqueue_many


class Received:
    """What the actor saw: (delivery id, message id, options), from several worker threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[int, str, dict[str, Any]]] = []
        self.at: dict[int, int] = {}  # delivery id -> when it ran (ms since the epoch)

    def add(self, delivery_id: int) -> None:
        message = dramatiq.middleware.CurrentMessage.get_current_message()
        if message is None:
            raise RuntimeError("CurrentMessage middleware is missing from the test broker")
        with self.lock:
            self.calls.append((delivery_id, message.message_id, dict(message.options)))
            self.at[delivery_id] = int(time.time() * 1000)

    def ids(self) -> list[int]:
        with self.lock:
            return [delivery_id for delivery_id, _, _ in self.calls]


@pytest.fixture
def broker(redis_url: str) -> Iterator[RedisBroker]:
    broker = RedisBroker(url=redis_url)
    broker.add_middleware(dramatiq.middleware.CurrentMessage())
    try:
        yield broker
    finally:
        broker.close()


def declare(broker: dramatiq.Broker, received: Received, **options: Any) -> dramatiq.Actor[[int], None]:
    return dramatiq.actor(broker=broker, queue_name=QUEUE, actor_name="deliver", **options)(received.add)


def consume(broker: dramatiq.Broker, until: Any, timeout: float = 30) -> None:
    """Run a real Dramatiq worker until ``until()`` holds and the queue is drained."""
    worker = dramatiq.Worker(broker, queues={QUEUE}, worker_threads=4, worker_timeout=50)
    worker.start()
    try:
        deadline = time.monotonic() + timeout
        while not until():
            if time.monotonic() > deadline:
                raise AssertionError(f"the worker did not finish within {timeout}s")
            time.sleep(0.02)
        broker.join(QUEUE, timeout=int(timeout * 1000))
        worker.join()
    finally:
        worker.stop()


def stored_messages(broker: RedisBroker) -> tuple[list[bytes], dict[bytes, bytes]]:
    """The queue's id list and its id -> data hash, exactly as Redis holds them."""
    ids = broker.client.lrange(f"dramatiq:{QUEUE}", 0, -1)
    data = broker.client.hgetall(f"dramatiq:{QUEUE}.msgs")
    return ids, data


def test_bulk_enqueued_messages_are_consumed_exactly_once_each_by_a_dramatiq_worker(broker):
    received = Received()
    actor = declare(broker, received)
    ids = list(range(1, 2 * ENQUEUE_CHUNK + 346))  # three pipelines, the last one partial

    assert enqueue_many(actor, ids) == len(ids)
    consume(broker, lambda: len(received.ids()) >= len(ids))

    assert Counter(received.ids()) == Counter(ids)
    message_ids = [message_id for _, message_id, _ in received.calls]
    assert len(set(message_ids)) == len(ids)
    assert all(uuid.UUID(message_id) for message_id in message_ids)
    redis_ids = [options["redis_message_id"] for _, _, options in received.calls]
    assert len(set(redis_ids)) == len(ids)
    assert stored_messages(broker) == ([], {})  # acked: nothing left behind


def test_bulk_messages_are_stored_as_redis_broker_enqueue_stores_them(broker):
    actor = declare(broker, Received())
    before = int(time.time() * 1000)
    actor.send(7)
    enqueue_many(actor, [7])

    ids, data = stored_messages(broker)
    assert len(ids) == 2 and set(ids) == set(data)
    sent, bulk = (json.loads(data[i]) for i in ids)
    assert list(bulk) == list(sent)  # same fields, same order
    for field in ("queue_name", "actor_name", "args", "kwargs"):
        assert bulk[field] == sent[field]
    assert bulk["options"].keys() == sent["options"].keys() == {"redis_message_id"}
    assert bulk["options"]["redis_message_id"] == ids[1].decode()
    assert bulk["message_id"] != bulk["options"]["redis_message_id"]
    assert before <= bulk["message_timestamp"] <= int(time.time() * 1000)
    heartbeats = broker.client.zrange("dramatiq:__heartbeats__", 0, -1)
    assert broker.broker_id.encode() in heartbeats


def test_a_failing_bulk_message_is_retried_through_the_delay_queue(broker):
    received = Received()
    failed: set[int] = set()

    def flaky(delivery_id: int) -> None:
        received.add(delivery_id)
        with received.lock:
            first = delivery_id not in failed
            failed.add(delivery_id)
        if first:
            raise RuntimeError(f"temporary failure of {delivery_id}")

    actor = dramatiq.actor(broker=broker, queue_name=QUEUE, actor_name="deliver",
                           max_retries=3, min_backoff=10, max_backoff=50)(flaky)
    ids = list(range(1, 51))
    enqueue_many(actor, ids)
    consume(broker, lambda: len(received.ids()) >= 2 * len(ids))

    assert Counter(received.ids()) == Counter({i: 2 for i in ids})
    retried = [options for _, _, options in received.calls if options.get("retries")]
    assert len(retried) == len(ids)
    assert all(options["retries"] == 1 and "requeue_timestamp" in options for options in retried)
    # A retry keeps the message id and gets a new Redis id, as for a message from actor.send.
    by_message: dict[str, set[str]] = {}
    for _, message_id, options in received.calls:
        by_message.setdefault(message_id, set()).add(options["redis_message_id"])
    assert len(by_message) == len(ids)
    assert all(len(redis_ids) == 2 for redis_ids in by_message.values())


def test_a_delayed_message_and_bulk_messages_share_the_queue(broker):
    received = Received()
    actor = declare(broker, received)
    delayed = actor.send_with_options(args=(0,), delay=300)
    enqueue_many(actor, list(range(1, 101)))

    consume(broker, lambda: len(received.ids()) >= 101)

    assert Counter(received.ids()) == Counter(range(101))
    assert received.at[0] >= delayed.options["eta"]


class Stamping(Middleware):
    """Adds an option before enqueue and records what was enqueued, as tracing middleware does."""

    def __init__(self) -> None:
        self.before: list[str] = []
        self.after: list[str] = []

    def before_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int) -> None:
        message.options["trace"] = f"t-{message.args[0]}"
        self.before.append(message.message_id)

    def after_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int) -> None:
        self.after.append(message.message_id)


def test_middleware_enqueue_hooks_see_every_bulk_message_before_it_is_written(broker):
    stamping = Stamping()
    broker.add_middleware(stamping)
    received = Received()
    actor = declare(broker, received)
    ids = list(range(1, ENQUEUE_CHUNK + 11))

    enqueue_many(actor, ids)
    consume(broker, lambda: len(received.ids()) >= len(ids))

    consumed = {message_id: options for _, message_id, options in received.calls}
    assert stamping.before == stamping.after
    assert sorted(stamping.before) == sorted(consumed)
    assert all(consumed[m]["trace"] == f"t-{i}" for i, m, _ in received.calls)


def test_a_middleware_refusing_a_message_stops_the_bulk_enqueue_before_its_chunk_is_written(broker):
    class Refusing(Middleware):
        def before_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message[Any],
                           delay: int) -> None:
            if message.args[0] == ENQUEUE_CHUNK + 5:
                raise MiddlewareError(f"refused {message.args[0]}")

    broker.add_middleware(Refusing())
    actor = declare(broker, Received())

    with pytest.raises(MiddlewareError, match=f"refused {ENQUEUE_CHUNK + 5}"):
        enqueue_many(actor, list(range(1, 2 * ENQUEUE_CHUNK)))

    ids, data = stored_messages(broker)
    assert len(ids) == len(data) == ENQUEUE_CHUNK  # the first chunk only; the sweeper does the rest


def test_other_brokers_get_one_send_per_id():
    broker = StubBroker()
    received = Received()
    broker.add_middleware(dramatiq.middleware.CurrentMessage())
    actor = declare(broker, received)

    assert enqueue_many(actor, [3, 1, 2]) == 3
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        broker.join(QUEUE)
        worker.join()
    finally:
        worker.stop()
        broker.close()
    assert received.ids() == [3, 1, 2]
