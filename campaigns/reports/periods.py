"""Report periods: calendar months, ISO weeks or quarters, in UTC.

A report covers a run of consecutive periods.  Their boundaries are computed
here once, in Python, and handed to SQL as bound values; bucketing a timestamp
is then a plain ``CASE`` of comparisons, identical on SQLite and PostgreSQL and
free of each dialect's own date functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from campaigns.errors import ReportError

PERIODS = ("month", "week", "quarter")
# How many periods a report covers when --from is not given.
DEFAULT_COUNT = {"month": 12, "week": 12, "quarter": 8}


def period_start(moment: datetime, period: str) -> datetime:
    """Start (UTC midnight) of the period that contains ``moment``."""
    moment = moment.astimezone(UTC)
    day = datetime(moment.year, moment.month, moment.day, tzinfo=UTC)
    if period == "week":
        return day - timedelta(days=day.weekday())
    if period == "month":
        return day.replace(day=1)
    if period == "quarter":
        return day.replace(month=3 * ((day.month - 1) // 3) + 1, day=1)
    raise ReportError(f"unknown period {period!r}: use one of {', '.join(PERIODS)}")


def shift(start: datetime, period: str, count: int = 1) -> datetime:
    """The period start ``count`` periods after (or before, if negative) ``start``."""
    if period == "week":
        return start + timedelta(weeks=count)
    months = count * (3 if period == "quarter" else 1)
    index = start.year * 12 + start.month - 1 + months
    return start.replace(year=index // 12, month=index % 12 + 1)


def label(start: datetime, period: str) -> str:
    if period == "week":
        year, week, _ = start.isocalendar()
        return f"{year}-W{week:02d}"
    if period == "quarter":
        return f"{start.year}-Q{(start.month - 1) // 3 + 1}"
    return f"{start.year}-{start.month:02d}"


@dataclass(frozen=True)
class Grid:
    """Consecutive periods: ``bounds`` holds every start plus the end of the last one."""

    period: str
    bounds: tuple[datetime, ...]
    as_of: datetime

    @property
    def count(self) -> int:
        return len(self.bounds) - 1

    @property
    def start(self) -> datetime:
        return self.bounds[0]

    @property
    def end(self) -> datetime:
        return self.bounds[-1]

    def span(self, index: int) -> tuple[datetime, datetime]:
        return self.bounds[index], self.bounds[index + 1]

    def label(self, index: int) -> str:
        return label(self.bounds[index], self.period)

    def partial(self, index: int) -> bool:
        """The period has not ended yet: its numbers are so far, not final."""
        return self.bounds[index + 1] > self.as_of


def make_grid(
    period: str, *, start: datetime | None, end: datetime | None, as_of: datetime
) -> Grid:
    """The periods from the one containing ``start`` to the one containing ``end`` (inclusive).

    ``end`` defaults to ``as_of`` and ``start`` to a year or so before it.  Periods that
    begin after ``as_of`` have nothing to report yet and are left out.
    """
    if period not in PERIODS:
        raise ReportError(f"unknown period {period!r}: use one of {', '.join(PERIODS)}")
    last = period_start(min(end or as_of, as_of), period)
    first = period_start(start, period) if start else shift(last, period, 1 - DEFAULT_COUNT[period])
    if start is not None and start > as_of:
        raise ReportError(
            f"--from {start.date().isoformat()} is in the future: nothing has happened there yet"
        )
    if first > last:
        raise ReportError(
            f"--from {first.date().isoformat()} is after --to {last.date().isoformat()}: "
            "swap them, or leave one out"
        )
    bounds = [first]
    while bounds[-1] <= last:
        bounds.append(shift(bounds[-1], period))
        if len(bounds) > 1000:
            raise ReportError("more than 1000 periods: choose a longer --period or a shorter range")
    return Grid(period, tuple(bounds), as_of)


def bucket(value: Any, bounds: Sequence[datetime]) -> sa.ColumnElement[int]:
    """SQL: -1 before ``bounds[0]``, i within [bounds[i], bounds[i+1]), len(bounds) - 1 after
    (and for NULL).

    A binary search of nested CASEs: about log2(len(bounds)) comparisons per row instead of
    one per bound, which matters over a million customers.  ``value`` must be typed (e.g. a
    UTCDateTime column) so the bounds bind correctly.
    """

    def node(low: int, high: int) -> sa.ColumnElement[int]:
        # The answer lies in low - 1 … high - 1: value >= bounds[low - 1] and < bounds[high].
        if low == high:
            return sa.literal(low - 1, sa.Integer)
        middle = (low + high) // 2
        return sa.case((value < bounds[middle], node(low, middle)), else_=node(middle + 1, high))

    return node(0, len(bounds))
