"""Goal events credit the latest delivery before them, sent or held out alike."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlmodel import Session

from campaigns.models import Delivery, DeliveryStatus
from campaigns.planning.conversions import credit_conversions
from tests.factories import NOW, add_customer, add_event, migrated_engine, rules

RULES = """
    campaigns:
      - id: we-miss-you
        template: t
        when: {days_inactive: {at_least: 30}}
        goal: {event: login, within: 14d}
      - id: offer
        template: t
        when: {days_inactive: {at_least: 60}}
        goal: {event: login, within: 14d}
      - id: news
        template: t
        once: true
"""


@pytest.fixture
def engine(database_url):
    engine = migrated_engine(database_url)
    yield engine
    engine.dispose()


def delivery(session, customer, campaign_id, status, at, episode="e"):
    row = Delivery(campaign_id=campaign_id, customer_id=customer.id, episode=episode, status=status,
                   template="t", created_at=at, sent_at=at if status == DeliveryStatus.sent else None)
    session.add(row)
    session.flush()
    return row


def test_goal_event_within_the_window_converts_sent_and_held_out_alike(engine):
    with Session(engine) as session:
        treated, control, late, early = (add_customer(session) for _ in range(4))
        sent = delivery(session, treated, "we-miss-you", DeliveryStatus.sent, NOW - timedelta(days=5))
        held = delivery(session, control, "we-miss-you", DeliveryStatus.held_out, NOW - timedelta(days=5))
        missed = delivery(session, late, "we-miss-you", DeliveryStatus.sent, NOW - timedelta(days=20))
        before = delivery(session, early, "we-miss-you", DeliveryStatus.sent, NOW - timedelta(days=5))
        add_event(session, treated, "login", NOW - timedelta(days=3))
        add_event(session, treated, "login", NOW - timedelta(days=1))
        add_event(session, control, "login", NOW - timedelta(days=2))
        add_event(session, late, "login", NOW - timedelta(days=2))  # 18 days after: outside 14d
        add_event(session, early, "login", NOW - timedelta(days=6))  # before the email
        add_event(session, early, "export", NOW - timedelta(days=1))  # not the goal
        session.commit()
        assert credit_conversions(session, rules(RULES), now=NOW) == 2
        session.commit()
        for row in (sent, held, missed, before):
            session.refresh(row)
        assert sent.converted_at == NOW - timedelta(days=3)  # the first goal event counts
        assert held.converted_at == NOW - timedelta(days=2)
        assert missed.converted_at is None and before.converted_at is None
        assert credit_conversions(session, rules(RULES), now=NOW) == 0  # idempotent


def test_the_latest_delivery_before_the_event_gets_the_credit(engine):
    with Session(engine) as session:
        customer = add_customer(session)
        older = delivery(session, customer, "we-miss-you", DeliveryStatus.sent, NOW - timedelta(days=6))
        newer = delivery(session, customer, "offer", DeliveryStatus.sent, NOW - timedelta(days=3))
        unrelated = delivery(session, customer, "news", DeliveryStatus.sent, NOW - timedelta(days=2))
        failed = delivery(session, customer, "offer", DeliveryStatus.failed, NOW - timedelta(days=2),
                          episode="f")
        add_event(session, customer, "login", NOW - timedelta(days=1))
        session.commit()
        credit_conversions(session, rules(RULES), now=NOW)
        session.commit()
        for row in (older, newer, unrelated, failed):
            session.refresh(row)
        assert newer.converted_at is not None
        assert older.converted_at is None and unrelated.converted_at is None
        assert failed.converted_at is None
