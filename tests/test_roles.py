"""Scheduler, worker and web as separate processes, operated as docs/deployment.md says.

Real Redis, a real SMTP server (aiosmtpd), SQLite and PostgreSQL: saved edits are followed
without a signal, SIGHUP reloads and never stops a role, a broken rules.yaml shows in every
role's /healthz while sending goes on under the last good rules (also after a restart), the
worker's /metrics counts what it sent, and with Redis down the web stays ready and its links work.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from campaigns.delivery.tokens import Signer
from tests.conftest import ROOT
from tests.support.redis import free_port

RETENTION = Path(sys.executable).parent / "retention"

RULES = """
defaults: {timezone: UTC, quiet_hours: null, check_every: 1h}
campaigns:
  - id: we-miss-you
    template: we_miss_you
    when: {status: active, days_inactive: {at_least: 30}, plan: pro}
"""


class Role:
    """One `retention` process, its log in a file."""

    def __init__(self, workdir: Path, env: dict[str, str], name: str, *args: str) -> None:
        self.name = name
        self.log = workdir / f"{name}.log"
        self.args = args
        self.env = env
        self.workdir = workdir
        self.popen = self._spawn()

    def _spawn(self) -> subprocess.Popen[str]:
        with self.log.open("a") as out:
            return subprocess.Popen([str(RETENTION), *self.args], cwd=self.workdir, env=self.env,
                                    stdout=out, stderr=subprocess.STDOUT, text=True)

    def output(self) -> str:
        return self.log.read_text()

    def wait_for(self, pattern: str, *, after: int = 0, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.output()[after:])
            if found:
                return found.group(0)
            assert self.popen.poll() is None, f"{self.name} exited {self.popen.returncode}:\n{self.output()}"
            assert time.monotonic() < deadline, f"{self.name} never logged {pattern!r}:\n{self.output()}"
            time.sleep(0.1)

    def hup(self) -> str:
        seen = len(self.output())
        self.popen.send_signal(signal.SIGHUP)
        return self.wait_for(r"rules reloaded from|rules not reloaded", after=seen, timeout=15)

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        return self.popen.wait(timeout=60)

    def restart(self) -> None:
        assert self.stop() == 0, self.output()
        self.popen = self._spawn()


def get(url: str, data: bytes | None = None) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, data=data, timeout=10) as response:  # our own server
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def answering(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            get(url)
            return
        except OSError:
            assert time.monotonic() < deadline, f"{url} never answered"
            time.sleep(0.1)


def import_customers(workdir: Path, env: dict[str, str], *ids: str) -> None:
    csv = workdir / "customers.csv"
    csv.write_text("id,email,plan,status,last_active_at\n" + "".join(
        f"{i},{i}@example.com,pro,active,2020-01-01T10:00:00+00:00\n" for i in ids))
    result = subprocess.run([str(RETENTION), "import", "customers", str(csv)], cwd=workdir, env=env,
                            text=True, capture_output=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def sent_count(metrics: str) -> float:
    found = re.search(r'^retention_send_outcomes_total\{outcome="sent"\} (\S+)$', metrics, re.M)
    return float(found.group(1)) if found else 0.0


def delivery_ids(database_url: str) -> list[int]:
    from sqlmodel import Session, select

    from campaigns.models import Delivery
    from worker.database import make_engine

    engine = make_engine(database_url)
    with Session(engine) as session:
        ids = [d.id for d in session.exec(select(Delivery).order_by(Delivery.id)) if d.id is not None]
    engine.dispose()
    return ids


@pytest.mark.redis
def test_separate_roles_follow_edits_survive_sighup_bad_rules_restarts_and_redis_down(
    tmp_path, database_url, redis_url, redis_server, smtp_sink,
):
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETENTION_")}
    env.update({"RETENTION_DATABASE_URL": database_url, "RETENTION_BROKER_URL": redis_url,
                "RETENTION_MAIL_URL": smtp_sink.url, "RETENTION_RULES": str(rules),
                "RETENTION_TEMPLATES": str(ROOT / "templates"), "RETENTION_SECRET_KEY": "k",
                "RETENTION_SHUTDOWN_GRACE_SECONDS": "5"})
    import_customers(tmp_path, env, "c1", "c2", "c3")
    ports = {"scheduler": free_port(), "worker": free_port(), "web": free_port()}
    health = {name: f"http://127.0.0.1:{port}/healthz" for name, port in ports.items()}
    roles = {
        "scheduler": Role(tmp_path, {**env, "RETENTION_METRICS_PORT": str(ports["scheduler"])},
                          "scheduler", "scheduler"),
        "worker": Role(tmp_path, env, "worker", "worker", "--threads", "2",
                       "--metrics-port", str(ports["worker"])),
        "web": Role(tmp_path, env, "web", "web", "--port", str(ports["web"])),
    }
    try:
        for url in health.values():
            answering(url)
        smtp_sink.wait_for(3, timeout=60)
        for name, url in health.items():
            body = json.loads(get(url)[1])
            assert (body["role"], body["status"]) == (name, "ok"), body
            assert get(url.replace("healthz", "readyz"))[0] == 200
        deadline = time.monotonic() + 10
        while sent_count(get(f"http://127.0.0.1:{ports['worker']}/metrics")[1]) < 3:
            assert time.monotonic() < deadline, "the worker's /metrics never counted 3 sent emails"
            time.sleep(0.2)

        # A saved edit is followed without a signal; a new check_every reschedules the pass.
        rules.write_text(RULES.replace("check_every: 1h", "check_every: 10s"))
        roles["scheduler"].wait_for(r"planning every 0:00:10 from now on", timeout=5)
        import_customers(tmp_path, env, "c4")
        smtp_sink.wait_for(4, timeout=30)

        for role in roles.values():  # SIGHUP reloads and never stops a role
            assert "rules reloaded from" in role.hup()
            assert role.popen.poll() is None, role.output()

        # A broken edit: every role reports it within 5 s and keeps the last good rules.
        rules.write_text(RULES.replace("check_every: 1h", "check_every: 10s")
                         .replace("    when:", "    cooldwn: 1d\n    when:"))
        saved = time.monotonic()
        for name, url in health.items():
            while "rules.yaml:6:" not in (json.loads(get(url)[1])["rules"]["error"] or ""):
                assert time.monotonic() - saved < 5, f"{name}: the broken edit is not in /healthz"
                time.sleep(0.1)
        import_customers(tmp_path, env, "c5")
        smtp_sink.wait_for(5, timeout=30)
        for name, role in roles.items():
            logged = [line for line in role.output().splitlines() if "cooldwn" in line]
            assert len(logged) == 1, f"{name} logged the bad edit {len(logged)} times"

        # A restart during the bad edit: worker and web start on the last good rules from the
        # database and say so; the scheduler refuses to plan from a broken file.
        roles["worker"].restart()
        roles["web"].restart()
        for name in ("worker", "web"):
            answering(health[name])
            body = json.loads(get(health[name])[1])
            assert "rules.yaml:6:" in body["rules"]["error"] and body["rules"]["source"].startswith(
                "database"), body
        import_customers(tmp_path, env, "c6")
        smtp_sink.wait_for(6, timeout=30)  # planned by the running scheduler, sent by the new worker
        refused = subprocess.run([str(RETENTION), "scheduler"], cwd=tmp_path, env=env, text=True,
                                 capture_output=True, timeout=60)
        assert refused.returncode == 1 and "Traceback" not in refused.stderr
        assert re.search(r"rules\.yaml:6:\d+: .*cooldwn", refused.stderr), refused.stderr

        # Redis down: the web stays ready, says so, and an unsubscribe link works.
        signer = Signer(["k"])
        redis_server.stop()
        try:
            status, body = get(health["web"].replace("healthz", "readyz"))
            assert status == 200 and "links in emails still work" in json.loads(body)["note"]
            assert get(health["worker"].replace("healthz", "readyz"))[0] == 503
            token = signer.unsubscribe_token(delivery_ids(database_url)[0])
            unsubscribe = f"http://127.0.0.1:{ports['web']}/u/{token}"
            status, page = get(unsubscribe, data=b"List-Unsubscribe=One-Click")
            assert status == 200 and "unsubscribed" in page.lower()
        finally:
            redis_server.start()
    finally:
        codes = {name: role.stop() for name, role in roles.items()}
    assert codes == {"scheduler": 0, "worker": 0, "web": 0}, {n: r.output() for n, r in roles.items()}
    assert len(smtp_sink.messages) == 6


def test_run_started_during_a_bad_edit_serves_links_on_the_kept_rules_and_does_not_plan(
    tmp_path, sqlite_url, smtp_sink,
):
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETENTION_")}
    env.update({"RETENTION_DATABASE_URL": sqlite_url, "RETENTION_MAIL_URL": smtp_sink.url,
                "RETENTION_RULES": str(rules), "RETENTION_TEMPLATES": str(ROOT / "templates"),
                "RETENTION_SECRET_KEY": "k"})
    import_customers(tmp_path, env, "c1")  # a role that started on valid rules kept them
    rules.write_text(RULES.replace("    when:", "    cooldwn: 1d\n    when:"))
    import_customers(tmp_path, env, "c2")  # import runs during the bad edit too
    port = free_port()
    daemon = Role(tmp_path, env, "run", "run", "--port", str(port))
    try:
        daemon.wait_for(r"not planning: .*rules\.yaml is invalid")
        body = json.loads(get(f"http://127.0.0.1:{port}/healthz")[1])
        assert "rules.yaml:6:5" in body["rules"]["error"] and body["rules"]["campaigns"] == 1
        assert body["rules"]["source"].startswith("database"), body
        assert get(f"http://127.0.0.1:{port}/readyz")[0] == 200
        assert smtp_sink.messages == []
        rules.write_text(RULES)  # fixed: planning starts without a restart
        smtp_sink.wait_for(2, timeout=30)
    finally:
        assert daemon.stop() == 0, daemon.output()
