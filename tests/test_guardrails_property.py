"""Guardrails as properties over random customers, rules and passes (SQL, both backends)."""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import Session, select

from campaigns.models import Customer, Delivery, DeliveryStatus
from campaigns.planning.planner import Planner
from tests.factories import NOW, migrated_engine, rules


@pytest.fixture
def engine(database_url):
    engine = migrated_engine(database_url)
    yield engine
    engine.dispose()


customers = st.lists(
    st.tuples(st.integers(min_value=0, max_value=120), st.sampled_from(["free", "pro"])),
    min_size=1,
    max_size=25,
)
campaign = st.fixed_dictionaries(
    {
        "days": st.integers(min_value=0, max_value=60),
        "priority": st.integers(min_value=0, max_value=5),
        "holdout": st.sampled_from([0, 10, 50]),
        "cooldown": st.sampled_from([None, "2d", "10d"]),
    }
)


def rules_text(cap_max: int, cap_days: int, campaigns: list[dict]) -> str:
    lines = [
        f"defaults: {{timezone: UTC, frequency_cap: {{max: {cap_max}, per: {cap_days}d}}}}",
        "campaigns:",
    ]
    for n, c in enumerate(campaigns):
        lines += [
            f"  - id: c{n}",
            "    template: t",
            f"    priority: {c['priority']}",
            f"    when: {{days_inactive: {{at_least: {c['days']}}}}}",
            f"    holdout: {c['holdout']}%",
        ]
        if c["cooldown"]:
            lines.append(f"    cooldown: {c['cooldown']}")
    return "\n".join(lines) + "\n"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    people=customers,
    campaigns=st.lists(campaign, min_size=1, max_size=3),
    cap_max=st.integers(min_value=1, max_value=2),
    cap_days=st.integers(min_value=1, max_value=7),
    steps=st.lists(st.integers(min_value=1, max_value=72), min_size=1, max_size=5),
)
def test_caps_one_campaign_per_pass_and_stable_holdouts(engine, people, campaigns, cap_max, cap_days, steps):
    plan_rules = rules(rules_text(cap_max, cap_days, campaigns))

    def simulate() -> list[Delivery]:
        with Session(engine) as session:
            session.execute(sa.delete(Delivery))
            session.execute(sa.delete(Customer))
            for n, (inactive, plan) in enumerate(people):
                session.add(
                    Customer(
                        id=n + 1,
                        external_id=f"p{n}",
                        email=f"p{n}@example.com",
                        plan=plan,
                        last_active_at=NOW - timedelta(days=inactive),
                        signed_up_at=NOW - timedelta(days=400),
                    )
                )
            session.commit()
            moment = NOW
            for hours in [0, *steps]:
                moment += timedelta(hours=hours)
                Planner(plan_rules, now=moment).run(session)
                # Everything queued goes out at once.
                session.execute(
                    sa.update(Delivery)
                    .where(Delivery.status == DeliveryStatus.queued)
                    .values(status=DeliveryStatus.sent, sent_at=moment)
                )
                session.commit()
            return list(session.exec(select(Delivery)))

    rows = simulate()
    per_customer: dict[int, list[Delivery]] = defaultdict(list)
    for row in rows:
        per_customer[row.customer_id].append(row)
    window = timedelta(days=cap_days)
    for sent in per_customer.values():
        times = sorted(r.sent_at for r in sent if r.status == DeliveryStatus.sent)
        for i, start in enumerate(times):
            assert sum(1 for t in times[i:] if t - start < window) <= cap_max, times
        passes = [r.created_at for r in sent if r.status == DeliveryStatus.sent]
        assert len(passes) == len(set(passes)), "two campaigns in one pass"
    held = {(r.campaign_id, r.customer_id) for r in rows if r.status == DeliveryStatus.held_out}
    again = simulate()
    assert {(r.campaign_id, r.customer_id) for r in again if r.status == DeliveryStatus.held_out} == held


def test_holdout_share_is_within_binomial_bounds(engine):
    text = """
        campaigns:
          - id: we-miss-you
            template: t
            when: {days_inactive: {at_least: 1}}
            holdout: 10%
    """
    with Session(engine) as session:
        session.execute(
            sa.insert(Customer),
            [
                {
                    "external_id": f"b{n}",
                    "email": f"b{n}@example.com",
                    "last_active_at": NOW - timedelta(days=5),
                    "status": "active",
                    "activity_count": 0,
                    "attributes": {},
                    "created_at": NOW,
                    "updated_at": NOW,
                }
                for n in range(5000)
            ],
        )
        session.commit()
        plan = Planner(rules(text), now=NOW).run(session).plan("we-miss-you")
    # 5000 draws at p = 0.1: mean 500, sd 21.2; four sd either side.
    assert 415 <= plan.counts["held_out"] <= 585
