"""An events import applies its activity once at its end; nothing is lost if it stops early.

Each batch commits its events with PendingActivity rows; the import's last step, or the
next planning pass, folds them into the customers.  These tests hold the folded result to
what applying each batch at once gave, and show a pass never plans on stale activity.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from campaigns.ingestion.csv_import import import_csv
from campaigns.ingestion.pending import fold_pending_activity
from campaigns.models import Customer, PendingActivity
from campaigns.planning import Planner
from tests.factories import NOW, add_customer, migrated_engine, rules
from tests.test_planner import MISS_YOU

HEADER = "customer_id,event,occurred_at,id\n"


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    made = migrated_engine(database_url)
    yield made
    made.dispose()


def login(customer: str, days_ago: float, event_id: str, name: str = "login") -> str:
    return f"{customer},{name},{(NOW - timedelta(days=days_ago)).isoformat()},{event_id}\n"


def pending_rows(session: Session) -> int:
    return int(session.execute(sa.select(sa.func.count()).select_from(PendingActivity)).scalar_one())


def stored(session: Session, external_id: str) -> Customer:
    session.expire_all()
    return session.exec(select(Customer).where(Customer.external_id == external_id)).one()


class Stop(Exception):
    pass


def test_an_import_stopped_after_a_batch_keeps_its_activity_for_the_next_pass(engine: Engine) -> None:
    with Session(engine) as session:
        add_customer(session, external_id="back", inactive_days=40)
        add_customer(session, external_id="gone", inactive_days=40)
        session.commit()

        def stop_after_first_batch(rows: int) -> None:
            raise Stop

        text = HEADER + login("back", 1, "e1") + login("gone", 50, "e2")
        with pytest.raises(Stop):
            import_csv(session, io.StringIO(text), "events", batch_size=1, on_progress=stop_after_first_batch)

        assert stored(session, "back").last_active_at == NOW - timedelta(days=40)  # not folded yet
        assert pending_rows(session) == 1
        result = Planner(rules(MISS_YOU), now=NOW).run(session)
        session.commit()

        # The pass folded first: "back" was active yesterday and gets no "we miss you".
        assert result.plan("we-miss-you").counts["send"] == 1
        assert stored(session, "back").last_active_at == NOW - timedelta(days=1)
        assert stored(session, "back").activity_count == 1
        assert pending_rows(session) == 0


def test_a_finished_import_leaves_nothing_pending_and_counts_each_new_event_once(engine: Engine) -> None:
    with Session(engine) as session:
        add_customer(session, external_id="c1")
        add_customer(session, external_id="c2")
        session.commit()
        first = HEADER + login("c1", 9, "a1") + login("c1", 6, "a2") + login("c2", 5, "b1")
        import_csv(session, io.StringIO(first), "events", batch_size=2)
        # Half of this file is stored already: only the new half counts, whichever batch it is in.
        again = (HEADER + login("c1", 6, "a2") + login("c1", 3, "a3") + login("c2", 5, "b1")
                 + login("c2", 4, "b2") + login("c1", 9, "a1"))
        report = import_csv(session, io.StringIO(again), "events", batch_size=2)

        assert (report.inserted, report.duplicates) == (2, 3)
        assert pending_rows(session) == 0
        c1, c2 = stored(session, "c1"), stored(session, "c2")
        assert (c1.activity_count, c1.last_active_at, c1.cadence_days) == (3, NOW - timedelta(days=3), 3)
        assert (c2.activity_count, c2.last_active_at, c2.cadence_days) == (2, NOW - timedelta(days=4), None)


def test_non_activity_events_are_stored_but_never_pending(engine: Engine) -> None:
    with Session(engine) as session:
        add_customer(session, external_id="c1", inactive_days=40)
        session.commit()
        text = HEADER + login("c1", 1, "o1", name="email_opened")
        import_csv(session, io.StringIO(text), "events", non_activity_events=frozenset({"email_opened"}))

        assert stored(session, "c1").last_active_at == NOW - timedelta(days=40)
        assert stored(session, "c1").activity_count == 0


def test_folding_twice_applies_the_activity_once(engine: Engine) -> None:
    with Session(engine) as session:
        added = add_customer(session, external_id="c1")
        session.add(PendingActivity(customer_id=added.id, latest_at=NOW - timedelta(days=2), count=2))
        session.add(PendingActivity(customer_id=added.id, latest_at=NOW - timedelta(days=1), count=1))
        session.add(PendingActivity(customer_id=10_000_000, latest_at=NOW, count=1))  # no such customer
        session.commit()

        assert fold_pending_activity(session, non_activity_events=frozenset()) == 1
        assert fold_pending_activity(session, non_activity_events=frozenset()) == 0
        session.commit()

        assert stored(session, "c1").activity_count == 3
        assert stored(session, "c1").last_active_at == NOW - timedelta(days=1)
        assert pending_rows(session) == 0


def test_nothing_pending_costs_a_pass_one_read_and_no_write(engine: Engine) -> None:
    with Session(engine) as session:
        add_customer(session, external_id="c1")
        session.commit()
        statements: list[str] = []
        sa.event.listen(engine, "before_cursor_execute",
                        lambda _c, _cur, statement, *_: statements.append(statement.split()[0].upper()))
        assert fold_pending_activity(session, non_activity_events=frozenset()) == 0
        session.rollback()
    assert statements == ["SELECT"]
