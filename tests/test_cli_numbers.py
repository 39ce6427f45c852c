"""Numbers a user reads off the command line: each one says what it counts."""

from __future__ import annotations

from tests.test_cli import retention, workdir  # noqa: F401 - the shared fixture


def test_cron_campaign_is_due_at_its_exact_minute_and_plan_says_when_it_fires_next(workdir):  # noqa: F811
    retention(workdir, "db", "upgrade")
    # The shipped new-reports-feature fires "0 10 * * TUE" in Europe/Berlin; 2026-12-01 is a Tuesday.
    def plan_at(moment: str) -> str:
        return retention(workdir, "plan", "--at", moment, "--campaign", "new-reports-feature").stdout

    assert "not due; next fire 2026-12-01 10:00 CET" in plan_at("2026-12-01T09:30:00+01:00")
    assert "not due" not in plan_at("2026-12-01T10:00:00+01:00")
    assert "not due" not in plan_at("2026-12-01T10:01:00+01:00")
