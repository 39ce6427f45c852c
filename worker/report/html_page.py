"""The HTML report: one self-contained file (inline CSS and SVG), readable offline."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence

from campaigns.reports import Report
from campaigns.reports.lift import CONFIDENCE, MIN_GROUP, NOT_ENOUGH_DATA
from worker.report.formatting import (
    ACCENT,
    ACTIVE_COLOR,
    PASSIVE_COLOR,
    _pct,
)
from worker.report.svg import bar_chart, hbar_chart, interval_chart, line_chart
from worker.report.tables import (
    CAMPAIGN_COLUMNS,
    DELIVERABILITY_COLUMNS,
    GROUP_CAPTION,
    GROUP_COLUMNS,
    PERIOD_COLUMNS,
    _campaign_rows,
    _group_rows,
    _period_rows,
    deliverability_caption,
    deliverability_rows,
)

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
        _deliverability_html(report),
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
          f"with a {CONFIDENCE:.0%} Newcombe hybrid score interval. {NOT_ENOUGH_DATA.capitalize()} when a "
          f"group has fewer than {MIN_GROUP} deliveries."
          "</p></section>"
    )


def _deliverability_html(report: Report) -> str:
    d = report.deliverability
    return (
        "<section><h2>Deliverability: bounces and complaints</h2>"
        + _html_table(["campaign", *DELIVERABILITY_COLUMNS], deliverability_rows((*d.campaigns, d.totals)))
        + _html_table([report.period, *DELIVERABILITY_COLUMNS], deliverability_rows(d.periods))
        + f"<p class='muted'>{html.escape(deliverability_caption(d))}</p></section>"
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
