"""Customers at risk: active customers ranked by a health score, each with the reasons.

The score (0 = about to be lost, 100 = healthy) combines two risks in [0, 1]:

* **recency** — the larger of
  - how overdue the customer is against their own rhythm:
    ``(overdue_ratio − 0.5) / 2.5``, clamped (0 up to half a usual gap, 1 at three
    usual gaps; ``overdue_ratio = days_inactive / cadence_days``), and
  - how close they are to lapsing: ``days_inactive / passive_churn_after``
    (the only recency signal when too little history gives no cadence);
* **trend** — the drop in activity events, the last window against the one before:
  ``1 − recent / previous``, clamped (0 when activity held or grew, or without a
  previous window to compare with).  The window is the customer's own: three usual
  gaps (``3 × cadence_days``), at least 30 and at most 180 days, so a customer who
  comes every 40 days is compared over 120-day windows, not judged by a quiet month.

``score = 100 × (1 − (0.7 × recency + 0.3 × trend))``.  Recency weighs more because
it is what passive churn is defined by; the trend catches a fading customer before
they are overdue.  Customers who have already lapsed are lost (passive churn), not at
risk, and are left out; so are cancelled ones.  The whole ranking runs in SQL: one
aggregate over recent events, ordered and limited in the database.
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

# The trend compares two windows of TREND_GAPS usual gaps each, within these bounds (days).
TREND_GAPS = 3
TREND_MIN_DAYS, TREND_MAX_DAYS = 30.0, 180.0
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
    trend_window_days: float = TREND_MIN_DAYS  # the width of each of the two windows compared


@dataclass(frozen=True)
class AtRiskReport:
    as_of: datetime
    considered: int  # active customers not yet lapsed
    customers: tuple[AtRisk, ...]  # lowest score first


def trend_window(cadence: Any) -> sa.Case[Any]:
    """Days in each trend window: TREND_GAPS usual gaps, within the bounds."""
    scaled = cadence * TREND_GAPS
    return sa.case(
        (sa.or_(cadence.is_(None), scaled < TREND_MIN_DAYS), TREND_MIN_DAYS),
        (scaled > TREND_MAX_DAYS, TREND_MAX_DAYS),
        else_=scaled,
    )


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
    age = days_since(col(Event.occurred_at), moment)
    window = trend_window(col(Customer.cadence_days))
    activity: Any = (
        sa.select(
            col(Event.customer_id).label("customer_id"),
            sa.func.sum(sa.case((age <= window, 1), else_=0)).label("recent"),
            sa.func.sum(sa.case((age > window, 1), else_=0)).label("previous"),
        )
        .join(Customer, col(Customer.id) == col(Event.customer_id))
        .where(
            col(Event.occurred_at) >= now - timedelta(days=2 * TREND_MAX_DAYS),
            col(Event.occurred_at) <= now,
            age <= 2 * window,
        )
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
            trend_window(cadence).label("trend_window"),
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
        why=explain(inactive, cadence, ratio, recent, previous, lapse_days, float(row.trend_window)),
        trend_window_days=float(row.trend_window),
    )


def explain(
    inactive: float, cadence: float | None, ratio: float | None, recent: int, previous: int,
    lapse_days: float, window: float = TREND_MIN_DAYS,
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
                   f"{recent} events in the last {window:.0f} days vs {previous} in the {window:.0f} before")
    elif previous == 0 and recent == 0 and inactive >= 2 * window:
        why.append(f"no activity in the last {2 * window:.0f} days")
    return tuple(why) or ("no warning signs",)
