"""The HTML report: one self-contained file (inline CSS and SVG), readable offline.

The page is ``templates/report.html.j2`` (autoescaped); this module computes
what it shows.  The SVG charts come from svg.py, which escapes their labels.
"""

from __future__ import annotations

from typing import Any

import jinja2
from markupsafe import Markup

from campaigns.reports import Report
from campaigns.reports.lift import CONFIDENCE, MIN_GROUP, NOT_ENOUGH_DATA
from worker.report.formatting import ACCENT, ACTIVE_COLOR, PASSIVE_COLOR, _pct
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

_environment = jinja2.Environment(
    loader=jinja2.PackageLoader("worker.report", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


def report_html(report: Report) -> str:
    """The whole report as one self-contained HTML page with inline SVG charts."""
    return _environment.get_template("report.html.j2").render(_context(report))


def _context(report: Report) -> dict[str, Any]:
    t = report.totals
    labels = [p.label for p in report.periods]
    cohort_width = max((len(c.retention) for c in report.cohorts), default=0)
    intervals = [
        (f.campaign if f.variant is None else f"{f.campaign} / {f.variant}",
         f.lift.ci_low, f.lift.difference, f.lift.ci_high)
        for f in report.campaigns
        if f.lift.ci_low is not None and f.lift.difference is not None and f.lift.ci_high is not None
    ]
    charts = {
        "churn": bar_chart("churn", f"Churn rate per {report.period}", labels, [
            ("cancelled", [p.active_churn_rate for p in report.periods], ACTIVE_COLOR),
            ("lapsed", [p.passive_churn_rate for p in report.periods], PASSIVE_COLOR),
        ], unit="%"),
        "seasonality": line_chart(
            "seasonality", "Churn rate per month", [p.label for p in report.seasonality],
            [p.churn_rate for p in report.seasonality], unit="%",
        ),
        "tenure": bar_chart("tenure", "Customers lost by tenure", [b.label for b in report.tenure.buckets],
                            [("lost", [float(b.lost) for b in report.tenure.buckets], ACCENT)]),
        "breakdown": hbar_chart(
            "breakdown", f"Share of customers lost by {report.breakdown.by}",
            [(g.value, g.lost_share) for g in report.breakdown.groups if g.lost_share is not None],
        ),
        "lift": interval_chart("lift", "Lift of conversion over the holdout group (95% CI)", intervals)
        if intervals else "",
    }
    surveys = []
    for i, q in enumerate(report.surveys):
        if q.kind == "text":
            surveys.append({"question": q, "rows": [[a.answer, f"{a.at:%Y-%m-%d}"] for a in q.texts]})
        else:
            surveys.append({
                "question": q,
                "chart": Markup(hbar_chart(f"survey-{i}", q.ask or q.question,
                                           [(c.choice, c.share) for c in q.choices])),
                "rows": [[c.choice, str(c.count), _pct(c.share)] for c in q.choices],
            })
    return {
        "start": report.start.date().isoformat(),
        "end": report.end.date().isoformat(),
        "period": report.period,
        "as_of": f"{report.as_of:%Y-%m-%d %H:%M}",
        "lapsed_days": f"{report.passive_churn_after.total_seconds() / 86400:g}",
        "cards": [
            ("customers at the start", t.customers_at_start), ("acquired", t.acquired),
            ("lost", t.lost), ("cancelled", t.lost_active), ("lapsed", t.lost_passive),
            (f"average churn per {report.period}", _pct(report.average_churn_rate)),
        ],
        # Built by svg.py, which escapes every label and value it draws.
        "charts": {name: Markup(svg) for name, svg in charts.items()},
        "colors": {"active": ACTIVE_COLOR, "passive": PASSIVE_COLOR},
        "period_columns": PERIOD_COLUMNS,
        "period_rows": _period_rows(report.periods, " (so far)"),
        "mean_tenure": report.tenure.mean_days,
        "breakdown_by": report.breakdown.by,
        "group_header": [report.breakdown.by, *GROUP_COLUMNS],
        "group_rows": _group_rows(report),
        "group_caption": GROUP_CAPTION.capitalize(),
        "cohort_columns": ["signup month", "size", *(f"m{k}" for k in range(cohort_width))],
        "cohorts": report.cohorts,
        "cohort_width": cohort_width,
        "campaigns": report.campaigns,
        "campaign_columns": CAMPAIGN_COLUMNS,
        "campaign_rows": _campaign_rows(report.campaigns, reasons=True),
        "confidence": f"{CONFIDENCE:.0%}",
        "not_enough_data": NOT_ENOUGH_DATA.capitalize(),
        "min_group": MIN_GROUP,
        "deliverability_campaign_header": ["campaign", *DELIVERABILITY_COLUMNS],
        "deliverability_campaign_rows": deliverability_rows(
            (*report.deliverability.campaigns, report.deliverability.totals)
        ),
        "deliverability_period_header": [report.period, *DELIVERABILITY_COLUMNS],
        "deliverability_period_rows": deliverability_rows(report.deliverability.periods),
        "deliverability_caption": deliverability_caption(report.deliverability),
        "surveys": surveys,
    }
