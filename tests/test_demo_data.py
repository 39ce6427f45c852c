"""The synthetic demo dataset: deterministic, idempotent, and shaped like a real customer base."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, func, select

from campaigns.demo_data import ascii_slug, generate_demo
from campaigns.models import Customer, Event

NOW = datetime(2025, 3, 1, 12, tzinfo=UTC)
CUSTOMERS = 400


def fresh_engine(url: str) -> Engine:
    engine = sa.create_engine(url)
    SQLModel.metadata.create_all(engine)
    return engine


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = fresh_engine(database_url)
    yield engine
    engine.dispose()


def snapshot(engine: Engine) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    customer: Any = Customer.__table__  # type: ignore[attr-defined]
    event: Any = Event.__table__  # type: ignore[attr-defined]
    columns = ("external_id", "email", "plan", "status", "signed_up_at", "cancelled_at",
               "last_active_at", "activity_count", "cadence_days", "attributes")
    with engine.connect() as connection:
        customers = connection.execute(
            sa.select(*(customer.c[name] for name in columns)).order_by(customer.c.external_id)
        ).all()
        events = connection.execute(
            sa.select(event.c.client_id, event.c.name, event.c.occurred_at)
            .order_by(event.c.client_id)
        ).all()
    return [tuple(c) for c in customers], [tuple(e) for e in events]


def test_the_same_seed_gives_the_same_data(engine: Engine, tmp_path: Path) -> None:
    other = fresh_engine(f"sqlite:///{tmp_path}/other.db")
    try:
        with Session(engine) as session:
            first = generate_demo(session, customers=CUSTOMERS, now=NOW, seed=3)
        with Session(other) as session:
            second = generate_demo(session, customers=CUSTOMERS, now=NOW, seed=3)
        assert first == second
        assert snapshot(engine) == snapshot(other)
    finally:
        other.dispose()


def test_running_the_demo_twice_stores_everything_once(engine: Engine) -> None:
    with Session(engine) as session:
        first = generate_demo(session, customers=CUSTOMERS, now=NOW)
    before = snapshot(engine)

    with Session(engine) as session:
        second = generate_demo(session, customers=CUSTOMERS, now=NOW)

    assert second.events_inserted == 0
    assert first.events_inserted == first.events == len(before[1])
    assert snapshot(engine) == before


def test_the_demo_looks_like_a_real_customer_base(engine: Engine) -> None:
    with Session(engine) as session:
        summary = generate_demo(session, customers=CUSTOMERS, now=NOW)
        customers = session.exec(select(Customer)).all()
        cancel_times = session.exec(select(Event.occurred_at).where(Event.name == "cancelled")).all()
        event_names = set(session.exec(select(Event.name).distinct()).all())
        first_event = session.exec(select(func.min(Event.occurred_at))).one()

    assert len(customers) == summary.customers == CUSTOMERS
    assert {c.email.rsplit("@", 1)[1] for c in customers} <= {
        "example.com", "example.org", "example.net"
    }
    assert all(c.email.isascii() for c in customers)
    assert any(not (c.first_name or "").isascii() for c in customers)
    assert set(summary.plans) == {"free", "pro", "team"}

    cancelled = [c for c in customers if c.status == "cancelled"]
    assert len(cancelled) == summary.cancelled == len(cancel_times)
    assert 0.04 * CUSTOMERS <= len(cancelled) <= 0.14 * CUSTOMERS
    recent = [t for t in cancel_times if timedelta(hours=2) <= NOW - t <= timedelta(hours=48)]
    assert len(recent) == summary.cancelled_recently >= 5

    drifting = [c for c in customers if c.status == "active" and c.last_active_at is not None
                and NOW - c.last_active_at >= timedelta(days=30)]
    assert len(drifting) >= summary.drifting > 0.1 * CUSTOMERS
    assert all(c.last_active_at is not None and c.last_active_at <= NOW for c in customers)
    assert all(c.signed_up_at is not None and c.signed_up_at <= NOW for c in customers)

    cadences = [c.cadence_days for c in customers if c.cadence_days is not None]
    assert len(cadences) > 0.8 * CUSTOMERS
    assert min(cadences) <= 2 and max(cadences) >= 20
    assert {"login", "report_viewed", "export", "cancelled"} <= event_names
    assert first_event >= NOW - timedelta(days=600)


def test_demo_addresses_are_plain_ascii_versions_of_the_names() -> None:
    assert [ascii_slug(n) for n in ("Łukasz", "Zoë", "José", "O'Brien", "Wójcik")] == [
        "lukasz", "zoe", "jose", "obrien", "wojcik"
    ]


def test_the_demo_needs_an_aware_now(engine: Engine) -> None:
    with Session(engine) as session, pytest.raises(ValueError, match="now must be timezone-aware"):
        generate_demo(session, customers=1, now=datetime(2025, 3, 1))


def test_the_simulated_quarter_is_the_same_for_the_same_seed():
    from campaigns.demo_behaviour import Behaviour
    from campaigns.demo_data import demo_people

    def quarter(seed: int) -> list[dict]:
        behaviour = Behaviour(demo_people(customers=300, now=NOW, seed=seed), seed=seed)
        events = []
        for day in range(30):
            events += behaviour.day(NOW + timedelta(days=day), {})
        return events

    assert quarter(3) == quarter(3)
    assert quarter(3) != quarter(4)
