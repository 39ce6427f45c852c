"""The mail server misbehaves: temporary refusals, unknown mailboxes, and an outage longer
than the retries (issue 8, scenarios 3, 4, 5).  Real Redis, real SMTP server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlmodel import Session, select

from campaigns.delivery.outbox import MAX_ATTEMPTS
from campaigns.models import Customer, DeliveryStatus, Suppression, utcnow
from tests.chaos.support import (
    SQLITE_ONLY,
    TcpProxy,
    add_inactive,
    deliveries,
    env_for,
    statuses,
    wait_until,
)
from tests.factories import add_customer, drain
from worker.daemon import start_roles
from worker.passes import run_pass


@pytest.fixture
def smtp_proxy(smtp_sink) -> Iterator[TcpProxy]:
    proxy = TcpProxy(smtp_sink.host, smtp_sink.port)
    try:
        yield proxy
    finally:
        proxy.close()


def suppressed_addresses(rt) -> list[str]:
    with Session(rt.engine) as session:
        return [s.email for s in session.exec(select(Suppression))]


@SQLITE_ONLY  # SMTP behaviour; the retry bookkeeping is the same on both backends
def test_421_and_451_are_retried_with_growing_backoff_and_delivered_once(
    make_runtime, redis_url, chaos_sink
):
    rt = make_runtime(chaos_sink.url, redis_url)
    rt.settings = rt.settings.model_copy(update={"retry_min_backoff_ms": 100, "retry_max_backoff_ms": 5000})
    add_inactive(rt, 1)
    chaos_sink.fail_next(2, "421 4.7.0 Too many connections, try again later")
    chaos_sink.fail_next(2, "451 4.3.0 Temporary local problem, try again later")
    roles = start_roles(rt, workers=1)
    try:
        run_pass(rt, roles.enqueue)
        wait_until(lambda: statuses(rt) == {"sent": 1}, timeout=30,
                   what=lambda: f"the send: {deliveries(rt)}")
        drain(roles)  # a wrong extra attempt would have been made by now
    finally:
        roles.stop()
    [row] = deliveries(rt)
    assert row.attempts == 5
    assert len(chaos_sink.messages) == 1 and len(chaos_sink.data_started) == 5
    gaps = [b - a for a, b in zip(chaos_sink.data_started, chaos_sink.data_started[1:], strict=False)]
    # Dramatiq waits min_backoff * 2**n to twice that before retry n+1.
    assert all(gap >= 0.095 * 2**n for n, gap in enumerate(gaps)), gaps
    assert suppressed_addresses(rt) == []


def test_unknown_mailbox_is_never_retried_and_the_address_is_never_mailed_again(
    make_runtime, redis_url, chaos_sink
):
    rt = make_runtime(chaos_sink.url, redis_url)
    [first] = add_inactive(rt, 1, email="gone@example.com")
    add_inactive(rt, 1, email="Gone@Example.com")  # a second record with the same mailbox
    chaos_sink.reject_recipient("gone@example.com", "550 5.1.1 <gone@example.com>: user unknown")
    roles = start_roles(rt, workers=1)
    try:
        run_pass(rt, roles.enqueue)
        wait_until(lambda: statuses(rt) == {"bounced": 1, "suppressed": 1}, timeout=30,
                   what=lambda: f"one bounce, one suppressed: {deliveries(rt)}")
        # A new absence of the bounced customer is a new episode: still never mailed.
        with Session(rt.engine) as session:
            customer = session.get(Customer, first)
            assert customer is not None
            customer.last_active_at = utcnow() - timedelta(days=40)
            session.add(customer)
            add_customer(session, inactive_days=45, email="GONE@example.com")
            session.commit()
        run_pass(rt, roles.enqueue)
        drain(roles)  # a wrong send would have been made by now
    finally:
        roles.stop()
    assert chaos_sink.rcpt_counts == {"gone@example.com": 1}
    assert chaos_sink.data_started == []
    bounced = [r for r in deliveries(rt) if r.status == DeliveryStatus.bounced]
    assert [r.attempts for r in bounced] == [1]
    assert "5.1.1" in (bounced[0].last_error or "")
    assert suppressed_addresses(rt) == ["gone@example.com"]
    assert not {"queued", "sending", "sent"} & set(statuses(rt))


def test_smtp_outage_longer_than_the_retries_loses_nothing_and_sending_resumes(
    make_runtime, redis_url, smtp_sink, smtp_proxy
):
    smtp_proxy.down()  # connection refused, as with a stopped server
    # Retries 20–100 ms apart: the whole retry budget is spent in well under a second, so a
    # few seconds here stand for an outage of many minutes with the production backoff.
    rt = make_runtime(f"smtp://127.0.0.1:{smtp_proxy.port}?timeout=5", redis_url)
    add_inactive(rt, 5)
    roles = start_roles(rt, workers=2)
    try:
        run_pass(rt, roles.enqueue)

        def all_waiting() -> bool:
            rows = deliveries(rt)
            return all(r.status == DeliveryStatus.queued and r.attempts == MAX_ATTEMPTS - 1
                       and "mail server is unavailable" in (r.last_error or "") for r in rows)

        wait_until(all_waiting, timeout=30, what=lambda: f"retries used up: {deliveries(rt)}")
        for _ in range(2):  # passes while it stays down: one more try each, nothing given up
            run_pass(rt, roles.enqueue)
            time.sleep(0.3)
            wait_until(all_waiting, timeout=10, what=lambda: f"deferred again: {deliveries(rt)}")
        assert smtp_sink.attempts == 0
        smtp_proxy.up()
        report = run_pass(rt, roles.enqueue)
        assert len(report.swept_ids) == 5
        wait_until(lambda: statuses(rt) == {"sent": 5}, timeout=30, what=lambda: f"resumed: {deliveries(rt)}")
        time.sleep(0.3)
    finally:
        roles.stop()
    assert len(smtp_sink.messages) == 5
    assert len({m.rcpt_tos[0] for m in smtp_sink.messages}) == 5
    assert suppressed_addresses(rt) == []


def _slow_first_reply(sink, seconds: float) -> None:
    """The server stores the first message, then waits ``seconds`` before its 250."""
    replies = iter([seconds])
    sink.reply_delay = lambda: next(replies, 0.0)


def _two_passes(rt, processes, mail_url: str) -> list:
    """Two `retention run --once` processes, one after the other, as two scheduled passes are."""
    env = env_for(rt, RETENTION_MAIL_URL=mail_url)
    outputs = []
    for _ in range(2):
        once = processes.retention("run", "--once", "--workers", "2", env=env)
        assert once.popen.wait(60) == 0, once.output
        outputs.append(once.output)
    return outputs


@SQLITE_ONLY
def test_slow_final_reply_is_waited_for_as_rfc_5321_allows_and_sent_once(
    make_runtime, chaos_sink, processes
):
    rt = make_runtime(chaos_sink.url)
    add_inactive(rt, 2)
    _slow_first_reply(chaos_sink, 8.0)  # longer than the command timeout, well within 10 minutes
    _two_passes(rt, processes, chaos_sink.url + "?timeout=3")
    assert statuses(rt) == {"sent": 2}
    assert sorted(chaos_sink.received_ids()) == sorted(r.message_id for r in deliveries(rt))
    assert len(chaos_sink.data_started) == 2  # one DATA per delivery: nothing retried


@SQLITE_ONLY
def test_final_reply_that_never_comes_is_unknown_and_the_message_is_never_sent_again(
    make_runtime, chaos_sink, processes
):
    rt = make_runtime(chaos_sink.url)
    add_inactive(rt, 2)
    _slow_first_reply(chaos_sink, 8.0)
    first, _ = _two_passes(rt, processes, chaos_sink.url + "?timeout=3&data_timeout=4")
    assert statuses(rt) == {"sent": 1, "unknown": 1}
    [ambiguous] = [r for r in deliveries(rt) if r.status == DeliveryStatus.unknown]
    assert "no reply within 4s (data_timeout" in (ambiguous.last_error or "")
    assert "may or may not have been delivered; marked `unknown`" in first
    # Exactly one copy of each: the server's copy of the ambiguous one is the only one.
    assert sorted(chaos_sink.received_ids()) == sorted(r.message_id for r in deliveries(rt))
    assert len(chaos_sink.data_started) == 2


@SQLITE_ONLY
def test_connection_dropped_after_the_content_is_unknown_not_retried(
    make_runtime, chaos_sink, processes
):
    rt = make_runtime(chaos_sink.url)
    add_inactive(rt, 1)
    chaos_sink.hold("accepted")  # the server has the message and has not said so yet
    env = env_for(rt, RETENTION_MAIL_URL=chaos_sink.url + "?timeout=5")
    once = processes.retention("run", "--once", "--workers", "1", env=env)
    assert chaos_sink.reached.wait(30), once.output
    chaos_sink.disconnect_all()
    chaos_sink.resume()
    assert once.popen.wait(60) == 0, once.output
    again = processes.retention("run", "--once", "--workers", "1", env=env)
    assert again.popen.wait(60) == 0, again.output
    [row] = deliveries(rt)
    assert row.status == DeliveryStatus.unknown, row
    assert "the message content was sent, then the connection" in (row.last_error or "")
    assert chaos_sink.received_ids() == [row.message_id]
    assert len(chaos_sink.data_started) == 1
