"""`retention customers --at-risk`: health scores computed by hand, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlmodel import Session

from campaigns.models import utcnow
from campaigns.reports.at_risk import at_risk, explain
from tests.factories import NOW, add_customer, add_event, migrated_engine
from tests.test_cli import retention

LAPSE = timedelta(days=90)


@pytest.fixture
def engine(database_url):
    engine = migrated_engine(database_url)
    yield engine
    engine.dispose()


def events(session, customer, days_ago, name="login"):
    for days in days_ago:
        add_event(session, customer, name, NOW - timedelta(days=days))


def seed(session):
    """Four active customers whose scores are worked out in the comments, and three left out."""
    # recency: ratio 31/10 = 3.1 → overdue risk 1; trend: 0 vs 3 → 1.  score 100·(1 − 0.7 − 0.3) = 0
    gone = add_customer(session, external_id="gone", inactive_days=31, cadence_days=10.0)
    events(session, gone, [31, 40, 50])
    # ratio 10/10 = 1 → (1 − 0.5)/2.5 = 0.2 (> 10/90); trend 1 − 2/8 = 0.75.  100·(1 − 0.14 − 0.225) = 63.5
    fading = add_customer(session, external_id="fading", inactive_days=10, cadence_days=10.0, plan="pro")
    events(session, fading, [10, 12, 35, 37, 39, 41, 43, 45, 47, 49])
    # no cadence: recency 45/90 = 0.5; no events to compare.  100·(1 − 0.35) = 65
    add_customer(session, external_id="new", inactive_days=45)
    # ratio 0.5 → 0; lapse 5/90; steady 5 vs 5 → 0.  100·(1 − 0.7·5/90) = 96.11
    steady = add_customer(session, external_id="steady", inactive_days=5, cadence_days=10.0)
    events(session, steady, [5, 10, 15, 20, 25, 35, 40, 45, 50, 55])
    events(session, steady, [1, 2, 3, 4, 6, 7], name="email_opened")  # not activity: ignored
    add_customer(session, external_id="lapsed", inactive_days=100, cadence_days=10.0)  # already lost
    add_customer(session, external_id="cancelled", inactive_days=40, status="cancelled")
    add_customer(session, external_id="never", inactive_days=None,  # counted from signup, 400 days ago
                 signed_up_at=NOW - timedelta(days=400))
    session.commit()


def test_at_risk_ranks_active_customers_by_health_with_reasons(engine):
    with Session(engine) as session:
        seed(session)
        result = at_risk(session, now=NOW, passive_churn_after=LAPSE,
                         non_activity_events=frozenset({"email_opened"}))
    assert result.considered == 4
    ranked = [(c.customer_id, round(c.score, 2)) for c in result.customers]
    assert ranked == [("gone", 0.0), ("fading", 63.5), ("new", 65.0), ("steady", 96.11)]
    gone, fading, new, steady = result.customers
    assert (gone.events_recent, gone.events_previous) == (0, 3)
    assert gone.overdue_ratio == pytest.approx(3.1)
    assert gone.why == (
        "3.1x overdue: inactive 31 days, usually every 10 days",
        "activity down 100%: 0 events in the last 30 days vs 3 in the 30 before",
    )
    assert (fading.events_recent, fading.events_previous, fading.plan) == (2, 8, "pro")
    assert fading.why == (
        "1.0x overdue: inactive 10 days, usually every 10 days",
        "activity down 75%: 2 events in the last 30 days vs 8 in the 30 before",
    )
    assert new.cadence_days is None and new.days_to_lapse == pytest.approx(45)
    assert new.why == (
        "inactive 45 days; too little history for a usual rhythm",
        "lapses in 45 days (no activity for 90 days counts as lost)",
    )
    assert (steady.events_recent, steady.events_previous, steady.why) == (5, 5, ("no warning signs",))


def test_at_risk_limit_keeps_the_riskiest(engine):
    with Session(engine) as session:
        seed(session)
        result = at_risk(session, now=NOW, passive_churn_after=LAPSE, limit=2)
    assert [c.customer_id for c in result.customers] == ["gone", "fading"]
    assert result.considered == 4


def test_at_risk_on_an_empty_database(engine):
    with Session(engine) as session:
        result = at_risk(session, now=NOW, passive_churn_after=LAPSE)
    assert (result.considered, result.customers) == (0, ())


def test_due_soon_is_said_before_a_customer_is_overdue():
    assert explain(7.0, 10.0, 0.7, 3, 3, 90.0) == ("due soon: inactive 7 of their usual 10 days",)


def test_customers_command_lists_at_risk_as_table_and_json(tmp_path):
    url = f"sqlite:///{tmp_path}/retention.db"
    engine = migrated_engine(url)
    now = utcnow()  # the command runs at the real now, not at the fixed test NOW
    with Session(engine) as session:
        for external_id, inactive in (("soon-gone", 80), ("fine", 1)):
            add_customer(session, external_id=external_id, last_active_at=now - timedelta(days=inactive),
                         cadence_days=7.0)
        session.commit()
    engine.dispose()
    (tmp_path / "rules.yaml").write_text("campaigns: []\n")
    env = {"RETENTION_DATABASE_URL": url}
    table = retention(tmp_path, "customers", "--at-risk", "--limit", "1", env=env)
    assert "soon-gone" in table.stdout and "fine" not in table.stdout
    assert "1 of 2 active customers" in table.stdout
    data = json.loads(retention(tmp_path, "customers", "--at-risk", "--format", "json", env=env).stdout)
    assert set(data) == {"at_risk_version", "as_of", "considered", "customers"}
    assert [c["id"] for c in data["customers"]] == ["soon-gone", "fine"]
    assert set(data["customers"][0]) == {"id", "email", "plan", "score", "days_inactive", "cadence_days",
                                         "overdue_ratio", "events_recent", "events_previous",
                                         "trend_window_days", "days_to_lapse", "why"}
    missing = retention(tmp_path, "customers", env=env, check=False)
    assert missing.returncode == 1 and "--at-risk" in missing.stderr


def test_trend_is_measured_over_each_customers_own_rhythm(tmp_path):
    url = f"sqlite:///{tmp_path}/retention.db"
    engine = migrated_engine(url)
    now = utcnow()
    with Session(engine) as session:
        # Every 40 days, last seen 35 days ago: on schedule, not "down 100 %".
        slow = add_customer(session, external_id="slow", last_active_at=now - timedelta(days=35),
                            cadence_days=40.0)
        for days in (35, 75, 115, 155, 195, 235):
            add_event(session, slow, "login", now - timedelta(days=days))
        # Every 2 days, gone for 4: twice overdue.
        fast = add_customer(session, external_id="fast", last_active_at=now - timedelta(days=4),
                            cadence_days=2.0)
        for days in range(4, 61, 2):
            add_event(session, fast, "login", now - timedelta(days=days))
        session.commit()
    engine.dispose()
    (tmp_path / "rules.yaml").write_text("campaigns: []\n")
    data = json.loads(retention(tmp_path, "customers", "--at-risk", "--format", "json",
                                env={"RETENTION_DATABASE_URL": url}).stdout)
    ranked = {c["id"]: c for c in data["customers"]}
    assert [c["id"] for c in data["customers"]] == ["fast", "slow"]
    slow_row = ranked["slow"]
    assert slow_row["trend_window_days"] == 120.0
    assert (slow_row["events_recent"], slow_row["events_previous"]) == (3, 3)
    assert not any("activity down" in why for why in slow_row["why"])
    # 100 × (1 − 0.7 × 35/90): recency from closeness to lapsing, no trend risk.
    assert slow_row["score"] == pytest.approx(72.8, abs=0.1)
