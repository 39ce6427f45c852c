"""A customer answers the exit survey from a real email in a real browser (headless Chromium).

The shipped rules.yaml and templates send the email through aiosmtpd; the
app runs under uvicorn on a free port; Playwright drives Debian's chromium
(scripts/test installs it).  Never `playwright install`: it downloads its own
browser build, which this project does not use.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import Session, select

from campaigns.models import Customer, CustomerStatus, Event, SurveyAnswer, utcnow
from campaigns.responses.export import responses
from tests.support.services import skip_or_fail
from tests.support.web import bound_socket, uvicorn_serving
from worker import runtime as runtime_module
from worker.once import run_once
from worker.settings import Settings
from worker.web import create_app

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture
def browser() -> Iterator[object]:
    if shutil.which(CHROMIUM) is None:
        skip_or_fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium; "
                     "scripts/test does it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip_or_fail("playwright is not installed: pip install -e '.[test]'")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def served(tmp_path, database_url, smtp_sink) -> Iterator[tuple[runtime_module.Runtime, str]]:
    """A Runtime on the shipped rules and templates, and the base URL uvicorn serves it on.

    The shipped templates have no pages/: the survey form and the unsubscribe button are the
    built-in pages, as for a user whose templates folder is their own.
    """
    assert not (ROOT / "templates" / "pages").exists()

    sock, base_url = bound_socket()
    settings = Settings(database_url=database_url, mail_url=smtp_sink.url, public_url=base_url,
                        rules=ROOT / "rules.yaml", templates=ROOT / "templates",
                        secret_key="browser-test-key")
    rt = runtime_module.build(settings)
    try:
        with uvicorn_serving(create_app(rt), sock):
            yield rt, base_url
    finally:
        rt.close()


def daytime_zone(now: datetime) -> str:
    """A fixed-offset zone where it is around noon now, so quiet hours never hold the email."""
    offset = (12 - now.hour + 12) % 24 - 12  # hours east of UTC, -12..11
    return f"Etc/GMT{-offset:+d}" if offset else "UTC"  # Etc/GMT signs are inverted


def test_customer_answers_the_exit_survey_from_a_real_email_in_chromium(
    browser, served, smtp_sink, tmp_path,
):
    rt, base_url = served
    now = utcnow()
    with Session(rt.engine) as session:
        customer = Customer(external_id="cus-browser", email="grace@example.com", first_name="Grace",
                            status=CustomerStatus.cancelled, cancelled_at=now - timedelta(hours=2),
                            signed_up_at=now - timedelta(days=300), timezone=daytime_zone(now))
        session.add(customer)
        session.flush()
        session.add(Event(customer_id=customer.id, name="cancelled", occurred_at=now - timedelta(hours=2)))
        session.commit()
        customer_id = customer.id

    summary = run_once(rt, workers=1)
    assert {r.campaign_id: r.sent for r in summary.rows if r.sent} == {"exit-survey": 1}
    [received] = smtp_sink.wait_for(1)
    assert received.rcpt_tos == ["grace@example.com"]
    text = received.parsed.get_body(("plain",)).get_content()
    survey_url = re.search(rf"{re.escape(base_url)}/s/\S+", text).group(0)

    page = browser.new_page()
    page.goto(survey_url)
    assert page.get_by_role("heading", name="Help us do better").is_visible()
    page.get_by_label("Price").check()
    page.get_by_label("Was there a feature you missed?").fill("A way to export reports to PDF")
    page.screenshot(path=str(tmp_path / "survey_form.png"), full_page=True)
    page.get_by_role("button", name="Send my answers").click()
    page.get_by_role("heading", name="Thank you for your answers").wait_for()
    page.screenshot(path=str(tmp_path / "survey_thanks.png"), full_page=True)
    assert (tmp_path / "survey_thanks.png").stat().st_size > 0
    assert "replaced" not in page.content()

    with Session(rt.engine) as session:
        answers = {a.question_id: a.answer for a in session.exec(
            select(SurveyAnswer).where(SurveyAnswer.customer_id == customer_id))}
    assert answers == {"reason": "price", "missing": "A way to export reports to PDF"}

    # Opening the link again shows the earlier answers; sending changes replaces them, and says so.
    page.goto(survey_url)
    assert page.get_by_label("Price").is_checked()
    page.get_by_label("Not needed").check()
    page.get_by_role("button", name="Send my answers").click()
    page.get_by_text("your new answers replaced the earlier ones").wait_for()
    with Session(rt.engine) as session:
        answers = {a.question_id: a.answer for a in session.exec(
            select(SurveyAnswer).where(SurveyAnswer.customer_id == customer_id))}
    assert answers == {"reason": "not_needed", "missing": "A way to export reports to PDF"}

    # The unsubscribe link of the same email: the page asks, the button does it.
    unsubscribe_url = re.search(rf"{re.escape(base_url)}/u/\S+", text).group(0)
    page.goto(unsubscribe_url)
    page.get_by_role("button", name="Unsubscribe").click()
    page.get_by_role("heading", name="You are unsubscribed").wait_for()
    assert browser.contexts[0].cookies() == []
    with Session(rt.engine) as session:
        assert session.get(Customer, customer_id).unsubscribed_at is not None
    # What the browser wrote is what marketing exports.
    with Session(rt.engine) as session:
        exported = [(r.kind, r.question, r.answer) for r in responses(session)]
    assert ("answer", "reason", "not_needed") in exported
    assert ("unsubscribe", None, None) in exported
