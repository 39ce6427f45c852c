"""`retention report` and `retention customers --at-risk` as Rich tables, JSON and HTML.

JSON keys are a contract (docs/reports.md lists them; ``report_version`` changes
when one is renamed or removed).  The HTML report is one self-contained file: inline
CSS and hand-drawn inline SVG charts, no script and no external resource, so it
reads the same offline, in a mail attachment or from a file share.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from campaigns.health import AtRiskReport
from campaigns.reports import Funnel, PeriodChurn, Report
from campaigns.reports.lift import CONFIDENCE, MIN_GROUP, MIN_OUTCOMES, NOT_ENOUGH_DATA

REPORT_VERSION = 1
AT_RISK_VERSION = 1
ACTIVE_COLOR, PASSIVE_COLOR, ACCENT = "#D55E00", "#56B4E9", "#0072B2"


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}%"


# ---------------------------------------------------------------- JSON


def _period_json(p: PeriodChurn) -> dict[str, Any]:
    return {
        "label": p.label, "start": _iso(p.start), "end": _iso(p.end), "partial": p.partial,
        "customers_at_start": p.customers_at_start, "acquired": p.acquired, "lost": p.lost,
        "lost_active": p.lost_active, "lost_passive": p.lost_passive, "lost_new": p.lost_new,
        "customers_at_end": p.customers_at_end, "churn_rate": _round(p.churn_rate),
        "active_churn_rate": _round(p.active_churn_rate), "passive_churn_rate": _round(p.passive_churn_rate),
        "retention_rate": _round(p.retention_rate), "lost_per_acquired": _round(p.lost_per_acquired, 3),
    }


def _funnel_json(f: Funnel) -> dict[str, Any]:
    lift = f.lift
    return {
        "campaign": f.campaign, "variant": f.variant, "planned": f.planned, "held_out": f.held_out,
        "pending": f.pending, "sent": f.sent, "failed": f.failed, "bounced": f.bounced,
        "suppressed": f.suppressed, "skipped": f.skipped, "clicked": f.clicked, "surveyed": f.surveyed,
        "unsubscribed": f.unsubscribed, "converted": f.converted, "converted_held_out": f.converted_held_out,
        "conversion_rate": _round(lift.rate), "conversion_rate_held_out": _round(lift.rate_held_out),
        "lift": {
            "difference": _round(lift.difference), "ci_low": _round(lift.ci_low),
            "ci_high": _round(lift.ci_high), "relative": _round(lift.relative),
            "confidence": CONFIDENCE, "verdict": lift.verdict, "reason": lift.reason,
        },
    }


def report_json(report: Report) -> dict[str, Any]:
    """The report as plain JSON types; keys documented in docs/reports.md."""
    totals = report.totals
    return {
        "report_version": REPORT_VERSION,
        "as_of": _iso(report.as_of),
        "period": report.period,
        "from": _iso(report.start),
        "to": _iso(report.end),
        "passive_churn_after_days": report.passive_churn_after.total_seconds() / 86400,
        "totals": {
            "customers_at_start": totals.customers_at_start, "acquired": totals.acquired,
            "lost": totals.lost, "lost_active": totals.lost_active, "lost_passive": totals.lost_passive,
            "churn_rate": _round(totals.churn_rate), "lost_share": _round(totals.lost_share),
            "average_churn_rate": _round(report.average_churn_rate),
        },
        "periods": [_period_json(p) for p in report.periods],
        "seasonality": [
            {"label": p.label, "start": _iso(p.start), "partial": p.partial,
             "customers_at_start": p.customers_at_start, "lost": p.lost, "churn_rate": _round(p.churn_rate)}
            for p in report.seasonality
        ],
        "tenure_at_churn": {
            "mean_days": _round(report.tenure.mean_days, 1),
            "buckets": [
                {"label": b.label, "min_days": b.min_days, "max_days": b.max_days, "lost": b.lost}
                for b in report.tenure.buckets
            ],
        },
        "breakdown": {
            "by": report.breakdown.by,
            "groups": [
                {"value": g.value, "customers_at_start": g.customers_at_start, "acquired": g.acquired,
                 "lost": g.lost, "lost_active": g.lost_active, "lost_passive": g.lost_passive,
                 "churn_rate": _round(g.churn_rate), "lost_share": _round(g.lost_share)}
                for g in report.breakdown.groups
            ],
        },
        "cohorts": [
            {"label": c.label, "start": _iso(c.start), "size": c.size,
             "retention": [_round(r) for r in c.retention]}
            for c in report.cohorts
        ],
        "campaigns": [_funnel_json(f) for f in report.campaigns],
        "surveys": [
            {"survey": q.survey, "question": q.question, "ask": q.ask, "kind": q.kind, "answered": q.answered,
             "choices": [{"choice": c.choice, "count": c.count, "share": _round(c.share)} for c in q.choices],
             "texts": [{"answer": t.answer, "at": _iso(t.at)} for t in q.texts]}
            for q in report.surveys
        ],
    }


def at_risk_json(result: AtRiskReport) -> dict[str, Any]:
    return {
        "at_risk_version": AT_RISK_VERSION,
        "as_of": _iso(result.as_of),
        "considered": result.considered,
        "customers": [
            {"id": c.customer_id, "email": c.email, "plan": c.plan, "score": _round(c.score, 1),
             "days_inactive": _round(c.days_inactive, 1), "cadence_days": c.cadence_days,
             "overdue_ratio": _round(c.overdue_ratio), "events_recent": c.events_recent,
             "events_previous": c.events_previous, "days_to_lapse": _round(c.days_to_lapse, 1),
             "why": list(c.why)}
            for c in result.customers
        ],
    }


def dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False, indent=2) + "\n"


# ---------------------------------------------------------------- Rich tables


def _table(
    title: str, columns: Sequence[str], rows: Iterable[Sequence[str]], caption: str = "", *, text: int = 1
) -> Table:
    """A table whose first ``text`` columns are left-aligned text and the rest right-aligned numbers."""
    table = Table(title=title, caption=caption or None, title_justify="left", caption_justify="left")
    for i, name in enumerate(columns):
        table.add_column(name, justify="left" if i < text else "right", no_wrap=i == 0)
    for row in rows:
        table.add_row(*row)
    return table


PERIOD_COLUMNS = ("period", "at start", "acquired", "lost", "cancelled", "lapsed", "churn", "retention",
                  "lost/acq.")
GROUP_COLUMNS = ("at start", "acquired", "lost", "cancelled", "lapsed", "churn", "lost share")
CAMPAIGN_COLUMNS = ("campaign", "planned", "held out", "sent", "failed", "bounced", "clicked", "surveyed",
                    "unsub.", "converted", "conv. sent", "conv. held out", f"lift ({CONFIDENCE:.0%} CI)",
                    "verdict")


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
        caption="* still running: numbers so far. Churn = lost during the period / customers at its start.",
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


def _campaign_table(funnels: Sequence[Funnel]) -> Table:
    return _table(
        "Campaigns", CAMPAIGN_COLUMNS, _campaign_rows(funnels, reasons=False),
        caption=(f"Lift = conversion rate of sent minus held-out, in percentage points. "
                 f"{NOT_ENOUGH_DATA}: a group under {MIN_GROUP}, or under {MIN_OUTCOMES} "
                 "conversions or non-conversions."),
    )


def at_risk_table(result: AtRiskReport) -> Table:
    return _table(
        f"At risk: {len(result.customers)} of {result.considered} active customers, lowest health first",
        ["customer", "email", "plan", "why", "score", "inactive", "usual gap", "30d / prev 30d"],
        ([c.customer_id, c.email, c.plan or "", "; ".join(c.why), f"{c.score:.0f}", f"{c.days_inactive:.0f}d",
          "-" if c.cadence_days is None else f"{c.cadence_days:g}d",
          f"{c.events_recent} / {c.events_previous}"] for c in result.customers),
        caption="score: 0 = about to be lost, 100 = healthy (docs/reports.md)", text=4,
    )


# ---------------------------------------------------------------- SVG charts

W, H = 720, 260  # chart size in SVG user units; the SVG scales to the page width
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 14, 46


def _nice_max(value: float) -> float:
    """A round axis maximum at or above ``value`` whose quarters (the gridlines) are round too."""
    if value <= 0:
        return 1.0
    quarter = value / 4
    magnitude = 10 ** math.floor(math.log10(quarter))
    steps = (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10)
    return 4 * next(s * magnitude for s in steps if s * magnitude >= quarter * 0.999999)


def _fmt(value: float, unit: str) -> str:
    value = round(value, 6)
    if abs(value) >= 100 or value == int(value):
        return f"{value:,.0f}" + unit
    return f"{value:.3g}" + unit


def _frame(chart: str, title: str, top: float, unit: str, labels: Sequence[str], body: str) -> str:
    """The SVG around a chart body: y gridlines with values, x labels, an accessible title."""
    plot_h = H - TOP - BOTTOM
    parts = [
        f'<svg class="chart" data-chart="{chart}" viewBox="0 0 {W} {H}" role="img" '
        f'aria-label="{html.escape(title)}">',
        f"<title>{html.escape(title)}</title>",
    ]
    for i in range(5):
        value = top * i / 4
        y = TOP + plot_h - plot_h * i / 4
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(f'<text class="axis" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
                     f"{html.escape(_fmt(value, unit))}</text>")
    step = (W - LEFT - RIGHT) / max(len(labels), 1)
    every = max(1, len(labels) // 16)  # keep x labels readable on long ranges
    for i, label in enumerate(labels):
        if i % every == 0:
            x = LEFT + step * (i + 0.5)
            parts.append(f'<text class="axis" x="{x:.1f}" y="{H - BOTTOM + 16}" text-anchor="middle">'
                         f"{html.escape(label)}</text>")
    parts.append(body)
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(chart: str, title: str, labels: Sequence[str],
              series: Sequence[tuple[str, Sequence[float | None], str]], unit: str = "") -> str:
    """Stacked vertical bars: one ``rect.bar`` per label and series (a missing value draws 0)."""
    totals = [sum(values[i] or 0 for _, values, _ in series) for i in range(len(labels))]
    top = _nice_max(max(totals, default=0))
    plot_h = H - TOP - BOTTOM
    step = (W - LEFT - RIGHT) / max(len(labels), 1)
    width = step * 0.7
    body = []
    for i, label in enumerate(labels):
        base = float(TOP + plot_h)
        for name, values, color in series:
            value = values[i] or 0.0
            height = plot_h * value / top
            base -= height
            x = LEFT + step * i + (step - width) / 2
            body.append(
                f'<rect class="bar" data-series="{html.escape(name)}" data-label="{html.escape(label)}" '
                f'data-value="{value:g}" x="{x:.1f}" y="{base:.1f}" width="{width:.1f}" '
                f'height="{height:.1f}" fill="{color}"><title>{html.escape(label)} {html.escape(name)}: '
                f"{html.escape(_fmt(value, unit))}</title></rect>"
            )
    return _frame(chart, title, top, unit, labels, "".join(body))


def line_chart(chart: str, title: str, labels: Sequence[str], values: Sequence[float | None],
               unit: str = "", color: str = ACCENT) -> str:
    """A line through one ``circle.point`` per known value; gaps where a value is unknown."""
    top = _nice_max(max((v for v in values if v is not None), default=0))
    plot_h = H - TOP - BOTTOM
    step = (W - LEFT - RIGHT) / max(len(labels), 1)
    points = [
        (LEFT + step * (i + 0.5), TOP + plot_h - plot_h * v / top, labels[i], v)
        for i, v in enumerate(values) if v is not None
    ]
    path = " ".join(f"{'M' if n == 0 else 'L'}{x:.1f},{y:.1f}" for n, (x, y, _, _) in enumerate(points))
    body = [f'<path class="line" d="{path}" fill="none" stroke="{color}" stroke-width="2"/>']
    if not points:
        body = []
    body += [
        f'<circle class="point" data-label="{html.escape(label)}" data-value="{value:g}" cx="{x:.1f}" '
        f'cy="{y:.1f}" r="4" fill="{color}"><title>{html.escape(label)}: '
        f"{html.escape(_fmt(value, unit))}</title></circle>"
        for x, y, label, value in points
    ]
    return _frame(chart, title, top, unit, labels, "".join(body))


def interval_chart(chart: str, title: str, rows: Sequence[tuple[str, float, float, float]]) -> str:
    """Horizontal intervals (label, low, estimate, high) around a zero line: one ``circle.point`` each."""
    row_h, left, width = 30, 220, W - 220 - RIGHT
    height = TOP + row_h * len(rows) + 30
    bound = max((max(abs(lo), abs(hi)) for _, lo, _, hi in rows), default=1) or 1
    bound = _nice_max(bound)

    def x(value: float) -> float:
        return left + width * (value + bound) / (2 * bound)

    parts = [
        f'<svg class="chart" data-chart="{chart}" viewBox="0 0 {W} {height}" role="img" '
        f'aria-label="{html.escape(title)}">',
        f"<title>{html.escape(title)}</title>",
        f'<line class="zero" x1="{x(0):.1f}" x2="{x(0):.1f}" y1="{TOP - 4}" y2="{height - 24}"/>',
    ]
    for tick in (-bound, -bound / 2, 0, bound / 2, bound):
        parts.append(f'<text class="axis" x="{x(tick):.1f}" y="{height - 8}" text-anchor="middle">'
                     f"{html.escape(_fmt(tick, ' pp'))}</text>")
    for i, (label, low, estimate, high) in enumerate(rows):
        y = TOP + row_h * i + row_h / 2
        color = ACCENT if low > 0 else (ACTIVE_COLOR if high < 0 else "#777")
        parts.append(
            f'<text class="label" x="{left - 8}" y="{y + 4:.1f}" text-anchor="end">'
            f"{html.escape(label)}</text>"
            f'<line class="whisker" x1="{x(low):.1f}" x2="{x(high):.1f}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="{color}" stroke-width="2"/>'
            f'<circle class="point" data-label="{html.escape(label)}" data-value="{estimate:g}" '
            f'cx="{x(estimate):.1f}" cy="{y:.1f}" r="5" fill="{color}"><title>{html.escape(label)}: '
            f"{estimate:+.1f} pp [{low:+.1f}, {high:+.1f}]</title></circle>"
        )
    parts.append("</svg>")
    return "".join(parts)


def hbar_chart(chart: str, title: str, rows: Sequence[tuple[str, float]], unit: str = "%") -> str:
    """Horizontal bars (label, value) from 0 to the largest value: one ``rect.bar`` each."""
    row_h, left, width = 26, 180, W - 180 - RIGHT - 50
    height = TOP + row_h * len(rows) + 8
    top = max((v for _, v in rows), default=0.0) or 1.0
    parts = [
        f'<svg class="chart" data-chart="{chart}" viewBox="0 0 {W} {height}" role="img" '
        f'aria-label="{html.escape(title)}">',
        f"<title>{html.escape(title)}</title>",
    ]
    for i, (label, value) in enumerate(rows):
        y = TOP + row_h * i
        length = width * value / top
        parts.append(
            f'<text class="label" x="{left - 8}" y="{y + 15}" text-anchor="end">{html.escape(label)}</text>'
            f'<rect class="bar" data-label="{html.escape(label)}" data-value="{value:g}" x="{left}" '
            f'y="{y + 3}" width="{length:.1f}" height="{row_h - 8}" fill="{ACCENT}"><title>'
            f"{html.escape(label)}: {html.escape(_fmt(value, unit))}</title></rect>"
            f'<text class="value" x="{left + length + 6:.1f}" y="{y + 15}">'
            f"{html.escape(_fmt(round(value, 1), unit))}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


# ---------------------------------------------------------------- HTML


STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;margin:0;
background:#f6f7f9}
main{max-width:980px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:0 0 4px} h2{font-size:19px;margin:32px 0 8px} h3{font-size:16px;margin:20px 0 6px}
.muted{color:#666} section{background:#fff;border-radius:8px;padding:16px 20px;margin:16px 0;
box-shadow:0 1px 2px rgba(0,0,0,.08)}
.cards{display:flex;gap:12px;flex-wrap:wrap} .card{flex:1;min-width:140px;background:#fff;border-radius:8px;
padding:12px 16px;box-shadow:0 1px 2px rgba(0,0,0,.08)} .card b{display:block;font-size:24px}
table{border-collapse:collapse;width:100%;font-size:13px;margin:8px 0}
th,td{padding:4px 8px;border-bottom:1px solid #e4e6ea;text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left} td.text{white-space:normal;text-align:left;min-width:260px}
svg.chart{width:100%;height:auto;display:block} svg .grid{stroke:#e4e6ea} svg .zero{stroke:#999}
svg text{font-size:11px;fill:#555} svg .label{font-size:12px;fill:#222}
.legend span{display:inline-block;width:12px;height:12px;border-radius:2px;margin:0 4px 0 12px;
vertical-align:-1px} .scroll{overflow-x:auto}
"""


def _html_table(columns: Sequence[str], rows: Iterable[Sequence[str]], text_columns: int = 0) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(
            f'<td class="text">{html.escape(v)}</td>' if i >= len(row) - text_columns else
            f"<td>{html.escape(v)}</td>" for i, v in enumerate(row)
        ) + "</tr>"
        for row in rows
    )
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _legend(*items: tuple[str, str]) -> str:
    return '<p class="legend muted">' + "".join(
        f'<span style="background:{color}"></span>{html.escape(name)}' for name, color in items
    ) + "</p>"


def _cohort_cell(value: float | None) -> str:
    if value is None:
        return "<td></td>"
    # White at 50 % or less, deepening blue towards 100 %: the eye finds the leaky cohorts.
    strength = max(0.0, min(1.0, (value - 50) / 50))
    light = 97 - 52 * strength
    color = "#fff" if light < 60 else "#222"
    return f'<td style="background:hsl(205,70%,{light:.0f}%);color:{color}">{value:.0f}%</td>'


def report_html(report: Report) -> str:
    """The whole report as one self-contained HTML page with inline SVG charts."""
    t = report.totals
    labels = [p.label for p in report.periods]
    e = html.escape
    sections = [
        f"<h1>Retention report</h1><p class='muted'>{e(report.start.date().isoformat())} to "
        f"{e(report.end.date().isoformat())} by {e(report.period)}, as of "
        f"{report.as_of:%Y-%m-%d %H:%M} UTC. Lapsed = no activity for "
        f"{report.passive_churn_after.total_seconds() / 86400:g} days.</p>",
        '<div class="cards">' + "".join(
            f'<div class="card"><b>{e(value)}</b>{e(name)}</div>' for name, value in (
                ("customers at the start", str(t.customers_at_start)), ("acquired", str(t.acquired)),
                ("lost", str(t.lost)), ("cancelled", str(t.lost_active)), ("lapsed", str(t.lost_passive)),
                (f"average churn per {report.period}", _pct(report.average_churn_rate)),
            )
        ) + "</div>",
        "<section><h2>Churn per " + e(report.period) + "</h2>"
        + bar_chart("churn", f"Churn rate per {report.period}", labels, [
            ("cancelled", [p.active_churn_rate for p in report.periods], ACTIVE_COLOR),
            ("lapsed", [p.passive_churn_rate for p in report.periods], PASSIVE_COLOR),
        ], unit="%")
        + _legend(("cancelled (active churn)", ACTIVE_COLOR), ("lapsed (passive churn)", PASSIVE_COLOR))
        + _html_table(PERIOD_COLUMNS, _period_rows(report.periods, " (so far)"))
        + "<p class='muted'>Churn = customers lost during the period / customers at its start &times; 100."
          "</p></section>",
        "<section><h2>Seasonality: churn per month</h2>"
        + line_chart("seasonality", "Churn rate per month", [p.label for p in report.seasonality],
                     [p.churn_rate for p in report.seasonality], unit="%") + "</section>",
        "<section><h2>Tenure at churn</h2>"
        + bar_chart("tenure", "Customers lost by tenure", [b.label for b in report.tenure.buckets],
                    [("lost", [float(b.lost) for b in report.tenure.buckets], ACCENT)])
        + (f"<p class='muted'>Mean tenure of customers lost: {report.tenure.mean_days:.0f} days.</p>"
           if report.tenure.mean_days is not None else "<p class='muted'>Nobody was lost in this range.</p>")
        + "</section>",
        f"<section><h2>Churn by {e(report.breakdown.by)}</h2>"
        + hbar_chart("breakdown", f"Share of customers lost by {report.breakdown.by}",
                     [(g.value, g.lost_share) for g in report.breakdown.groups if g.lost_share is not None])
        + _html_table([report.breakdown.by, *GROUP_COLUMNS], _group_rows(report))
        + f"<p class='muted'>{html.escape(GROUP_CAPTION.capitalize())}.</p>"
        + "</section>",
        _cohorts_html(report),
        _campaigns_html(report),
        _surveys_html(report),
    ]
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>Retention report {e(report.start.date().isoformat())} to "
        f"{e(report.end.date().isoformat())}</title><style>{STYLE}</style></head><body><main>"
        + "".join(sections) + "</main></body></html>\n"
    )


def _cohorts_html(report: Report) -> str:
    width = max((len(c.retention) for c in report.cohorts), default=0)
    columns = ["signup month", "size", *(f"m{k}" for k in range(width))]
    head = "".join(f"<th>{html.escape(h)}</th>" for h in columns)
    rows = "".join(
        f"<tr><td>{html.escape(c.label)}</td><td>{c.size}</td>"
        + "".join(_cohort_cell(r) for r in c.retention) + "<td></td>" * (width - len(c.retention)) + "</tr>"
        for c in report.cohorts
    )
    return (
        "<section><h2>Cohorts</h2><p class='muted'>% of each signup month's customers still customers "
        "at the end of month k after signup (m0 = the signup month).</p>"
        f'<div class="scroll"><table class="cohorts"><thead><tr>{head}</tr></thead>'
        f"<tbody>{rows}</tbody></table></div></section>"
    )


def _campaigns_html(report: Report) -> str:
    if not report.campaigns:
        return "<section><h2>Campaigns</h2><p class='muted'>No deliveries in this range.</p></section>"
    measured = [
        (f.campaign if f.variant is None else f"{f.campaign} / {f.variant}",
         f.lift.ci_low, f.lift.difference, f.lift.ci_high)
        for f in report.campaigns
    ]
    intervals = [(label, lo, d, hi) for label, lo, d, hi in measured
                 if lo is not None and d is not None and hi is not None]
    chart = interval_chart("lift", "Lift of conversion over the holdout group (95% CI)", intervals) \
        if intervals else "<p class='muted'>No campaign has enough data for a lift yet.</p>"
    table = _html_table(CAMPAIGN_COLUMNS, _campaign_rows(report.campaigns, reasons=True), text_columns=1)
    return (
        "<section><h2>Campaigns</h2>" + chart + table
        + f"<p class='muted'>Lift = conversion rate of sent minus held-out deliveries, in percentage points, "
          f"with a {CONFIDENCE:.0%} unpooled Wald interval. {NOT_ENOUGH_DATA.capitalize()} when a group has "
          f"fewer than {MIN_GROUP} deliveries, or fewer than {MIN_OUTCOMES} conversions or non-conversions."
          "</p></section>"
    )


def _surveys_html(report: Report) -> str:
    parts = ["<section><h2>Why they leave</h2>"]
    if not report.surveys:
        parts.append("<p class='muted'>No survey answers in this range.</p>")
    for i, q in enumerate(report.surveys):
        parts.append(f"<h3>{html.escape(q.ask or q.question)} <span class='muted'>({html.escape(q.survey)}"
                     f" / {html.escape(q.question)}, {q.answered} answers)</span></h3>")
        if q.kind == "text":
            parts.append(_html_table(["answer", "at"], ([a.answer, f"{a.at:%Y-%m-%d}"] for a in q.texts)))
            if q.answered > len(q.texts):
                parts.append(f"<p class='muted'>Newest {len(q.texts)} of {q.answered} shown.</p>")
        else:
            shares = [(c.choice, c.share) for c in q.choices]
            parts.append(hbar_chart(f"survey-{i}", q.ask or q.question, shares))
            parts.append(_html_table(["choice", "answers", "share"],
                                     ([c.choice, str(c.count), _pct(c.share)] for c in q.choices)))
    parts.append("</section>")
    return "".join(parts)
