"""Ingestion API: batches in, good items stored, bad ones reported by place."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from campaigns.models import Customer, Event
from worker.database import batch_writer, make_engine
from worker.http_io import in_session
from worker.web import create_app

KEY = {"Authorization": "Bearer s3cret"}


@pytest.fixture
def api(make_runtime):
    rt = make_runtime("console://")
    rt.settings = rt.settings.model_copy(update={"api_key": "s3cret"})
    return rt, TestClient(create_app(rt))


def test_without_a_configured_key_the_api_is_off(make_runtime):
    client = TestClient(create_app(make_runtime("console://")))
    response = client.post("/api/v1/customers", json={"customers": []}, headers=KEY)
    assert response.status_code == 403
    assert "RETENTION_API_KEY" in response.json()["detail"]


def test_a_wrong_key_is_refused_and_writes_nothing(api):
    rt, client = api
    response = client.post("/api/v1/customers", json={"customers": [{"id": "a", "email": "a@example.com"}]},
                           headers={"Authorization": "Bearer nope"})
    assert response.status_code == 401
    with Session(rt.engine) as session:
        assert session.exec(select(Customer)).all() == []


def test_good_items_are_stored_and_bad_ones_reported_by_place(api):
    rt, client = api
    response = client.post("/api/v1/customers", headers=KEY, json={"customers": [
        {"id": "c1", "email": "ada@example.com", "plan": "pro", "company": "Acme"},
        {"id": "c2", "email": "not an email"},
        {"id": "c3", "email": "grace@example.com", "timezone": "Europe/Berln"},
        {"id": "c4", "email": "linus@example.com"},
    ]})
    body = response.json()
    assert response.status_code == 200
    assert (body["accepted"], body["rejected"], body["inserted"]) == (2, 2, 2)
    assert [e["index"] for e in body["errors"]] == [1, 2]
    assert body["errors"][0]["error"].startswith("customers[1].email: not an email address")
    assert "customers[2].timezone" in body["errors"][1]["error"]

    events = client.post("/api/v1/events", headers=KEY, json={"events": [
        {"customer_id": "c1", "event": "login", "occurred_at": "2026-11-20T10:00:00Z", "id": "e1"},
        {"customer_id": "c1", "event": "login", "occurred_at": "not a time"},
        {"customer_id": "nobody", "event": "login", "occurred_at": "2026-11-20T10:00:00Z"},
        {"customer_id": "c4", "event": "login", "occurred_at": "2026-11-21T10:00:00Z", "id": "e2"},
    ]}).json()
    assert (events["accepted"], events["inserted"]) == (2, 2)
    assert [e["index"] for e in events["errors"]] == [1, 2]
    assert "events[2].customer_id" in events["errors"][1]["error"]
    again = client.post("/api/v1/events", headers=KEY, json={"events": [
        {"customer_id": "c1", "event": "login", "occurred_at": "2026-11-20T10:00:00Z", "id": "e1"}]}).json()
    assert (again["inserted"], again["duplicates"]) == (0, 1)
    with Session(rt.engine) as session:
        assert len(session.exec(select(Event)).all()) == 2
        ada = session.exec(select(Customer).where(Customer.external_id == "c1")).one()
        assert ada.attributes == {"company": "Acme"} and ada.activity_count == 1


def test_nothing_valid_is_a_422_and_oversized_batches_are_refused(api):
    _, client = api
    assert client.post("/api/v1/customers", headers=KEY, json={"customers": [{"id": "x"}]}).status_code == 422
    assert client.post("/api/v1/customers", headers=KEY, json={"people": []}).status_code == 422
    malformed = client.post("/api/v1/customers", headers=KEY, content=b'{"customers": [\n  {"id": 1,}]}')
    assert malformed.status_code == 422
    assert malformed.json()["detail"].startswith("malformed JSON at line 2, column 12")
    many = {"customers": [{"id": str(i), "email": f"{i}@example.com"} for i in range(1001)]}
    assert client.post("/api/v1/customers", headers=KEY, json=many).status_code == 413


def test_concurrent_batches_store_every_accepted_event_exactly_once(api):
    from concurrent.futures import ThreadPoolExecutor

    rt, client = api
    client.post("/api/v1/customers", headers=KEY,
                json={"customers": [{"id": f"c{i}", "email": f"c{i}@example.com"} for i in range(20)]})

    def batch(number: int) -> int:
        # Every batch overlaps the previous one by half: duplicates must be stored once.
        events = [{"customer_id": f"c{i % 20}", "event": "login", "id": f"e{i}",
                   "occurred_at": f"2026-11-{1 + i % 28:02d}T10:00:00Z"}
                  for i in range(number * 50, number * 50 + 100)]
        response = client.post("/api/v1/events", headers=KEY, json={"events": events})
        assert response.status_code == 200, response.text
        return int(response.json()["accepted"])

    with ThreadPoolExecutor(max_workers=4) as pool:
        accepted = list(pool.map(batch, range(12)))
    assert accepted == [100] * 12
    with Session(rt.engine) as session:
        stored = session.exec(select(Event.client_id)).all()
    assert sorted(stored) == sorted(f"e{i}" for i in range(0, 12 * 50 + 50))


def test_duplicates_and_future_events_are_counted_as_such(api):
    from datetime import UTC, datetime, timedelta

    rt, client = api
    body = client.post("/api/v1/customers", headers=KEY, json={"customers": [
        {"id": "c1", "email": "ada@example.com"},
        {"id": "c2", "email": "bob@example.com"},
        {"id": "c1", "email": "ada@example.com", "plan": "pro"},  # the same customer again
        {"id": "c3", "email": "cy@example.com"},
    ]}).json()
    assert (body["accepted"], body["inserted"], body["updated"], body["duplicates"]) == (4, 3, 0, 1)
    again = client.post("/api/v1/customers", headers=KEY, json={"customers": [
        {"id": "c1", "email": "ada@example.com", "plan": "pro"},
        {"id": "c2", "email": "bob@example.com", "plan": "team"},
    ]}).json()
    assert (again["inserted"], again["updated"], again["unchanged"]) == (0, 1, 1)

    soon = datetime.now(UTC) + timedelta(minutes=5)  # a fast clock, within the tolerance
    events = client.post("/api/v1/events", headers=KEY, json={"events": [
        {"customer_id": "c1", "event": "login", "occurred_at": "2099-01-01T00:00:00Z"},
        {"customer_id": "c2", "event": "login", "occurred_at": soon.isoformat()},
    ]}).json()
    assert (events["accepted"], events["inserted"]) == (1, 1)
    [error] = events["errors"]
    assert error["index"] == 0
    assert error["error"].startswith("events[0].occurred_at: 2099-01-01T00:00:00Z is in the future")
    with Session(rt.engine) as session:
        ada = session.exec(select(Customer).where(Customer.external_id == "c1")).one()
        assert ada.last_active_at is None  # the 2099 event changed nothing


def test_batches_of_one_process_write_sqlite_in_turn(tmp_path: Any) -> None:
    """Batch writers queue on a lock of their own, not in SQLite's sleeping busy handler."""
    engine = make_engine(f"sqlite:///{tmp_path / 'turns.db'}")
    inside, most = 0, 0
    guard = threading.Lock()

    def work(_session: Any) -> None:
        nonlocal inside, most
        with guard:
            inside += 1
            most = max(most, inside)
        time.sleep(0.05)
        with guard:
            inside -= 1

    async def both() -> None:
        await asyncio.gather(*(in_session(engine, work, commit=True, batch=True) for _ in range(4)))

    asyncio.run(both())
    assert most == 1
    assert batch_writer(engine) is batch_writer(engine)
    engine.dispose()
