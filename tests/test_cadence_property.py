"""The cadence kept up incrementally equals a from-scratch recomputation, whatever the arrival order."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import Session, select

from campaigns.ingestion import CustomerIn, EventIn, record_events, upsert_customers
from campaigns.ingestion.activity import CADENCE_DAYS, median_gap_days
from campaigns.models import Customer, Event
from tests.factories import migrated_engine

START = datetime(2026, 1, 1, 9, tzinfo=UTC)
NON_ACTIVITY = frozenset({"email_opened"})


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    engine = migrated_engine(f"sqlite:///{tmp_path_factory.mktemp('cadence') / 'c.db'}")
    yield engine
    engine.dispose()


events = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=400),
        st.integers(min_value=0, max_value=23),
        st.sampled_from(["login", "export", "email_opened"]),
    ),
    min_size=0,
    max_size=60,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=events, cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=6))
def test_incremental_cadence_equals_recomputing_from_all_events(engine, history, cuts):
    with Session(engine) as session:
        session.execute(Event.__table__.delete())  # type: ignore[attr-defined]
        session.execute(Customer.__table__.delete())  # type: ignore[attr-defined]
        upsert_customers(session, [CustomerIn.model_validate({"id": "c", "email": "c@example.com"})])
        session.commit()
        records = [
            EventIn.model_validate(
                {
                    "customer_id": "c",
                    "event": name,
                    "id": f"e{n}",
                    "occurred_at": (START + timedelta(days=day, hours=hour)).isoformat(),
                }
            )
            for n, (day, hour, name) in enumerate(history)
        ]
        # Arrival in any batches, in the order given (old events may come late).
        bounds = sorted({0, len(records), *(c for c in cuts if c < len(records))})
        for start, end in itertools.pairwise(bounds):
            record_events(session, records[start:end], non_activity_events=NON_ACTIVITY,
                          now=START + timedelta(days=401))
            session.commit()
        customer = session.exec(select(Customer)).one()
        active = sorted(
            {
                (START + timedelta(days=d, hours=h)).date()
                for d, h, name in history
                if name not in NON_ACTIVITY
            },
            reverse=True,
        )
        # The gaps between the newest CADENCE_DAYS + 1 active days (see activity.py).
        assert customer.cadence_days == median_gap_days(active[: CADENCE_DAYS + 1])
        assert customer.activity_count == sum(1 for *_, name in history if name not in NON_ACTIVITY)
        latest = max(
            (START + timedelta(days=d, hours=h) for d, h, name in history if name not in NON_ACTIVITY),
            default=None,
        )
        assert customer.last_active_at == latest
