"""P5: the full `retention report` (monthly, a year) against one hand-written SQL aggregate.

The hand query computes what the report's headline is — per month, customers
at the start and customers lost during it (cancelled, or lapsed after
passive_churn_after) — in one GROUP BY over the customers; the report also
computes cohorts, tenure, seasonality, a plan breakdown, funnels and surveys.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from campaigns.reports import build_report
from campaigns.reports.periods import make_grid
from campaigns.rules import load_rules
from worker.database import make_engine

RULES = Path(__file__).resolve().parent / "rules.yaml"


def ours(url: str, now: str) -> dict[str, Any]:
    rules = load_rules(RULES)
    engine = make_engine(url)
    with Session(engine) as session:
        started = time.perf_counter()
        report = build_report(session, rules, now=datetime.fromisoformat(now), period="month")
        seconds = time.perf_counter() - started
    engine.dispose()
    return {"seconds": seconds, "periods": len(report.periods)}


def hand(url: str, now: str) -> dict[str, Any]:
    rules = load_rules(RULES)
    moment = datetime.fromisoformat(now)
    grid = make_grid("month", start=None, end=None, as_of=moment)
    engine = make_engine(url)
    sqlite = engine.dialect.name == "sqlite"

    def value(at: datetime) -> Any:
        return at.replace(tzinfo=None).isoformat(" ", "microseconds") if sqlite else at

    lapse = rules.defaults.passive_churn_after
    def at(name: str) -> str:
        return f":{name}" if sqlite else f"CAST(:{name} AS timestamptz)"

    months = " UNION ALL ".join(
        f"SELECT {i} AS m, {at(f's{i}')} AS s, {at(f'e{i}')} AS e, {at(f'ls{i}')} AS ls, {at(f'le{i}')} AS le"
        for i in range(len(grid.bounds) - 1)
    )
    params: dict[str, Any] = {}
    for i, (start, end) in enumerate(zip(grid.bounds, grid.bounds[1:], strict=False)):
        params.update({f"s{i}": value(start), f"e{i}": value(end),
                       f"ls{i}": value(start - lapse), f"le{i}": value(min(end, moment) - lapse)})
    reference = "coalesce(c.last_active_at, c.signed_up_at, c.created_at)"
    joined = "coalesce(c.signed_up_at, c.created_at)"
    # Lost = cancelled (at cancelled_at) or lapsed (reference + lapse), whichever came first.
    sql = f"""
SELECT p.m,
  sum(CASE WHEN {joined} < p.s AND NOT (
        (c.status = 'cancelled' AND c.cancelled_at < p.s) OR {reference} < p.ls) THEN 1 ELSE 0 END),
  sum(CASE WHEN ((c.status = 'cancelled' AND c.cancelled_at >= p.s AND c.cancelled_at < p.e)
                 OR ({reference} >= p.ls AND {reference} < p.le)) THEN 1 ELSE 0 END)
FROM customer c CROSS JOIN ({months}) p
GROUP BY p.m ORDER BY p.m"""
    with engine.connect() as connection:
        started = time.perf_counter()
        rows = connection.execute(sa.text(sql), params).all()
        seconds = time.perf_counter() - started
    engine.dispose()
    return {"seconds": seconds, "periods": len(rows)}
