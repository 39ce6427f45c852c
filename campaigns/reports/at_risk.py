"""Customers at risk: active customers ranked by a health score, each with the reasons.

The score (0 = about to be lost, 100 = healthy) combines two risks in [0, 1]:

* **recency** — the larger of
  - how overdue the customer is against their own rhythm:
    ``(overdue_ratio − 0.5) / 2.5``, clamped (0 up to half a usual gap, 1 at three
    usual gaps; ``overdue_ratio = days_inactive / cadence_days``), and
  - how close they are to lapsing: ``days_inactive / passive_churn_after``
    (the only recency signal when too little history gives no cadence);
* **trend** — the drop in activity events, last 30 days against the 30 before:
  ``1 − recent / previous``, clamped (0 when activity held or grew, or without a
  previous month to compare with).

``score = 100 × (1 − (0.7 × recency + 0.3 × trend))``.  Recency weighs more because
it is what passive churn is defined by; the trend catches a fading customer before
they are overdue.  Customers who have already lapsed are lost (passive churn), not at
risk, and are left out; so are cancelled ones.  The whole ranking runs in SQL: one
aggregate over the last 60 days of events, ordered and limited in the database.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import col

from campaigns.models import Customer, CustomerStatus, Event, UTCDateTime
from campaigns.sql import days_since, inactive_since

TREND_WINDOW = timedelta(days=30)
RECENCY_WEIGHT = 0.7
TREND_WEIGHT = 0.3
# overdue_ratio at which the cadence risk starts (0) and saturates (1).
OVERDUE_FROM, OVERDUE_FULL = 0.5, 3.0


@dataclass(frozen=True)
class AtRisk:
    customer_id: str  # the company's own id
    email: str
    plan: str | None
    score: float  # 0 (about to be lost) … 100 (healthy)
    days_inactive: float
    cadence_days: float | None
    overdue_ratio: float | None
    events_recent: int  # activity events in the last 30 days
    events_previous: int  # in the 30 days before those
    days_to_lapse: float  # until passive churn
    why: tuple[str, ...]


@dataclass(frozen=True)
class AtRiskReport:
    as_of: datetime
    considered: int  # active customers not yet lapsed
    customers: tuple[AtRisk, ...]  # lowest score first


def _clamp(value: Any) -> sa.Case[Any]:
    return sa.case((value < 0.0, 0.0), (value > 1.0, 1.0), else_=value)


def _larger(a: Any, b: Any) -> sa.Case[Any]:
    return sa.case((a > b, a), else_=b)


def at_risk(
    session: Session,
    *,
    now: datetime,
    passive_churn_after: timedelta,
    non_activity_events: frozenset[str] = frozenset(),
    limit: int = 20,
) -> AtRiskReport:
    """The ``limit`` active, not yet lapsed customers with the lowest health score."""
    moment = sa.literal(now, UTCDateTime())
    activity: Any = (
        sa.select(
            col(Event.customer_id).label("customer_id"),
            sa.func.sum(sa.case((col(Event.occurred_at) >= now - TREND_WINDOW, 1), else_=0)).label("recent"),
            sa.func.sum(sa.case((col(Event.occurred_at) < now - TREND_WINDOW, 1), else_=0)).label("previous"),
        )
        .where(col(Event.occurred_at) >= now - 2 * TREND_WINDOW, col(Event.occurred_at) <= now)
        .group_by(col(Event.customer_id))
    )
    if non_activity_events:
        activity = activity.where(col(Event.name).not_in(sorted(non_activity_events)))
    counts = activity.subquery("activity")
    lapse_days = passive_churn_after.total_seconds() / 86400
    inactive = days_since(inactive_since(), moment)
    cadence = col(Customer.cadence_days)
    has_cadence = sa.and_(cadence.is_not(None), cadence > 0)
    ratio = sa.case((has_cadence, inactive / cadence), else_=sa.null())
    recent = sa.func.coalesce(counts.c.recent, 0)
    previous = sa.func.coalesce(counts.c.previous, 0)
    base = (
        sa.select(
            col(Customer.external_id).label("customer_id"),
            col(Customer.email).label("email"),
            col(Customer.plan).label("plan"),
            inactive.label("days_inactive"),
            cadence.label("cadence_days"),
            ratio.label("overdue_ratio"),
            recent.label("recent"),
            previous.label("previous"),
        )
        .select_from(Customer)
        .outerjoin(counts, counts.c.customer_id == col(Customer.id))
        .where(
            col(Customer.status) == CustomerStatus.active.value,
            inactive_since() > now - passive_churn_after,
        )
        .subquery("base")
    )
    overdue_risk = sa.case(
        (base.c.overdue_ratio.is_(None), 0.0),
        else_=_clamp((base.c.overdue_ratio - OVERDUE_FROM) / (OVERDUE_FULL - OVERDUE_FROM)),
    )
    recency = _larger(overdue_risk, _clamp(base.c.days_inactive / lapse_days))
    trend = sa.case(
        (base.c.previous > 0, _clamp(1.0 - base.c.recent * 1.0 / base.c.previous)), else_=0.0
    )
    score = (100.0 * (1.0 - (RECENCY_WEIGHT * recency + TREND_WEIGHT * trend))).label("score")
    query = (
        sa.select(base, score, sa.func.count().over().label("considered"))
        .order_by(score, base.c.days_inactive.desc(), base.c.customer_id)
        .limit(limit)
    )
    rows = session.execute(query).all()
    considered = int(rows[0].considered) if rows else 0
    customers = tuple(_at_risk(row, lapse_days) for row in rows)
    return AtRiskReport(now, considered, customers)


def _at_risk(row: Any, lapse_days: float) -> AtRisk:
    inactive = float(row.days_inactive)
    recent, previous = int(row.recent), int(row.previous)
    ratio = None if row.overdue_ratio is None else float(row.overdue_ratio)
    cadence = None if row.cadence_days is None else float(row.cadence_days)
    return AtRisk(
        customer_id=row.customer_id,
        email=row.email,
        plan=row.plan,
        score=max(0.0, min(100.0, float(row.score))),
        days_inactive=inactive,
        cadence_days=cadence,
        overdue_ratio=ratio,
        events_recent=recent,
        events_previous=previous,
        days_to_lapse=max(0.0, lapse_days - inactive),
        why=explain(inactive, cadence, ratio, recent, previous, lapse_days),
    )


def explain(
    inactive: float, cadence: float | None, ratio: float | None, recent: int, previous: int,
    lapse_days: float,
) -> tuple[str, ...]:
    """The reasons behind a score, most telling first, in words a marketer reads."""
    why: list[str] = []
    if ratio is not None and cadence is not None:
        if ratio >= 1:
            why.append(f"{ratio:.1f}x overdue: inactive {inactive:.0f} days, usually every {cadence:g} days")
        elif ratio >= 0.67:
            why.append(f"due soon: inactive {inactive:.0f} of their usual {cadence:g} days")
    else:
        why.append(f"inactive {inactive:.0f} days; too little history for a usual rhythm")
    if inactive >= lapse_days / 2:
        why.append(f"lapses in {max(0.0, lapse_days - inactive):.0f} days "
                   f"(no activity for {lapse_days:g} days counts as lost)")
    if previous > 0 and recent < previous:
        why.append(f"activity down {100 * (previous - recent) / previous:.0f}%: "
                   f"{recent} events in the last 30 days vs {previous} in the 30 before")
    elif previous == 0 and recent == 0 and inactive >= 60:
        why.append("no activity in the last 60 days")
    return tuple(why) or ("no warning signs",)
