"""`retention report` and `retention customers --at-risk` (registered on the app in worker/cli.py)."""

from __future__ import annotations

import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated

import typer
from sqlmodel import Session

FORMATS = ("table", "json", "html")


def _moment(value: str | None, option: str) -> datetime | None:
    from worker.cli import fail

    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        try:
            moment = datetime.combine(date.fromisoformat(value), datetime.min.time())
        except ValueError:
            fail(f"{option} {value!r} is not an ISO 8601 date (e.g. 2026-01-31 or 2026-01)")
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _month_or_moment(value: str | None, option: str) -> datetime | None:
    # `--from 2026-01` reads naturally for a monthly report; ISO 8601 has no such date.
    if value is not None and len(value) == 7 and value[4] == "-":
        value += "-01"
    return _moment(value, option)


def _write(text: str, output: Path | None) -> None:
    from worker.cli import fail, out

    if output is None:
        sys.stdout.write(text)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write {output}: {exc.strerror} (choose another -o path)")
    out.print(f"report written to {output}", markup=False)


def report(
    period: Annotated[str, typer.Option(help="month, week or quarter (UTC).")] = "month",
    from_: Annotated[str | None, typer.Option(
        "--from", help="First period: the one containing this date (default: 12 months/weeks, 8 quarters)."
    )] = None,
    to: Annotated[str | None, typer.Option(help="Last period: the one containing this date (default: now).")]
    = None,
    by: Annotated[str, typer.Option(help="Churn breakdown: plan or attributes.KEY.")] = "plan",
    format: Annotated[str, typer.Option("--format", help="table, json or html.")] = "table",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to this file.")] = None,
) -> None:
    """Churn, retention, cohorts, why customers leave, and what each campaign achieved."""
    from campaigns.models import utcnow
    from campaigns.reports import PERIODS, build_report
    from worker import report_output
    from worker.cli import build_runtime, fail, out, user_errors

    if format not in FORMATS:
        fail(f"--format {format!r}: use table, json or html")
    if period not in PERIODS:
        fail(f"--period {period!r}: use month, week or quarter")
    start, end = _month_or_moment(from_, "--from"), _month_or_moment(to, "--to")
    rt = build_runtime()
    with Session(rt.engine) as session, user_errors():
        result = build_report(session, rt.rules, now=utcnow(), period=period, start=start, end=end, by=by)
    if format == "json":
        _write(report_output.dumps(report_output.report_json(result)), output)
    elif format == "html":
        _write(report_output.report_html(result), output)
    elif output is not None:
        from rich.console import Console

        with output.open("w", encoding="utf-8") as handle:
            Console(file=handle, width=200, highlight=False).print(report_output.report_tables(result))
        out.print(f"report written to {output}", markup=False)
    else:
        out.print(report_output.report_tables(result))


def customers(
    at_risk: Annotated[bool, typer.Option("--at-risk", help="Active customers most likely to churn now.")]
    = False,
    limit: Annotated[int, typer.Option(min=1, help="How many customers to list.")] = 20,
    format: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
) -> None:
    """List customers: --at-risk ranks active ones by health (recency vs their cadence, activity trend)."""
    from campaigns.health import at_risk as find_at_risk
    from campaigns.models import utcnow
    from worker import report_output
    from worker.cli import build_runtime, fail, out

    if not at_risk:
        fail("say which customers to list: --at-risk (customers most likely to churn now)")
    if format not in ("table", "json"):
        fail(f"--format {format!r}: use table or json")
    rt = build_runtime()
    defaults = rt.rules.defaults
    with Session(rt.engine) as session:
        result = find_at_risk(
            session, now=utcnow(), passive_churn_after=defaults.passive_churn_after,
            non_activity_events=frozenset(defaults.non_activity_events), limit=limit,
        )
    if format == "json":
        sys.stdout.write(report_output.dumps(report_output.at_risk_json(result)))
    else:
        out.print(report_output.at_risk_table(result))
