"""The Dramatiq broker: Redis when ``RETENTION_BROKER_URL`` is set, in-process otherwise."""

from __future__ import annotations

import logging

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker

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


def is_in_process(broker: dramatiq.Broker) -> bool:
    return isinstance(broker, StubBroker)


def enqueue_many(actor: dramatiq.Actor[[int], None], ids: list[int]) -> int:
    """Put one message per id on the broker; returns how many were enqueued."""
    for delivery_id in ids:
        actor.send(delivery_id)
    return len(ids)
