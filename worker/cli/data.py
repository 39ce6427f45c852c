"""Commands for customer data: import, responses, report, customers --at-risk."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

import typer
from sqlmodel import Session

from worker.cli.app import app, import_app
from worker.cli.common import (
    _month_or_moment,
    _write,
    build_runtime,
    err,
    fail,
    out,
    parse_moment,
    user_errors,
)
from worker.report.layout import FittedTable

# Literal choices: `--help` lists them and a typo is a usage error naming them.
ResponseFormat = Literal["table", "csv", "json"]
ReportFormat = Literal["table", "json", "html"]
Period = Literal["month", "week", "quarter"]

# ---------------------------------------------------------------- import


def _import(kind: Literal["customers", "events"], file: Path, rejects: Path | None) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from campaigns.ingestion.csv_import import import_csv
    from worker.cli.rejects import RejectsFile

    rt = build_runtime(last_good="use")  # data keeps flowing in during a bad rules.yaml edit
    if not file.is_file():
        fail(f"{file}: no such file")
    rejects = rejects or file.with_name(file.stem + ".rejects.csv")
    if rejects.resolve() == file.resolve():
        fail(f"--rejects {rejects}: that is the imported file itself; choose another path")
    total = max(sum(1 for _ in file.open("rb")) - 1, 0)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} rows/s"),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    ) as progress:
        task = progress.add_task(f"importing {kind}", total=total, rate="-")
        started = datetime.now(UTC)

        def on_progress(rows: int) -> None:
            elapsed = (datetime.now(UTC) - started).total_seconds() or 1e-9
            progress.update(task, completed=rows, rate=f"{rows / elapsed:,.0f}")

        with (
            Session(rt.engine) as session, user_errors(),
            file.open(newline="", encoding="utf-8-sig") as source, RejectsFile(rejects) as sink,
        ):
            report = import_csv(
                session,
                source,
                kind,
                name=str(file),
                non_activity_events=frozenset(rt.rules.defaults.non_activity_events),
                on_progress=on_progress,
                on_reject=sink,
            )
        progress.update(task, completed=report.rows, total=report.rows)
    for line, message in report.rejected:
        err.print(f"{file}:{line}: {message}", markup=False, soft_wrap=True)
    if report.rejected_count > len(report.rejected):
        err.print(f"… and {report.rejected_count - len(report.rejected)} more", markup=False)
    # Events are stored once and never updated: only customers have updated / unchanged rows.
    changed = f"{report.updated} updated, {report.unchanged} unchanged, " if kind == "customers" else ""
    summary = (
        f"{kind}: {report.rows} rows, {report.inserted} new, {changed}"
        f"{report.duplicates} duplicates skipped, {report.rejected_count} rejected"
    )
    if report.rejected_count:
        summary += f" (written to {rejects})"
    out.print(summary, markup=False)
    if report.rejected_count:
        # The good rows are stored; a script or CI job must still notice the bad ones.
        err.print(f"error: {report.rejected_count} of {report.rows} rows rejected; fix them in "
                  f"{rejects} and import that file again", markup=False, soft_wrap=True)
        raise typer.Exit(1)


@import_app.command("customers")
def import_customers(
    file: Annotated[Path, typer.Argument(help="CSV with id,email,… (extra columns → attributes).")],
    rejects: Annotated[Path | None, typer.Option(help="Where to write rejected rows.")] = None,
) -> None:
    """Upsert customers from a CSV file."""
    _import("customers", file, rejects)


@import_app.command("events")
def import_events(
    file: Annotated[Path, typer.Argument(help="CSV with customer_id,event,occurred_at[,id,properties].")],
    rejects: Annotated[Path | None, typer.Option(help="Where to write rejected rows.")] = None,
) -> None:
    """Record events from a CSV file."""
    _import("events", file, rejects)


# ---------------------------------------------------------------- responses


@app.command()
def responses(
    survey: Annotated[str | None, typer.Option(help="Only the answers to this survey.")] = None,
    since: Annotated[str | None, typer.Option(help="Only responses since this ISO date/time.")] = None,
    format: Annotated[ResponseFormat, typer.Option("--format", help="Output format.")] = "table",
) -> None:
    """Survey answers, clicks and unsubscribes, for reading or export."""
    import csv
    import json

    from campaigns.responses.export import COLUMNS
    from campaigns.responses.export import responses as export

    rt = build_runtime()
    if survey is not None and survey not in rt.rules.surveys:
        fail(
            f"no survey {survey!r} in {rt.settings.rules} (surveys: {', '.join(rt.rules.surveys) or 'none'})"
        )
    moment = parse_moment(since, "--since") if since else None
    with Session(rt.engine) as session:
        rows = export(session, survey=survey, since=moment)
        if format == "csv":
            writer = csv.DictWriter(sys.stdout, fieldnames=COLUMNS)
            writer.writeheader()
            for row in rows:
                writer.writerow(row.as_csv_row())
        elif format == "json":
            sys.stdout.write(json.dumps([row.as_dict() for row in rows], ensure_ascii=False, indent=2) + "\n")
        else:
            table = FittedTable("Responses", COLUMNS)
            for row in rows:
                values = row.as_dict()
                table.add_row(*(str(values[c]) if values[c] is not None else "" for c in COLUMNS))
            out.print(table)




@app.command()
def report(
    period: Annotated[Period, typer.Option(help="Period length (UTC).")] = "month",
    from_: Annotated[str | None, typer.Option(
        "--from", help="First period: the one containing this date (default: 12 months/weeks, 8 quarters)."
    )] = None,
    to: Annotated[str | None, typer.Option(help="Last period: the one containing this date (default: now).")]
    = None,
    by: Annotated[str, typer.Option(help="Churn breakdown: plan or attributes.KEY.")] = "plan",
    format: Annotated[ReportFormat, typer.Option("--format", help="Output format.")] = "table",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to this file.")] = None,
) -> None:
    """Churn, retention, cohorts, why customers leave, and what each campaign achieved."""
    from campaigns.models import utcnow
    from campaigns.observed import has_customers
    from campaigns.reports import Thresholds, build_report
    from worker import report as report_output
    from worker.mail import mask_url

    start, end = _month_or_moment(from_, "--from"), _month_or_moment(to, "--to")
    rt = build_runtime()
    with Session(rt.engine) as session, user_errors():
        thresholds = Thresholds(complaint_rate=rt.settings.complaint_rate_threshold,
                                hard_bounce_rate=rt.settings.hard_bounce_rate_threshold)
        result = build_report(session, rt.rules, now=utcnow(), period=period, start=start, end=end, by=by,
                              thresholds=thresholds)
        empty = not has_customers(session)
    if empty and format == "table":
        out.print(
            f"No customers in {mask_url(rt.settings.database_url)} yet: import them first with "
            "`retention import customers FILE.csv` (and events with `retention import events FILE.csv`), "
            "or try `retention demo`.",
            markup=False, soft_wrap=True,
        )
        return
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



@app.command()
def customers(
    at_risk: Annotated[bool, typer.Option("--at-risk", help="Active customers most likely to churn now.")]
    = False,
    limit: Annotated[int, typer.Option(min=1, help="How many customers to list.")] = 20,
    format: Annotated[Literal["table", "json"], typer.Option("--format", help="Output format.")] = "table",
) -> None:
    """List customers: --at-risk ranks active ones by health (recency vs their cadence, activity trend)."""
    from campaigns.models import utcnow
    from campaigns.reports.at_risk import at_risk as find_at_risk
    from worker import report as report_output

    if not at_risk:
        fail("say which customers to list: --at-risk (customers most likely to churn now)")
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
