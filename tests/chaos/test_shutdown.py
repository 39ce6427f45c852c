"""SIGTERM while the mail server stalls: the worker stops within its grace period whatever the
server does, and never writes on a connection another thread is using (issue 16, item 2)."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from campaigns.errors import AmbiguousDeliveryError
from campaigns.models import DeliveryStatus
from tests.chaos.support import (
    SQLITE_ONLY,
    add_inactive,
    deliveries,
    env_for,
    producer,
    statuses,
    wait_until,
)
from tests.test_mail import make_message
from worker.mail import transport_from_url
from worker.passes import run_pass

GRACE_S = 3


def test_close_cuts_a_connection_another_thread_waits_on_and_writes_nothing_on_it(chaos_sink):
    transport = transport_from_url(chaos_sink.url + "?timeout=30")
    chaos_sink.hold("accepted")  # the server has the message and keeps its reply
    failures: list[BaseException] = []

    def send() -> None:
        try:
            transport.send(make_message(to="held@example.com"))
        except BaseException as exc:
            failures.append(exc)

    sender = threading.Thread(target=send)
    sender.start()
    assert chaos_sink.reached.wait(10)
    started = time.monotonic()
    transport.close()
    sender.join(5)
    elapsed = time.monotonic() - started
    assert not sender.is_alive() and elapsed < 1.0, elapsed
    [failure] = failures
    assert isinstance(failure, AmbiguousDeliveryError), failure
    chaos_sink.resume()
    assert chaos_sink.quits == 0  # the busy session got no QUIT
    following = make_message(to="next@example.com")
    following.replace_header("Message-ID", "<d-43@acme.example>")
    transport.send(following)  # usable afterwards: a new connection
    transport.close()
    assert chaos_sink.quits == 1


@SQLITE_ONLY
@pytest.mark.chaos
def test_sigterm_with_a_stalled_server_exits_within_the_grace_period_and_doubles_nothing(
    make_runtime, redis_url, chaos_sink, processes
):
    rt = make_runtime(chaos_sink.url, redis_url)
    add_inactive(rt, 3)
    chaos_sink.reply_delay = lambda: 90.0  # stores each message, then says nothing for 90 s
    env = env_for(rt, RETENTION_SHUTDOWN_GRACE_SECONDS=str(GRACE_S))
    with producer(rt) as roles:
        run_pass(rt, roles.enqueue)
        worker = processes.worker(env, threads=2)
        chaos_sink.wait_for(2, timeout=30)  # both threads wait for the server's verdict
        started = time.monotonic()
        worker.popen.send_signal(signal.SIGTERM)
        code = worker.popen.wait(GRACE_S + 10)
        elapsed = time.monotonic() - started
        assert code == 0, worker.output
        assert elapsed <= GRACE_S + 1, f"exited {elapsed:.1f}s after SIGTERM\n{worker.output}"
        # The two in flight may have arrived: `unknown`, never resent; the third waits.
        assert statuses(rt) == {"unknown": 2, "queued": 1}, deliveries(rt)
        assert chaos_sink.quits == 0
        chaos_sink.reply_delay = lambda: 0.0
        processes.worker(env_for(rt), threads=2)
        wait_until(lambda: statuses(rt) == {"unknown": 2, "sent": 1}, timeout=30,
                   what=lambda: f"the third sent by the next worker: {deliveries(rt)}")
    received = chaos_sink.received_ids()
    assert len(received) == len(set(received)) == 3
    assert {r.message_id for r in deliveries(rt)} == set(received)
    assert all(r.status != DeliveryStatus.sending for r in deliveries(rt))
