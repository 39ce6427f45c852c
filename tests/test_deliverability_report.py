"""Bounce and complaint rates in `retention report`, per campaign and per period, with their flags."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import Session

from campaigns.models import BounceKind, Delivery
from campaigns.reports import Thresholds, build_report
from campaigns.responses.bounces import BounceReport, Policy, record
from tests.factories import NOW, add_sent_delivery, migrated_engine, rules
from tests.test_cli import retention

OCT, NOV = datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture
def engine(database_url):
    engine = migrated_engine(database_url)
    yield engine
    engine.dispose()


def send(session, campaign: str, count: int, at: datetime) -> list[Delivery]:
    return [add_sent_delivery(session, campaign_id=campaign, sent_at=at) for _ in range(count)]


def report_on(session, delivery: Delivery, kind: BounceKind, n: int = 0) -> None:
    record(session, BounceReport(kind=kind, key=f"t:{delivery.id}:{kind}:{n}", source="api",
                                 message_id=delivery.message_id), policy=Policy(soft_limit=99), now=NOW)


def test_rates_per_campaign_and_period_are_flagged_against_the_thresholds(engine):
    with Session(engine) as session:
        october = send(session, "newsletter", 400, OCT + timedelta(days=3))
        november = send(session, "newsletter", 100, NOV + timedelta(days=3))
        quiet = send(session, "winback", 100, NOV + timedelta(days=5))
        for delivery in october[:2]:
            report_on(session, delivery, BounceKind.complaint)  # 2 / 400 = 0.5 %: over 0.3 %
        for delivery in november[:3]:
            report_on(session, delivery, BounceKind.hard)  # 3 / 100 = 3 %: over 2 %
        report_on(session, november[3], BounceKind.soft)
        report_on(session, november[3], BounceKind.soft, 1)  # the same delivery twice counts once
        report_on(session, quiet[0], BounceKind.hard)  # 1 %: fine
        report = build_report(session, rules("campaigns: []\n"), now=NOW, start=OCT, end=NOV,
                              thresholds=Thresholds(complaint_rate=0.003, hard_bounce_rate=0.02))
    d = report.deliverability
    by_campaign = {r.label: r for r in d.campaigns}
    newsletter, winback = by_campaign["newsletter"], by_campaign["winback"]
    assert (newsletter.sent, newsletter.hard_bounces, newsletter.soft_bounces, newsletter.complaints) == \
        (500, 3, 1, 2)
    assert newsletter.complaint_rate == pytest.approx(0.4)
    assert newsletter.flags == ("complaints 0.40% over 0.3%",)
    assert (winback.hard_bounce_rate, winback.flags) == (pytest.approx(1.0), ())
    october_rates, november_rates = d.periods
    assert (october_rates.label, october_rates.sent, october_rates.complaints) == ("2026-10", 400, 2)
    assert october_rates.flags == ("complaints 0.50% over 0.3%",)
    assert (november_rates.sent, november_rates.hard_bounces) == (200, 4)
    assert november_rates.flags == ()  # 4 of 200 is 2.00 %: at the threshold, not over it
    assert d.totals.sent == 600


def test_report_command_shows_the_rates_in_json_html_and_table(tmp_path):
    url = f"sqlite:///{tmp_path}/retention.db"
    engine = migrated_engine(url)
    with Session(engine) as session:
        sent = send(session, "newsletter", 200, OCT + timedelta(days=3))
        report_on(session, sent[0], BounceKind.complaint)
        for delivery in sent[1:6]:
            report_on(session, delivery, BounceKind.hard)
    engine.dispose()
    (tmp_path / "rules.yaml").write_text("campaigns: []\n")
    env = {"RETENTION_DATABASE_URL": url, "RETENTION_HARD_BOUNCE_RATE_THRESHOLD": "0.05"}
    october = ("--from", "2026-10", "--to", "2026-10")
    result = retention(tmp_path, "report", *october, "--format", "json", env=env)
    data = json.loads(result.stdout)["deliverability"]
    assert data["thresholds"] == {"complaint_rate": 0.3, "hard_bounce_rate": 5.0}
    [newsletter] = data["campaigns"]
    assert newsletter == {"label": "newsletter", "sent": 200, "hard_bounces": 5, "soft_bounces": 0,
                          "complaints": 1, "hard_bounce_rate": 2.5, "soft_bounce_rate": 0.0,
                          "complaint_rate": 0.5, "flags": ["complaints 0.50% over 0.3%"], "paused": None}
    table = retention(tmp_path, "report", "--from", "2026-10", "--to", "2026-10", env=env).stdout
    assert "Deliverability per campaign" in table and "complaints 0.50% over 0.3%" in table
    retention(tmp_path, "report", "--from", "2026-10", "--to", "2026-10", "--format", "html", "-o", "r.html",
              env=env)
    page = (tmp_path / "r.html").read_text()
    assert "Deliverability: bounces and complaints" in page and "complaints 0.50% over 0.3%" in page
