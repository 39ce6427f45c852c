"""Workers that die: `kill -9` before and after the mail server has the message, at random
moments, and deliveries that crash or kill their worker every time (issue 8, scenarios 1, 2, 11).

The line between "may be resent" and "held as unknown" is the hand-over mark the worker
records right before SMTP DATA (campaigns.delivery.outbox.mark_handing_over_many).
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlmodel import Session, col

from campaigns.delivery.outbox import MAX_ATTEMPTS
from campaigns.models import Customer, Delivery, DeliveryStatus, utcnow
from tests.chaos.support import (
    PYTHON,
    SQLITE_ONLY,
    add_inactive,
    deliveries,
    env_for,
    jitter,
    producer,
    settle_dead_workers,
    statuses,
    sweep,
    wait_until,
)
from worker.daemon import start_roles
from worker.passes import run_pass
from worker.web import create_app

DYING_WORKER = Path(__file__).with_name("dying_worker.py")


def test_worker_killed_before_the_message_left_sends_it_again_exactly_once(
    make_runtime, redis_url, chaos_sink, processes
):
    rt = make_runtime(chaos_sink.url, redis_url)
    add_inactive(rt, 1)
    chaos_sink.hold("rcpt")  # the worker has claimed the delivery and is talking SMTP
    with producer(rt) as roles:
        run_pass(rt, roles.enqueue)
        worker = processes.worker(env_for(rt))
        assert chaos_sink.reached.wait(30), worker.output
        worker.kill()
        chaos_sink.resume()
        [row] = deliveries(rt)
        assert (row.status, row.message_id) == (DeliveryStatus.sending, None)

        assert settle_dead_workers(rt) == []  # none is `unknown`: nothing can have left
        [row] = deliveries(rt)
        assert row.status == DeliveryStatus.queued
        assert "before handing the message over" in (row.last_error or "")
        processes.worker(env_for(rt))
        assert sweep(rt, roles.enqueue) == [row.id]
        wait_until(lambda: deliveries(rt)[0].status == DeliveryStatus.sent, timeout=30, what="the resend")
    [row] = deliveries(rt)
    assert chaos_sink.received_ids() == [row.message_id]
    assert row.attempts == 2
    assert sum(chaos_sink.rcpt_counts.values()) == 2  # the aborted conversation and the resend


def test_worker_killed_after_the_server_accepted_is_held_as_unknown_and_never_resent(
    make_runtime, redis_url, chaos_sink, processes, caplog
):
    rt = make_runtime(chaos_sink.url, redis_url)
    add_inactive(rt, 1)
    chaos_sink.hold("accepted")  # the server has the mail; its 250 has not reached the worker
    with producer(rt) as roles:
        run_pass(rt, roles.enqueue)
        worker = processes.worker(env_for(rt))
        assert chaos_sink.reached.wait(30), worker.output
        worker.kill()
        chaos_sink.resume()
        [row] = deliveries(rt)
        assert row.status == DeliveryStatus.sending
        assert chaos_sink.received_ids() == [row.message_id]  # recorded before DATA

        # The next pass after the sending timeout settles it, says so, and resends nothing.
        processes.worker(env_for(rt))
        with caplog.at_level(logging.ERROR, logger="worker.passes"):
            report = run_pass(rt, roles.enqueue, now=utcnow() + rt.sending_timeout + timedelta(seconds=1))
        assert "1 deliveries were left in `sending` by a worker that died; marked `unknown`" in caplog.text
        assert report.swept_ids == [] and sweep(rt, roles.enqueue) == []
        time.sleep(0.5)  # room for a wrong resend to arrive
    [row] = deliveries(rt)
    assert row.status == DeliveryStatus.unknown
    assert len(chaos_sink.messages) == 1
    ambiguous = [r for r in deliveries(rt) if r.status == DeliveryStatus.unknown]
    delivered_without_record = [
        m for m in chaos_sink.received_ids()
        if m not in {r.message_id for r in deliveries(rt) if r.status == DeliveryStatus.sent}
    ]
    assert len(ambiguous) == len(delivered_without_record) == 1
    metrics = TestClient(create_app(rt)).get("/metrics").text
    assert 'retention_deliveries{campaign="we-miss-you",status="unknown"} 1.0' in metrics


@pytest.mark.chaos
def test_workers_killed_at_random_moments_lose_nothing_and_send_nothing_twice(
    make_runtime, redis_url, chaos_sink, processes
):
    rt = make_runtime(chaos_sink.url, redis_url)
    customers = 60
    add_inactive(rt, customers)
    chaos_sink.reply_delay = jitter(0.02, 0.2, seed=8)  # a slow server: kills land mid-send
    rng = random.Random(8)
    kills = 0
    with producer(rt) as roles:
        run_pass(rt, roles.enqueue)
        for _ in range(2):
            worker = processes.worker(env_for(rt), threads=3)
            time.sleep(rng.uniform(0.3, 0.9))
            worker.kill()
            kills += 1
            settle_dead_workers(rt)  # what the next pass does once the sending timeout has passed
            sweep(rt, roles.enqueue)
        last = processes.worker(env_for(rt), threads=3)
        sweep(rt, roles.enqueue)
        wait_until(lambda: not {"queued", "sending"} & set(statuses(rt)), timeout=60,
                   what=lambda: f"every delivery settled: {statuses(rt)}")
        assert last.terminate() == 0, last.output
    rows = deliveries(rt)
    sent = {r.message_id for r in rows if r.status == DeliveryStatus.sent}
    unknown = {r.message_id for r in rows if r.status == DeliveryStatus.unknown}
    received = chaos_sink.received_ids()
    assert {r.status for r in rows} <= {DeliveryStatus.sent, DeliveryStatus.unknown}  # lost: 0
    assert len(rows) == customers
    assert Counter(received).most_common(1)[0][1] == 1  # duplicates: 0
    assert sent <= set(received)  # every `sent` really arrived
    # The ambiguous ones are exactly those the server may have: counted, never resent.
    assert set(received) - sent <= unknown
    print(f"\nchaos: {customers} deliveries, {kills} workers killed: {len(sent)} sent, "
          f"{len(unknown)} unknown ({len(set(received) & unknown)} of them delivered), "
          f"lost 0, duplicates 0")


def test_delivery_that_crashes_every_time_is_failed_after_max_attempts_not_redelivered_forever(
    make_runtime, redis_url, smtp_sink
):
    rt = make_runtime(smtp_sink.url, redis_url)
    good = add_inactive(rt, 2)
    [poison] = add_inactive(rt, 1)
    with Session(rt.engine) as session:
        # Bad data written behind the importer's back: composing the email raises TypeError.
        customer = session.get(Customer, poison)
        assert customer is not None
        customer.attributes = [1, 2]  # type: ignore[assignment]
        session.add(customer)
        session.commit()
    roles = start_roles(rt, workers=2)
    try:
        run_pass(rt, roles.enqueue)
        wait_until(lambda: statuses(rt) == {"sent": 2, "failed": 1}, timeout=30,
                   what=lambda: f"the poison delivery given up: {deliveries(rt)}")
        assert sweep(rt, roles.enqueue) == []  # the sweeper does not bring it back
        time.sleep(0.3)
    finally:
        roles.stop()
    [row] = [r for r in deliveries(rt) if r.customer_id == poison]
    assert row.attempts == MAX_ATTEMPTS
    assert row.last_error is not None
    assert row.last_error.startswith(f"gave up after {MAX_ATTEMPTS} attempts: crashed while composing: "
                                     "TypeError")
    assert sorted(m.rcpt_tos[0] for m in smtp_sink.messages) == sorted(
        r.email for r in customers_by_id(rt, good))


@pytest.mark.chaos
@SQLITE_ONLY  # the outbox logic is the same on both; six process deaths take a while
def test_delivery_that_kills_its_worker_every_time_is_failed_after_max_attempts(
    make_runtime, redis_url, smtp_sink, processes
):
    rt = make_runtime(smtp_sink.url, redis_url)
    good = add_inactive(rt, 2)
    [doomed] = add_inactive(rt, 1)
    [doomed_email] = [c.email for c in customers_by_id(rt, [doomed])]
    env = env_for(rt, CHAOS_DIE_COMPOSING_FOR=doomed_email)
    with producer(rt) as roles:
        run_pass(rt, roles.enqueue)
        # Two process deaths stand for six: the first four are taken as already happened.
        with Session(rt.engine) as session:
            session.execute(sa.update(Delivery).where(col(Delivery.customer_id) == doomed)
                            .values(attempts=MAX_ATTEMPTS - 2))
            session.commit()
        for attempt in range(MAX_ATTEMPTS - 1, MAX_ATTEMPTS + 1):
            worker = processes.command(
                [PYTHON, str(DYING_WORKER), "--threads", "1"], env=env)
            assert worker.popen.wait(60) == -9, worker.output  # SIGKILLed itself on the doomed one
            settle_dead_workers(rt)
            [row] = [r for r in deliveries(rt) if r.customer_id == doomed]
            assert row.attempts == attempt
            if attempt < MAX_ATTEMPTS:
                assert row.status == DeliveryStatus.queued
                assert row.id in sweep(rt, roles.enqueue)
        assert row.status == DeliveryStatus.failed
        assert row.last_error == f"the worker died during each of {MAX_ATTEMPTS} attempts; not retried"
        # A healthy worker finishes the rest; the failed one is not brought back.
        processes.worker(env)
        assert row.id not in sweep(rt, roles.enqueue)
        wait_until(lambda: statuses(rt) == {"sent": 2, "failed": 1}, timeout=30,
                   what=lambda: f"the others sent: {deliveries(rt)}")
    assert sorted(m.rcpt_tos[0] for m in smtp_sink.messages) == sorted(
        c.email for c in customers_by_id(rt, good))


def customers_by_id(rt, ids: list[int]) -> list[Customer]:
    with Session(rt.engine) as session:
        return [c for c in (session.get(Customer, i) for i in ids) if c is not None]


DEAD_AFTER_S = 4.0
# Dead after DEAD_AFTER_S without a heartbeat, noticed by the scheduler's check every half of
# it; the rest is slack for a busy machine.
SETTLED_WITHIN_S = DEAD_AFTER_S * 1.5 + 6


@SQLITE_ONLY
@pytest.mark.parametrize(
    "step", [pytest.param("accepted", id="after-hand-over"), pytest.param("rcpt", id="before-hand-over")]
)
def test_killed_worker_is_noticed_by_its_heartbeat_and_its_delivery_settled_without_waiting(
    make_runtime, redis_url, chaos_sink, processes, step
):
    rt = make_runtime(chaos_sink.url, redis_url)
    add_inactive(rt, 1)
    chaos_sink.hold(step)
    env = env_for(rt, RETENTION_WORKER_DEAD_AFTER_SECONDS=str(DEAD_AFTER_S))
    worker = processes.worker(env)
    scheduler = processes.retention("scheduler", env=env)  # plans, enqueues, watches heartbeats
    assert chaos_sink.reached.wait(30), scheduler.output + worker.output
    worker.kill()
    killed = time.monotonic()
    chaos_sink.resume()
    if step == "accepted":
        wait_until(lambda: statuses(rt) == {"unknown": 1}, timeout=SETTLED_WITHIN_S + 30,
                   what=lambda: f"the delivery settled as unknown: {deliveries(rt)}")
        scheduler.wait_for_line("1 deliveries were left in `sending` by a worker that died; marked `unknown`")
    else:
        processes.worker(env)
        wait_until(lambda: statuses(rt) == {"sent": 1}, timeout=SETTLED_WITHIN_S + 30,
                   what=lambda: f"the delivery queued again and sent: {deliveries(rt)}")
    settled_after = time.monotonic() - killed
    assert settled_after <= SETTLED_WITHIN_S, f"settled {settled_after:.1f}s after the kill"
    [row] = deliveries(rt)
    assert chaos_sink.received_ids() == [row.message_id]  # one copy, whichever way
    assert row.attempts == (1 if step == "accepted" else 2)
