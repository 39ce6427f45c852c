"""The Segment-compatible tracking API, driven by Segment's own Python SDK against uvicorn."""

from __future__ import annotations

import base64
import gzip
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from segment.analytics import Client
from sqlmodel import Session, select

from campaigns.models import Customer, Event, utcnow
from campaigns.planning.planner import Planner
from tests.support.web import bound_socket, uvicorn_serving
from worker.web import create_app

KEY = "wk-segment-test"
RULES = """
defaults:
  sender: "Acme <hello@acme.example>"
  timezone: UTC
campaigns:
  - id: big-spenders
    template: we_miss_you
    when:
      plan: pro
      attributes.company: Acme
      event: {name: Order Completed, within: 7d}
"""


@pytest.fixture
def served(make_runtime) -> Iterator[tuple[Any, str]]:
    rt = make_runtime("console://", rules=RULES)
    rt.settings = rt.settings.model_copy(update={"api_key": KEY})
    sock, host = bound_socket()
    with uvicorn_serving(create_app(rt), sock):
        yield rt, host


def sdk(host: str, errors: list[Any], **options: Any) -> Client:
    return Client(KEY, host=host, on_error=lambda exc, batch: errors.append((exc, len(batch))),
                  max_retries=2, **options)


def post(host: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(host + path, data=body, method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def basic(user: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:".encode()).decode()}


def test_the_segment_sdk_identifies_tracks_once_and_a_campaign_matches(served):
    rt, host = served
    errors: list[Any] = []
    client = sdk(host, errors, gzip=True, max_queue_size=100_000)
    client.identify("u1", {"email": "ada@example.com", "firstName": "Ada", "plan": "pro", "company": "Acme"},
                    context={"timezone": "Europe/Berlin", "locale": "de-DE"})
    client.identify("u2", {"email": "bob@example.com", "plan": "free", "company": "Acme"})
    client.flush()
    bought = utcnow() - timedelta(hours=3)
    for _ in range(2):  # an SDK retry: the same messageId twice
        client.track("u1", "Order Completed", {"total": 42.5}, timestamp=bought, message_id="order-1")
    for n in range(3000):
        client.track("u2", "Page Scrolled", {"n": n}, timestamp=bought + timedelta(seconds=n))
    client.identify("u2", {"plan": "pro"})  # a known user: no email needed
    client.flush()
    assert errors == []

    with Session(rt.engine) as session:
        ada = session.exec(select(Customer).where(Customer.external_id == "u1")).one()
        assert (ada.email, ada.first_name, ada.plan, ada.timezone, ada.locale) == (
            "ada@example.com", "Ada", "pro", "Europe/Berlin", "de-DE")
        assert ada.attributes == {"company": "Acme"}
        bob = session.exec(select(Customer).where(Customer.external_id == "u2")).one()
        assert (bob.email, bob.plan, bob.activity_count) == ("bob@example.com", "pro", 3000)
        orders = session.exec(select(Event).where(Event.name == "Order Completed")).all()
        assert [(e.client_id, e.properties) for e in orders] == [("order-1", {"total": 42.5})]
        assert orders[0].occurred_at == bought.replace(microsecond=bought.microsecond // 1000 * 1000)
        assert session.scalar(sa.select(sa.func.count()).select_from(Event)) == 3001
        result = Planner(rt.rules, now=utcnow()).run(session, sample=10)
        session.rollback()
    assert result.plan("big-spenders").sample == [("u1", "ada@example.com")]


def test_page_and_screen_are_events_group_alias_and_anonymous_are_acknowledged(served):
    rt, host = served
    errors: list[Any] = []
    client = sdk(host, errors, sync_mode=True)
    client.identify("u1", {"email": "ada@example.com"})
    client.page("u1", "Docs", "Pricing", {"path": "/pricing"})
    client.screen("u1", "App", "Settings")
    client.group("u1", "team-7", {"name": "Team 7"})
    client.alias("anon-1", "u1")
    client.track(anonymous_id="anon-2", event="Signed Up")
    assert errors == []
    with Session(rt.engine) as session:
        events = {e.name: e.properties for e in session.exec(select(Event)).all()}
    assert events == {"page": {"path": "/pricing", "name": "Pricing", "category": "Docs"},
                      "screen": {"name": "Settings", "category": "App"}}


def test_a_bad_message_in_a_batch_does_not_lose_the_good_ones(served):
    rt, host = served
    batch = {"batch": [
        {"type": "identify", "userId": "u1", "traits": {"email": "ada@example.com"}},
        {"type": "track", "userId": "u1", "event": "Login", "messageId": "m1"},
        {"type": "track", "userId": "u1", "messageId": "m2"},
        {"type": "track", "userId": "u1", "event": "Login", "timestamp": "yesterday"},
        {"type": "identify", "userId": "new", "traits": {"plan": "pro"}},
        {"type": "track", "userId": "nobody", "event": "Login"},
        {"type": "shout", "userId": "u1"},
    ]}
    status, body = post(host, "/v1/batch", json.dumps(batch).encode(), basic(KEY))
    assert status == 200
    assert body["stored"] == {"customers": 1, "events": 1}
    assert [(e["index"], e["error"].split(":")[0]) for e in body["errors"]] == [
        (2, "event"), (3, "timestamp"), (4, "traits.email"), (5, "userId"), (6, "type")]
    with Session(rt.engine) as session:
        assert [e.client_id for e in session.exec(select(Event)).all()] == ["m1"]


def test_answers_are_what_the_sdks_retry_or_give_up_on(served):
    _rt, host = served
    message = json.dumps({"userId": "u1", "traits": {"email": "ada@example.com"}}).encode()
    assert post(host, "/v1/identify", message, basic("wrong"))[0] == 401
    assert post(host, "/v1/identify", message, {})[0] == 401
    status, body = post(host, "/v1/identify", b"{nope", basic(KEY))
    assert (status, body["code"]) == (400, "invalid_json")
    assert "line 1, column 2" in body["message"]
    status, body = post(host, "/v1/track", json.dumps({"userId": "u1"}).encode(), basic(KEY))
    assert (status, body["code"], body["message"]) == (
        400, "invalid_request", "event: is required for track (the event's name)")
    status, body = post(host, "/v1/identify", gzip.compress(message),
                        {**basic(KEY), "Content-Encoding": "gzip"})
    assert (status, body["success"], body["stored"]["customers"]) == (200, True, 1)
    bomb = gzip.compress(b" " * (64 * 1024 * 1024))
    status, body = post(host, "/v1/batch", bomb, {**basic(KEY), "Content-Encoding": "gzip"})
    assert (status, body["code"]) == (413, "too_large")

    # The SDK itself: a wrong key is a 4xx it reports once and does not retry.
    errors: list[Any] = []
    client = Client("wrong", host=host, on_error=lambda exc, batch: errors.append(exc), max_retries=5)
    client.identify("u1", {"email": "ada@example.com"})
    client.flush()
    assert [(e.status, e.code) for e in errors] == [(401, "unauthorized")]


def test_a_webhook_destination_posts_single_messages_to_batch(served):
    rt, host = served
    for message in ({"type": "identify", "userId": "u1", "traits": {"email": "ada@example.com"}},
                    {"type": "track", "userId": "u1", "event": "Login", "messageId": "m1"}):
        status, _ = post(host, "/v1/batch", json.dumps(message).encode(), basic(KEY))
        assert status == 200
    with Session(rt.engine) as session:
        assert [e.name for e in session.exec(select(Event)).all()] == ["Login"]
