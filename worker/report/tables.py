"""Reports as Rich tables for the terminal."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Group
from rich.text import Text

from campaigns.reports import Deliverability, Funnel, PeriodChurn, Rates, Report
from campaigns.reports.at_risk import AtRiskReport
from campaigns.reports.lift import CONFIDENCE, MIN_GROUP, NOT_ENOUGH_DATA
from worker.report.formatting import (
    _pct,
)
from worker.report.layout import FittedTable


def _table(
    title: str, columns: Sequence[str], rows: Iterable[Sequence[str]], caption: str = "", *, text: int = 1
) -> FittedTable:
    """A table whose first ``text`` columns are left-aligned text and the rest right-aligned numbers;
    one record per row where the grid would not fit the width."""
    justify = ["left" if i < text else "right" for i in range(len(columns))]
    return FittedTable(title, columns, rows, caption=caption, justify=justify)


PERIOD_COLUMNS = ("period", "at start", "acquired", "lost", "cancelled", "lapsed", "churn", "retention",
                  "lost/acq.")
GROUP_COLUMNS = ("at start", "acquired", "lost", "cancelled", "lapsed", "churn", "lost share")
CAMPAIGN_COLUMNS = ("campaign", "planned", "held out", "sent", "failed", "bounced", "clicked", "surveyed",
                    "unsub.", "converted", "conv. sent", "conv. held out", f"lift ({CONFIDENCE:.0%} CI)",
                    "verdict")


DELIVERABILITY_COLUMNS = ("sent", "hard bounces", "hard %", "soft bounces", "complaints", "complaint %",
                          "over the thresholds")


def deliverability_rows(rates: Sequence[Rates]) -> list[list[str]]:
    return [
        [r.label, str(r.sent), str(r.hard_bounces), _pct(r.hard_bounce_rate, 2), str(r.soft_bounces),
         str(r.complaints), _pct(r.complaint_rate, 2),
         "; ".join((*r.flags, *((f"PAUSED: {r.paused}",) if r.paused else ())))]
        for r in rates
    ]


def deliverability_caption(d: Deliverability) -> str:
    return (f"Per email sent in the range (bounces and complaints about those emails). Flagged: complaints "
            f"over {d.thresholds.complaint_rate:.1%} (Gmail's and Yahoo's limit), hard bounces over "
            f"{d.thresholds.hard_bounce_rate:.0%}.")


GROUP_CAPTION = ("churn = lost in the range / customers at its start; lost share = lost / (at start + "
                 "acquired), fair between groups that grew at different speeds")


def _period_rows(periods: Sequence[PeriodChurn], running: str) -> list[list[str]]:
    return [
        [p.label + (running if p.partial else ""), str(p.customers_at_start), str(p.acquired), str(p.lost),
         str(p.lost_active), str(p.lost_passive), _pct(p.churn_rate), _pct(p.retention_rate),
         "-" if p.lost_per_acquired is None else f"{p.lost_per_acquired:.2f}"]
        for p in periods
    ]


def _group_rows(report: Report) -> list[list[str]]:
    return [
        [g.value, str(g.customers_at_start), str(g.acquired), str(g.lost), str(g.lost_active),
         str(g.lost_passive), _pct(g.churn_rate), _pct(g.lost_share)]
        for g in report.breakdown.groups
    ]


def _campaign_rows(funnels: Sequence[Funnel], *, reasons: bool) -> list[list[str]]:
    rows = []
    for f in funnels:
        lift = f.lift
        interval = "-" if lift.difference is None else (
            f"{lift.difference:+.1f} pp [{lift.ci_low or 0:+.1f}, {lift.ci_high or 0:+.1f}]"
        )
        rows.append([
            f.campaign if f.variant is None else f"  {f.campaign} / {f.variant}",
            *(str(v) for v in (f.planned, f.held_out, f.sent, f.failed, f.bounced, f.clicked,
                               f.surveyed, f.unsubscribed, f.converted)),
            _pct(lift.rate), _pct(lift.rate_held_out), interval,
            f"{lift.verdict}: {lift.reason}" if reasons else lift.verdict,
        ])
    return rows


def report_tables(report: Report) -> Group:
    t = report.totals
    parts: list[Any] = [Text(
        f"{report.start.date()} to {report.end.date()} (as of {report.as_of:%Y-%m-%d %H:%M} UTC): "
        f"{t.customers_at_start} customers at the start, {t.acquired} acquired, {t.lost} lost "
        f"({t.lost_active} cancelled, {t.lost_passive} lapsed); churn {_pct(report.average_churn_rate)} "
        f"per {report.period} on average, {_pct(t.churn_rate)} over the whole range"
    )]
    parts.append(_table(
        f"Churn per {report.period}", PERIOD_COLUMNS, _period_rows(report.periods, "*"),
        caption=("* still running: numbers so far. " if any(p.partial for p in report.periods) else "")
        + "Churn = lost during the period / customers at its start.",
    ))
    if report.period != "month":
        parts.append(_table("Churn per month (seasonality)", ["month", "at start", "lost", "churn"], (
            [p.label + ("*" if p.partial else ""), str(p.customers_at_start), str(p.lost), _pct(p.churn_rate)]
            for p in report.seasonality)))
    mean = report.tenure.mean_days
    parts.append(_table(
        "Tenure at churn", ["tenure", "lost"], ([b.label, str(b.lost)] for b in report.tenure.buckets),
        caption=f"mean {mean:.0f} days" if mean is not None else "nobody lost in this range",
    ))
    parts.append(_table(
        f"Churn by {report.breakdown.by} over the range", [report.breakdown.by, *GROUP_COLUMNS],
        _group_rows(report), caption=GROUP_CAPTION,
    ))
    width = max((len(c.retention) for c in report.cohorts), default=0)
    parts.append(_table(
        "Cohorts: % still customers, by signup month x months since signup",
        ["signup month", "size", *(f"m{k}" for k in range(width))],
        ([c.label, str(c.size), *(_pct(r, 0) for r in c.retention), *([""] * (width - len(c.retention)))]
         for c in report.cohorts),
    ))
    parts.append(_campaign_table(report.campaigns))
    d = report.deliverability
    parts.append(_table("Deliverability per campaign", ["campaign", *DELIVERABILITY_COLUMNS],
                        deliverability_rows((*d.campaigns, d.totals)), caption=deliverability_caption(d)))
    parts.append(_table(f"Deliverability per {report.period}", [report.period, *DELIVERABILITY_COLUMNS],
                        deliverability_rows(d.periods)))
    for q in report.surveys:
        title = f"Why they leave: {q.survey} / {q.question}" + (f" - {q.ask}" if q.ask else "")
        if q.kind == "text":
            parts.append(_table(title, ["answer", "at"], ([a.answer, f"{a.at:%Y-%m-%d}"] for a in q.texts),
                                caption=f"{q.answered} answers" + (
                                    f", newest {len(q.texts)} shown" if q.answered > len(q.texts) else "")))
        else:
            parts.append(_table(title, ["choice", "answers", "share"],
                                ([c.choice, str(c.count), _pct(c.share)] for c in q.choices),
                                caption=f"{q.answered} answers"))
    if not report.surveys:
        parts.append(Text("No survey answers in this range."))
    return Group(*parts)


def _campaign_table(funnels: Sequence[Funnel]) -> FittedTable:
    return _table(
        "Campaigns", CAMPAIGN_COLUMNS, _campaign_rows(funnels, reasons=False),
        caption=(f"Lift = conversion rate of sent minus held-out, in percentage points. "
                 f"{CONFIDENCE:.0%} Newcombe score interval; {NOT_ENOUGH_DATA}: a group under {MIN_GROUP}."),
    )


def at_risk_table(result: AtRiskReport) -> FittedTable:
    return _table(
        f"At risk: {len(result.customers)} of {result.considered} active customers, lowest health first",
        ["customer", "email", "plan", "why", "score", "inactive", "usual gap", "recent / before"],
        ([c.customer_id, c.email, c.plan or "", "; ".join(c.why), f"{c.score:.0f}", f"{c.days_inactive:.0f}d",
          "-" if c.cadence_days is None else f"{c.cadence_days:g}d",
          f"{c.events_recent} / {c.events_previous} ({c.trend_window_days:.0f}d each)"]
         for c in result.customers),
        caption="score: 0 = about to be lost, 100 = healthy (docs/reports.md)", text=4,
    )


