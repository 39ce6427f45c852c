"""Reports as JSON: the keys are a contract (docs/reports.md; ``report_version`` changes when one goes)."""

from __future__ import annotations

import json
from typing import Any

from campaigns.reports import Funnel, PeriodChurn, Rates, Report
from campaigns.reports.at_risk import AtRiskReport
from campaigns.reports.lift import CONFIDENCE
from worker.report.formatting import (
    AT_RISK_VERSION,
    REPORT_VERSION,
    _iso,
    _round,
)


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


def _rates_json(r: Rates) -> dict[str, Any]:
    return {
        "label": r.label, "sent": r.sent, "hard_bounces": r.hard_bounces, "soft_bounces": r.soft_bounces,
        "complaints": r.complaints, "hard_bounce_rate": _round(r.hard_bounce_rate, 3),
        "soft_bounce_rate": _round(r.soft_bounce_rate, 3), "complaint_rate": _round(r.complaint_rate, 3),
        "flags": list(r.flags), "paused": r.paused,
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
        "deliverability": {
            "thresholds": {"complaint_rate": report.deliverability.thresholds.complaint_rate * 100,
                           "hard_bounce_rate": report.deliverability.thresholds.hard_bounce_rate * 100},
            "totals": _rates_json(report.deliverability.totals),
            "campaigns": [_rates_json(r) for r in report.deliverability.campaigns],
            "periods": [_rates_json(r) for r in report.deliverability.periods],
        },
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
             "events_previous": c.events_previous, "trend_window_days": _round(c.trend_window_days, 1),
             "days_to_lapse": _round(c.days_to_lapse, 1),
             "why": list(c.why)}
            for c in result.customers
        ],
    }


def dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False, indent=2) + "\n"


