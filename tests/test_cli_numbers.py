"""Numbers a user reads off the command line: each one says what it counts."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.test_cli import retention, workdir  # noqa: F401 - the shared fixture


def test_cron_campaign_is_due_at_its_exact_minute_and_plan_says_when_it_fires_next(workdir):  # noqa: F811
    retention(workdir, "db", "upgrade")
    # The shipped new-reports-feature fires "0 10 * * TUE" in Europe/Berlin; 2026-12-01 is a Tuesday.
    def plan_at(moment: str) -> str:
        return retention(workdir, "plan", "--at", moment, "--campaign", "new-reports-feature").stdout

    assert "not due; next fire 2026-12-01 10:00 CET" in plan_at("2026-12-01T09:30:00+01:00")
    assert "not due" not in plan_at("2026-12-01T10:00:00+01:00")
    assert "not due" not in plan_at("2026-12-01T10:01:00+01:00")


def lapsed_customers_csv(folder: Path, *rows: str) -> None:
    (folder / "customers.csv").write_text(
        "id,email,first_name,plan,status,timezone,last_active_at\n" + "".join(f"{r}\n" for r in rows)
    )


def write_rules(folder: Path, defaults: str = "", campaign: str = "",
                when: str = "{status: active, days_inactive: {at_least: 30}}") -> None:
    (folder / "rules.yaml").write_text(
        'defaults:\n  sender: "Acme <hello@acme.example>"\n  timezone: UTC\n' + defaults
        + "campaigns:\n  - id: we-miss-you\n    template: we_miss_you\n"
        + f"    when: {when}\n" + campaign
    )


def sent_messages(folder: Path) -> int:
    new = folder / "outbox" / "new"
    return len(list(new.iterdir())) if new.is_dir() else 0


def test_a_delivery_waiting_for_quiet_hours_follows_the_rules_in_force(workdir):  # noqa: F811
    now = datetime.now(UTC)
    quiet = f"{now - timedelta(hours=1):%H:%M}-{now + timedelta(hours=3):%H:%M}"
    write_rules(workdir, defaults=f'  quiet_hours: "{quiet}"\n')
    lapsed = now - timedelta(days=60)
    lapsed_customers_csv(workdir, f"c1,ada@example.com,Ada,pro,active,UTC,{lapsed:%Y-%m-%d}")
    retention(workdir, "import", "customers", "customers.csv")
    first = retention(workdir, "run", "--once")
    assert "1 delivery still waiting" in first.stdout
    assert sent_messages(workdir) == 0
    write_rules(workdir)  # marketing removes quiet hours
    retention(workdir, "run", "--once")
    assert sent_messages(workdir) == 1


def test_boolean_attributes_from_csv_compare_like_json(workdir):  # noqa: F811
    write_rules(workdir, when="{attributes.beta: true}")
    (workdir / "customers.csv").write_text(
        "id,email,beta\nc1,ada@example.com,true\nc2,bob@example.com,false\nc3,cy@example.com,TRUE\n"
    )
    retention(workdir, "import", "customers", "customers.csv")
    shown = retention(workdir, "plan", "--show", "10").stdout
    assert "c1 <ada@example.com>" in shown and "c3 <cy@example.com>" in shown
    assert "c2 <" not in shown


def table_row(output: str, campaign_id: str) -> list[str]:
    """The cells of a campaign's row in a rich table."""
    for line in output.splitlines():
        cells = [c.strip() for c in line.replace("┃", "│").split("│")]
        if campaign_id in cells:
            return [c for c in cells if c]
    raise AssertionError(f"no row for {campaign_id} in:\n{output}")


def three_lapsed_customers(folder: Path, plan: str = "free") -> None:
    lapsed = datetime.now(UTC) - timedelta(days=60)
    lapsed_customers_csv(folder, *(f"c{i},c{i}@example.com,C{i},{plan},active,UTC,{lapsed:%Y-%m-%d}"
                                    for i in (1, 2, 3)))
    retention(folder, "import", "customers", "customers.csv")


def test_blast_guard_hold_is_shown_as_held_everywhere(workdir):  # noqa: F811
    write_rules(workdir, defaults="  blast_guard: {first_pass: 1}\n")
    three_lapsed_customers(workdir)
    plan = retention(workdir, "plan").stdout
    assert table_row(plan, "we-miss-you")[-1] == "0"  # would send: nothing while held
    assert "3 deliveries would wait for `retention approve we-miss-you`" in plan

    run = retention(workdir, "run", "--once").stdout
    assert "held by the blast guard: 3" in table_row(run, "we-miss-you")[-1]
    assert "we-miss-you: HELD by the blast guard: first pass matches 3" in run

    explained = retention(workdir, "explain", "c1").stdout
    assert table_row(explained, "we-miss-you")[1] == "held"
    assert "held by the blast guard" in explained and "already_sent" not in explained
    again = retention(workdir, "plan").stdout
    assert "we-miss-you: planned before: 3 held" in again


def test_over_cap_skips_are_not_counted_as_held_out_and_explain_names_them(workdir):  # noqa: F811
    second = (
        "    priority: 10\n"
        "  - id: second\n    template: check_in\n    when: {status: active}\n"
        "  - id: grouped\n    template: check_in\n"
        "    when: {any: [{plan: pro}, {event: {name: login, within: 12h}}]}\n"
    )
    write_rules(workdir, defaults="  frequency_cap: {max: 1, per: 7d}\n", campaign=second)
    three_lapsed_customers(workdir)
    retention(workdir, "run", "--once")  # we-miss-you first; `second` waits for the next pass
    run = retention(workdir, "run", "--once").stdout
    row = table_row(run, "second")
    assert row[1:3] == ["3", "0"], row  # 3 new deliveries, 0 held out
    assert "skipped (over the cap): 3" in row[-1]

    explained = retention(workdir, "explain", "c1").stdout
    assert table_row(explained, "second")[1] == "capped"
    assert "over the frequency cap" in explained
    assert "within 12h" in explained and "within 0d" not in explained
    assert "plan is 'free'" in explained and "event login: no such event" in explained


def test_reimporting_a_customers_file_keeps_a_later_cancellation_and_says_unchanged(workdir):  # noqa: F811
    (workdir / "customers.csv").write_text(
        "id,email,status,signed_up_at,last_active_at\n"
        "c1,ada@example.com,active,2026-01-10,2026-10-01\n"
        "c2,bob@example.com,active,2026-01-10,2026-10-01\n"
    )
    first = retention(workdir, "import", "customers", "customers.csv").stdout
    assert "2 new, 0 updated, 0 unchanged" in first
    (workdir / "events.csv").write_text("customer_id,event,occurred_at\nc1,cancelled,2026-10-15T09:00:00Z\n")
    events = retention(workdir, "import", "events", "events.csv").stdout
    assert "1 new" in events and "updated" not in events  # events are never updated

    again = retention(workdir, "import", "customers", "customers.csv").stdout  # yesterday's export
    assert "0 new, 0 updated, 2 unchanged" in again
    report = json.loads(retention(workdir, "report", "--from", "2026-10", "--to", "2026-10",
                                  "--format", "json").stdout)
    assert report["totals"]["lost_active"] == 1  # the cancellation survived the re-import

    # Newer evidence reactivates: the customer was active after cancelling.
    (workdir / "back.csv").write_text(
        "id,email,status,last_active_at\nc1,ada@example.com,active,2026-11-02\n"
    )
    back = retention(workdir, "import", "customers", "back.csv").stdout
    assert "1 updated" in back
    explained = retention(workdir, "explain", "c1").stdout
    assert "<ada@example.com> active" in explained
