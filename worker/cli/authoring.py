"""Commands for editing rules and templates: check, plan, explain, preview, send-test, approve."""

from __future__ import annotations

import json
import logging
import sys
from email.message import EmailMessage
from pathlib import Path
from typing import Annotated, Literal

import sqlalchemy as sa
import typer
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from campaigns.delivery.pausing import paused_reason
from campaigns.delivery.rendering import TemplateStore
from campaigns.models import Customer, utcnow
from campaigns.planning import Planner
from campaigns.planning import approve as approve_campaign
from worker import previews
from worker.cli.app import app
from worker.cli.common import (
    build_runtime,
    fail,
    out,
    parse_moment,
    settings,
    user_errors,
    write_file,
)
from worker.database import make_engine
from worker.report.layout import FittedTable
from worker.runtime import Runtime, check_files, check_warnings
from worker.wording import plural

# ---------------------------------------------------------------- check


@app.command()
def check() -> None:
    """Validate rules.yaml and every template (rendered for a sample of your customers too);
    exit 1 with file:line errors. Warnings (values no customer has, no conditions) keep exit 0."""
    cfg = settings()
    templates = TemplateStore(cfg.templates)
    with user_errors():
        engine = _existing_database(cfg.database_url)
        try:
            rules, lines = check_files(cfg.rules, templates, engine=engine)
            warnings = check_warnings(rules, engine=engine) if rules is not None and not lines else []
        finally:
            if engine is not None:
                engine.dispose()
    for line in lines:
        out.print(line, markup=False, soft_wrap=True)
    if lines or rules is None:
        raise typer.Exit(1)
    for line in warnings:
        out.print(line, markup=False, soft_wrap=True)
    out.print(
        f"OK: {cfg.rules} ({plural(len(rules.campaigns), 'campaign')}, "
        f"{plural(len(rules.surveys), 'survey')}) "
        f"and {plural(len(templates.names()), 'template')} in {cfg.templates}"
        + (f", {plural(len(warnings), 'warning')}" if warnings else ""),
        markup=False,
    )


def _existing_database(url: str) -> Engine | None:
    """An engine on the configured database if it exists; `check` never creates one."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if not database or database == ":memory:" or not Path(database).is_file():
            return None
    return make_engine(url)


# ---------------------------------------------------------------- plan


VERDICT_COLUMNS = [
    ("audience", "match"),
    ("already_sent", "planned before"),
    ("cooldown", "cooldown"),
    ("suppressed", "suppr."),
    ("other_campaign", "other camp."),
    ("capped", "capped"),
    ("held_out", "holdout"),
    ("to_send", "would send"),
]


OutputFormat = Literal["table", "json"]


@app.command()
def plan(
    at: Annotated[str | None, typer.Option(help="Plan as if it were this ISO time.")] = None,
    campaign: Annotated[list[str] | None, typer.Option(help="Only this campaign (repeatable).")] = None,
    show: Annotated[int, typer.Option(help="List N customers who would get each campaign.")] = 0,
    format: Annotated[OutputFormat, typer.Option("--format", help="Output format.")] = "table",
) -> None:
    """Dry run: what a pass would do now, per campaign. Writes nothing."""
    rt = build_runtime()
    moment = parse_moment(at)
    with user_errors():
        for campaign_id in campaign or []:
            rt.rules.campaign(campaign_id)
    with Session(rt.engine) as session:
        result = Planner(rt.rules, now=moment).run(session, campaign_ids=campaign, sample=show)
        session.rollback()  # the pass ran for real inside this transaction; keep none of it
    warnings = check_warnings(rt.rules, engine=rt.engine)
    notes: dict[str, list[str]] = {}
    for p in result.plans:
        found = notes.setdefault(p.campaign_id, [])
        if not p.due:
            found.append(p.not_due_reason or "not due")
        if p.blast_guard:
            found.append(f"HELD by blast guard: {p.blast_guard}; {p.held} deliveries would wait for "
                         f"`retention approve {p.campaign_id}`")
        if p.earlier:
            listed = ", ".join(f"{count} {status}" for status, count in sorted(p.earlier.items()))
            found.append(f"planned before: {listed}")
        if p.over_max_per_pass:
            found.append(f"{p.over_max_per_pass} over max_per_pass, next pass")
    if format == "json":
        _print_json({
            "at": moment.isoformat(), "dry_run": True, "warnings": warnings,
            "campaigns": [{
                "campaign": p.campaign_id, "due": p.due, "audience": p.audience, "to_send": p.to_send,
                "counts": dict(p.counts), "over_max_per_pass": p.over_max_per_pass,
                "held_by_blast_guard": p.blast_guard, "held": p.held, "planned_before": dict(p.earlier),
                "notes": notes[p.campaign_id],
                "sample": [{"customer_id": cid, "email": email} for cid, email in p.sample],
            } for p in result.plans],
        })
        return
    table = FittedTable(
        f"Plan at {moment.isoformat(timespec='seconds')} (dry run)",
        ["campaign", *(title for _, title in VERDICT_COLUMNS)],
        justify=["left", *(["right"] * len(VERDICT_COLUMNS))],
    )
    for p in result.plans:
        values = {"audience": p.audience, "to_send": p.to_send, **p.counts}
        table.add_row(p.campaign_id, *(str(values[key]) for key, _ in VERDICT_COLUMNS))
    out.print(table)
    for campaign_id, found in notes.items():
        for note in found:
            out.print(f"{campaign_id}: {note}", markup=False, soft_wrap=True)
    for line in warnings:
        out.print(line, markup=False, soft_wrap=True)
    for p in result.plans:
        if p.sample:
            out.print(f"{p.campaign_id}: " + ", ".join(f"{cid} <{email}>" for cid, email in p.sample),
                      markup=False, soft_wrap=True)


def _print_json(data: object) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2, default=str) + "\n")


@app.command()
def explain(
    customer: Annotated[str, typer.Argument(help="Customer id (your own id).")],
    at: Annotated[str | None, typer.Option(help="Explain as if it were this ISO time.")] = None,
    format: Annotated[OutputFormat, typer.Option("--format", help="Output format.")] = "table",
) -> None:
    """Why this customer would or would not get each campaign now, and their past deliveries."""
    from campaigns.planning.explain import explain as explain_customer
    from campaigns.planning.explain import past_deliveries

    rt = build_runtime()
    moment = parse_moment(at)
    with Session(rt.engine) as session:
        row = session.exec(select(Customer).where(col(Customer.external_id) == customer)).first()
        if row is None:
            fail(f"no customer with id {customer!r}")
        verdicts = explain_customer(session, rt.rules, row, now=moment)
        session.rollback()  # the narrowed pass ran for real; keep none of it
        history = past_deliveries(session, row)
    past_rows = [
        {"campaign": d.campaign_id, "status": d.status, "planned": d.created_at, "sent": d.sent_at,
         "converted": d.converted_at, "error": d.last_error}
        for d in history
    ]
    if format == "json":
        _print_json({
            "at": moment.isoformat(),
            "customer": {"id": row.external_id, "email": row.email, "status": row.status, "plan": row.plan,
                         "last_active_at": row.last_active_at},
            "campaigns": [{"campaign": v.campaign_id, "verdict": v.verdict, "reason": v.reason}
                          for v in verdicts],
            "past_deliveries": past_rows,
        })
        return
    out.print(
        f"{row.external_id} <{row.email}> {row.status}, plan {row.plan or '-'}, "
        + (f"last active {row.last_active_at:%Y-%m-%d}" if row.last_active_at else "never active"),
        markup=False, soft_wrap=True,
    )
    table = FittedTable(f"Campaigns at {moment.isoformat(timespec='seconds')}",
                        ["campaign", "verdict", "why"])
    for verdict in verdicts:
        table.add_row(verdict.campaign_id, verdict.verdict, verdict.reason)
    out.print(table)
    if not history:
        out.print("no past deliveries")
        return
    past = FittedTable("Past deliveries", ["campaign", "status", "planned", "sent", "converted", "error"])
    for d in past_rows:
        past.add_row(
            str(d["campaign"]), str(d["status"]), f"{d['planned']:%Y-%m-%d %H:%M}",
            f"{d['sent']:%Y-%m-%d %H:%M}" if d["sent"] else "",
            f"{d['converted']:%Y-%m-%d}" if d["converted"] else "", str(d["error"] or ""),
        )
    out.print(past)


# ---------------------------------------------------------------- preview / send-test


def _compose(
    rt: Runtime, session: Session, campaign_id: str, customer_id: str | None, variant: str | None = None
) -> EmailMessage:
    with user_errors():
        campaign = rt.rules.campaign(campaign_id)
        customer = previews.find_customer(session, customer_id)
        template = previews.variant_template(campaign, variant)
        return previews.compose(rt.sender(), campaign, customer, template=template, now=utcnow())


@app.command()
def preview(
    campaign: Annotated[
        str | None, typer.Argument(help="Campaign id from rules.yaml (not with --serve).")
    ] = None,
    customer: Annotated[str | None, typer.Option(help="Customer id (default: a sample customer).")] = None,
    html: Annotated[Path | None, typer.Option(help="Write the HTML part to this file.")] = None,
    variant: Annotated[str | None, typer.Option(help="A/B variant to render (default: the first).")] = None,
    serve: Annotated[bool, typer.Option(
        "--serve", help="Serve a live preview of every campaign that refreshes on each saved edit.")] = False,
    host: Annotated[str, typer.Option(help="With --serve: address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="With --serve: port to listen on.")] = 8001,
) -> None:
    """Render one message as a customer would receive it (--serve: every campaign, live)."""
    if serve:
        _serve_preview(host, port)
        return
    if campaign is None:
        fail("name the campaign to preview (retention preview CAMPAIGN), or use --serve for all of them")
    rt = build_runtime()
    with Session(rt.engine) as session:
        message = _compose(rt, session, campaign, customer, variant)
    for header in ("From", "To", "Subject", "List-Unsubscribe", "List-Unsubscribe-Post"):
        out.print(f"[bold]{header}:[/bold] {message[header]}", soft_wrap=True)
    text = message.get_body(("plain",))
    out.print()
    out.print(text.get_content() if text else "", markup=False, soft_wrap=True)
    html_part = message.get_body(("html",))
    if html is not None:
        if html_part is None:
            fail(f"campaign {campaign!r} has no HTML part (add body.html.j2 to its template)")
        write_file(html, html_part.get_content(), option="--html")
        out.print(f"HTML part written to {html}")


def _serve_preview(host: str, port: int) -> None:
    import socket

    import uvicorn

    from worker.preview_server import FileWatch, create_preview_app

    rt = build_runtime()
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        fail(f"cannot listen on {host}:{port} ({exc.strerror}): choose another --port or stop what uses it")
    watch = FileWatch(rt.settings.rules, rt.settings.templates, on_change=rt.templates.forget)
    watch.start()
    out.print(f"preview of {len(rt.rules.campaigns)} campaigns on http://{host}:{port}/ "
              f"(watching {rt.settings.rules} and {rt.settings.templates}; Ctrl-C stops)",
              markup=False, soft_wrap=True)
    logging.getLogger("watchfiles").setLevel(logging.WARNING)  # one line per save is ours
    # Open pages hold an event stream forever: give them a second, then close them.
    server = uvicorn.Server(uvicorn.Config(create_preview_app(rt, watch), log_level="warning",
                                           timeout_graceful_shutdown=1))
    try:
        server.run(sockets=[sock])
    finally:
        watch.stop()
        rt.close()


@app.command("send-test")
def send_test(
    campaign: Annotated[str, typer.Argument(help="Campaign id from rules.yaml.")],
    to: Annotated[str, typer.Option(help="Address that receives the test.")],
    customer: Annotated[str | None, typer.Option(help="Render for this customer id.")] = None,
) -> None:
    """Send one real test email through the configured transport (not recorded)."""
    rt = build_runtime()
    with Session(rt.engine) as session:
        message = _compose(rt, session, campaign, customer)
    with user_errors():
        reply = rt.transport.send(previews.as_test(message, to))
    rt.close()
    out.print(f"sent a test of {campaign} to {to}: {reply}", markup=False)


# ---------------------------------------------------------------- approve / db


@app.command()
def approve(campaign: Annotated[str, typer.Argument(
    help="Campaign held by the blast guard, or paused (policy rejections, complaint rate).")]) -> None:
    """Release a campaign held by the blast guard, or resume a paused one."""
    rt = build_runtime()
    with user_errors():
        rt.rules.campaign(campaign)
    with Session(rt.engine) as session:
        paused = paused_reason(session, campaign)
        released = approve_campaign(session, campaign, now=utcnow())
        session.commit()
    if paused:
        out.print(f"{campaign}: resumed (it was paused: {paused})", markup=False)
    out.print(
        f"{campaign}: released {plural(released, 'held delivery')}; they go out with the next pass",
        markup=False,
    )


