"""Outgoing webhooks against real HTTP receivers that verify Standard Webhooks signatures."""

from __future__ import annotations

import base64
import secrets
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from typer.testing import CliRunner

from campaigns.ingestion import EventIn, record_events
from campaigns.models import Delivery, DeliveryStatus, WebhookAttempt, WebhookMessage, utcnow
from campaigns.planning.conversions import credit_conversions
from campaigns.responses import recording
from campaigns.responses.notify import notify
from campaigns.rules import parse_rules
from tests.factories import add_customer
from worker import outgoing_webhooks as webhooks
from worker.cli import app
from worker.daemon import start_roles
from worker.once import run_once
from worker.runtime import check_files

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def rules_with(url: str, events: str = "[sent, unsubscribed, clicked, converted]") -> str:
    return f"""
defaults:
  sender: "Acme <hello@acme.example>"
  timezone: UTC
campaigns:
  - id: we-miss-you
    template: we_miss_you
    when:
      days_inactive: {{at_least: 30}}
    goal: {{event: login, within: 14d}}
webhooks:
  - url: {url}
    events: {events}
    secret_env: TEST_WEBHOOK_SECRET
"""


class Receiver:
    """Answers the scripted statuses, then 200; records what it verified."""

    def __init__(self, script: list[int]) -> None:
        self.script = list(script)
        self.lock = threading.Lock()
        self.answers: list[tuple[str, int]] = []  # (webhook-id, status)
        self.accepted: list[dict[str, Any]] = []
        self.bad_signatures = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                try:
                    payload = Webhook(SECRET).verify(body, dict(self.headers.items()))
                except WebhookVerificationError:
                    with receiver.lock:
                        receiver.bad_signatures += 1
                    status = 400
                else:
                    with receiver.lock:
                        status = receiver.script.pop(0) if receiver.script else 200
                        receiver.answers.append((self.headers["webhook-id"], status))
                        if status == 200:
                            receiver.accepted.append(payload)
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/retention"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Hanging:
    """An endpoint that takes connections and never answers: the worst kind of dead."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(connection)

    def close(self) -> None:
        self.sock.close()
        for connection in self.held:
            connection.close()


@pytest.fixture
def secret(monkeypatch):
    monkeypatch.setenv("TEST_WEBHOOK_SECRET", SECRET)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    served = Receiver([500, 500])
    yield served
    served.close()


def wait_for(condition: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    pause = 0.02
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(pause)
        pause = min(pause * 2, 0.5)


def messages_by_status(rt: Any) -> Counter[str]:
    with Session(rt.engine) as session:
        return Counter(m.status for m in session.exec(select(WebhookMessage)).all())


def test_each_subscribed_event_arrives_once_signed_after_two_500s(make_runtime, tmp_path, secret, receiver):
    rt = make_runtime(f"maildir://{tmp_path}/outbox", rules=rules_with(receiver.url))
    now = utcnow()
    with Session(rt.engine) as session:
        customers = [add_customer(session, external_id=f"c{n}", email=f"c{n}@example.com",
                                  timezone="UTC", last_active_at=now - timedelta(days=40)) for n in range(3)]
        session.commit()
        ids = [c.id for c in customers]
    summary = run_once(rt, workers=2)
    assert sum(r.sent for r in summary.rows) == 3

    with Session(rt.engine) as session:
        delivery = {d.customer_id: d.id for d in session.exec(select(Delivery)).all()}
        recording.unsubscribe(session, delivery[ids[0]], now=utcnow())
        recording.unsubscribe(session, delivery[ids[0]], now=utcnow())  # again: announced once
        recording.record_click(session, delivery[ids[1]], "https://acme.example/new", now=utcnow())
        record_events(session, [EventIn(customer_id="c2", event="login", occurred_at=utcnow())],
                      non_activity_events=frozenset())
        session.commit()
        assert credit_conversions(session, rt.rules, now=utcnow()) == 1
        session.commit()

    roles = start_roles(rt, workers=1)
    try:
        assert webhooks.dispatch(rt, roles.actors.send_webhook) == 6
        wait_for(lambda: messages_by_status(rt) == Counter(delivered=6))
    finally:
        roles.stop()

    assert receiver.bad_signatures == 0
    assert [status for _, status in receiver.answers].count(500) == 2
    accepted_ids = [webhook_id for webhook_id, status in receiver.answers if status == 200]
    assert len(accepted_ids) == len(set(accepted_ids)) == 6
    got = sorted((p["type"], p["data"]["customer_id"]) for p in receiver.accepted)
    assert got == [("clicked", "c1"), ("converted", "c2"), ("sent", "c0"), ("sent", "c1"), ("sent", "c2"),
                   ("unsubscribed", "c0")]
    clicked = next(p for p in receiver.accepted if p["type"] == "clicked")
    assert clicked["data"]["url"] == "https://acme.example/new"
    assert clicked["data"]["campaign_id"] == "we-miss-you"
    with Session(rt.engine) as session:
        attempts = session.exec(select(WebhookAttempt)).all()
    assert sorted(a.status_code for a in attempts) == [200] * 6 + [500, 500]

    env = {"RETENTION_DATABASE_URL": rt.settings.database_url, "RETENTION_RULES": str(rt.settings.rules),
           "RETENTION_TEMPLATES": str(rt.settings.templates), "COLUMNS": "250"}
    listed = CliRunner().invoke(app, ["webhooks", "--failures"], env=env)
    assert listed.exit_code == 0, listed.output
    assert "webhook messages: 0 pending, 6 delivered, 0 failed" in listed.output
    assert listed.output.count("HTTP 500") == 2


def test_a_dead_endpoint_never_holds_up_sending(make_runtime, tmp_path, secret, monkeypatch):
    dead = Hanging()
    monkeypatch.setattr(webhooks, "TIMEOUT_SECONDS", 30.0)
    rt = make_runtime(f"maildir://{tmp_path}/outbox", rules=rules_with(dead.url, "[sent, clicked]"))
    now = utcnow()
    with Session(rt.engine) as session:
        for n in range(60):
            add_customer(session, external_id=f"c{n}", email=f"c{n}@example.com", timezone="UTC",
                         last_active_at=now - timedelta(days=40))
        for n in range(50):  # a backlog for the dead endpoint, enough to hold every webhook thread
            notify(session, "clicked", at=now, data={"url": f"https://acme.example/{n}"})
        session.commit()
    roles = start_roles(rt, workers=2)
    try:
        assert webhooks.dispatch(rt, roles.actors.send_webhook) == 50
        wait_for(lambda: len(dead.held) >= webhooks.WEBHOOK_THREADS, timeout=30)
    finally:
        roles.stop(timeout_s=0.1)
    # Every webhook thread now hangs on the endpoint; the emails go all the same.
    started = time.monotonic()
    summary = run_once(rt, workers=2)
    seconds = time.monotonic() - started
    assert sum(r.sent for r in summary.rows) == 60
    assert seconds < webhooks.TIMEOUT_SECONDS, "sending waited for the dead endpoint"
    with Session(rt.engine) as session:
        sent = session.scalar(sa.select(sa.func.count()).select_from(Delivery)
                              .where(Delivery.status == DeliveryStatus.sent))
        delivered = session.scalar(sa.select(sa.func.count()).select_from(WebhookMessage)
                                   .where(WebhookMessage.status == "delivered"))
    assert (sent, delivered) == (60, 0)
    dead.close()


def test_check_reports_a_missing_or_malformed_secret_at_its_line(tmp_path, monkeypatch):
    from campaigns.delivery.rendering import TemplateStore
    from tests.conftest import ROOT

    path = tmp_path / "rules.yaml"
    path.write_text(rules_with("https://crm.example.com/hook"))
    monkeypatch.delenv("TEST_WEBHOOK_SECRET", raising=False)
    _, lines = check_files(path, TemplateStore(ROOT / "templates"))
    assert lines == [f"{path}:14:5: webhooks[0].secret_env: the environment variable TEST_WEBHOOK_SECRET "
                     "(secret_env) is not set"]
    monkeypatch.setenv("TEST_WEBHOOK_SECRET", "not base64!")
    _, lines = check_files(path, TemplateStore(ROOT / "templates"))
    assert "is not a Standard Webhooks secret" in lines[0]


def test_webhooks_section_errors_are_located():
    from campaigns.errors import RulesErrors

    with pytest.raises(RulesErrors) as caught:
        parse_rules("campaigns: []\nwebhooks:\n  - url: ftp://crm\n    events: [sent, opened]\n"
                    "    secret_env: CRM\n")
    assert [e.format() for e in caught.value.errors] == [
        "rules.yaml:3:5: webhooks[0].url: write an http:// or https:// URL, got 'ftp://crm'",
        "rules.yaml:4:20: webhooks[0].events[1]: Input should be 'unsubscribed', 'answered', 'clicked', "
        "'converted', 'bounced', 'complained' or 'sent' (got 'opened')",
    ]


def test_sent_events_are_recorded_only_while_an_endpoint_wants_them(make_runtime, tmp_path, receiver):
    """A row per email that the fan-out would only delete is not written (the send path)."""
    from campaigns.models import WebhookEvent

    def sent_events(rules: str, tag: str) -> int:
        rt = make_runtime(f"maildir://{tmp_path}/outbox", rules=rules)
        with Session(rt.engine) as session:
            for n in range(3):
                add_customer(session, external_id=f"{tag}{n}", email=f"{tag}{n}@example.com",
                             timezone="UTC", last_active_at=utcnow() - timedelta(days=40))
            session.commit()
        assert sum(r.sent for r in run_once(rt, workers=1).rows) == 3
        with Session(rt.engine) as session:
            return len(session.exec(select(WebhookEvent).where(WebhookEvent.kind == "sent")).all())

    assert sent_events(rules_with(receiver.url, "[clicked]"), "a") == 0
    assert sent_events(rules_with(receiver.url, "[sent]"), "b") == 3
