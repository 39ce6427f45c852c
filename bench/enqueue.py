"""P2: 100k delivery ids onto Redis.

Ours is ``worker.broker.enqueue_many`` (pipelined, chunks of 1000); the
references are Dramatiq's own ``actor.send`` loop and a raw redis-py pipeline
that writes the same keys with the same kind of payload (two uuid4s and a
JSON body per message, built with plain dicts).  Every side starts on an empty
database and is checked to have left exactly ``n`` messages.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import redis

from worker.actors import declare
from worker.broker import ENQUEUE_CHUNK, QUEUE, build_broker, enqueue_many

QUEUE_KEY = f"dramatiq:{QUEUE}"


def _check(client: redis.Redis, n: int) -> None:
    queued, stored = client.llen(QUEUE_KEY), client.hlen(f"{QUEUE_KEY}.msgs")
    if queued != n or stored != n:
        raise RuntimeError(f"expected {n} messages, Redis holds {queued} ids and {stored} bodies")


def _timed(redis_url: str, n: int, work: Any) -> dict[str, Any]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    ids = list(range(1, n + 1))
    started = time.perf_counter()
    work(ids)
    seconds = time.perf_counter() - started
    _check(client, n)
    client.flushdb()
    client.close()
    return {"seconds": seconds, "per_second": n / seconds}


def ours(redis_url: str, n: int) -> dict[str, Any]:
    broker: Any = build_broker(redis_url)
    actor = declare(broker).deliver
    try:
        return _timed(redis_url, n, lambda ids: enqueue_many(actor, ids))
    finally:
        broker.close()


def send_loop(redis_url: str, n: int) -> dict[str, Any]:
    broker: Any = build_broker(redis_url)
    actor = declare(broker).deliver

    def work(ids: list[int]) -> None:
        for delivery_id in ids:
            actor.send(delivery_id)

    try:
        return _timed(redis_url, n, work)
    finally:
        broker.close()


def raw_pipeline(redis_url: str, n: int) -> dict[str, Any]:
    client = redis.Redis.from_url(redis_url)

    def work(ids: list[int]) -> None:
        for start in range(0, len(ids), ENQUEUE_CHUNK):
            bodies: dict[Any, Any] = {}
            for delivery_id in ids[start:start + ENQUEUE_CHUNK]:
                redis_id = str(uuid.uuid4())
                bodies[redis_id] = json.dumps({
                    "queue_name": QUEUE, "actor_name": "deliver", "args": [delivery_id], "kwargs": {},
                    "options": {"redis_message_id": redis_id}, "message_id": str(uuid.uuid4()),
                    "message_timestamp": int(time.time() * 1000),
                }, separators=(",", ":")).encode()
            pipe = client.pipeline(transaction=False)
            pipe.hset(f"{QUEUE_KEY}.msgs", mapping=bodies)
            pipe.rpush(QUEUE_KEY, *bodies)
            pipe.execute()

    try:
        return _timed(redis_url, n, work)
    finally:
        client.close()


def lua_pipeline(redis_url: str, n: int) -> dict[str, Any]:
    """Tried first: Dramatiq's own dispatch script once per message, pipelined."""
    broker: Any = build_broker(redis_url)
    actor = declare(broker).deliver
    script = broker.scripts["dispatch"]

    def work(ids: list[int]) -> None:
        max_unpack = broker._max_unpack_size()
        for start in range(0, len(ids), ENQUEUE_CHUNK):
            pipe = broker.client.pipeline(transaction=False)
            for delivery_id in ids[start:start + ENQUEUE_CHUNK]:
                message = actor.message(delivery_id).copy(options={"redis_message_id": str(uuid.uuid4())})
                script(keys=[broker.namespace], args=[
                    "enqueue", int(time.time() * 1000), QUEUE, broker.broker_id, broker.heartbeat_timeout,
                    broker.dead_message_ttl, 0, max_unpack, message.options["redis_message_id"],
                    message.encode()], client=pipe)
            pipe.execute()

    try:
        return _timed(redis_url, n, work)
    finally:
        broker.close()


def measure(redis_url: str, n: int) -> dict[str, dict[str, Any]]:
    from bench import child

    return {side: child.run(f"bench.enqueue:{side}", redis_url=redis_url, n=n)
            for side in ("ours", "raw_pipeline", "send_loop", "lua_pipeline")}
