"""What a marketing user writes cannot surprise a customer: `check`, `plan` and the other
commands catch it before sending, or read correctly. Every test runs the real console script."""

from __future__ import annotations

import csv
import io
import json
import mailbox
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
RETENTION = Path(sys.executable).parent / "retention"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "rules.yaml", tmp_path / "rules.yaml")
    shutil.copytree(ROOT / "templates", tmp_path / "templates")
    return tmp_path


def retention(
    workdir: Path, *args: str, env: dict[str, str] | None = None, code: int | None = 0, columns: int = 200
) -> subprocess.CompletedProcess[str]:
    """Run `retention ARGS` in ``workdir`` with stdout piped, as in CI or `| cat`."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("RETENTION_")}
    environment.update({"COLUMNS": str(columns), "RETENTION_SECRET_KEY": "test-key", **(env or {})})
    result = subprocess.run(
        [str(RETENTION), *args],
        cwd=workdir,
        env=environment,
        text=True,
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    if code is not None:
        assert result.returncode == code, result.stdout + result.stderr
    return result


def write_rules(workdir: Path, campaigns: str, defaults: str = "") -> None:
    (workdir / "rules.yaml").write_text(
        'defaults:\n  sender: "Acme <hello@acme.example>"\n  timezone: UTC\n'
        + defaults
        + "campaigns:\n"
        + campaigns
    )


def import_customers(workdir: Path, rows: list[str], header: str = "id,email,plan,status") -> None:
    (workdir / "customers.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    retention(workdir, "import", "customers", "customers.csv")


def sql(workdir: Path, statement: str, **params: object) -> list[sa.Row[object]]:
    engine = sa.create_engine(f"sqlite:///{workdir / 'retention.db'}")
    try:
        with engine.begin() as connection:
            result = connection.execute(sa.text(statement), params)
            return list(result) if result.returns_rows else []
    finally:
        engine.dispose()


def outbox(workdir: Path) -> int:
    path = workdir / "outbox"
    return len(mailbox.Maildir(path, create=False)) if path.exists() else 0


# ---------------------------------------------------------------- 1. blast guard


def test_a_once_campaign_without_conditions_on_a_small_base_is_held_until_approved(workdir):
    import_customers(
        workdir, [f"c{i},c{i}@example.com,pro,{'cancelled' if i % 3 == 0 else 'active'}" for i in range(300)]
    )
    write_rules(workdir, "  - id: hello-all\n    template: feature_reports\n    once: true\n")

    checked = retention(workdir, "check")
    assert "hello-all: no conditions" in checked.stdout

    plan = retention(workdir, "plan")
    assert "HELD by blast guard" in plan.stdout and "without conditions" in plan.stdout
    assert "100 cancelled customers" in plan.stdout

    retention(workdir, "run", "--once", "--no-web")
    assert outbox(workdir) == 0
    assert sql(workdir, "SELECT count(*) FROM delivery WHERE status = 'held'")[0][0] == 300

    approved = retention(workdir, "approve", "hello-all")
    assert "released 300 held deliveries" in approved.stdout
    retention(workdir, "run", "--once", "--no-web")
    assert outbox(workdir) == 300


def test_a_first_pass_over_half_of_a_few_hundred_customers_is_held(workdir):
    import_customers(workdir, [f"c{i},c{i}@example.com,pro,active" for i in range(300)])
    write_rules(
        workdir, "  - id: pro-news\n    template: feature_reports\n    once: true\n    when: {plan: pro}\n"
    )
    plan = retention(workdir, "plan")
    assert "first pass matches 300 of 300 customers (over share 50%" in plan.stdout
    retention(workdir, "run", "--once", "--no-web")
    assert outbox(workdir) == 0


def test_approving_a_single_held_delivery_says_delivery(workdir):
    import_customers(workdir, ["c1,c1@example.com,pro,active"])
    write_rules(workdir, "  - id: hello-all\n    template: feature_reports\n    once: true\n")
    retention(workdir, "run", "--once", "--no-web")
    assert "released 1 held delivery;" in retention(workdir, "approve", "hello-all").stdout


# ---------------------------------------------------------------- 2. templates against the real customers


def edit(workdir: Path, relative: str, old: str, new: str) -> int:
    """Replace one unique fragment of a file; the line it starts on."""
    path = workdir / relative
    text = path.read_text()
    assert text.count(old) == 1, (old, relative)
    path.write_text(text.replace(old, new))
    return text[: text.index(old)].count("\n") + 1


def test_a_template_failing_for_customers_without_a_time_zone_fails_check_naming_one(workdir):
    import_customers(
        workdir,
        ["c1,c1@example.com,pro,active,Europe/Paris", "c2,c2@example.com,pro,active,"],
        header="id,email,plan,status,timezone",
    )
    line = edit(
        workdir, "templates/we_miss_you/body.txt.j2", "Warmly,", "Warmly ({{ customer.timezone.upper() }}),"
    )
    result = retention(workdir, "check", code=1)
    assert f"templates/we_miss_you/body.txt.j2:{line}: for customer 'c2':" in result.stdout
    assert "upper" in result.stdout


def test_without_customers_an_empty_field_still_fails_check(workdir):
    edit(workdir, "templates/we_miss_you/body.txt.j2", "Warmly,", "Warmly ({{ customer.timezone.upper() }}),")
    result = retention(workdir, "check", code=1)
    assert "for a customer whose optional fields are empty" in result.stdout


def test_a_typo_on_a_branch_the_sample_does_not_take_fails_check_with_a_suggestion(workdir):
    line = edit(
        workdir,
        "templates/we_miss_you/body.txt.j2",
        "Warmly,",
        "{% if customer.plan == 'enterprise' %}Dear {{ customer.frist_name }}{% endif %}\nWarmly,",
    )
    result = retention(workdir, "check", code=1)
    [error] = [x for x in result.stdout.splitlines() if "frist_name" in x]
    assert error.startswith(
        f"templates/we_miss_you/body.txt.j2:{line}: 'customer' has no attribute 'frist_name' "
        "(did you mean customer.first_name?)"
    )
    assert "— in: {% if customer.plan == 'enterprise' %}" in error  # the source line


def test_a_misspelt_top_level_name_suggests_the_right_one(workdir):
    edit(
        workdir,
        "templates/we_miss_you/body.txt.j2",
        "Warmly,",
        "{% if false %}{{ unsubscribe_ur }}{% endif %}Warmly,",
    )
    assert (
        "undefined name 'unsubscribe_ur' (did you mean unsubscribe_url?)"
        in retention(workdir, "check", code=1).stdout
    )


def test_track_of_a_url_that_is_not_absolute_fails_check(workdir):
    line = edit(
        workdir,
        "templates/we_miss_you/body.txt.j2",
        'track("https://acme.example/login")',
        "track('acme.example/login')",
    )
    result = retention(workdir, "check", code=1)
    assert f"templates/we_miss_you/body.txt.j2:{line}:" in result.stdout
    assert "track() needs an absolute http(s) URL, got 'acme.example/login'" in result.stdout


def test_an_attribute_every_customer_has_passes_check(workdir):
    import_customers(
        workdir,
        ["c1,c1@example.com,pro,active,ads", "c2,c2@example.com,team,active,blog"],
        header="id,email,plan,status,source",
    )
    edit(
        workdir, "templates/we_miss_you/body.txt.j2", "Warmly,", "Warmly ({{ customer.attributes.source }}),"
    )
    retention(workdir, "check")


def test_a_missing_subject_is_reported_as_a_missing_file(workdir):
    (workdir / "templates/we_miss_you/subject.j2").unlink()
    result = retention(workdir, "check", code=1)
    assert "templates/we_miss_you/subject.j2: missing subject.j2" in result.stdout
    assert "unknown template" not in result.stdout


# ---------------------------------------------------------------- 3. a visible unsubscribe link

UNSUBSCRIBE = (
    '<a href="{{ unsubscribe_url }}" style="color:#6a737d; text-decoration:underline;">Unsubscribe</a>'
)


@pytest.mark.parametrize(
    "replacement",
    [
        f"<!-- {UNSUBSCRIBE} -->",
        '<a href="{{ unsubscribe_url }}"></a>',
        f'<span style="display:none">{UNSUBSCRIBE}</span>',
        f"<span hidden>{UNSUBSCRIBE}</span>",
    ],
    ids=["commented-out", "empty", "display-none", "hidden-attribute"],
)
def test_an_unsubscribe_link_nobody_can_see_fails_check(workdir, replacement):
    edit(workdir, "templates/layout.html.j2", UNSUBSCRIBE, replacement)
    result = retention(workdir, "check", code=1)
    assert "the HTML part has no visible link to {{ unsubscribe_url }}" in result.stdout


def test_a_text_part_without_the_unsubscribe_url_fails_check(workdir):
    edit(
        workdir,
        "templates/we_miss_you/body.txt.j2",
        "Unsubscribe: {{ unsubscribe_url }}",
        "Unsubscribe anytime.",
    )
    assert "the text part never shows {{ unsubscribe_url }}" in retention(workdir, "check", code=1).stdout


# ---------------------------------------------------------------- 4. values no customer has


def test_check_warns_about_condition_values_and_events_no_customer_has(workdir):
    import_customers(
        workdir,
        ["c1,c1@example.com,free,active", "c2,c2@example.com,pro,active", "c3,c3@example.com,team,cancelled"],
    )
    (workdir / "events.csv").write_text(
        "customer_id,event,occurred_at\nc3,cancelled,2026-01-01T00:00:00Z\nc1,login,2026-01-02T00:00:00Z\n"
    )
    retention(workdir, "import", "events", "events.csv")
    edit(workdir, "rules.yaml", "plan: {in: [pro, team]}", "plan: {in: [Pro, teams]}")
    edit(
        workdir,
        "rules.yaml",
        "trigger: {event: cancelled, after: 1h}",
        "trigger: {event: canceled, after: 1h}",
    )
    result = retention(workdir, "check")
    assert "no customer has plan 'teams' (seen: free, pro, team); did you mean 'team'?" in result.stdout
    assert "no customer has plan 'Pro' (seen: free, pro, team); did you mean 'pro'?" in result.stdout
    assert "no event 'canceled' was ever recorded; did you mean 'cancelled'?" in result.stdout
    assert all(
        line.startswith(str(workdir / "rules.yaml")) or line.startswith(("rules.yaml", "OK"))
        for line in result.stdout.splitlines()
        if "no customer has" in line
    )
    plan = retention(workdir, "plan")
    assert "no customer has plan 'teams'" in plan.stdout


# ---------------------------------------------------------------- 5. YAML hints


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("campaigns:\n\t- id: x\n", "YAML indents with spaces only"),
        ("campaigns:\n  - id: x\n    template: y\n   once: true\n", "indentation does not line up"),
        ("campaigns:\n  - id: x\n    template: Offer: 20% off\n", 'value containing ": " must be quoted'),
    ],
    ids=["tab", "indentation", "colon"],
)
def test_yaml_syntax_errors_say_how_to_fix_them(workdir, text, hint):
    (workdir / "rules.yaml").write_text(text)
    result = retention(workdir, "check", code=1)
    [line] = [line for line in result.stdout.splitlines() if line.strip()]
    assert line.startswith("rules.yaml:") and hint in line


# ---------------------------------------------------------------- 7. smaller traps


def test_csv_export_neutralizes_formulas(workdir):
    import_customers(workdir, ["c1,c1@example.com,pro,cancelled"])
    sql(
        workdir,
        "INSERT INTO survey_answer (customer_id, campaign_id, survey_id, question_id, answer, "
        "created_at, updated_at) SELECT id, 'exit-survey', 'why_you_left', 'missing', "
        ":answer, '2026-01-01 00:00:00', '2026-01-01 00:00:00' FROM customer",
        answer='=HYPERLINK("https://evil.example","click")',
    )
    exported = retention(workdir, "responses", "--format", "csv").stdout
    [row] = list(csv.DictReader(io.StringIO(exported)))
    assert row["answer"] == '\'=HYPERLINK("https://evil.example","click")'
    assert row["customer_id"] == "c1"


def test_import_with_rejected_rows_exits_non_zero_and_keeps_the_good_rows(workdir):
    (workdir / "customers.csv").write_text("id,email\nc1,ada@example.com\nc2,not-an-email\n")
    result = retention(workdir, "import", "customers", "customers.csv", code=1)
    assert "1 of 2 rows rejected" in result.stderr
    assert sql(workdir, "SELECT external_id FROM customer")[0][0] == "c1"


def test_help_lists_the_choices_of_format_options(workdir):
    for command in (["report"], ["responses"], ["customers"]):
        text = retention(workdir, *command, "--help").stdout
        assert "<str>" not in text.split("--format")[1].splitlines()[0]
    assert "table|json|html" in retention(workdir, "report", "--help").stdout


def test_a_report_on_an_empty_database_says_to_import_customers_first(workdir):
    result = retention(workdir, "report")
    assert "import them first with `retention import customers FILE.csv`" in result.stdout
    assert "Churn per" not in result.stdout


def test_a_report_by_an_attribute_nobody_has_says_so(workdir):
    import_customers(workdir, ["c1,c1@example.com,pro,active,ads"], header="id,email,plan,status,source")
    result = retention(workdir, "report", "--by", "attributes.sorce", code=1)
    assert "no customer has attribute 'sorce'; did you mean 'source'?" in result.stderr


# ---------------------------------------------------------------- 2. deliveries and retry


def test_failed_deliveries_are_listed_and_sent_again_after_the_fix(workdir):
    import_customers(
        workdir,
        [f"c{i},c{i}@example.com,pro,active,2026-01-01T10:00:00+00:00" for i in range(3)],
        header="id,email,plan,status,last_active_at",
    )
    write_rules(
        workdir,
        "  - id: we-miss-you\n    template: we_miss_you\n"
        "    when: {status: active, days_inactive: {at_least: 30}}\n",
    )
    body = workdir / "templates/we_miss_you/body.txt.j2"
    fixed = body.read_text()
    body.write_text(fixed.replace("Warmly,", "Warmly, {{ customer.attributes.nosuch }}"))
    failed_run = retention(workdir, "run", "--once", "--no-web", code=1)
    assert "3 deliveries failed" in failed_run.stderr
    listed = retention(workdir, "deliveries", "--status", "failed")
    assert "Deliveries: 3 of 3" in listed.stdout and "nosuch" in listed.stdout
    assert outbox(workdir) == 0

    body.write_text(fixed)
    sql(workdir, "UPDATE customer SET unsubscribed_at = '2026-01-02 00:00:00' WHERE external_id = 'c2'")
    sql(
        workdir,
        "UPDATE delivery SET status = 'unknown' WHERE customer_id = "
        "(SELECT id FROM customer WHERE external_id = 'c1')",
    )
    retried = retention(workdir, "retry", "we-miss-you")
    assert "1 delivery queued again" in retried.stdout
    assert "1 not retried: unsubscribed or suppressed since" in retried.stdout
    retention(workdir, "run", "--once", "--no-web")
    assert outbox(workdir) == 1  # c0; c1 is `unknown` (it may have arrived), c2 unsubscribed

    assert (
        "1 delivery queued again" in retention(workdir, "retry", "we-miss-you", "--status", "unknown").stdout
    )
    retention(workdir, "run", "--once", "--no-web")
    assert outbox(workdir) == 2
    assert "Deliveries: 2 of 2, status sent" in retention(workdir, "deliveries", "--status", "sent").stdout


def test_retry_re_checks_the_frequency_cap(workdir):
    import_customers(
        workdir,
        ["c0,c0@example.com,pro,active,2026-01-01T10:00:00+00:00"],
        header="id,email,plan,status,last_active_at",
    )
    write_rules(
        workdir,
        "  - id: broken\n    template: we_miss_you\n    once: true\n    when: {status: active}\n"
        "    priority: 5\n"
        "  - id: other\n    template: check_in\n    once: true\n    when: {status: active}\n",
        defaults="  frequency_cap: {max: 1, per: 7d}\n",
    )
    body = workdir / "templates/we_miss_you/body.txt.j2"
    fixed = body.read_text()
    body.write_text(fixed.replace("Warmly,", "Warmly, {{ customer.attributes.nosuch }}"))
    retention(workdir, "run", "--once", "--no-web", code=1)  # `broken` fails
    retention(workdir, "run", "--once", "--no-web")  # `other` is sent: the cap is reached
    body.write_text(fixed)
    retried = retention(workdir, "retry", "broken")
    assert "1 not retried: the customer reached a frequency cap since" in retried.stdout


# ---------------------------------------------------------------- 6. output at 80 columns, piped

AT_80 = 80


def no_cut(text: str) -> None:
    """Nothing cut, and tables within the width (messages stay one line each, whatever their length)."""
    assert "…" not in text, text
    drawn = [line for line in text.splitlines() if any(c in line for c in "│┃─━")]
    assert all(len(line.rstrip()) <= AT_80 for line in drawn), text


def test_plan_report_at_risk_and_responses_read_at_80_columns_when_piped(workdir):
    retention(workdir, "demo", "--customers", "300")
    no_cut(retention(workdir, "plan", columns=AT_80).stdout)
    no_cut(retention(workdir, "report", columns=AT_80).stdout)
    no_cut(retention(workdir, "customers", "--at-risk", columns=AT_80).stdout)
    no_cut(retention(workdir, "responses", columns=AT_80).stdout)
    no_cut(retention(workdir, "deliveries", "--limit", "5", columns=AT_80).stdout)
    no_cut(retention(workdir, "explain", "demo-00007", columns=AT_80).stdout)
    wide = retention(workdir, "plan", columns=200).stdout
    assert "┃ campaign" in wide  # a grid where it fits


def test_plan_and_explain_speak_json(workdir):
    import_customers(workdir, ["c1,c1@example.com,pro,active"])
    plan = json.loads(retention(workdir, "plan", "--format", "json").stdout)
    assert plan["dry_run"] is True
    assert {c["campaign"] for c in plan["campaigns"]} >= {"we-miss-you", "exit-survey"}
    explained = json.loads(retention(workdir, "explain", "c1", "--format", "json").stdout)
    assert explained["customer"]["id"] == "c1"
    assert {c["campaign"] for c in explained["campaigns"]} >= {"we-miss-you"}


# ---------------------------------------------------------------- 7. the web role's pages


@pytest.fixture
def web(workdir):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("RETENTION_")}
    environment["RETENTION_SECRET_KEY"] = "test-key"
    process = subprocess.Popen(
        [str(RETENTION), "web", "--port", str(port)],
        cwd=workdir,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(base + "/healthz", timeout=2)
            break
        except (OSError, urllib.error.HTTPError):
            assert process.poll() is None and time.monotonic() < deadline, "the web role did not start"
            time.sleep(0.1)
    yield base
    process.terminate()
    process.wait(timeout=30)


def fetch(url: str, method: str = "GET") -> tuple[int, str, str]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers["content-type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["content-type"], exc.read().decode()


def test_unknown_pages_and_wrong_methods_get_the_branded_page_and_apis_json(workdir, web):
    status, kind, body = fetch(web + "/no/such/page")
    assert (status, kind.split(";")[0]) == (404, "text/html")
    assert "<h1>Page not found</h1>" in body
    status, kind, body = fetch(web + "/u/some-token", method="DELETE")
    assert (status, kind.split(";")[0]) == (405, "text/html")
    assert "This page cannot do that" in body
    status, kind, _ = fetch(web + "/api/v1/nope")
    assert (status, kind) == (404, "application/json")


def test_the_links_of_a_preview_lead_to_a_page_saying_it_was_a_test(workdir, web):
    text = retention(workdir, "preview", "exit-survey").stdout
    for path in sorted(set(re.findall(r"/[us]/[A-Za-z0-9._-]+", text))):
        status, _, body = fetch(web + path)
        assert status == 200, body
        assert "This was a test email" in body and "no longer works" not in body
