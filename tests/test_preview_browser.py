"""`retention preview --serve` in headless Chromium: every campaign renders, a saved edit shows
without a manual reload, a broken edit shows its file:line in place."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.redis import free_port
from tests.test_browser import ROOT, browser  # noqa: F401  (the Chromium fixture)

SHIPPED_CAMPAIGNS = ["we-miss-you", "check-in", "new-reports-feature", "exit-survey", "win-back-offer"]


@pytest.fixture
def preview_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`retention preview --serve` on copies of the shipped files, in a fresh directory."""
    shutil.copy(ROOT / "rules.yaml", tmp_path / "rules.yaml")
    shutil.copytree(ROOT / "templates", tmp_path / "templates")
    port = free_port()
    env = {**os.environ, "RETENTION_DATABASE_URL": f"sqlite:///{tmp_path / 'preview.db'}",
           "RETENTION_SECRET_KEY": "preview-test", "RETENTION_MAIL_URL": f"maildir://{tmp_path / 'outbox'}"}
    command = [sys.executable, "-c", "from worker.cli import main; main()",
               "preview", "--serve", "--port", str(port)]
    process = subprocess.Popen(
        command,
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(base + "/api/state", timeout=5):
                break
        except (urllib.error.URLError, OSError):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                output = process.stdout.read() if process.stdout else ""
                raise AssertionError(f"preview server did not start: {output}") from None
            time.sleep(0.2)
    try:
        yield base, tmp_path
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_live_preview_renders_every_campaign_and_follows_saved_edits(browser, preview_server):  # noqa: F811
    base, folder = preview_server
    page = browser.new_page()
    page.goto(base + "/")
    for campaign in SHIPPED_CAMPAIGNS:
        subject = page.locator(f'section[data-campaign="{campaign}"] .subject')
        subject.wait_for(timeout=15_000)
        assert subject.inner_text().strip()
    assert page.locator("section.campaign").count() == len(SHIPPED_CAMPAIGNS)
    html_frame = page.frame_locator('section[data-campaign="we-miss-you"] iframe.html')
    assert "we miss you" in html_frame.locator("body").inner_text().lower()
    page.evaluate("window.__not_reloaded = true")

    # A saved edit shows up by itself.
    subject_file = folder / "templates" / "check_in" / "subject.j2"
    subject_file.write_text("Checking in on you, {{ customer.first_name }}\n", encoding="utf-8")
    page.wait_for_function(
        """() => document.querySelector('section[data-campaign="check-in"] .subject')
                   ?.textContent.startsWith('Checking in on you, Ada')""", timeout=10_000)
    assert page.evaluate("window.__not_reloaded") is True

    # A broken edit: the error with its file and line, in place and in the check list.
    body = folder / "templates" / "check_in" / "body.txt.j2"
    body.write_text(body.read_text(encoding="utf-8") + "\n{% if customer.plan %}\nno endif\n",
                    encoding="utf-8")
    error = page.locator('section[data-campaign="check-in"] .error')
    error.wait_for(timeout=10_000)
    assert "templates/check_in/body.txt.j2:" in error.inner_text()
    assert "templates/check_in/body.txt.j2:" in page.locator("#errors").inner_text()
    # The other campaigns keep rendering.
    assert page.locator('section[data-campaign="we-miss-you"] .subject').inner_text().strip()
    assert page.evaluate("window.__not_reloaded") is True

    # A broken rules.yaml is reported with its line, the last good campaigns stay on screen.
    rules = folder / "rules.yaml"
    rules.write_text(rules.read_text(encoding="utf-8").replace("priority: 10", "priority: ten"),
                     encoding="utf-8")
    page.wait_for_function(
        "() => document.querySelector('#errors').textContent.includes('rules.yaml:')", timeout=10_000)
    assert page.locator("section.campaign").count() == len(SHIPPED_CAMPAIGNS)


def test_test_send_button_uses_the_configured_transport(browser, preview_server):  # noqa: F811
    base, folder = preview_server
    page = browser.new_page()
    page.goto(base + "/")
    card = page.locator('section[data-campaign="we-miss-you"]')
    card.locator(".subject").wait_for(timeout=15_000)
    card.locator('input[type="email"]').fill("marketing@acme.example")
    card.locator("button", has_text="Send test").click()
    card.locator(".result.sent").wait_for(timeout=10_000)
    sent = list((folder / "outbox" / "new").iterdir())
    assert len(sent) == 1
    text = sent[0].read_text(encoding="utf-8")
    assert "To: marketing@acme.example" in text
    assert "Subject: [TEST] " in text
