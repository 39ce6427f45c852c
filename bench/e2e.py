"""P3: plan → queue → render → SMTP → recorded, against Postfix's smtp-sink.

``once``: what `retention run --once` does, in one process (in-process
broker, sending threads).  ``scaled``: the several-process deployment of the
README (Redis broker, `retention worker` processes; the pass and its bulk
enqueue in the measuring process).  The reference sends pre-rendered copies
of the same messages with smtplib over one reused connection to the same sink.
"""

from __future__ import annotations

import email.policy
import os
import resource
import signal
import smtplib
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from campaigns.models import Customer, Delivery, DeliveryStatus
from worker import runtime
from worker.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
RULES = Path(__file__).resolve().parent / "rules.yaml"
RETENTION = Path(sys.executable).parent / "retention"
SAMPLE = 2000  # distinct pre-rendered messages the reference cycles through
# `retention run --once --workers 2`: --processes as the CLI's default (one per core).  Two
# threads a process keep a sink on this machine busy; with more, most wait for the one SQLite
# writer (py-spy: in a hand-over's first UPDATE).  The default, 8, is for a relay across a
# network (README).
ONCE_PROCESSES = int(os.environ.get("BENCH_ONCE_PROCESSES", "0"))  # 0: the CLI's default
ONCE_THREADS = int(os.environ.get("BENCH_ONCE_THREADS", "2"))
# `retention worker --threads N` processes of the PostgreSQL + Redis set-up.
SCALED_PROCESSES = int(os.environ.get("BENCH_WORKER_PROCESSES", "2"))
SCALED_THREADS = int(os.environ.get("BENCH_WORKER_THREADS", "4"))


def settings(url: str, smtp_port: int, broker_url: str = "") -> Settings:
    return Settings(
        database_url=url, broker_url=broker_url, mail_url=f"smtp://127.0.0.1:{smtp_port}",
        rules=RULES, templates=ROOT / "templates", secret_key="bench-secret",
        public_url="https://retention.example.com",
    )


def _statuses(engine: sa.engine.Engine) -> dict[str, int]:
    with Session(engine) as session:
        rows = session.execute(
            sa.select(col(Delivery.status), sa.func.count()).group_by(col(Delivery.status))
        ).all()
    return {status: count for status, count in rows}


def once(
    url: str, smtp_port: int, threads: int = ONCE_THREADS, processes: int = ONCE_PROCESSES
) -> dict[str, Any]:
    from worker.once import default_processes, run_once

    rt = runtime.build(settings(url, smtp_port), migrate=False)
    processes = processes or default_processes(rt)
    before = _statuses(rt.engine).get(DeliveryStatus.sent, 0)
    started = time.perf_counter()
    summary = run_once(rt, workers=threads, processes=processes, timeout=timedelta(hours=2))
    seconds = time.perf_counter() - started
    statuses = _statuses(rt.engine)
    rt.close()
    sent = statuses.get(DeliveryStatus.sent, 0) - before
    return {"seconds": seconds, "sent": sent, "per_second": sent / seconds, "pending": summary.pending,
            "statuses": statuses, "senders_peak_rss_mb": _children_peak_rss_mb(), "processes": processes}


def scaled(url: str, smtp_port: int, redis_url: str, processes: int = SCALED_PROCESSES,
           threads: int = SCALED_THREADS) -> dict[str, Any]:
    from worker.daemon import start_roles
    from worker.passes import run_pass

    config = settings(url, smtp_port, redis_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETENTION_")}
    env.update({f"RETENTION_{k.upper()}": str(v) for k, v in config.model_dump().items()
                if k in ("database_url", "broker_url", "mail_url", "rules", "templates", "secret_key",
                         "public_url")})
    env["RETENTION_LOG_LEVEL"] = "INFO"
    logs = [tempfile.NamedTemporaryFile("w+", prefix="bench-worker-", suffix=".log")
            for _ in range(processes)]
    workers = [subprocess.Popen([str(RETENTION), "worker", "--threads", str(threads)], env=env, cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT) for log in logs]
    rt = runtime.build(config, migrate=False)
    try:
        _wait_for_line(logs, "daemon running", timeout=60)
        runtime.install(rt)
        roles = start_roles(rt, workers=0, consume=False)
        before = _statuses(rt.engine).get(DeliveryStatus.sent, 0)
        started = time.perf_counter()
        report = run_pass(rt, roles.enqueue)
        planned = time.perf_counter() - started
        deadline = time.monotonic() + 7200
        while time.monotonic() < deadline:
            open_ = sum(count for status, count in _statuses(rt.engine).items()
                        if status in (DeliveryStatus.queued, DeliveryStatus.sending))
            if open_ == 0:
                break
            time.sleep(0.1)
        seconds = time.perf_counter() - started
        roles.stop()
    finally:
        for process in workers:
            process.send_signal(signal.SIGTERM)
        for process in workers:
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
        for log in logs:
            log.close()
    statuses = _statuses(rt.engine)
    rt.close()
    sent = statuses.get(DeliveryStatus.sent, 0) - before
    return {"seconds": seconds, "plan_seconds": planned, "enqueued": report.enqueued, "sent": sent,
            "per_second": sent / seconds, "statuses": statuses,
            "senders_peak_rss_mb": _children_peak_rss_mb()}


def _children_peak_rss_mb() -> float:
    """The peak RSS of the largest sending process this one started and waited for (forked
    `run --once` helpers, `retention worker` processes); its own is child.py's peak_rss_mb."""
    return round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)


def _wait_for_line(logs: list[Any], text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(text in Path(log.name).read_text() for log in logs):
            return
        time.sleep(0.2)
    tails = "\n".join(Path(log.name).read_text()[-2000:] for log in logs)
    raise RuntimeError(f"workers did not start within {timeout}s:\n{tails}")


def plain_loop(url: str, smtp_port: int, n: int) -> dict[str, Any]:
    """Render up to SAMPLE of the sent deliveries' messages, then time sending ``n`` of them."""
    rt = runtime.build(settings(url, smtp_port), migrate=False)
    sender = rt.sender()
    policy = email.policy.SMTP
    messages: list[tuple[str, str, bytes]] = []
    with Session(rt.engine) as session:
        rows = session.exec(
            select(Delivery, Customer).join(Customer, col(Customer.id) == col(Delivery.customer_id))
            .where(col(Delivery.status) == DeliveryStatus.sent, col(Delivery.message_id).is_not(None))
            .order_by(col(Delivery.id)).limit(SAMPLE)
        ).all()
        for delivery, customer in rows:
            message = sender.compose(delivery, customer, rt.rules.campaign(delivery.campaign_id),
                                     delivery.sent_at or delivery.created_at)
            messages.append((rt.rules.defaults.sender.split("<")[1].rstrip(">"), customer.email,
                             message.as_bytes(policy=policy)))
    rt.close()
    if not messages:
        raise RuntimeError("nothing was sent, so there is nothing to replay")
    started = time.perf_counter()
    with smtplib.SMTP("127.0.0.1", smtp_port) as smtp:
        for i in range(n):
            sender_address, to, data = messages[i % len(messages)]
            smtp.sendmail(sender_address, [to], data)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "sent": n, "per_second": n / seconds, "distinct": len(messages),
            "average_bytes": sum(len(m[2]) for m in messages) // len(messages)}
