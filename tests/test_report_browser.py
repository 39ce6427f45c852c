"""The HTML report as a reader sees it: opened from a file in headless Chromium, offline."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import Session

from campaigns.reports import build_report
from tests.factories import NOW, migrated_engine
from tests.support.services import skip_or_fail
from tests.test_reports import (
    OCT,
    SURVEY_RULES,
    answer,
    cancelled,
    customers,
    deliveries,
    lapsing,
)
from worker.report import report_html

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip_or_fail("playwright is not installed: pip install -e '.[test]'")
    if not CHROMIUM.exists():
        skip_or_fail(f"{CHROMIUM} is missing: apt-get install chromium (scripts/test does)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def report(tmp_path):
    engine = migrated_engine(f"sqlite:///{tmp_path}/report.db")
    with Session(engine) as session:
        customers(session, 300, signed_up=NOW - timedelta(days=700), plan="pro")
        customers(session, 200, signed_up=NOW - timedelta(days=500), plan="team")
        for month in range(12):
            at = NOW - timedelta(days=30 * month + 3)
            cancelled(session, 1 + month % 4, at, signed_up=at - timedelta(days=40 * (month + 1)))
            lapsing(session, month % 3, at, signed_up=at - timedelta(days=300))
            customers(session, 5, signed_up=at)
        [someone] = customers(session, 1)
        deliveries(session, someone, "win-back", "sent", 500, converted=60, at=OCT)
        deliveries(session, someone, "win-back", "held_out", 500, converted=40, at=OCT)
        deliveries(session, someone, "check-in", "sent", 12, at=OCT)  # too few for a lift
        for person, reason in zip(customers(session, 4), ["price", "price", "competitor", "other"],
                                  strict=True):
            answer(session, person, "reason", reason)
        answer(session, someone, "missing", "<b>An API</b> & exports")
        session.commit()
        built = build_report(session, SURVEY_RULES, now=NOW)
    engine.dispose()
    return built


def test_html_report_renders_its_charts_offline_in_chromium(browser, report, tmp_path):
    path = tmp_path / "report.html"
    path.write_text(report_html(report), encoding="utf-8")
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(path.as_uri())
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert (tmp_path / "report.png").stat().st_size > 50_000
    assert requests == [path.as_uri()]  # nothing fetched: readable offline

    def shapes(chart: str, selector: str) -> list[dict]:
        return page.eval_on_selector_all(
            f'svg[data-chart="{chart}"] {selector}',
            "els => els.map(e => {const b = e.getBoundingClientRect();"
            " return {label: e.dataset.label, value: Number(e.dataset.value), width: b.width,"
            " height: b.height, series: e.dataset.series}})",
        )

    months = len(report.periods)
    churn = shapes("churn", "rect.bar")
    assert months == 12 and len(churn) == 2 * months  # cancelled + lapsed per month
    assert {b["series"] for b in churn} == {"cancelled", "lapsed"}
    drawn = [b for b in churn if b["value"] > 0]
    assert len(drawn) >= months and all(b["width"] > 10 and b["height"] > 0 for b in drawn)
    assert all(b["height"] == 0 for b in churn if b["value"] == 0)

    points = shapes("seasonality", "circle.point")
    assert [p["label"] for p in points] == [p.label for p in report.seasonality if p.churn_rate is not None]
    assert len(points) == 12 and all(p["width"] > 0 for p in points)
    assert len(shapes("tenure", "rect.bar")) == 6
    assert [b["label"] for b in shapes("breakdown", "rect.bar")] == [g.value for g in report.breakdown.groups]
    [lift] = shapes("lift", "circle.point")  # check-in has too little data for a point
    assert lift["label"] == "win-back" and lift["value"] == pytest.approx(4.0)
    assert [b["label"] for b in shapes("survey-0", "rect.bar")] == ["price", "competitor", "other", "quality"]
    assert page.locator("text=<b>An API</b> & exports").count() == 1  # escaped, shown as typed

    chart = page.locator('svg[data-chart="churn"]')
    box = chart.bounding_box()
    assert box is not None and box["width"] > 600 and box["height"] > 150
    with_bars = chart.screenshot()
    page.eval_on_selector_all('svg[data-chart="churn"] rect.bar', "els => els.forEach(e => e.remove())")
    assert chart.screenshot() != with_bars  # the bars really paint pixels
    page.close()
