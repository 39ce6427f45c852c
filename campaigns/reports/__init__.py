"""Reports: how many customers we lose, when, which and why, and what the campaigns achieved.

``build_report`` runs a handful of aggregate queries (GROUP BY, CASE) and returns plain
dataclasses; formatting lives in ``worker/report/``.  Definitions are in
``docs/reports.md`` and in the docstrings of ``losses`` (who is lost, when) and ``lift``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from campaigns.errors import ReportError
from campaigns.observed import attribute_keys, did_you_mean, has_attribute, has_customers
from campaigns.reports.churn import (
    Breakdown,
    Cohort,
    GroupChurn,
    PeriodChurn,
    TenureAtChurn,
    TenureBucket,
    average_churn_rate,
    churn_report,
    group_column,
    range_totals,
)
from campaigns.reports.deliverability import Deliverability, Rates, Thresholds, deliverability
from campaigns.reports.funnel import Funnel, funnels
from campaigns.reports.lift import Lift, two_proportion_lift
from campaigns.reports.losses import Losses
from campaigns.reports.periods import PERIODS, Grid, make_grid
from campaigns.reports.surveys import ChoiceCount, QuestionAnswers, TextAnswer, survey_answers
from campaigns.rules import Rules

__all__ = [
    "PERIODS",
    "Breakdown",
    "ChoiceCount",
    "Cohort",
    "Deliverability",
    "Funnel",
    "GroupChurn",
    "Lift",
    "PeriodChurn",
    "QuestionAnswers",
    "Rates",
    "Report",
    "ReportError",
    "TenureAtChurn",
    "TenureBucket",
    "TextAnswer",
    "Thresholds",
    "build_report",
    "two_proportion_lift",
]


@dataclass(frozen=True)
class Report:
    period: str
    start: datetime  # first period's start
    end: datetime  # last period's end (exclusive; may be after as_of when it is still running)
    as_of: datetime  # "now": losses are known up to here
    passive_churn_after: timedelta
    periods: tuple[PeriodChurn, ...]
    totals: GroupChurn  # the whole range: customers at its start, acquired and lost in it
    tenure: TenureAtChurn
    seasonality: tuple[PeriodChurn, ...]  # churn per month over the range
    cohorts: tuple[Cohort, ...]
    breakdown: Breakdown
    campaigns: tuple[Funnel, ...]
    surveys: tuple[QuestionAnswers, ...]
    deliverability: Deliverability

    @property
    def average_churn_rate(self) -> float | None:
        """Mean churn rate per period over the periods that have ended."""
        return average_churn_rate(self.periods)


def build_report(
    session: Session,
    rules: Rules,
    *,
    now: datetime,
    period: str = "month",
    start: datetime | None = None,
    end: datetime | None = None,
    by: str = "plan",
    thresholds: Thresholds | None = None,
) -> Report:
    """The full report over the periods from the one containing ``start`` to the one containing ``end``."""
    group_column(by)  # a bad --by fails before any query runs
    _check_breakdown(session, by)
    grid: Grid = make_grid(period, start=start, end=end, as_of=now)
    losses = Losses(now=now, passive_after=rules.defaults.passive_churn_after)
    churn = churn_report(session, losses, grid, by)
    return Report(
        period=period,
        start=grid.start,
        end=grid.end,
        as_of=now,
        passive_churn_after=rules.defaults.passive_churn_after,
        periods=tuple(churn.periods),
        totals=range_totals(churn.periods),
        tenure=churn.tenure,
        seasonality=tuple(churn.seasonality),
        cohorts=tuple(churn.cohorts),
        breakdown=churn.breakdown,
        campaigns=tuple(funnels(session, start=grid.start, end=grid.end)),
        surveys=tuple(survey_answers(session, rules, start=grid.start, end=grid.end)),
        deliverability=deliverability(session, grid, thresholds or Thresholds()),
    )


def _check_breakdown(session: Session, by: str) -> None:
    """A breakdown by an attribute nobody has would be one "(none)" group: say so instead."""
    key = by.removeprefix("attributes.")
    if key == by or not has_customers(session) or has_attribute(session, key):
        return
    known = attribute_keys(session)
    raise ReportError(
        f"--by {by}: no customer has attribute {key!r}"
        f"{did_you_mean(key, known)} (attributes seen: {', '.join(known) or 'none'})"
    )
