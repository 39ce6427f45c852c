"""The daemon and its roles (run, scheduler, worker, web), the demo, and migrations."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from sqlmodel import Session, col, select

from campaigns.models import Customer, Delivery, DeliveryStatus
from worker.cli.app import app, db_app
from worker.cli.common import (
    _write,
    build_runtime,
    err,
    exit_now,
    fail,
    out,
    settings,
    user_errors,
)
from worker.runtime import Runtime
from worker.wording import plural


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply database migrations (also done automatically on start)."""
    from worker.database import make_engine, upgrade

    cfg = settings()
    with user_errors():
        engine = make_engine(cfg.database_url)
        upgrade(engine)
    out.print(f"database at {engine.url.render_as_string(hide_password=True)} is up to date", markup=False)




# ---------------------------------------------------------------- run / demo


@app.command()
def run(
    once: Annotated[bool, typer.Option("--once", help="One pass, deliver what is due, exit.")] = False,
    workers: Annotated[int, typer.Option(help="Sending threads (per process).")] = 8,
    processes: Annotated[int | None, typer.Option(
        "--processes", min=1, show_default=False,
        help="With --once: sending processes (default: one per core, at most "
             "4, when sending by SMTP; else 1).",
    )] = None,
    no_web: Annotated[bool, typer.Option("--no-web", help="Do not serve the web endpoints.")] = False,
    host: Annotated[str, typer.Option(help="Web host.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Web port.")] = 8000,
) -> None:
    """The daemon: scheduler + workers (+ web) in one process."""
    from worker import daemon
    from worker import once as once_module

    # A restart during a bad edit keeps links and sending up on the last good rules; only
    # planning waits for a valid file (`--once` is one planning pass: it needs one).
    rt = build_runtime(last_good="refuse" if once else "use")
    with user_errors():
        if once:
            summary = once_module.run_once(
                rt, workers=workers, processes=processes or once_module.default_processes(rt))
            _print_summary(rt, summary)
            failed = sum(row.other.get(DeliveryStatus.failed, 0) for row in summary.rows)
            if failed:
                # A script or cron job must notice; the deliveries wait for a fix and `retention retry`.
                err.print(
                    f"error: {plural(failed, 'delivery')} failed: `retention deliveries --status failed` "
                    "shows why; after the fix, `retention retry CAMPAIGN` sends them",
                    markup=False, soft_wrap=True,
                )
                raise typer.Exit(1)
        else:
            daemon.serve(rt, workers=workers, web=(None if no_web else (host, port)))
            exit_now()


MetricsPort = Annotated[int | None, typer.Option(
    "--metrics-port", help="Serve /healthz, /readyz and /metrics on this port (env RETENTION_METRICS_PORT).")]
MetricsHost = Annotated[str | None, typer.Option(
    "--metrics-host", help="Interface for --metrics-port (env RETENTION_METRICS_HOST; default 127.0.0.1).")]


def _ops(rt: Runtime, port: int | None, host: str | None) -> tuple[str, int] | None:
    port = port if port is not None else rt.settings.metrics_port
    return (host or rt.settings.metrics_host, port) if port is not None else None


@app.command()
def scheduler(metrics_port: MetricsPort = None, metrics_host: MetricsHost = None) -> None:
    """Planning only: enqueue due deliveries on Redis for `retention worker` processes."""
    from worker import daemon

    rt = build_runtime()  # planning refuses an invalid rules.yaml, even with good rules kept
    if not rt.settings.broker_url:
        fail(
            "`retention scheduler` needs RETENTION_BROKER_URL=redis://… "
            "(without a broker, use `retention run`)"
        )
    with user_errors():
        daemon.serve(rt, workers=0, web=None, plan=True, consume=False, role="scheduler",
                     ops=_ops(rt, metrics_port, metrics_host))
    exit_now()


@app.command()
def worker(
    threads: Annotated[int, typer.Option("--threads", "--workers", help="Sending threads.")] = 8,
    metrics_port: MetricsPort = None,
    metrics_host: MetricsHost = None,
) -> None:
    """Sending only: consume deliveries from Redis (Dramatiq's CLI works too: see README)."""
    from worker import daemon

    rt = build_runtime(last_good="use")
    if not rt.settings.broker_url:
        fail(
            "`retention worker` needs RETENTION_BROKER_URL=redis://… (without a broker, use `retention run`)"
        )
    with user_errors():
        daemon.serve(rt, workers=threads, web=None, plan=False, consume=True, role="worker",
                     ops=_ops(rt, metrics_port, metrics_host))
    exit_now()


@app.command()
def web(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
) -> None:
    """The HTTP endpoints only (health, metrics, and the links in emails)."""
    from worker import daemon

    rt = build_runtime(last_good="or-none")  # unsubscribing never waits for valid campaign rules
    with user_errors():
        daemon.serve_web(rt, host=host, port=port)
    exit_now()


def _demo_quarter(rt: Runtime, customers: int, report_path: Path) -> None:
    from campaigns.demo_data import demo_anchor
    from campaigns.reports import build_report
    from worker import report as report_output
    from worker.demo import QUARTER_DAYS, simulate_quarter, story
    from worker.once import where_mail_went

    with Session(rt.engine) as session:
        anchor = demo_anchor(session)
    # Two passes a day for twelve weeks would log some 800 INFO lines: the summary says it.
    chatty = [logging.getLogger(name) for name in ("worker", "campaigns")]
    levels = [logger.level for logger in chatty]
    for logger in chatty:
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    title = f"simulating a quarter of {customers} customers, day by day"
    try:
        with err.status(f"{title}…") as status, user_errors():
            def progress(day: int) -> None:
                status.update(f"{title}: day {day} of {QUARTER_DAYS}")
                if not err.is_terminal and day % 28 == 0:
                    err.print(f"{title}: day {day} of {QUARTER_DAYS}", markup=False)

            quarter = simulate_quarter(rt, customers=customers, end=anchor, on_day=progress)
    finally:
        for logger, level in zip(chatty, levels, strict=True):
            logger.setLevel(level)
    with Session(rt.engine) as session, user_errors():
        result = build_report(session, rt.rules, now=anchor, start=quarter.start, end=anchor)
    for line in story(quarter, result):
        out.print(line, markup=False, soft_wrap=True)
    _write(report_output.report_html(result), report_path)
    for line in textwrap.wrap(where_mail_went(rt), width=80, break_on_hyphens=False):
        out.print(line, markup=False, soft_wrap=True)
    out.print("next: `retention report` for the full tables; `retention explain demo-00007`\n"
              "why one customer gets what; `retention preview --serve` to edit the emails live.",
              markup=False, soft_wrap=True)


def _print_summary(rt: Runtime, summary: Any) -> None:
    table = Table(title="This pass")
    for column in ("campaign", "new deliveries", "held out", "sent", "other outcomes"):
        table.add_column(column, justify="left" if column == "campaign" else "right")
    for row in summary.rows:
        table.add_row(
            row.campaign_id,
            str(row.planned),
            str(row.held_out),
            str(row.sent),
            ", ".join(f"{k}: {v}" for k, v in row.other.items()) or "-",
        )
    out.print(table)
    for campaign_id, why in summary.held:
        out.print(f"{campaign_id}: HELD by the blast guard: {why}; run `retention approve {campaign_id}`",
                  markup=False, soft_wrap=True)
    if summary.pending:
        out.print(
            f"{plural(summary.pending, 'delivery')} still waiting (send window, retries), this pass's and "
            "earlier ones; a later pass sends them",
            markup=False,
        )
    out.print(summary.where, markup=False)


@app.command()
def demo(
    customers: Annotated[int, typer.Option(help="How many synthetic customers.")] = 1500,
    quick: Annotated[bool, typer.Option(
        "--quick", help="One pass over today's synthetic customers instead of a simulated quarter.")] = False,
    report: Annotated[Path | None, typer.Option(
        help="Where the quarter's HTML report goes (default: demo-report.html).")] = None,
) -> None:
    """A simulated quarter: daily activity, passes, emails, answers; then a summary and a report."""
    from campaigns.demo_data import demo_anchor, generate_demo
    from worker import examples
    from worker import once as once_module

    cfg = settings()
    # In an empty directory (a fresh install) the demo starts from the examples, as `retention
    # init` would, so that `report`, `plan` and `explain` work there afterwards.
    if not cfg.rules.exists() and not cfg.templates.exists():
        examples.write_into_place(rules=cfg.rules, templates=cfg.templates)
        out.print(f"wrote the example {cfg.rules} and {cfg.templates}/ (as `retention init` does)",
                  markup=False, soft_wrap=True)
    rt = build_runtime(cfg)
    if not quick:
        _demo_quarter(rt, customers, report or Path("demo-report.html"))
        return
    with Session(rt.engine) as session:
        anchor = demo_anchor(session)
        with err.status(f"generating {customers} synthetic customers and their activity…"):
            summary = generate_demo(session, customers=customers, now=anchor)
        session.commit()
    out.print(f"demo data: {summary.describe()}", markup=False)
    with user_errors():
        result = once_module.run_once(rt, workers=8)
    _print_summary(rt, result)
    with Session(rt.engine) as session:
        rows = session.exec(
            select(col(Delivery.campaign_id), col(Customer.email))
            .join(Customer, col(Customer.id) == col(Delivery.customer_id))
            .where(col(Delivery.status) == DeliveryStatus.sent)
            .order_by(col(Delivery.id).desc())
            .limit(5)
        ).all()
    if rows:
        out.print("for example: " + "; ".join(f"{c} → {e}" for c, e in rows), markup=False)
    out.print(
        "next: `retention report` shows churn, cohorts and what each campaign achieved; "
        "`retention explain demo-00007` why one customer gets what; `retention plan` what the next "
        "pass would do; `retention run` keeps it going.",
        markup=False,
    )


