"""Cadence skipped for customers with too few activity events: only when it is sure to be null.

record_events reads no events back for a customer whose stored activity_count plus the new
activity events stays under MIN_CADENCE_DAYS; these tests hold that shortcut to the cadence
a full read gives, including when the count was read before another writer added events.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, select

import campaigns.ingestion.events as events_module
from campaigns.ingestion import EventIn, record_events
from campaigns.ingestion.csv_import import import_csv
from campaigns.models import Event
from tests.test_ingest import add_customers, add_events, customer, engine, session, utc  # noqa: F401  (fixtures)
from worker.database import make_engine

HEADER = "customer_id,event,occurred_at,id\n"
DAY = timedelta(days=1)


def login(customer_id: str, day: int, event_id: str) -> dict[str, str]:
    return {"customer_id": customer_id, "event": "login", "id": event_id,
            "occurred_at": (utc(2024, 1, 1, 9) + day * DAY).isoformat()}


def import_events(into: Session, *rows: dict[str, str]) -> None:
    text = HEADER + "".join(f"{r['customer_id']},{r['event']},{r['occurred_at']},{r['id']}\n" for r in rows)
    report = import_csv(into, io.StringIO(text), "events", non_activity_events=frozenset({"email_opened"}))
    assert report.rejected == []


def test_a_customer_crossing_from_two_to_three_active_days_in_one_import_gets_a_cadence(
    session: Session,  # noqa: F811  (the imported fixture)
) -> None:
    add_customers(session, {"id": "c1", "email": "a@example.com"}, {"id": "c2", "email": "b@example.com"})
    add_events(session, login("c1", 0, "a1"), login("c1", 4, "a2"), login("c2", 0, "b1"))

    import_events(session, login("c1", 8, "a3"), login("c2", 3, "b2"), login("c2", 9, "b3"))

    assert customer(session, "c1").cadence_days == 4  # 2 stored + 1 new
    assert customer(session, "c2").cadence_days == 4.5  # 1 stored + 2 new: gaps 3 and 6
    assert (customer(session, "c1").activity_count, customer(session, "c2").activity_count) == (3, 3)


def test_fewer_than_three_activity_events_leave_the_cadence_null(
    session: Session,  # noqa: F811  (the imported fixture)
) -> None:
    add_customers(session, {"id": "c1", "email": "a@example.com"})
    add_events(session, login("c1", 0, "a1"))

    import_events(session, login("c1", 5, "a2"),
                  {**login("c1", 9, "a3"), "event": "email_opened"})  # not activity

    assert customer(session, "c1").cadence_days is None
    assert customer(session, "c1").activity_count == 2
    assert customer(session, "c1").last_active_at == utc(2024, 1, 6, 9)


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    made = make_engine(f"sqlite:///{tmp_path / 'race.db'}")  # WAL, as the worker runs it
    SQLModel.metadata.create_all(made)
    yield made
    made.dispose()


def test_events_committed_by_another_writer_after_the_count_was_read_still_count(
    sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SQLite reads the customers before the INSERT takes the write lock: another connection
    # may commit events in between, and the counts read are then too low to trust.
    with Session(sqlite_engine) as setup:
        add_customers(setup, {"id": "c1", "email": "a@example.com"})
        add_events(setup, login("c1", 0, "a1"))
    real = events_module.known_customers
    interfered: list[bool] = []

    def known_then_another_writer(bound: Session, *args: Any, **kwargs: Any) -> Any:
        found = real(bound, *args, **kwargs)
        if not interfered:  # once: the other writer's own record_events comes through here too
            interfered.append(True)
            with Session(sqlite_engine) as other:
                add_events(other, login("c1", 4, "a2"))
        return found

    monkeypatch.setattr(events_module, "known_customers", known_then_another_writer)
    with Session(sqlite_engine) as ours:
        result = record_events(ours, [EventIn.model_validate(login("c1", 8, "a3"))],
                               non_activity_events=frozenset())
        ours.commit()
        assert result.inserted == 1
        assert customer(ours, "c1").activity_count == 3
        assert customer(ours, "c1").cadence_days == 4


def test_concurrent_batches_for_the_same_customers_count_every_event_and_its_cadence(
    engine: Engine,  # noqa: F811  (the imported fixture)
) -> None:
    # Each writer recomputes the cadence from the events committed before it: whichever
    # commits last must see every batch's events, however the batches interleave.
    from concurrent.futures import ThreadPoolExecutor

    people = [f"c{i}" for i in range(5)]
    with Session(engine) as setup:
        add_customers(setup, *({"id": p, "email": f"{p}@example.com"} for p in people))

    def batch(number: int) -> None:
        rows = [login(p, number * 2, f"{p}-{number}") for p in people]
        with Session(engine) as writer:
            result = record_events(writer, [EventIn.model_validate(r) for r in rows],
                                   non_activity_events=frozenset())
            writer.commit()
        assert result.inserted == len(people)

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(batch, range(12)))
    with Session(engine) as check:
        for p in people:
            assert (customer(check, p).activity_count, customer(check, p).cadence_days) == (12, 2.0)


def test_an_import_is_not_held_up_by_an_open_api_batch_for_the_same_customer(
    postgres_url: str,
) -> None:
    # The API's batch locks its customers' rows to update their activity; an import's batch
    # only references those rows (a foreign-key check), which that lock must not block.
    made = make_engine(postgres_url)
    SQLModel.metadata.create_all(made)
    try:
        with Session(made) as setup:
            add_customers(setup, {"id": "c1", "email": "a@example.com"})
        with Session(made) as api_batch, Session(made) as importer:
            record_events(api_batch, [EventIn.model_validate(login("c1", 0, "a1"))],
                          non_activity_events=frozenset())
            importer.connection().exec_driver_sql("SET lock_timeout = '2s'")
            # An import's batch: its activity waits in pending_activity for the fold.
            record_events(importer, [EventIn.model_validate(login("c1", 4, "a2"))],
                          non_activity_events=frozenset(), defer_activity=True)
            importer.commit()
            api_batch.commit()
        with Session(made) as check:
            assert {e.client_id for e in check.exec(select(Event))} == {"a1", "a2"}
    finally:
        made.dispose()
