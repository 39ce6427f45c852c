"""Running for real: leader election on Redis, roles in separate processes, health and metrics."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from campaigns.models import Delivery, DeliveryStatus
from tests.conftest import ROOT
from tests.factories import add_customer
from worker.daemon import start_roles
from worker.leader import LeaderLock
from worker.passes import LostLeadership, run_pass
from worker.web import create_app

RETENTION = Path(sys.executable).parent / "retention"


def test_only_one_scheduler_leads_and_another_takes_over(redis_url):
    client = redis.Redis.from_url(redis_url)
    first, second = LeaderLock(client, ttl_s=5), LeaderLock(client, ttl_s=5)
    assert first.try_acquire() is True
    assert second.try_acquire() is False
    assert first.is_leader() is True  # renewing keeps it
    client.delete(first.key)  # the lock expired (a long pause, a partition)
    assert second.try_acquire() is True
    assert first.is_leader() is False
    second.stop()
    assert first.try_acquire() is True
    first.stop()


def test_redis_down_is_logged_once_a_minute_not_at_every_renewal(caplog):
    from tests.support.redis import free_port

    lock = LeaderLock(redis.Redis(port=free_port(), socket_connect_timeout=1), ttl_s=5)
    with caplog.at_level("WARNING", logger="worker.leader"):
        assert [lock.try_acquire() for _ in range(5)] == [False] * 5
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == ["leader lock: Redis unavailable"]


def test_a_deposed_leader_commits_and_enqueues_nothing(make_runtime):
    rt = make_runtime("console://")
    with Session(rt.engine) as session:
        add_customer(session, inactive_days=45)
        session.commit()
    enqueued: list[int] = []
    with pytest.raises(LostLeadership):
        run_pass(rt, lambda ids: enqueued.extend(ids) or len(ids), still_leader=lambda: False)
    assert enqueued == []
    with Session(rt.engine) as session:
        assert session.exec(select(Delivery)).all() == []


def test_healthz_and_metrics_report_the_deployment(make_runtime, redis_url):
    rt = make_runtime("console://", redis_url)
    client = TestClient(create_app(rt))
    with Session(rt.engine) as session:
        add_customer(session, inactive_days=45)
        session.commit()
    before = client.get("/healthz").json()
    assert before["database"] == "ok" and before["broker"] == "ok" and before["last_pass"] is None
    roles = start_roles(rt, workers=1, consume=False)
    try:
        run_pass(rt, roles.enqueue)
    finally:
        roles.stop()
    health = client.get("/healthz")
    assert health.status_code == 200
    assert health.json()["last_pass"]["error"] is None
    metrics = client.get("/metrics").text
    assert 'retention_deliveries{campaign="we-miss-you",status="queued"} 1.0' in metrics
    assert "retention_queue_depth 1.0" in metrics
    assert "retention_pass_duration_seconds_count" in metrics
    rt.state.error = "rules.yaml:3:1: broken"
    health = client.get("/healthz")  # liveness: alive, and says what is wrong
    assert health.status_code == 200
    assert health.json()["status"] == "degraded" and health.json()["rules"]["error"] == rt.state.error
    assert client.get("/readyz").status_code == 200  # the last good rules keep working


def test_two_schedulers_two_workers_and_web_send_each_email_once(tmp_path, redis_url, smtp_sink,
                                                                database_url):
    rules = (ROOT / "rules.yaml").read_text().replace('quiet_hours: "21:00-08:00"', "quiet_hours: null")
    rules = rules.replace("    holdout: 10%\n", "")  # every matching customer gets mail
    (tmp_path / "rules.yaml").write_text(rules.replace("check_every: 5m", "check_every: 10s"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETENTION_")}
    env.update({
        "RETENTION_DATABASE_URL": database_url, "RETENTION_BROKER_URL": redis_url,
        "RETENTION_MAIL_URL": smtp_sink.url, "RETENTION_RULES": str(tmp_path / "rules.yaml"),
        "RETENTION_TEMPLATES": str(ROOT / "templates"), "RETENTION_SECRET_KEY": "k",
    })
    customers = "id,email,plan,status,last_active_at\n" + "".join(
        f"c{i},c{i}@example.com,pro,active,2020-01-01T10:00:00+00:00\n" for i in range(30))
    (tmp_path / "customers.csv").write_text(customers)
    subprocess.run([str(RETENTION), "import", "customers", str(tmp_path / "customers.csv")], env=env,
                   check=True, capture_output=True, timeout=120)
    port = _free_port()
    commands = [["scheduler"], ["scheduler"], ["worker", "--threads", "2"], ["worker", "--threads", "2"],
                ["web", "--port", str(port)]]
    processes = [subprocess.Popen([str(RETENTION), *c], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for c in commands]
    try:
        smtp_sink.wait_for(30, timeout=60)
        time.sleep(12)  # a second pass of each scheduler finds nothing new
        health = _get(f"http://127.0.0.1:{port}/healthz")
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        outputs = [p.communicate(timeout=60) for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0, 0, 0], outputs
    import socket

    # The scheduler that does not lead says whom it waits for.
    waiting = [f"another scheduler leads ({socket.gethostname()}:{other.pid})" in outputs[i][1]
               for i, other in ((0, processes[1]), (1, processes[0]))]
    assert sorted(waiting) == [False, True], [o[1] for o in outputs[:2]]
    assert len(smtp_sink.messages) == 30
    assert len({m.rcpt_tos[0] for m in smtp_sink.messages}) == 30
    assert '"database":"ok"' in health.replace(" ", "")
    from worker.database import make_engine

    engine = make_engine(database_url)
    with Session(engine) as session:
        statuses = {d.status for d in session.exec(select(Delivery))}
    engine.dispose()
    assert statuses <= {DeliveryStatus.sent, DeliveryStatus.held_out}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> str:
    import urllib.request


    for _ in range(50):
        try:
            with urllib.request.urlopen(url, timeout=5) as response:  # our own server
                return response.read().decode()
        except OSError as exc:
            if getattr(exc, "code", None) == 503:
                return exc.read().decode()  # type: ignore[attr-defined]
            time.sleep(0.2)
    raise AssertionError(f"{url} never answered")


def test_rules_edited_under_a_running_daemon(tmp_path, smtp_sink):
    """A valid edit applies at the next pass; a broken one keeps the old rules and shows in /healthz."""
    import shutil

    shutil.copytree(ROOT / "templates", tmp_path / "templates")
    rules_file = tmp_path / "rules.yaml"
    base = """
defaults: {timezone: UTC, check_every: 10s}
campaigns:
  - id: we-miss-you
    template: we_miss_you
    when: {status: active, days_inactive: {at_least: 30}, plan: pro}
"""
    rules_file.write_text(base)
    (tmp_path / "customers.csv").write_text(
        "id,email,plan,last_active_at\n"
        "pro1,pro1@example.com,pro,2020-01-01T10:00:00+00:00\n"
        "team1,team1@example.com,team,2020-01-01T10:00:00+00:00\n"
        "free1,free1@example.com,free,2020-01-01T10:00:00+00:00\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETENTION_")}
    env.update({"RETENTION_MAIL_URL": smtp_sink.url, "RETENTION_SECRET_KEY": "k"})
    subprocess.run([str(RETENTION), "import", "customers", "customers.csv"], cwd=tmp_path, env=env,
                   check=True, capture_output=True, timeout=120)
    port = _free_port()
    daemon = subprocess.Popen([str(RETENTION), "run", "--port", str(port)], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert [m.rcpt_tos for m in smtp_sink.wait_for(1, timeout=30)] == [["pro1@example.com"]]
        rules_file.write_text(base.replace("plan: pro}", "plan: {in: [pro, team]}}"))
        smtp_sink.wait_for(2, timeout=30)  # the edit took effect at the next pass
        rules_file.write_text(base.replace("plan: pro}", "plan: {in: [pro, team, free]}, cooldwn: 1d}"))
        deadline = time.monotonic() + 30
        while "rules.yaml:6:" not in _get(f"http://127.0.0.1:{port}/healthz"):
            assert time.monotonic() < deadline, "the broken edit never showed in /healthz"
            time.sleep(0.2)
        time.sleep(11)  # another pass with the broken file: still the old rules, still running
        assert daemon.poll() is None
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, stderr = daemon.communicate(timeout=60)
    assert daemon.returncode == 0, stderr
    assert sorted(m.rcpt_tos[0] for m in smtp_sink.messages) == ["pro1@example.com", "team1@example.com"]
    assert "rules not reloaded, keeping the last good ones" in stderr


def test_with_redis_stopped_the_web_stays_ready_and_says_so_and_a_worker_is_not_ready(
    make_runtime, redis_url, redis_server,
):
    from prometheus_client.parser import text_string_to_metric_families

    from worker.serving import ops_app

    rt = make_runtime("console://", redis_url)
    client = TestClient(create_app(rt))
    worker = TestClient(ops_app(rt, "worker"))
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    assert {"retention_deliveries", "retention_queue_depth", "retention_send_seconds"} <= set(families)
    assert client.get("/healthz").json()["broker"] == "ok"
    assert client.get("/readyz").json() == {"role": "web", "ready": True, "database": "ok", "broker": "ok"}
    redis_server.stop()
    try:
        down = client.get("/healthz")
        assert down.status_code == 200
        assert down.json()["status"] == "degraded" and down.json()["broker"].startswith("error")
        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert "links in emails still work" in ready.json()["note"]
        not_ready = worker.get("/readyz")
        assert not_ready.status_code == 503
        assert not_ready.json()["not_ready_because"][0].startswith("broker: error")
    finally:
        redis_server.start()
    assert client.get("/healthz").json()["broker"] == "ok"
    assert worker.get("/readyz").status_code == 200


def _env(tmp_path, database_url, redis_url, smtp_url, customers: int) -> dict[str, str]:
    rules = (ROOT / "rules.yaml").read_text().replace('quiet_hours: "21:00-08:00"', "quiet_hours: null")
    rules = rules.replace("    holdout: 10%\n", "").replace("check_every: 5m", "check_every: 10s")
    # Every customer is meant to get mail here: no blast guard share on this small base.
    rules = rules.replace("check_every: 10s", "check_every: 10s\n  blast_guard: {share: 100%}")
    (tmp_path / "rules.yaml").write_text(rules)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETENTION_")}
    env.update({
        "RETENTION_DATABASE_URL": database_url, "RETENTION_BROKER_URL": redis_url,
        "RETENTION_MAIL_URL": smtp_url, "RETENTION_RULES": str(tmp_path / "rules.yaml"),
        "RETENTION_TEMPLATES": str(ROOT / "templates"), "RETENTION_SECRET_KEY": "k",
        "RETENTION_SHUTDOWN_GRACE_SECONDS": "20",
    })
    (tmp_path / "customers.csv").write_text("id,email,plan,status,last_active_at\n" + "".join(
        f"c{i},c{i}@example.com,pro,active,2020-01-01T10:00:00+00:00\n" for i in range(customers)))
    subprocess.run([str(RETENTION), "import", "customers", str(tmp_path / "customers.csv")], env=env,
                   check=True, capture_output=True, timeout=120)
    return env


def _start(env, tmp_path, name: str, *args: str) -> subprocess.Popen[str]:
    log = (tmp_path / f"{name}.log").open("w")
    return subprocess.Popen([str(RETENTION), *args], env=env, stdout=log, stderr=subprocess.STDOUT, text=True)


def _wait_for_line(path: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        assert time.monotonic() < deadline, f"{path.name} never said {text!r}: {path.read_text()[-2000:]}"
        time.sleep(0.2)


def test_killing_the_leader_hands_over_and_sigterm_mid_batch_loses_and_doubles_nothing(
        tmp_path, redis_url, smtp_sink, sqlite_url):
    env = _env(tmp_path, sqlite_url, redis_url, smtp_sink.url, customers=300)
    first = _start(env, tmp_path, "first", "scheduler")
    _wait_for_line(tmp_path / "first.log", "now the planning leader", 30)
    second = _start(env, tmp_path, "second", "scheduler")
    worker = _start(env, tmp_path, "worker", "worker", "--threads", "1")
    processes = [first, second, worker]
    try:
        smtp_sink.wait_for(20, timeout=60)
        # SIGTERM in the middle of the batch: in-flight sends finish, the rest waits in Redis.
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=40) == 0
        assert len(smtp_sink.messages) < 300
        first.kill()  # the leader dies without releasing its lock
        _wait_for_line(tmp_path / "second.log", "now the planning leader", 45)
        replacement = _start(env, tmp_path, "replacement", "worker", "--threads", "4")
        processes.append(replacement)
        smtp_sink.wait_for(300, timeout=120)
        time.sleep(2)
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(timeout=60)
    recipients = [m.rcpt_tos[0] for m in smtp_sink.messages]
    assert len(recipients) == 300 and len(set(recipients)) == 300
