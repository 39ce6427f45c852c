"""The command line as a user runs it: a real process, the shipped files, a fresh directory."""

from __future__ import annotations

import mailbox
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
RETENTION = Path(sys.executable).parent / "retention"


@pytest.fixture
def workdir(tmp_path):
    shutil.copy(ROOT / "rules.yaml", tmp_path / "rules.yaml")
    shutil.copytree(ROOT / "templates", tmp_path / "templates")
    return tmp_path


def retention(workdir: Path, *args: str, env: dict[str, str] | None = None,
              check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("RETENTION_")}
    environment.update({"COLUMNS": "200", **(env or {})})
    result = subprocess.run([str(RETENTION), *args], cwd=workdir, env=environment, text=True,
                            capture_output=True, timeout=timeout)
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def count_deliveries(workdir: Path) -> int:
    engine = sa.create_engine(f"sqlite:///{workdir / 'retention.db'}")
    with engine.connect() as connection:
        count = connection.execute(sa.text("SELECT count(*) FROM delivery")).scalar_one()
    engine.dispose()
    return count


def test_demo_fills_a_maildir_and_a_second_run_sends_nothing_new(workdir):
    result = retention(workdir, "demo", "--quick", "--customers", "400")
    assert "outbox" in result.stdout
    assert "DemoSummary(" not in result.stdout
    box = mailbox.Maildir(workdir / "outbox", create=False)
    sent = len(box)
    assert sent > 20
    message = next(iter(box))
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    deliveries = count_deliveries(workdir)

    retention(workdir, "run", "--once")
    assert count_deliveries(workdir) == deliveries
    # Deliveries deferred by quiet hours may go out now; nothing is planned twice.
    assert len(mailbox.Maildir(workdir / "outbox", create=False)) <= deliveries

    plan = retention(workdir, "plan", "--show", "2")
    assert "we-miss-you" in plan.stdout
    assert count_deliveries(workdir) == deliveries  # plan writes nothing


@pytest.mark.timeout(900)  # a quarter of daily passes: about a minute on an idle machine
def test_demo_lives_a_quarter_and_reports_a_significant_lift(workdir):
    result = retention(workdir, "demo", "--customers", "800", timeout=800)
    lines = result.stdout.splitlines()
    assert lines[0].startswith("A quarter at a synthetic company: ")
    assert "churn per month (active + passive):" in lines
    significant = [line for line in lines if line.strip().endswith(" significant")]
    assert significant, result.stdout
    assert any(line.startswith("why they left (") for line in lines), result.stdout
    assert not any(len(line) > 80 for line in lines), result.stdout  # reads in an 80-column terminal
    assert "Summary(" not in result.stdout and "{'" not in result.stdout  # no Python reprs
    html = (workdir / "demo-report.html").read_text(encoding="utf-8")
    assert "significant" in html and "price" in html
    # The emails really went out, through the shipped templates; bounces were suppressed.
    assert len(mailbox.Maildir(workdir / "outbox", create=False)) > 500
    engine = sa.create_engine(f"sqlite:///{workdir / 'retention.db'}")
    with engine.connect() as connection:
        statuses = dict(connection.execute(
            sa.text("SELECT status, count(*) FROM delivery GROUP BY status")).all())
        suppressed = connection.execute(sa.text("SELECT count(*) FROM suppression")).scalar_one()
        answers = connection.execute(sa.text("SELECT count(*) FROM survey_answer")).scalar_one()
    engine.dispose()
    assert statuses.get("bounced", 0) > 0 and suppressed >= statuses["bounced"]
    assert statuses.get("held_out", 0) > 0
    assert answers > 0


def test_preview_renders_a_sample_customer_and_writes_html(workdir):
    result = retention(workdir, "preview", "we-miss-you", "--html", "out.html")
    assert "Subject:" in result.stdout
    assert "/u/" in result.stdout  # the unsubscribe link in the text part
    assert "<html" in (workdir / "out.html").read_text().lower()


def test_preview_of_an_unknown_campaign_is_one_line_and_exit_1(workdir):
    result = retention(workdir, "preview", "nope", check=False)
    assert result.returncode == 1
    assert "no campaign by the id of 'nope'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_send_test_goes_through_smtp_and_is_not_recorded(workdir, smtp_sink):
    retention(workdir, "send-test", "exit-survey", "--to", "me@example.org",
              env={"RETENTION_MAIL_URL": smtp_sink.url})
    [message] = smtp_sink.wait_for(1)
    assert message.rcpt_tos == ["me@example.org"]
    assert message.parsed["Subject"].startswith("[TEST] ")
    assert count_deliveries(workdir) == 0


def test_import_keeps_good_rows_and_reports_bad_ones_by_line(workdir):
    (workdir / "customers.csv").write_text(
        "id,email,plan,company\n"
        "c1,ada@example.com,pro,Acme\n"
        "c2,not-an-email,pro,Acme\n"
        "c3,grace@example.com,team,Initech\n"
    )
    result = retention(workdir, "import", "customers", "customers.csv", check=False)
    assert result.returncode == 1  # the good rows are kept, but a script must notice the bad one
    assert "customers.csv:3:" in result.stderr
    assert "2 new" in result.stdout and "1 rejected" in result.stdout
    assert (workdir / "customers.rejects.csv").exists()
    again = retention(workdir, "import", "customers", "customers.csv", check=False)
    assert "0 new" in again.stdout


def test_bad_configuration_is_one_line_not_a_traceback(workdir):
    result = retention(workdir, "plan", env={"RETENTION_MAIL_URL": "carrier-pigeon://x"}, check=False)
    assert result.returncode == 0  # plan does not send, so it does not need the transport
    result = retention(workdir, "run", "--once", env={"RETENTION_MAIL_URL": "carrier-pigeon://x"},
                       check=False)
    assert result.returncode == 1
    assert "carrier-pigeon" in result.stderr


def test_db_upgrade_creates_the_schema(workdir):
    result = retention(workdir, "db", "upgrade")
    assert "up to date" in result.stdout
    assert count_deliveries(workdir) == 0


def _daemon_with_one_customer_due(workdir: Path, smtp_sink) -> subprocess.Popen[str]:
    """`retention run --no-web` sending to ``smtp_sink``, one inactive customer to write to."""
    (workdir / "customers.csv").write_text(
        "id,email,plan,status,last_active_at\n"
        "c1,ada@example.com,pro,active,2020-01-01T10:00:00+00:00\n"
    )
    env = {"RETENTION_MAIL_URL": smtp_sink.url}
    retention(workdir, "import", "customers", "customers.csv", env=env)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("RETENTION_")}
    environment.update(env)
    rules = (workdir / "rules.yaml").read_text().replace('quiet_hours: "21:00-08:00"', "quiet_hours: null")
    (workdir / "rules.yaml").write_text(rules)
    return subprocess.Popen([str(RETENTION), "run", "--no-web"], cwd=workdir, env=environment,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_daemon_sends_on_its_first_tick_and_exits_cleanly_on_sigterm(workdir, smtp_sink):
    import signal
    import time

    daemon = _daemon_with_one_customer_due(workdir, smtp_sink)
    try:
        smtp_sink.wait_for(1, timeout=30)
    finally:
        daemon.send_signal(signal.SIGTERM)
        started = time.monotonic()
        _stdout, stderr = daemon.communicate(timeout=60)
    assert daemon.returncode == 0, stderr
    assert time.monotonic() - started < 30
    assert "Traceback" not in stderr
    assert [m.rcpt_tos for m in smtp_sink.messages] == [["ada@example.com"]]


def test_daemon_stopped_by_sigterm_as_it_first_connects_exits_cleanly(workdir, smtp_sink):
    """SIGTERM at the first SMTP greeting (the roles' start, or the first send): the handlers are
    in place before anything can send, so the daemon stops cleanly, never by the signal."""
    import signal
    import time

    daemon = _daemon_with_one_customer_due(workdir, smtp_sink)
    try:
        deadline = time.monotonic() + 30
        while smtp_sink.connections == 0 and time.monotonic() < deadline and daemon.poll() is None:
            time.sleep(0.001)
    finally:
        daemon.send_signal(signal.SIGTERM)
        _stdout, stderr = daemon.communicate(timeout=60)
    assert smtp_sink.connections >= 1
    assert daemon.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert len(smtp_sink.messages) <= 1


def test_init_writes_the_examples_and_never_overwrites_without_force(tmp_path):
    retention(tmp_path, "init", "new")
    assert (tmp_path / "new" / "rules.yaml").read_text() == (ROOT / "rules.yaml").read_text()
    (tmp_path / "new" / "rules.yaml").write_text("campaigns: []\n")
    again = retention(tmp_path, "init", "new", check=False)
    assert again.returncode == 1
    assert again.stderr.strip().splitlines() == [
        "error: new/rules.yaml, new/templates already exist: nothing was written (--force overwrites them)"]
    assert (tmp_path / "new" / "rules.yaml").read_text() == "campaigns: []\n"
    retention(tmp_path, "init", "new", "--force")
    assert (tmp_path / "new" / "rules.yaml").read_text() == (ROOT / "rules.yaml").read_text()


# ---------------------------------------------------------------- one line, exit 1, no traceback


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    logged = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (INFO|WARNING) ")  # log lines may come first
    lines = [line for line in result.stderr.splitlines() if line.strip() and not logged.match(line)]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("command", [["web"], ["run"]], ids=["web", "run"])
def test_a_port_in_use_is_one_line_and_exit_1_not_a_process_serving_nothing(workdir, command):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = retention(workdir, *command, "--port", str(port), check=False)
    line = one_line_error(result)
    assert f"port {port} on 127.0.0.1 is in use" in line and "--port" in line, line


@pytest.mark.parametrize(("url", "words"), [
    ("postgresql+psycopg://retention@127.0.0.1:1/retention", ["cannot reach the database",
                                                               "127.0.0.1:1", "is the server running"]),
    ("sqlite:///no/such/folder/retention.db", ["the folder", "does not exist", "RETENTION_DATABASE_URL"]),
], ids=["unreachable", "missing-folder"])
@pytest.mark.parametrize("command", [["report"], ["customers", "--at-risk"], ["run", "--once"]],
                         ids=["report", "at-risk", "run"])
def test_a_database_that_cannot_be_used_is_one_line_and_exit_1(workdir, url, words, command):
    line = one_line_error(retention(workdir, *command, env={"RETENTION_DATABASE_URL": url}, check=False))
    for word in words:
        assert word in line, line


def test_preview_into_a_missing_folder_is_one_line_and_exit_1(workdir):
    line = one_line_error(retention(workdir, "preview", "we-miss-you", "--html", "nope/out.html",
                                    check=False))
    assert "nope/out.html" in line and "folder" in line, line


def test_an_smtp_server_refusing_auth_is_one_line_for_send_test_and_stops_the_worker(
    workdir, smtp_sink, redis_url,
):
    url = smtp_sink.url.replace("smtp://", "smtp://user:secret@")
    line = one_line_error(retention(workdir, "send-test", "exit-survey", "--to", "me@example.org",
                                    env={"RETENTION_MAIL_URL": url}, check=False))
    assert "does not support authentication" in line and "secret" not in line, line
    worker = retention(workdir, "worker", env={"RETENTION_MAIL_URL": url, "RETENTION_BROKER_URL": redis_url},
                       check=False)
    assert "does not support authentication" in one_line_error(worker)


def test_every_bad_setting_is_reported_at_once_one_line_each(workdir):
    result = retention(workdir, "report", env={"RETENTION_PUBLIC_URL": "ftp://example.com",
                                               "RETENTION_LOG_FORMAT": "xml",
                                               "RETENTION_SHUTDOWN_GRACE_SECONDS": "soon"}, check=False)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert [line.split(":")[1].strip() for line in lines] == [
        "RETENTION_PUBLIC_URL", "RETENTION_SHUTDOWN_GRACE_SECONDS", "RETENTION_LOG_FORMAT"], lines
    assert "Value error" not in result.stderr
    assert lines[0] == ("error: RETENTION_PUBLIC_URL: must start with http:// or https:// "
                        "(it is the base of links in emails)")
