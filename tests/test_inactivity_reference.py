"""Where inactivity is counted from: the planner, explain and the reports agree to the customer.

The customers below differ only in which of last activity, signup and first
record is known, so any copy of the reference moment that drifts from
``campaigns.sql.inactive_since`` puts one of them on a different side.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlmodel import Session, col

from campaigns.delivery.context import customer_context
from campaigns.models import Customer, Delivery
from campaigns.planning.explain import explain
from campaigns.planning.planner import Planner
from campaigns.reports.at_risk import at_risk
from campaigns.reports.losses import PASSIVE, Losses
from tests.factories import NOW, add_customer, migrated_engine, rules

PASSIVE_AFTER = timedelta(days=90)
RULES = """
    defaults:
      timezone: UTC
      passive_churn_after: 90d
    campaigns:
      - id: lapsed
        template: t
        when: {status: active, lapsed: true}
      - id: inactive-60
        template: t
        when: {status: active, days_inactive: {at_least: 60}}
"""

# (last activity, signup, first record), in days before NOW; None: unknown.
SHAPES = {
    "active-recently-old-signup": (10, 400, 400),
    "active-long-ago": (100, 400, 400),
    "never-active-old-signup": (None, 100, 100),
    "never-active-new-signup-old-record": (None, 10, 100),
    "never-active-no-signup-old-record": (None, None, 100),
    "never-active-no-signup-new-record": (None, None, 10),
    "between-60-and-90": (70, 400, 400),
}


def _days(value: int | None):
    return None if value is None else NOW - timedelta(days=value)


@pytest.fixture
def customers(database_url):
    engine = migrated_engine(database_url)
    ids = {}
    with Session(engine) as session:
        for name, (active, signup, created) in SHAPES.items():
            customer = add_customer(
                session, external_id=name, signed_up_at=_days(signup), created_at=_days(created),
                timezone="UTC",
            )
            customer.last_active_at = _days(active)
            ids[name] = customer.id
        session.commit()
    yield engine, ids
    engine.dispose()


def _planned(engine, campaign_id: str) -> set[str]:
    with Session(engine) as session:
        Planner(rules(RULES), now=NOW).run(session, campaign_ids=[campaign_id])
        found = set(session.scalars(
            sa.select(col(Customer.external_id)).join(Delivery, col(Delivery.customer_id) == col(Customer.id))
        ))
        session.rollback()
    return found


def _explained(engine, ids, campaign_id: str) -> set[str]:
    found = set()
    with Session(engine) as session:
        for name, customer_id in ids.items():
            customer = session.get(Customer, customer_id)
            verdicts = {v.campaign_id: v for v in explain(session, rules(RULES), customer, now=NOW)}
            session.rollback()
            if verdicts[campaign_id].verdict in ("would_send", "other_campaign"):
                found.add(name)
    return found


def test_planner_explain_and_reports_count_inactivity_from_the_same_moment(customers):
    engine, ids = customers
    lapsed = {"active-long-ago", "never-active-old-signup", "never-active-no-signup-old-record"}

    assert _planned(engine, "lapsed") == lapsed
    assert _explained(engine, ids, "lapsed") == lapsed

    with Session(engine) as session:
        per_customer = Losses(now=NOW, passive_after=PASSIVE_AFTER).buckets(
            [NOW - timedelta(days=1000), NOW + timedelta(days=1)], col(Customer.external_id).label("name")
        )
        passive = set(session.scalars(sa.select(per_customer.c.name).where(per_customer.c.kind == PASSIVE)))
        report = at_risk(session, now=NOW, passive_churn_after=PASSIVE_AFTER, limit=100)
    assert passive == lapsed
    assert {r.customer_id for r in report.customers} == set(SHAPES) - lapsed


def test_days_inactive_shown_by_explain_and_at_risk_is_the_planners(customers):
    engine, ids = customers
    over_60 = {"active-long-ago", "never-active-old-signup", "never-active-no-signup-old-record",
               "between-60-and-90"}
    assert _planned(engine, "inactive-60") == over_60
    with Session(engine) as session:
        customer = session.get(Customer, ids["never-active-new-signup-old-record"])
        verdict = {v.campaign_id: v for v in explain(session, rules(RULES), customer, now=NOW)}
        session.rollback()
        report = at_risk(session, now=NOW, passive_churn_after=PASSIVE_AFTER, limit=100)
        template = customer_context(customer, now=NOW)
    # Never active: counted from signup (10 days), not from the first record (100).
    assert "days_inactive >= 60 (is 10.0)" in verdict["inactive-60"].reason
    assert template["days_inactive"] == 10  # what `{{ customer.days_inactive }}` prints
    shown = {r.customer_id: r.days_inactive for r in report.customers}
    assert shown["never-active-new-signup-old-record"] == pytest.approx(10.0)
    assert shown["never-active-no-signup-new-record"] == pytest.approx(10.0)
    assert shown["between-60-and-90"] == pytest.approx(70.0)
