"""kill -9 of a worker in the middle of a batch (issue 17): nothing lost, nothing sent twice,
and no more `unknown` than one chunk per sending thread (docs/reliability.md)."""

from __future__ import annotations

import time
from collections import Counter
from datetime import timedelta

from campaigns.delivery.sending import CHUNK
from campaigns.models import DeliveryStatus, utcnow
from tests.chaos.support import (
    add_inactive,
    deliveries,
    env_for,
    producer,
    statuses,
    wait_until,
)
from worker.passes import run_pass

THREADS = 2


def test_worker_killed_mid_batch_loses_nothing_sends_nothing_twice_and_bounds_unknown(
    make_runtime, redis_url, chaos_sink, processes
):
    rt = make_runtime(chaos_sink.url, redis_url)
    customers = 300  # batches of 18 (worker.actors.batch_size)
    add_inactive(rt, customers)
    chaos_sink.reply_delay = lambda: 0.005  # slow enough that the kill lands inside a batch
    with producer(rt) as roles:
        report = run_pass(rt, roles.enqueue)
        assert len(report.result.queued_ids) == customers
        worker = processes.worker(env_for(rt), threads=THREADS)
        wait_until(lambda: len(chaos_sink.messages) >= 60, timeout=60,
                   what="a fifth accepted by the server")
        worker.kill()
        killed_at = len(chaos_sink.messages)
        assert killed_at < customers, "the worker finished before the kill: slow the sink down"

        # The next pass, once the dead worker's claims count as stale and its messages as lost,
        # settles what it left and enqueues the rest again: the product's own recovery.
        later = utcnow() + max(rt.sending_timeout, rt.requeue_after) + timedelta(seconds=1)
        recovery = run_pass(rt, roles.enqueue, now=later)
        unknown_after_kill = statuses(rt)[DeliveryStatus.unknown]
        assert unknown_after_kill <= THREADS * CHUNK
        assert recovery.swept_ids  # what never left goes out again

        processes.worker(env_for(rt), threads=THREADS)
        wait_until(lambda: not {"queued", "sending"} & set(statuses(rt)), timeout=120,
                   what=lambda: f"every delivery settled: {statuses(rt)}")
        time.sleep(0.3)  # room for a wrong resend to arrive
    rows = deliveries(rt)
    sent = {r.message_id for r in rows if r.status == DeliveryStatus.sent}
    unknown = {r.message_id for r in rows if r.status == DeliveryStatus.unknown}
    received = chaos_sink.received_ids()
    assert len(rows) == customers
    assert {r.status for r in rows} <= {DeliveryStatus.sent, DeliveryStatus.unknown}  # lost: 0
    assert Counter(received).most_common(1)[0][1] == 1  # sent twice: 0
    assert sent <= set(received)  # every `sent` really arrived
    assert set(received) - sent <= unknown  # what arrived unrecorded is held, never resent
    assert len(unknown) == unknown_after_kill <= THREADS * CHUNK
    print(f"\nchaos: kill -9 after {killed_at} of {customers} accepted: {len(sent)} sent, "
          f"{len(unknown)} unknown (bound {THREADS} threads × {CHUNK}), lost 0, duplicates 0")
