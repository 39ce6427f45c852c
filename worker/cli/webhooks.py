"""`retention webhooks`: recent attempts at the outgoing webhooks, and what failed."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table
from sqlmodel import Session

from campaigns.responses.webhooks import counts_by_status, recent_attempts
from worker.cli.app import app
from worker.cli.common import build_runtime, out


@app.command()
def webhooks(
    failures: Annotated[bool, typer.Option("--failures", help="Only attempts without a 2xx answer.")] = False,
    limit: Annotated[int, typer.Option(help="How many attempts, newest first.")] = 50,
) -> None:
    """Recent webhook attempts (endpoint, event, answer, error) and messages by status."""
    rt = build_runtime()
    with Session(rt.engine) as session:
        rows = recent_attempts(session, limit=limit, failures_only=failures)
        counts = counts_by_status(session)
    if not rt.rules.webhooks:
        out.print("no `webhooks:` in rules.yaml", markup=False)
    summary = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("pending", "delivered", "failed"))
    out.print(f"webhook messages: {summary}", markup=False)
    table = Table(title="Failed webhook attempts" if failures else "Recent webhook attempts")
    for column in ("when", "event", "url", "attempt", "answer", "message", "error"):
        table.add_column(column)
    for row in rows:
        table.add_row(row.attempted_at.isoformat(timespec="seconds"), row.kind, escape(row.url),
                      str(row.attempt), str(row.status_code or "-"), row.status, escape(row.error or ""))
    out.print(table)
