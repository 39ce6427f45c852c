"""Churn per period, tenure at churn, cohorts and churn by group.

Each query groups customers by (signup bucket, loss bucket, kind, …) in SQL and
returns at most a few thousand aggregated cells, whatever the number of
customers; the running totals over those cells (customers at the start of
each period, a cohort's survivors month after month) are then summed here.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import col

from campaigns.errors import ReportError
from campaigns.models import Customer
from campaigns.reports.losses import ACTIVE, PASSIVE, Losses
from campaigns.reports.periods import Grid, make_grid
from campaigns.sql import signup_moment

# Upper edges (days) of the tenure-at-churn buckets; the last bucket is open.
TENURE_EDGES = (30, 91, 182, 365, 730)
TENURE_LABELS = ("under 1 month", "1-3 months", "3-6 months", "6-12 months", "1-2 years", "2 years or more")
TOP_GROUPS = 20  # groups shown by --by; the rest are summed as "(other)"
NONE_GROUP = "(none)"
OTHER_GROUP = "(other)"
_ATTRIBUTE = re.compile(r"^attributes\.([A-Za-z0-9_-]+)$")


def percent(part: int, whole: int) -> float | None:
    return part * 100.0 / whole if whole else None


@dataclass(frozen=True)
class PeriodChurn:
    label: str
    start: datetime
    end: datetime
    partial: bool  # the period is still running: numbers so far
    customers_at_start: int  # signed up before the start and not lost before it
    acquired: int  # signed up during the period
    lost: int  # lost during the period (active + passive), new customers included
    lost_active: int  # cancelled
    lost_passive: int  # lapsed
    lost_new: int  # of `lost`, those also acquired during the period
    customers_at_end: int

    @property
    def churn_rate(self) -> float | None:
        """Lost during the period / customers at its start × 100 (None without customers)."""
        return percent(self.lost, self.customers_at_start)

    @property
    def active_churn_rate(self) -> float | None:
        return percent(self.lost_active, self.customers_at_start)

    @property
    def passive_churn_rate(self) -> float | None:
        return percent(self.lost_passive, self.customers_at_start)

    @property
    def retention_rate(self) -> float | None:
        rate = self.churn_rate
        return None if rate is None else 100.0 - rate

    @property
    def lost_per_acquired(self) -> float | None:
        return self.lost / self.acquired if self.acquired else None


@dataclass(frozen=True)
class TenureBucket:
    label: str
    min_days: int
    max_days: int | None  # exclusive; None: open-ended
    lost: int


@dataclass(frozen=True)
class TenureAtChurn:
    buckets: tuple[TenureBucket, ...]
    mean_days: float | None  # over every customer lost in the report's range


@dataclass(frozen=True)
class Cohort:
    label: str  # signup month, e.g. 2026-01
    start: datetime
    size: int  # customers who signed up that month
    # retention[k]: % of the cohort still customers at the end of month k after signup
    # (k = 0 is the signup month itself); the last one may be a month still running.
    retention: tuple[float | None, ...]  # None: nobody signed up that month


@dataclass(frozen=True)
class GroupChurn:
    value: str
    customers_at_start: int  # at the start of the report's range
    acquired: int
    lost: int
    lost_active: int
    lost_passive: int

    @property
    def churn_rate(self) -> float | None:
        """Lost during the whole range / customers at its start × 100."""
        return percent(self.lost, self.customers_at_start)

    @property
    def lost_share(self) -> float | None:
        """Lost / everyone who was a customer during the range (at its start or acquired) × 100.

        Unlike the churn rate it does not grow with acquisitions, so groups that grew at
        different speeds compare fairly.
        """
        return percent(self.lost, self.customers_at_start + self.acquired)


@dataclass(frozen=True)
class Breakdown:
    by: str
    groups: tuple[GroupChurn, ...]


# ---------------------------------------------------------------- the cell matrix


@dataclass(frozen=True)
class Cell:
    """Customers sharing signup bucket, loss bucket, kind, tenure bucket and group."""

    sb: int  # signup bucket: -1 before the grid, count after it
    lb: int | None  # loss bucket, None: not lost
    kind: str | None
    customers: int
    tenure_bucket: int | None = None  # index into TENURE_LABELS; None: not lost
    tenure_sum: float = 0.0  # days, over the lost customers of the cell
    group: str | None = None


def _cells(
    session: Session, losses: Losses, bounds: Sequence[datetime], *,
    tenure: bool = False, group: sa.ColumnElement[Any] | None = None,
) -> list[Cell]:
    extra = [group.label("grp")] if group is not None else []
    rows = losses.buckets(bounds, *extra, tenure_edges=TENURE_EDGES if tenure else ())
    keys = [rows.c.sb, rows.c.lb, rows.c.kind]
    keys += ([rows.c.tb] if tenure else []) + ([rows.c.grp] if group is not None else [])
    query = sa.select(
        *keys, sa.func.count().label("customers"), sa.func.sum(rows.c.tenure).label("tenure_sum")
    ).group_by(*keys)
    return [
        Cell(int(r.sb), None if r.lb is None else int(r.lb), r.kind, int(r.customers),
             None if not tenure or r.tb is None else int(r.tb), float(r.tenure_sum or 0.0),
             str(r.grp) if group is not None else None)
        for r in session.execute(query)
    ]


def _periods(grid: Grid, cells: Sequence[Cell]) -> list[PeriodChurn]:
    # A loss never precedes its signup bucket (see Losses.buckets), so the customers at the
    # start of period p are everyone signed up before p minus everyone lost before p.
    signups: dict[int, int] = defaultdict(int)
    losses: dict[tuple[int, str | None], int] = defaultdict(int)
    lost_new: dict[int, int] = defaultdict(int)
    for c in cells:
        signups[c.sb] += c.customers
        if c.lb is not None:
            losses[c.lb, c.kind] += c.customers
            if c.lb == c.sb:
                lost_new[c.sb] += c.customers
    at_start = sum(n for sb, n in signups.items() if sb < 0) - sum(
        n for (lb, _), n in losses.items() if lb < 0
    )
    result = []
    for p in range(grid.count):
        start, end = grid.span(p)
        active, passive = losses[p, ACTIVE], losses[p, PASSIVE]
        at_end = at_start + signups[p] - active - passive
        result.append(PeriodChurn(
            grid.label(p), start, end, grid.partial(p), at_start, signups[p], active + passive,
            active, passive, lost_new[p], at_end,
        ))
        at_start = at_end
    return result


def _tenure(grid: Grid, cells: Sequence[Cell]) -> TenureAtChurn:
    in_range = [c for c in cells if c.lb is not None and 0 <= c.lb < grid.count]
    counts: dict[int, int] = defaultdict(int)
    for c in in_range:
        counts[c.tenure_bucket or 0] += c.customers
    lows = (0, *TENURE_EDGES)
    highs: tuple[int | None, ...] = (*TENURE_EDGES, None)
    buckets = tuple(TenureBucket(TENURE_LABELS[i], lows[i], highs[i], counts[i]) for i in range(len(lows)))
    lost = sum(c.customers for c in in_range)
    mean = sum(c.tenure_sum for c in in_range) / lost if lost else None
    return TenureAtChurn(buckets, mean)


def month_grid(grid: Grid) -> Grid:
    """The months touching ``grid``'s range (a week grid may start or end mid-month)."""
    if grid.period == "month":
        return grid
    return make_grid("month", start=grid.start, end=grid.end - timedelta(microseconds=1), as_of=grid.as_of)


@dataclass(frozen=True)
class ChurnReport:
    periods: list[PeriodChurn]
    tenure: TenureAtChurn
    seasonality: list[PeriodChurn]  # churn per month over the range
    cohorts: list[Cohort]
    breakdown: Breakdown


def churn_report(session: Session, losses: Losses, grid: Grid, by: str) -> ChurnReport:
    """Everything about who was lost, from one scan of the customers (two when not monthly).

    The scan groups customers by (signup bucket, loss bucket, kind, tenure bucket, group),
    with the groups capped to the TOP_GROUPS largest, so the result stays a few thousand
    cells however many customers there are.
    """
    group = _capped_group(session, by, grid.end)
    cells = _cells(session, losses, grid.bounds, tenure=True, group=group)
    periods, tenure = _periods(grid, cells), _tenure(grid, cells)
    groups = _breakdown(grid, cells, by)
    months = month_grid(grid)
    if months is grid:
        return ChurnReport(periods, tenure, periods, _cohorts(months, cells), groups)
    cells = _cells(session, losses, months.bounds)
    return ChurnReport(periods, tenure, _periods(months, cells), _cohorts(months, cells), groups)


def _cohorts(months: Grid, cells: Sequence[Cell]) -> list[Cohort]:
    by_signup: dict[int, list[Cell]] = defaultdict(list)
    for cell in cells:
        by_signup[cell.sb].append(cell)
    cohorts = []
    for c in range(months.count):
        size = sum(x.customers for x in by_signup[c])
        gone = [0] * (months.count - c)
        for x in by_signup[c]:
            if x.lb is not None and x.lb - c < len(gone):
                gone[x.lb - c] += x.customers
        retention: list[float | None] = []
        lost = 0
        for k in range(months.count - c):
            lost += gone[k]
            retention.append(100.0 * (size - lost) / size if size else None)
        cohorts.append(Cohort(months.label(c), months.bounds[c], size, tuple(retention)))
    return cohorts


# ---------------------------------------------------------------- by group


def group_column(by: str) -> sa.ColumnElement[Any]:
    """SQL for a --by value: `plan` or `attributes.KEY`."""
    if by == "plan":
        return sa.cast(col(Customer.plan), sa.String)
    match = _ATTRIBUTE.match(by)
    if match is None:
        raise ReportError(
            f"--by {by!r}: use `plan` or `attributes.KEY` (KEY: letters, digits, - and _, "
            "e.g. attributes.company_size)"
        )
    return sa.cast(col(Customer.attributes)[match.group(1)].as_string(), sa.String)


def _capped_group(session: Session, by: str, end: datetime) -> sa.ColumnElement[str]:
    """The --by value of each customer; beyond the TOP_GROUPS largest groups, OTHER_GROUP."""
    value = sa.func.coalesce(sa.func.nullif(group_column(by), ""), NONE_GROUP)
    top = [
        row[0] for row in session.execute(
            sa.select(value.label("grp"))
            .where(signup_moment() < end)
            .group_by(value)
            .order_by(sa.func.count().desc(), value)
            .limit(TOP_GROUPS)
        )
    ]
    if not top:
        return sa.literal(NONE_GROUP, sa.String)
    return sa.case((value.in_(top), value), else_=sa.literal(OTHER_GROUP, sa.String))


def _breakdown(grid: Grid, cells: Sequence[Cell], by: str) -> Breakdown:
    """Churn over the grid's whole range per group, largest first, OTHER_GROUP last."""
    n = grid.count
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for c in cells:
        row = counts[c.group or NONE_GROUP]
        if c.sb < 0 and (c.lb is None or c.lb >= 0):
            row[0] += c.customers
        if 0 <= c.sb < n:
            row[1] += c.customers
        if c.lb is not None and 0 <= c.lb < n:
            row[2 if c.kind == ACTIVE else 3] += c.customers
    groups = [
        GroupChurn(value, at_start, acquired, active + passive, active, passive)
        for value, (at_start, acquired, active, passive) in counts.items()
        if at_start or acquired or active or passive
    ]
    groups.sort(key=lambda g: (g.value == OTHER_GROUP, -(g.customers_at_start + g.acquired), g.value))
    return Breakdown(by, tuple(groups))


def average_churn_rate(periods: Sequence[PeriodChurn]) -> float | None:
    """Mean churn rate of the periods that have ended (of all, if none has ended yet)."""
    rates = [p.churn_rate for p in periods if not p.partial and p.churn_rate is not None]
    if not rates:
        rates = [p.churn_rate for p in periods if p.churn_rate is not None]
    return sum(rates) / len(rates) if rates else None


def range_totals(periods: Sequence[PeriodChurn]) -> GroupChurn:
    """The whole range as one group: customers at its start, and everyone acquired and lost in it."""
    return GroupChurn(
        "(all)",
        periods[0].customers_at_start if periods else 0,
        sum(p.acquired for p in periods),
        sum(p.lost for p in periods),
        sum(p.lost_active for p in periods),
        sum(p.lost_passive for p in periods),
    )
