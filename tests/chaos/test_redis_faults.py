"""The broker misbehaves: Redis restarted under a running worker, flushed, or down while the
planner enqueues (issue 8, scenarios 6, 7, 8).  The database is the outbox: whatever Redis
loses, the sweeper puts back, and the conditional claim makes every duplicate harmless."""

from __future__ import annotations

import time
from collections import Counter
from datetime import timedelta

import pytest
import redis
from fastapi.testclient import TestClient

from campaigns.models import utcnow
from tests.chaos.support import (
    SQLITE_ONLY,
    add_inactive,
    deliveries,
    env_for,
    producer,
    statuses,
    wait_until,
)
from worker.daemon import start_roles
from worker.passes import run_pass
from worker.web import create_app

# A pass run this far ahead finds every message enqueued now presumed lost.
ONE_SECOND = timedelta(seconds=1)


def assert_each_sent_once(rt, sink, count: int) -> None:
    rows = deliveries(rt)
    assert [r.status for r in rows] == ["sent"] * count, rows
    assert all(r.attempts == 1 for r in rows), rows  # no delivery was claimed twice
    recipients = Counter(m.rcpt_tos[0] for m in sink.messages)
    assert len(recipients) == count and set(recipients.values()) == {1}
    assert len(sink.data_started) == count  # not one SMTP transaction more


@pytest.mark.chaos
@SQLITE_ONLY  # about the broker; the outbox side is covered on both backends below
def test_redis_restarted_under_a_running_worker_processes_each_message_once(
    make_runtime, redis_process, chaos_sink, processes
):
    rt = make_runtime(chaos_sink.url, redis_process.url(1))
    chaos_sink.reply_delay = lambda: 0.1
    add_inactive(rt, 20)
    with producer(rt) as roles:
        assert run_pass(rt, roles.enqueue).enqueued == 20
    worker = processes.worker(env_for(rt), threads=2)
    chaos_sink.wait_for(4, timeout=30)
    redis_process.stop()  # with messages still queued (kept on disk: appendonly)
    time.sleep(1.5)
    assert worker.alive, worker.output
    assert statuses(rt)["queued"] > 0
    redis_process.start()
    wait_until(lambda: statuses(rt) == {"sent": 20}, timeout=60,
               what=lambda: f"the rest after the restart: {statuses(rt)}\n{worker.output}")
    time.sleep(0.5)  # room for a duplicate to show up
    assert worker.terminate() == 0, worker.output
    assert_each_sent_once(rt, chaos_sink, 20)


def test_redis_flushed_mid_stream_the_sweeper_re_enqueues_none_lost_none_doubled(
    make_runtime, redis_url, chaos_sink
):
    rt = make_runtime(chaos_sink.url, redis_url)
    chaos_sink.reply_delay = lambda: 0.05
    add_inactive(rt, 20)
    roles = start_roles(rt, workers=1)
    try:
        run_pass(rt, roles.enqueue)
        chaos_sink.wait_for(3, timeout=30)
        redis.Redis.from_url(redis_url).flushdb()  # every queued message is gone
        sent_before = wait_until(_stable_count(chaos_sink), timeout=10, what="the worker idle")
        lost = statuses(rt)["queued"]
        assert lost > 0 and sent_before + lost == 20
        report = run_pass(rt, roles.enqueue, now=utcnow() + rt.requeue_after + ONE_SECOND)
        assert len(report.swept_ids) == lost
        wait_until(lambda: statuses(rt) == {"sent": 20}, timeout=30, what=lambda: f"the rest: {statuses(rt)}")
        time.sleep(0.3)
    finally:
        roles.stop()
    assert_each_sent_once(rt, chaos_sink, 20)


def test_redis_down_while_the_planner_enqueues_keeps_deliveries_queued_until_it_returns(
    make_runtime, redis_process, chaos_sink
):
    rt = make_runtime(chaos_sink.url, redis_process.url(1))
    add_inactive(rt, 10)
    with producer(rt) as roles:
        redis_process.stop()
        with pytest.raises(redis.exceptions.ConnectionError):
            run_pass(rt, roles.enqueue)  # planned and committed, then the enqueue fails
    assert statuses(rt) == {"queued": 10}
    health = TestClient(create_app(rt)).get("/healthz")  # liveness: 200, the trouble in the body
    assert health.status_code == 200 and health.json()["status"] != "ok"
    assert health.json()["last_pass"]["error"].startswith("ConnectionError")
    assert health.json()["broker"] == "error: ConnectionError"

    redis_process.start()
    roles = start_roles(rt, workers=2)
    try:
        report = run_pass(rt, roles.enqueue, now=utcnow() + rt.requeue_after + ONE_SECOND)
        assert len(report.swept_ids) == 10
        wait_until(lambda: statuses(rt) == {"sent": 10}, timeout=30,
                   what=lambda: f"the sends: {statuses(rt)}")
        time.sleep(0.3)
    finally:
        roles.stop()
    assert_each_sent_once(rt, chaos_sink, 10)


def _stable_count(sink):
    """A predicate true (returning the count) once no message arrived for half a second."""
    seen = {"count": -1, "since": time.monotonic()}

    def stable() -> int | None:
        count = len(sink.messages)
        if count != seen["count"]:
            seen.update(count=count, since=time.monotonic())
            return None
        return count if time.monotonic() - seen["since"] > 0.5 else None

    return stable
