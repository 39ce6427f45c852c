"""The planning pass, on SQLite and PostgreSQL: one SQL selection per campaign."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select

from campaigns.models import CampaignState, Delivery, DeliveryStatus, Suppression
from campaigns.planning import Planner, approve
from tests.factories import NOW, add_customer, add_event, migrated_engine, rules

MISS_YOU = """
    campaigns:
      - id: we-miss-you
        template: we_miss_you
        when:
          status: active
          days_inactive: {at_least: 30}
"""


@pytest.fixture
def engine(database_url):
    engine = migrated_engine(database_url)
    yield engine
    engine.dispose()


def deliveries(engine, **where):
    with Session(engine) as session:
        query = select(Delivery)
        for key, value in where.items():
            query = query.where(getattr(Delivery, key) == value)
        return session.exec(query.order_by(Delivery.id)).all()


def run_pass(engine, rules_, now=NOW):
    with Session(engine) as session:
        result = Planner(rules_, now=now).run(session)
        session.commit()
    return result


def test_inactive_customers_get_one_delivery_per_absence(engine):
    with Session(engine) as session:
        gone = add_customer(session, inactive_days=31)
        add_customer(session, inactive_days=5)
        session.commit()
        gone_id = gone.id
    first = run_pass(engine, rules(MISS_YOU))
    assert first.plan("we-miss-you").counts["send"] == 1
    assert [d.customer_id for d in deliveries(engine)] == [gone_id]
    # Later passes in the same absence send nothing new.
    second = run_pass(engine, rules(MISS_YOU), now=NOW + timedelta(days=3))
    assert second.plan("we-miss-you").counts == {
        **second.plan("we-miss-you").counts,
        "already_sent": 1,
        "send": 0,
    }
    assert len(deliveries(engine)) == 1


def test_a_new_absence_is_a_new_episode(engine):
    with Session(engine) as session:
        customer = add_customer(session, inactive_days=31)
        session.commit()
        customer_id = customer.id
    run_pass(engine, rules(MISS_YOU))
    with Session(engine) as session:
        customer = session.get(type(customer), customer_id)
        customer.last_active_at = NOW + timedelta(days=1)  # came back...
        session.commit()
    run_pass(engine, rules(MISS_YOU), now=NOW + timedelta(days=40))  # ...and drifted off again
    assert len(deliveries(engine, customer_id=customer_id)) == 2


def test_dry_run_in_a_rolled_back_transaction_writes_nothing(engine):
    with Session(engine) as session:
        add_customer(session, inactive_days=31)
        session.commit()
    with Session(engine) as session:
        result = Planner(rules(MISS_YOU), now=NOW).run(session)
        session.rollback()
    assert result.plan("we-miss-you").to_send == 1
    assert deliveries(engine) == []
    with Session(engine) as session:
        assert session.exec(select(CampaignState)).all() == []


def test_racing_planners_cannot_insert_the_same_delivery_twice(engine, database_url):
    with Session(engine) as session:
        for _ in range(50):
            add_customer(session, inactive_days=40)
        session.commit()
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def planner() -> None:
        try:
            with Session(engine) as session:
                barrier.wait()
                Planner(rules(MISS_YOU), now=NOW).run(session)
                session.commit()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=planner) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    rows = deliveries(engine)
    assert len(rows) == 50
    assert len({(d.campaign_id, d.customer_id, d.episode) for d in rows}) == 50


def test_natural_key_is_enforced_by_the_database(engine):
    with Session(engine) as session:
        customer = add_customer(session, inactive_days=40)
        session.add(Delivery(campaign_id="x", customer_id=customer.id, episode="once", template="t"))
        session.commit()
        session.add(Delivery(campaign_id="x", customer_id=customer.id, episode="once", template="t"))
        with pytest.raises(sa.exc.IntegrityError):
            session.commit()


def test_unsubscribed_and_suppressed_customers_are_never_planned(engine):
    with Session(engine) as session:
        add_customer(session, inactive_days=40, unsubscribed_at=NOW - timedelta(days=1))
        add_customer(session, inactive_days=40, email="Bounced@Example.com")
        session.add(Suppression(email="bounced@example.com", reason="bounce"))
        add_customer(session, inactive_days=40)
        session.commit()
    plan = run_pass(engine, rules(MISS_YOU)).plan("we-miss-you")
    assert plan.counts["suppressed"] == 2
    assert plan.counts["send"] == 1


def test_cooldown_spaces_sends_of_one_campaign(engine):
    text = MISS_YOU + "        cooldown: 60d\n"
    with Session(engine) as session:
        customer = add_customer(session, inactive_days=31)
        session.commit()
        customer_id = customer.id
    run_pass(engine, rules(text))
    with Session(engine) as session:
        session.get(type(customer), customer_id).last_active_at = NOW + timedelta(days=1)
        session.commit()
    # New absence after 35 days: still inside the 60-day cooldown.
    plan = run_pass(engine, rules(text), now=NOW + timedelta(days=36)).plan("we-miss-you")
    assert plan.counts["cooldown"] == 1 and plan.counts["send"] == 0
    plan = run_pass(engine, rules(text), now=NOW + timedelta(days=62)).plan("we-miss-you")
    assert plan.counts["send"] == 1


def test_frequency_cap_counts_every_campaign_and_priority_picks_the_winner(engine):
    text = """
        defaults:
          frequency_cap: {max: 1, per: 7d}
        campaigns:
          - id: low
            template: t
            when: {days_inactive: {at_least: 30}}
            priority: 1
          - id: high
            template: t
            when: {days_inactive: {at_least: 30}}
            priority: 9
    """
    with Session(engine) as session:
        add_customer(session, inactive_days=31)
        session.commit()
    result = run_pass(engine, rules(text))
    assert [p.campaign_id for p in result.plans] == ["high", "low"]
    assert result.plan("high").counts["send"] == 1
    assert result.plan("low").counts["other_campaign"] == 1
    assert result.plan("low").audience == 1  # its own selection only, not also the one before it
    later = run_pass(engine, rules(text), now=NOW + timedelta(hours=1))
    assert later.plan("low").counts["capped"] == 1
    assert later.plan("low").counts["send"] == 0


def test_holdout_is_deterministic_and_recorded_but_not_queued(engine):
    text = "    defaults: {blast_guard: {share: 100%}}\n" + MISS_YOU + "        holdout: 20%\n"
    with Session(engine) as session:
        for _ in range(1000):
            add_customer(session, inactive_days=40)
        session.commit()
    result = run_pass(engine, rules(text))
    held = deliveries(engine, status=DeliveryStatus.held_out)
    assert 150 <= len(held) <= 250
    assert len(result.queued_ids) == 1000 - len(held)
    # The same customers are held out when planned again from scratch.
    with Session(engine) as session:
        session.execute(sa.delete(Delivery))
        session.commit()
    run_pass(engine, rules(text))
    assert {d.customer_id for d in deliveries(engine, status=DeliveryStatus.held_out)} == {
        d.customer_id for d in held
    }


def test_trigger_campaign_sends_once_per_event_after_the_delay(engine):
    text = """
        campaigns:
          - id: exit-survey
            template: exit_survey
            trigger: {event: cancelled, after: 1h}
    """
    with Session(engine) as session:
        recent = add_customer(session, status="cancelled")
        add_event(session, recent, "cancelled", NOW - timedelta(minutes=30))
        due = add_customer(session, status="cancelled")
        event = add_event(session, due, "cancelled", NOW - timedelta(hours=2))
        ancient = add_customer(session, status="cancelled")
        add_event(session, ancient, "cancelled", NOW - timedelta(days=60))
        session.commit()
        due_id, event_id = due.id, event.id
    run_pass(engine, rules(text))
    rows = deliveries(engine)
    assert [(d.customer_id, d.episode) for d in rows] == [(due_id, f"event:{event_id}")]
    run_pass(engine, rules(text), now=NOW + timedelta(hours=1))
    assert len(deliveries(engine)) == 2  # the recent one is due now; the first is not repeated


def test_once_campaign_never_repeats(engine):
    text = """
        campaigns:
          - id: news
            template: feature_reports
            once: true
            when: {status: active}
    """
    with Session(engine) as session:
        add_customer(session, inactive_days=1)
        session.commit()
    run_pass(engine, rules(text))
    run_pass(engine, rules(text), now=NOW + timedelta(days=30))
    assert [d.episode for d in deliveries(engine)] == ["once"]


def test_schedule_only_plans_when_the_cron_fires(engine):
    text = """
        defaults: {timezone: UTC}
        campaigns:
          - id: weekly
            template: t
            schedule: "0 10 * * TUE"
            once: true
    """
    with Session(engine) as session:
        add_customer(session, inactive_days=1)
        session.commit()
    wednesday = run_pass(engine, rules(text))  # NOW is a Wednesday
    assert not wednesday.plan("weekly").due
    tuesday = NOW + timedelta(days=6) - timedelta(hours=1, minutes=58)  # Tue 10:02 UTC
    assert run_pass(engine, rules(text), now=tuesday).plan("weekly").counts["send"] == 1


def test_blast_guard_holds_a_sudden_jump_until_approved(engine):
    text = """
        defaults:
          blast_guard: {factor: 3, min: 10, first_pass: 1000}
        campaigns:
          - id: we-miss-you
            template: t
            when: {days_inactive: {at_least: 30}}
    """
    with Session(engine) as session:
        for _ in range(5):
            add_customer(session, inactive_days=40)
        session.commit()
    run_pass(engine, rules(text))
    with Session(engine) as session:
        for _ in range(50):  # e.g. an import that zeroed everyone's activity
            add_customer(session, inactive_days=400)
        session.commit()
    result = run_pass(engine, rules(text), now=NOW + timedelta(minutes=5))
    plan = result.plan("we-miss-you")
    assert plan.blast_guard and "5 to 55" in plan.blast_guard
    assert result.queued_ids == []
    assert len(deliveries(engine, status=DeliveryStatus.held)) == 50
    with Session(engine) as session:
        assert approve(session, "we-miss-you", now=NOW) == 50
        session.commit()
    assert len(deliveries(engine, status=DeliveryStatus.queued)) == 55
    # The approved audience is the new baseline: no hold on the next pass.
    assert (
        run_pass(engine, rules(text), now=NOW + timedelta(minutes=10)).plan("we-miss-you").blast_guard is None
    )


def test_max_per_pass_spreads_a_large_audience(engine):
    text = MISS_YOU + "        max_per_pass: 3\n"
    with Session(engine) as session:
        for _ in range(7):
            add_customer(session, inactive_days=40)
        session.commit()
    assert len(run_pass(engine, rules(text)).queued_ids) == 3
    assert len(run_pass(engine, rules(text), now=NOW + timedelta(minutes=5)).queued_ids) == 3
    assert len(run_pass(engine, rules(text), now=NOW + timedelta(minutes=10)).queued_ids) == 1


def test_ab_variants_split_deterministically_and_are_recorded(engine):
    text = """
        campaigns:
          - id: we-miss-you
            template: t
            when: {days_inactive: {at_least: 30}}
    """.replace(
        "            template: t\n",
        """            variants:
              - {template: we_miss_you, weight: 3}
              - {template: win_back_offer, name: offer, weight: 1}
""",
    )
    with Session(engine) as session:
        for _ in range(800):
            add_customer(session, inactive_days=40)
        session.commit()
    run_pass(engine, rules(text))
    rows = deliveries(engine)
    by_variant = {v: [r for r in rows if r.variant == v] for v in ("we_miss_you", "offer")}
    assert 520 <= len(by_variant["we_miss_you"]) <= 680
    assert {r.template for r in by_variant["offer"]} == {"win_back_offer"}
    with Session(engine) as session:
        session.execute(sa.delete(Delivery))
        session.commit()
    run_pass(engine, rules(text))
    assert {(r.customer_id, r.variant) for r in deliveries(engine)} == {
        (r.customer_id, r.variant) for r in rows
    }


def test_over_cap_skip_closes_the_episode_and_defer_keeps_it_open(engine):
    text = """
        defaults:
          frequency_cap: {max: 1, per: 7d}
        campaigns:
          - id: first
            template: t
            once: true
            priority: 9
          - id: second
            template: t
            once: true
            over_cap: OVER
    """
    with Session(engine) as session:
        add_customer(session, inactive_days=1)
        session.commit()
    for policy in ("skip", "defer"):
        with Session(engine) as session:
            session.execute(sa.delete(Delivery))
            session.commit()
        run_pass(engine, rules(text.replace("OVER", policy)))
        later = run_pass(engine, rules(text.replace("OVER", policy)), now=NOW + timedelta(hours=1))
        assert later.plan("second").counts["capped"] == 1
        skipped = deliveries(engine, campaign_id="second", status=DeliveryStatus.skipped)
        assert len(skipped) == (1 if policy == "skip" else 0)
        # A week later the cap allows it: only the deferred campaign still sends.
        week = run_pass(engine, rules(text.replace("OVER", policy)), now=NOW + timedelta(days=8))
        assert week.plan("second").counts["send"] == (1 if policy == "defer" else 0)


def test_a_pass_refreshes_the_campaign_state_the_session_already_holds(engine):
    # The pass writes campaign state with Core statements; an object loaded before it must not
    # keep showing the old baseline to code later in the same transaction.
    with Session(engine) as session:
        add_customer(session, inactive_days=31)
        session.add(CampaignState(campaign_id="we-miss-you", last_audience=7))
        session.commit()
    with Session(engine) as session:
        before = session.get(CampaignState, "we-miss-you")
        assert before is not None and before.last_audience == 7
        Planner(rules(MISS_YOU), now=NOW).run(session)
        assert session.get(CampaignState, "we-miss-you").last_audience == 1
        assert before.last_pass_at is not None


def test_a_pass_leaves_the_sessions_settings_as_it_found_them(engine):
    with Session(engine) as session:
        add_customer(session, inactive_days=31)
        session.commit()
    with Session(engine) as session:
        if engine.dialect.name == "postgresql":
            session.execute(sa.text("SET LOCAL jit = on"))
        Planner(rules(MISS_YOU), now=NOW).run(session)
        if engine.dialect.name == "postgresql":
            assert session.execute(sa.text("SHOW jit")).scalar_one() == "on"
        assert session.execute(sa.select(sa.func.count()).select_from(Delivery)).scalar_one() == 1


COLD_PASS = """
import sys
from datetime import timedelta
from sqlmodel import Session, SQLModel
from campaigns.models import CUSTOMER
from campaigns.planning import Planner
from tests.factories import NOW, migrated_engine, rules
from tests.test_planner import MISS_YOU

engine = migrated_engine(sys.argv[1])
with engine.begin() as connection:
    connection.execute(CUSTOMER.insert(), [
        {"external_id": "cus-1", "email": "one@example.com", "status": "active",
         "signed_up_at": NOW - timedelta(days=400), "last_active_at": NOW - timedelta(days=40),
         "created_at": NOW - timedelta(days=400), "updated_at": NOW - timedelta(days=400)},
    ])
with Session(engine) as session:
    result = Planner(rules(MISS_YOU), now=NOW).run(session, sample=1)
    session.commit()
assert result.plan("we-miss-you").inserted == 1, result
print("mappers configured:", not SQLModel._sa_registry._new_mappers)
"""


def test_a_pass_needs_no_orm_mapper_configuration(tmp_path):
    """A fresh process's pass is all Core: configuring the mappers would cost a cold pass
    (a daemon's first, a `retention plan`) several milliseconds it does not need (bench P1)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", COLD_PASS, f"sqlite:///{tmp_path / 'cold.db'}"],
        cwd=root, capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(root), "PATH": ""},
    )
    assert done.returncode == 0, done.stderr
    assert "mappers configured: False" in done.stdout
