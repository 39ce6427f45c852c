"""`retention explain`: the planner's own verdict for one customer, with the reason in words."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlmodel import Session

from campaigns.models import Delivery
from campaigns.planning.explain import explain, past_deliveries
from campaigns.planning.planner import Planner
from tests.factories import NOW, add_customer, migrated_engine, rules

RULES = """
    defaults:
      timezone: UTC
      quiet_hours: "21:00-08:00"
      frequency_cap: {max: 1, per: 7d}
    campaigns:
      - id: urgent
        template: t
        when: {days_inactive: {at_least: 30}, plan: pro}
        priority: 9
      - id: gentle
        template: t
        when: {days_inactive: {at_least: 30}}
        priority: 1
      - id: control
        template: t
        when: {days_inactive: {at_least: 300}}
        holdout: 100%
        priority: 10
"""


@pytest.fixture
def engine(database_url):
    engine = migrated_engine(database_url)
    yield engine
    engine.dispose()


def verdicts(engine, customer_id, now=NOW):
    with Session(engine) as session:
        from campaigns.models import Customer

        customer = session.get(Customer, customer_id)
        found = {v.campaign_id: v for v in explain(session, rules(RULES), customer, now=now)}
        session.rollback()
    return found


def test_explain_gives_each_campaign_its_verdict_and_reason(engine):
    with Session(engine) as session:
        pro = add_customer(session, inactive_days=40, plan="pro", timezone="UTC")
        session.commit()
        pro_id = pro.id
    found = verdicts(engine, pro_id)
    assert found["urgent"].verdict == "would_send"
    assert found["gentle"].verdict == "other_campaign" and "urgent" in found["gentle"].reason
    assert "days_inactive >= 300 (is 40.0)" in found["control"].reason
    with Session(engine) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Delivery)) == 0  # wrote nothing


def test_explain_names_the_sends_that_cap_a_customer_and_quiet_hours(engine):
    with Session(engine) as session:
        free = add_customer(session, inactive_days=40, plan="free", timezone="UTC")
        session.commit()
        free_id = free.id
        Planner(rules(RULES), now=NOW).run(session)
        session.commit()
    later = verdicts(engine, free_id, now=NOW + timedelta(days=1))
    # Planned but never sent: explain says so instead of "already_sent".
    assert later["gentle"].verdict == "queued" and "not sent yet" in later["gentle"].reason
    assert later["urgent"].verdict == "no_match" and "plan = pro (is 'free')" in later["urgent"].reason
    with Session(engine) as session:
        session.execute(sa.update(Delivery).values(episode="older"))
        session.commit()
    night = verdicts(engine, free_id, now=NOW.replace(hour=23))
    assert night["gentle"].verdict == "capped" and "gentle" in night["gentle"].reason
    with Session(engine) as session:
        session.execute(sa.delete(Delivery))
        session.commit()
    night = verdicts(engine, free_id, now=NOW.replace(hour=23))
    assert night["gentle"].verdict == "would_wait" and "08:00" in night["gentle"].reason
    with Session(engine) as session:
        from campaigns.models import Customer

        assert past_deliveries(session, session.get(Customer, free_id)) == []


def test_explain_reports_the_control_group(engine):
    with Session(engine) as session:
        old = add_customer(session, inactive_days=400, plan="free", timezone="UTC")
        session.commit()
        old_id = old.id
    assert verdicts(engine, old_id)["control"].verdict == "held_out"
