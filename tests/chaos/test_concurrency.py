"""Races: planners without a leader, and unsubscribes that overtake a queued or retried
delivery (issue 8, scenarios 9 and 10)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from fastapi.testclient import TestClient
from sqlmodel import Session

from campaigns.models import Customer, DeliveryStatus, utcnow
from tests.chaos.support import (
    PYTHON,
    add_inactive,
    deliveries,
    env_for,
    producer,
    statuses,
    wait_until,
)
from worker import observability
from worker.daemon import start_roles
from worker.passes import run_pass
from worker.web import create_app

RACING_PLANNER = Path(__file__).with_name("racing_planner.py")


def test_planners_racing_without_a_leader_never_plan_or_enqueue_a_delivery_twice(
    make_runtime, processes
):
    rt = make_runtime("console://")
    customers = add_inactive(rt, 300)
    env = env_for(rt, CHAOS_START_AT=str(time.time() + 3), CHAOS_NOW=utcnow().isoformat())
    racers = [processes.command([PYTHON, str(RACING_PLANNER)], env=env) for _ in range(2)]
    for racer in racers:
        assert racer.popen.wait(60) == 0, racer.output
    enqueued = [json.loads(racer.lines[-1]) for racer in racers]
    rows = deliveries(rt)
    assert len(rows) == len(customers)  # one per natural key, whoever inserted it
    assert sorted(enqueued[0] + enqueued[1]) == [r.id for r in rows]  # each enqueued by one only
    assert not set(enqueued[0]) & set(enqueued[1])


def test_two_daemons_passing_at_once_send_each_email_once(make_runtime, smtp_sink, processes):
    rt = make_runtime(smtp_sink.url)
    add_inactive(rt, 50)
    # `run --once` has no leader lock: both plan, both sweep everything queued, both send.
    racers = [processes.retention("run", "--once", "--workers", "4", env=env_for(rt)) for _ in range(2)]
    for racer in racers:
        assert racer.popen.wait(60) == 0, racer.output
    time.sleep(0.3)
    assert statuses(rt) == {"sent": 50}
    assert len(smtp_sink.messages) == 50 == len({m.rcpt_tos[0] for m in smtp_sink.messages})


def one_click(rt, delivery_id: int) -> int:
    client = TestClient(create_app(rt))
    response = client.post(f"/u/{rt.signer.unsubscribe_token(delivery_id)}",
                           data={"List-Unsubscribe": "One-Click"})
    return response.status_code


def test_unsubscribe_while_the_delivery_waits_in_the_queue_stops_it(make_runtime, redis_url, smtp_sink):
    rt = make_runtime(smtp_sink.url, redis_url)
    leaving, staying = add_inactive(rt, 2)
    with producer(rt) as roles:
        run_pass(rt, roles.enqueue)  # both messages wait on Redis; no worker yet
    [queued] = [r for r in deliveries(rt) if r.customer_id == leaving]
    assert one_click(rt, queued.id) == 200
    roles = start_roles(rt, workers=2)
    try:
        wait_until(lambda: statuses(rt) == {"sent": 1, "suppressed": 1}, timeout=30,
                   what=lambda: f"the queue drained: {deliveries(rt)}")
        time.sleep(0.3)
    finally:
        roles.stop()
    with Session(rt.engine) as session:
        staying_email = session.get(Customer, staying).email  # type: ignore[union-attr]
    assert [m.rcpt_tos for m in smtp_sink.messages] == [[staying_email]]


def test_unsubscribe_while_the_delivery_waits_for_a_retry_stops_it(make_runtime, redis_url, chaos_sink):
    rt = make_runtime(chaos_sink.url, redis_url)
    rt.settings = rt.settings.model_copy(update={"retry_min_backoff_ms": 1500, "retry_max_backoff_ms": 3000})
    add_inactive(rt, 1)
    chaos_sink.fail_next(1, "451 4.3.0 Try again later")
    skipped = observability.SEND_OUTCOMES.labels(outcome="skipped")
    roles = start_roles(rt, workers=1)
    try:
        run_pass(rt, roles.enqueue)
        [row] = wait_until(lambda: [r for r in deliveries(rt) if r.status == "queued" and r.attempts == 1],
                           timeout=30, what="the first attempt refused")
        before = skipped._value.get()
        assert one_click(rt, row.id) == 200  # during the backoff
        wait_until(lambda: skipped._value.get() > before, timeout=10,
                   what="the retry to arrive and find nothing to send")
    finally:
        roles.stop()
    [row] = deliveries(rt)
    assert (row.status, row.attempts) == (DeliveryStatus.suppressed, 1)
    assert chaos_sink.messages == [] and len(chaos_sink.data_started) == 1
