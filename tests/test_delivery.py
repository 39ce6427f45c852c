"""The whole loop against a real Redis broker and a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import time
from datetime import timedelta

from sqlmodel import Session, select

from campaigns.models import Customer, Delivery, DeliveryStatus, Suppression, utcnow
from tests.conftest import DEFAULT_RULES
from tests.factories import add_customer, drain
from worker.daemon import start_roles
from worker.once import run_once
from worker.passes import run_pass


def add_inactive(rt, count: int, **fields) -> list[int]:
    with Session(rt.engine) as session:
        ids = [add_customer(session, inactive_days=45, **fields).id for _ in range(count)]
        session.commit()
    return ids


def wait_for_status(rt, ids, statuses, timeout=15.0):
    deadline = time.monotonic() + timeout
    while True:
        with Session(rt.engine) as session:
            rows = session.exec(select(Delivery).where(Delivery.customer_id.in_(ids))).all()
        if rows and all(r.status in statuses for r in rows):
            return rows
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; statuses: {[(r.id, r.status, r.last_error) for r in rows]}")
        time.sleep(0.05)


def test_every_due_email_arrives_exactly_once_through_redis(make_runtime, redis_url, smtp_sink):
    rt = make_runtime(smtp_sink.url, redis_url)
    ids = add_inactive(rt, 20)
    roles = start_roles(rt, workers=4)
    try:
        report = run_pass(rt, roles.enqueue)
        assert report.enqueued == 20
        # A duplicate message for every delivery: the conditional claim makes it a no-op.
        roles.enqueue(report.result.queued_ids)
        rows = wait_for_status(rt, ids, {DeliveryStatus.sent})
        run_pass(rt, roles.enqueue)  # a second pass finds nothing new
        drain(roles)
    finally:
        roles.stop()
    assert len(smtp_sink.messages) == 20
    recipients = sorted(m.rcpt_tos[0] for m in smtp_sink.messages)
    assert len(set(recipients)) == 20
    message = smtp_sink.messages[0].parsed
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["List-Unsubscribe"].startswith("<http://127.0.0.1:8000/u/")
    assert message.get_body(("plain",)) is not None
    assert {r.message_id for r in rows} == {m.parsed["Message-ID"] for m in smtp_sink.messages}


def test_temporary_failures_are_retried_with_backoff_until_delivered(make_runtime, redis_url, smtp_sink):
    rt = make_runtime(smtp_sink.url, redis_url)
    ids = add_inactive(rt, 1)
    smtp_sink.fail_next(2, "451 4.3.0 Try again later")
    roles = start_roles(rt, workers=1)
    try:
        run_pass(rt, roles.enqueue)
        [row] = wait_for_status(rt, ids, {DeliveryStatus.sent, DeliveryStatus.failed})
    finally:
        roles.stop()
    assert row.status == DeliveryStatus.sent
    assert row.attempts == 3
    assert smtp_sink.attempts == 3
    assert len(smtp_sink.messages) == 1
    with Session(rt.engine) as session:
        assert session.exec(select(Suppression)).all() == []


def test_unknown_mailbox_fails_once_and_is_suppressed(make_runtime, redis_url, smtp_sink):
    rt = make_runtime(smtp_sink.url, redis_url)
    ids = add_inactive(rt, 1, email="nobody@example.com")
    smtp_sink.reject_recipient("nobody@example.com", "550 5.1.1 User unknown")
    roles = start_roles(rt, workers=1)
    try:
        run_pass(rt, roles.enqueue)
        [row] = wait_for_status(rt, ids, {DeliveryStatus.bounced, DeliveryStatus.failed})
        drain(roles)  # a wrong retry would have been processed by now
    finally:
        roles.stop()
    assert row.status == DeliveryStatus.bounced
    assert row.attempts == 1
    assert "5.1.1" in row.last_error
    with Session(rt.engine) as session:
        assert [s.email for s in session.exec(select(Suppression))] == ["nobody@example.com"]


def test_policy_rejection_fails_without_suppressing_the_address(make_runtime, redis_url, smtp_sink):
    rt = make_runtime(smtp_sink.url, redis_url)
    ids = add_inactive(rt, 1)
    smtp_sink.fail_next(1, "554 5.7.1 Message rejected as spam")
    roles = start_roles(rt, workers=1)
    try:
        run_pass(rt, roles.enqueue)
        [row] = wait_for_status(rt, ids, {DeliveryStatus.failed, DeliveryStatus.sent})
    finally:
        roles.stop()
    assert row.status == DeliveryStatus.failed and row.attempts == 1
    with Session(rt.engine) as session:
        assert session.exec(select(Suppression)).all() == []


def test_unsubscribe_after_planning_stops_the_queued_delivery(make_runtime, smtp_sink):
    rt = make_runtime(smtp_sink.url)
    ids = add_inactive(rt, 2)
    roles = start_roles(rt, workers=1, consume=False)
    try:
        report = run_pass(rt, roles.enqueue)
    finally:
        roles.stop()
    with Session(rt.engine) as session:
        session.get(Customer, ids[0]).unsubscribed_at = utcnow()
        staying = session.get(Customer, ids[1]).email
        session.commit()
    # The in-process queue died with its process: the sweeper re-enqueues, the send re-checks.
    summary = run_once(rt, workers=2)
    assert len(report.result.queued_ids) == 2
    rows = wait_for_status(rt, ids, {DeliveryStatus.sent, DeliveryStatus.suppressed})
    assert sorted(r.status for r in rows) == [DeliveryStatus.sent, DeliveryStatus.suppressed]
    assert [m.rcpt_tos for m in smtp_sink.messages] == [[staying]]
    assert summary.pending == 0


def test_run_once_in_process_writes_a_maildir_and_is_idempotent(make_runtime, tmp_path):
    import mailbox

    outbox = tmp_path / "outbox"
    rt = make_runtime(f"maildir://{outbox}")
    add_inactive(rt, 5)
    first = run_once(rt, workers=2)
    assert sum(r.sent for r in first.rows) == 5
    assert len(mailbox.Maildir(outbox)) == 5
    second = run_once(rt, workers=2)
    assert sum(r.sent for r in second.rows) == 0
    assert len(mailbox.Maildir(outbox)) == 5


def test_quiet_hours_defer_the_send_to_the_end_of_the_night(make_runtime, smtp_sink):
    rules = DEFAULT_RULES.replace("timezone: UTC", "timezone: UTC\n  quiet_hours: \"00:00-23:59\"")
    rt = make_runtime(smtp_sink.url, rules=rules)
    ids = add_inactive(rt, 1, timezone="Pacific/Kiritimati")
    summary = run_once(rt, workers=1)
    [row] = wait_for_status(rt, ids, {DeliveryStatus.queued})
    assert smtp_sink.messages == []
    assert summary.pending == 1
    assert row.attempts == 0 and row.enqueued_at is None
    assert row.due_at > row.created_at + timedelta(minutes=1)


def test_max_send_rate_is_shared_and_spends_no_retries(make_runtime, redis_url, smtp_sink):
    rules = DEFAULT_RULES.replace("timezone: UTC", "timezone: UTC\n  max_send_rate: 4/s")
    rt = make_runtime(smtp_sink.url, redis_url, rules=rules)
    ids = add_inactive(rt, 12)
    roles = start_roles(rt, workers=6)
    try:
        run_pass(rt, roles.enqueue)
        rows = wait_for_status(rt, ids, {DeliveryStatus.sent}, timeout=30)
    finally:
        roles.stop()
    assert len(smtp_sink.messages) == 12
    assert {r.attempts for r in rows} == {1}
    # 12 messages at 4 per one-second window need at least three windows: a lower bound only,
    # so a slow machine cannot make this fail.
    span = max(r.sent_at for r in rows) - min(r.sent_at for r in rows)
    assert span.total_seconds() > 1.0


def test_an_address_no_server_can_accept_bounces_without_a_send(make_runtime, smtp_sink):
    rt = make_runtime(smtp_sink.url)
    ids = add_inactive(rt, 1, email="two@@example.com")
    run_once(rt, workers=1)
    [row] = wait_for_status(rt, ids, {DeliveryStatus.bounced, DeliveryStatus.failed})
    assert row.status == DeliveryStatus.bounced and "invalid email address" in (row.last_error or "")
    assert smtp_sink.attempts == 0
    with Session(rt.engine) as session:
        assert [s.email for s in session.exec(select(Suppression))] == ["two@@example.com"]


def test_a_worker_presumed_dead_cannot_hand_over_a_delivery_claimed_again(make_runtime, tmp_path):
    from campaigns.delivery import outbox
    from worker.heartbeat import Heartbeat

    rt = make_runtime(f"maildir://{tmp_path / 'out'}")
    add_inactive(rt, 1)
    with Session(rt.engine) as session:
        [delivery_id] = run_pass(rt, lambda ids: len(ids)).result.queued_ids
        live = Heartbeat(rt.engine, interval=timedelta(seconds=10))
        live.beat()
        [first] = outbox.claim_many(session, [delivery_id], now=utcnow(), worker="paused-vm:1:dead")
        first_attempt = first.attempts
        # Its heartbeat has stopped (it never had one here): settled, queued again.
        settled = outbox.abandon_stale_sending(
            session, now=utcnow(), after=timedelta(hours=1), dead_after=timedelta(seconds=30)
        )
        assert settled.requeued == [delivery_id]
    with Session(rt.engine) as other:
        [second] = outbox.claim_many(other, [delivery_id], now=utcnow(), worker=live.worker_id)
        assert second.attempts == first_attempt + 1
        # A live worker's claim is left alone.
        assert outbox.abandon_stale_sending(
            other, now=utcnow(), after=timedelta(hours=1), dead_after=timedelta(seconds=30)
        ) == outbox.Settled()
    with Session(rt.engine) as session:
        stale = session.get(Delivery, delivery_id)
        assert stale is not None
        stale.attempts = first_attempt  # what the first worker still holds
        session.expunge(stale)
        assert not outbox.mark_handing_over_many(session, {"<x@y>": stale}, now=utcnow())
        outbox.finish(session, stale, DeliveryStatus.sent, now=utcnow())
    with Session(rt.engine) as session:
        row = session.get(Delivery, delivery_id)
        assert row is not None
        assert (row.status, row.message_id, row.claimed_by) == (DeliveryStatus.sending, None, live.worker_id)


def test_sending_roles_start_without_dramatiq_warnings(make_runtime, redis_url, smtp_sink, caplog):
    """Sending and webhooks each get a Worker on the one broker by design: no warning about the
    second one's middleware reaches the user's log (`retention run --once` printed one)."""
    rt = make_runtime(smtp_sink.url, redis_url)
    with caplog.at_level("WARNING"):
        roles = start_roles(rt, workers=1)
        roles.stop()
    assert not [r for r in caplog.records if r.name.startswith("dramatiq")], caplog.text
