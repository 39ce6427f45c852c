"""`retention report`: constructed customers with answers computed by hand, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import Session

from campaigns.errors import ReportError
from campaigns.models import Customer, Delivery, Interaction, SurveyAnswer
from campaigns.reports import build_report, two_proportion_lift
from campaigns.reports.lift import NOT_ENOUGH_DATA, NOT_SIGNIFICANT, SIGNIFICANT, newcombe_interval
from campaigns.reports.periods import make_grid
from tests.factories import NOW, migrated_engine, rules
from tests.test_cli import retention

OCT, SEP, AUG = (datetime(2026, m, 1, tzinfo=UTC) for m in (10, 9, 8))
LAPSE = timedelta(days=90)  # defaults.passive_churn_after
RULES = rules("campaigns: []\n")
SURVEY_RULES = rules("""
    campaigns: []
    surveys:
      why_you_left:
        - id: reason
          ask: What made you cancel?
          choices: [price, quality, competitor]
        - id: missing
          ask: Was there a feature you missed?
          type: text
""")


@pytest.fixture
def engine(database_url):
    engine = migrated_engine(database_url)
    yield engine
    engine.dispose()


def customers(session, count, *, signed_up=AUG - timedelta(days=200), last_active=NOW - timedelta(days=1),
              **fields):
    made = []
    for _ in range(count):
        n = customers.counter = getattr(customers, "counter", 0) + 1
        made.append(Customer(external_id=f"c{n}", email=f"c{n}@example.com", signed_up_at=signed_up,
                             last_active_at=last_active, **fields))
    session.add_all(made)
    session.flush()
    return made


def cancelled(session, count, at, **fields):
    customers(session, count, status="cancelled", cancelled_at=at, last_active=at, **fields)


def lapsing(session, count, at, **fields):
    """Customers whose lapse moment (last activity + 90 days) is ``at``."""
    customers(session, count, last_active=at - LAPSE, **fields)


def october(session, **kwargs):
    return build_report(session, RULES, now=NOW, start=OCT, end=OCT, **kwargs)


def test_worked_example_500_at_the_start_50_lost_is_10_percent(engine):
    with Session(engine) as session:
        customers(session, 450)
        cancelled(session, 30, OCT + timedelta(days=9))
        lapsing(session, 20, OCT + timedelta(days=14))
        customers(session, 20, signed_up=OCT + timedelta(days=4))
        session.commit()
        [period] = october(session).periods
    assert (period.label, period.partial) == ("2026-10", False)
    assert (period.customers_at_start, period.acquired, period.lost) == (500, 20, 50)
    assert (period.lost_active, period.lost_passive, period.lost_new) == (30, 20, 0)
    assert period.churn_rate == 10.0
    assert (period.active_churn_rate, period.passive_churn_rate) == (6.0, 4.0)
    assert period.retention_rate == 90.0
    assert period.lost_per_acquired == 2.5
    assert period.customers_at_end == 470


def test_a_customer_lost_on_the_first_day_of_a_period_counts_in_that_period(engine):
    with Session(engine) as session:
        customers(session, 8)
        cancelled(session, 1, OCT)  # at 00:00:00 on 1 October
        lapsing(session, 1, OCT)
        session.commit()
        september, october_ = build_report(session, RULES, now=NOW, start=SEP, end=OCT).periods
    assert (september.customers_at_start, september.lost, september.customers_at_end) == (10, 0, 10)
    assert (october_.customers_at_start, october_.lost_active, october_.lost_passive) == (10, 1, 1)
    assert october_.churn_rate == 20.0


def test_no_customers_at_the_start_gives_no_rate_rather_than_zero(engine):
    with Session(engine) as session:
        customers(session, 3, signed_up=OCT + timedelta(days=2))
        cancelled(session, 1, OCT + timedelta(days=20), signed_up=OCT + timedelta(days=3))
        session.commit()
        report = october(session)
    [period] = report.periods
    assert (period.customers_at_start, period.acquired, period.lost, period.lost_new) == (0, 4, 1, 1)
    assert period.churn_rate is None and period.retention_rate is None
    assert period.lost_per_acquired == 0.25
    assert report.totals.lost_share == 25.0


def test_an_empty_database_reports_zeros_and_no_rates(engine):
    with Session(engine) as session:
        report = build_report(session, SURVEY_RULES, now=NOW)
    assert len(report.periods) == 12 and report.periods[-1].partial
    assert all(p.customers_at_start == p.lost == p.acquired == 0 for p in report.periods)
    assert all(p.churn_rate is None for p in report.periods)
    assert report.average_churn_rate is None
    assert report.tenure.mean_days is None and sum(b.lost for b in report.tenure.buckets) == 0
    assert report.campaigns == () and report.surveys == ()
    assert report.breakdown.groups == ()


def test_who_counts_as_lost_and_when(engine):
    with Session(engine) as session:
        customers(session, 6)
        # Lapsed in August (last seen 2026-05-10), cancelled in October: lost to passive churn in August.
        customers(session, 1, status="cancelled", cancelled_at=OCT + timedelta(days=3),
                  last_active=datetime(2026, 5, 10, tzinfo=UTC))
        # Gone for 120 days, then came back last week: a customer kept, not a loss.
        customers(session, 1, last_active=NOW - timedelta(days=7))
        # Cancelled without a date: lost at their last activity.
        customers(session, 1, status="cancelled", last_active=OCT + timedelta(days=5))
        # Never active: inactivity counts from signup (lapses 2026-10-10).
        customers(session, 1, signed_up=OCT + timedelta(days=9) - LAPSE, last_active=None)
        session.commit()
        august, september, october_ = build_report(session, RULES, now=NOW, start=AUG, end=OCT).periods
    assert (august.lost_active, august.lost_passive) == (0, 1)
    assert (september.lost_active, september.lost_passive) == (0, 0)
    assert (october_.lost_active, october_.lost_passive) == (1, 1)
    assert october_.customers_at_start == 9 and october_.customers_at_end == 7


def test_a_lapse_still_ahead_is_not_a_loss_yet(engine):
    with Session(engine) as session:
        customers(session, 1, last_active=NOW - timedelta(days=89))
        customers(session, 1, last_active=NOW - timedelta(days=91))
        session.commit()
        report = build_report(session, RULES, now=NOW, start=NOW, end=NOW)
    [november] = report.periods
    assert november.partial and november.lost_passive == 1


def test_cohorts_follow_each_signup_month(engine):
    with Session(engine) as session:
        aug, sep = AUG + timedelta(days=3), SEP + timedelta(days=3)
        customers(session, 2, signed_up=aug)
        cancelled(session, 1, AUG + timedelta(days=20), signed_up=aug)  # lost in its signup month
        cancelled(session, 1, SEP + timedelta(days=1), signed_up=aug)  # lost one month later
        customers(session, 1, signed_up=sep)
        # Last activity imported as before signup (bad data); lapses 3 October: lost in month 1.
        customers(session, 1, signed_up=sep, last_active=OCT + timedelta(days=2) - LAPSE)
        customers(session, 3, signed_up=AUG - timedelta(days=1))  # July: before the range
        session.commit()
        cohorts = build_report(session, RULES, now=NOW, start=AUG, end=OCT).cohorts
    assert [(c.label, c.size) for c in cohorts] == [("2026-08", 4), ("2026-09", 2), ("2026-10", 0)]
    assert cohorts[0].retention == (75.0, 50.0, 50.0)
    assert cohorts[1].retention == (100.0, 50.0)
    assert cohorts[2].retention == (None,)


def test_tenure_at_churn_and_seasonality(engine):
    with Session(engine) as session:
        cancelled(session, 1, OCT + timedelta(days=10), signed_up=OCT)  # 10 days
        cancelled(session, 2, OCT + timedelta(days=10), signed_up=OCT - timedelta(days=90))  # 100 days
        lapsing(session, 1, SEP + timedelta(days=5), signed_up=SEP - timedelta(days=395))  # 400 days
        customers(session, 6)
        session.commit()
        end = datetime(2026, 10, 25, tzinfo=UTC)  # a Sunday: the last week is 19-25 October
        report = build_report(session, RULES, now=NOW, start=SEP, end=end, period="week")
    lost = {b.label: b.lost for b in report.tenure.buckets}
    assert lost == {"under 1 month": 1, "1-3 months": 0, "3-6 months": 2, "6-12 months": 0,
                    "1-2 years": 1, "2 years or more": 0}
    assert report.tenure.mean_days == pytest.approx((10 + 100 + 100 + 400) / 4)
    assert [p.label for p in report.seasonality] == ["2026-08", "2026-09", "2026-10"]  # weeks start 31 Aug
    assert [p.lost for p in report.seasonality] == [0, 1, 3]
    assert report.seasonality[1].churn_rate == pytest.approx(100 / 9)
    assert report.periods[0].label == "2026-W36" and report.periods[-1].label == "2026-W43"


def test_churn_by_plan_and_by_attribute(engine):
    with Session(engine) as session:
        customers(session, 3, plan="pro", attributes={"size": "small"})
        cancelled(session, 1, OCT + timedelta(days=1), plan="pro", attributes={"size": "small"})
        customers(session, 4, plan="team", attributes={"size": "large"})
        lapsing(session, 2, OCT + timedelta(days=2), plan="team", attributes={"size": 50})
        customers(session, 2, plan=None, signed_up=OCT + timedelta(days=3))
        session.commit()
        by_plan = october(session).breakdown
        by_size = october(session, by="attributes.size").breakdown
    assert by_plan.by == "plan"
    rows = {g.value: (g.customers_at_start, g.acquired, g.lost_active, g.lost_passive)
            for g in by_plan.groups}
    assert rows == {"team": (6, 0, 0, 2), "pro": (4, 0, 1, 0), "(none)": (0, 2, 0, 0)}
    team = next(g for g in by_plan.groups if g.value == "team")
    assert team.churn_rate == pytest.approx(100 / 3)
    sizes = {g.value: g.lost for g in by_size.groups}
    assert sizes == {"small": 1, "large": 0, "50": 2, "(none)": 0}


def test_a_bad_breakdown_or_range_says_what_to_write(engine):
    with Session(engine) as session:
        with pytest.raises(ReportError, match=r"--by 'size': use `plan` or `attributes.KEY`"):
            build_report(session, RULES, now=NOW, by="size")
        with pytest.raises(ReportError, match="--from 2026-10-01 is after --to 2026-08-01"):
            build_report(session, RULES, now=NOW, start=OCT, end=AUG)


def test_periods_align_to_iso_weeks_quarters_and_months():
    weeks = make_grid("week", start=datetime(2026, 1, 1, tzinfo=UTC), end=datetime(2026, 1, 12, tzinfo=UTC),
                      as_of=NOW)
    assert [weeks.label(i) for i in range(weeks.count)] == ["2026-W01", "2026-W02", "2026-W03"]
    assert weeks.start == datetime(2025, 12, 29, tzinfo=UTC)
    quarters = make_grid("quarter", start=None, end=None, as_of=NOW)
    assert quarters.count == 8 and quarters.label(7) == "2026-Q4" and quarters.partial(7)
    assert quarters.end == datetime(2027, 1, 1, tzinfo=UTC)
    months = make_grid("month", start=None, end=datetime(2030, 1, 1, tzinfo=UTC), as_of=NOW)
    assert months.label(months.count - 1) == "2026-11"  # nothing to report after now


# ---------------------------------------------------------------- lift


@pytest.mark.parametrize(
    ("counts", "interval"),
    [
        # Newcombe (1998), Statistics in Medicine 17:873, Table II, method 10.
        pytest.param((56, 70, 48, 80), (0.0524, 0.3339), id="a-56/70-48/80"),
        pytest.param((9, 10, 3, 10), (0.1705, 0.8090), id="b-9/10-3/10"),
        pytest.param((5, 56, 0, 29), (-0.0381, 0.1926), id="d-5/56-0/29"),
        pytest.param((0, 10, 0, 20), (-0.1611, 0.2775), id="e-0/10-0/20"),
        pytest.param((10, 10, 0, 20), (0.6791, 1.0), id="f-10/10-0/20"),
    ],
)
def test_lift_interval_is_newcombes_hybrid_score_interval(counts, interval):
    low, high = newcombe_interval(*counts)
    assert (round(low, 4), round(high, 4)) == interval


def test_lift_gives_a_score_interval_for_small_conversion_rates():
    lift = two_proportion_lift(500, 60, 500, 40)
    assert lift.difference == pytest.approx(4.0)
    assert (round(lift.ci_low, 2), round(lift.ci_high, 2)) == (0.27, 7.76)
    assert lift.verdict == SIGNIFICANT and lift.reason == "the campaign raised conversion"
    assert (lift.rate, lift.rate_held_out, lift.relative) == (12.0, 8.0, pytest.approx(50.0))
    assert two_proportion_lift(300, 45, 300, 30).verdict == NOT_SIGNIFICANT
    # 1 % against 0 % of 400: the Wald interval, 1.0 ± 0.44 pp, would call this significant
    # (and used to refuse it for the zero); 0 of 400 is quite compatible with a 1 % rate.
    rare = two_proportion_lift(2000, 20, 400, 0)
    assert rare.verdict == NOT_SIGNIFICANT
    assert (round(rare.ci_low, 2), round(rare.ci_high, 2)) == (-0.01, 1.54)


@pytest.mark.parametrize(
    ("counts", "reason"),
    [
        ((500, 60, 29, 10), "held-out group has 29 (need 30)"),
        ((12, 3, 500, 40), "sent group has 12 (need 30)"),
    ],
)
def test_lift_says_not_enough_data_for_tiny_groups(counts, reason):
    lift = two_proportion_lift(*counts)
    assert lift.verdict == NOT_ENOUGH_DATA and lift.reason == reason
    assert lift.difference is None and lift.ci_low is None and lift.ci_high is None


# ---------------------------------------------------------------- campaigns and surveys


def deliveries(session, customer, campaign, status, count, *, variant=None, converted=0, at=OCT):
    made = []
    for i in range(count):
        episode = f"{status}-{variant}-{at:%m}-{i}"
        row = Delivery(campaign_id=campaign, customer_id=customer.id, episode=episode, status=status,
                       template="t", variant=variant, created_at=at,
                       converted_at=at + timedelta(days=2) if i < converted else None)
        session.add(row)
        made.append(row)
    session.flush()
    return made


def test_campaign_funnel_and_lift_per_campaign_and_variant(engine):
    with Session(engine) as session:
        [someone] = customers(session, 1)
        for variant, converted in (("a", 36), ("b", 24)):
            sent = deliveries(session, someone, "win-back", "sent", 250, variant=variant, converted=converted)
            deliveries(session, someone, "win-back", "held_out", 250, variant=variant, converted=20)
            for row in sent[:5]:
                session.add(Interaction(kind="click", delivery_id=row.id, customer_id=someone.id,
                                        campaign_id="win-back"))
                session.add(Interaction(kind="click", delivery_id=row.id, customer_id=someone.id,
                                        campaign_id="win-back"))  # a second click on the same email
        sent = deliveries(session, someone, "check-in", "sent", 10)
        deliveries(session, someone, "check-in", "failed", 2)
        deliveries(session, someone, "check-in", "bounced", 1)
        deliveries(session, someone, "check-in", "queued", 3)
        deliveries(session, someone, "check-in", "skipped", 4)
        deliveries(session, someone, "check-in", "sent", 7, at=SEP)  # before the range
        session.add(Interaction(kind="unsubscribe", delivery_id=sent[0].id, customer_id=someone.id,
                                campaign_id="check-in"))
        session.add(Interaction(kind="survey", delivery_id=sent[1].id, customer_id=someone.id,
                                campaign_id="check-in"))
        session.commit()
        funnels = october(session).campaigns
    assert [(f.campaign, f.variant) for f in funnels] == [
        ("check-in", None), ("win-back", None), ("win-back", "a"), ("win-back", "b")
    ]
    check_in, total, a, b = funnels
    assert (check_in.planned, check_in.sent, check_in.failed, check_in.bounced, check_in.pending,
            check_in.skipped) == (16, 10, 2, 1, 3, 4)
    assert (check_in.unsubscribed, check_in.surveyed, check_in.clicked) == (1, 1, 0)
    assert check_in.lift.reason == "sent group has 10 (need 30); held-out group has 0 (need 30)"
    assert (total.planned, total.sent, total.held_out, total.converted, total.converted_held_out) == (
        1000, 500, 500, 60, 40)
    assert (total.clicked, a.clicked, b.clicked) == (10, 5, 5)
    assert total.lift.ci_low == pytest.approx(0.26985504, abs=1e-6)  # the case above
    assert a.lift.difference == pytest.approx(14.4 - 8.0)
    assert b.lift.rate == pytest.approx(9.6)


def answer(session, customer, question, text, at=OCT + timedelta(days=3)):
    session.add(SurveyAnswer(customer_id=customer.id, survey_id="why_you_left", question_id=question,
                             answer=text, created_at=at, updated_at=at))


def test_why_they_leave_counts_choices_with_shares_and_lists_free_text(engine):
    with Session(engine) as session:
        people = customers(session, 6)
        for person, reason in zip(people, ["price", "price", "price", "competitor"], strict=False):
            answer(session, person, "reason", reason)
        answer(session, people[4], "reason", "price", at=AUG)  # outside the range
        answer(session, people[0], "missing", "An API", at=OCT + timedelta(days=1))
        answer(session, people[1], "missing", "Dark mode", at=OCT + timedelta(days=2))
        answer(session, people[5], "retired", "yes")  # a question since removed from rules.yaml
        session.commit()
        surveys = build_report(session, SURVEY_RULES, now=NOW, start=OCT, end=OCT).surveys
    reason, missing, retired = surveys
    assert (reason.ask, reason.kind, reason.answered) == ("What made you cancel?", "choice", 4)
    assert [(c.choice, c.count, c.share) for c in reason.choices] == [
        ("price", 3, 75.0), ("competitor", 1, 25.0), ("quality", 0, 0.0)
    ]
    assert (missing.kind, missing.answered) == ("text", 2)
    assert [t.answer for t in missing.texts] == ["Dark mode", "An API"]  # newest first
    assert (retired.question, retired.ask, [c.choice for c in retired.choices]) == ("retired", "", ["yes"])


# ---------------------------------------------------------------- the command


def test_report_command_writes_json_with_documented_keys_and_html(tmp_path):
    url = f"sqlite:///{tmp_path}/retention.db"
    engine = migrated_engine(url)
    with Session(engine) as session:
        customers(session, 450)
        cancelled(session, 30, OCT + timedelta(days=9), plan="pro")
        lapsing(session, 20, OCT + timedelta(days=14))
        session.commit()
    engine.dispose()
    (tmp_path / "rules.yaml").write_text("campaigns: []\n")
    env = {"RETENTION_DATABASE_URL": url}
    result = retention(tmp_path, "report", "--from", "2026-10", "--to", "2026-10-31", "--format", "json",
                       env=env)
    data = json.loads(result.stdout)
    assert set(data) == {"report_version", "as_of", "period", "from", "to", "passive_churn_after_days",
                         "totals", "periods", "seasonality", "tenure_at_churn", "breakdown", "cohorts",
                         "campaigns", "surveys", "deliverability"}
    [october_] = data["periods"]
    assert (october_["customers_at_start"], october_["lost"], october_["churn_rate"]) == (500, 50, 10.0)
    assert (october_["lost_active"], october_["lost_passive"], october_["retention_rate"]) == (30, 20, 90.0)
    assert data["from"] == "2026-10-01T00:00:00Z" and data["to"] == "2026-11-01T00:00:00Z"

    retention(tmp_path, "report", "--from", "2026-10", "--to", "2026-10", "--format", "html",
              "-o", "report.html", env=env)
    page = (tmp_path / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and 'data-chart="churn"' in page
    assert "http" not in page and "<script" not in page  # nothing fetched from anywhere

    table = retention(tmp_path, "report", "--period", "quarter", env=env)
    assert "Churn per quarter" in table.stdout and "Cohorts" in table.stdout

    bad = retention(tmp_path, "report", "--by", "size", env=env, check=False)
    assert bad.returncode == 1 and "--by 'size': use `plan` or `attributes.KEY`" in bad.stderr


def test_breakdown_keeps_the_20_largest_groups_and_sums_the_rest_as_other(engine):
    with Session(engine) as session:
        for size in range(25):
            customers(session, 30 - size, attributes={"team": f"t{size:02d}"})
        cancelled(session, 1, OCT + timedelta(days=1), attributes={"team": "t24"})
        session.commit()
        groups = october(session, by="attributes.team").breakdown.groups
    assert [g.value for g in groups] == [f"t{size:02d}" for size in range(20)] + ["(other)"]
    other = groups[-1]
    assert (other.customers_at_start, other.lost) == (sum(30 - s for s in range(20, 25)) + 1, 1)


def test_a_loss_dated_before_signup_counts_as_zero_tenure_and_captions_say_what_runs(tmp_path, sqlite_url):
    engine = migrated_engine(sqlite_url)
    with Session(engine) as session:
        customers(session, 8)
        cancelled(session, 1, OCT + timedelta(days=5), signed_up=OCT + timedelta(days=25))  # bad data
        cancelled(session, 1, OCT + timedelta(days=20), signed_up=OCT)  # 20 days
        session.commit()
    engine.dispose()
    (tmp_path / "rules.yaml").write_text("campaigns: []\n")
    env = {"RETENTION_DATABASE_URL": sqlite_url}
    result = retention(tmp_path, "report", "--from", "2026-10", "--to", "2026-10", "--format", "json",
                       env=env)
    tenure = json.loads(result.stdout)["tenure_at_churn"]
    assert tenure["mean_days"] == 10.0  # (0 + 20) / 2, not (-20 + 20) / 2
    finished = retention(tmp_path, "report", "--from", "2026-10", "--to", "2026-10", env=env).stdout
    assert "still running" not in finished and "Churn = lost during the period" in finished
    running = retention(tmp_path, "report", "--from", "2026-10", env=env).stdout
    assert "* still running" in running
