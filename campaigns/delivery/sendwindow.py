"""When a message may go out: quiet hours and send days, in the customer's own time zone."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from campaigns.rules.schema import QuietHours

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def customer_zone(timezone: str | None, default: str) -> ZoneInfo:
    try:
        return ZoneInfo(timezone) if timezone else ZoneInfo(default)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo(default)


def next_send_time(
    now: datetime, zone: ZoneInfo, quiet: QuietHours | None, send_days: Sequence[str] | None
) -> datetime | None:
    """None when ``now`` is fine; otherwise the first allowed moment after it (UTC).

    Walks forward in local wall-clock minutes' worth of steps only at window
    edges, so DST changes are handled by zoneinfo rather than by arithmetic.
    """
    local = now.astimezone(zone)
    if _allowed(local, quiet, send_days):
        return None
    candidate = local
    for _ in range(8 * 2):  # at most a week of days, two edges a day
        candidate = _next_edge(candidate, quiet, zone)
        if _allowed(candidate, quiet, send_days):
            return candidate.astimezone(UTC)
    return None  # no allowed time at all (e.g. quiet around the clock): do not hold forever


def _allowed(local: datetime, quiet: QuietHours | None, send_days: Sequence[str] | None) -> bool:
    if send_days and WEEKDAYS[local.weekday()] not in send_days:
        return False
    return not (quiet and quiet.contains(local.time().replace(tzinfo=None)))


def _next_edge(local: datetime, quiet: QuietHours | None, zone: ZoneInfo) -> datetime:
    """The next moment at which the verdict may change: quiet hours end, or midnight."""
    day = local.date()
    candidates = []
    for offset in (0, 1):
        date = day + timedelta(days=offset)
        midnight = datetime(date.year, date.month, date.day, tzinfo=zone)
        candidates.append(midnight)
        if quiet is not None:
            candidates.append(datetime.combine(date, quiet.end, tzinfo=zone))
    # Compare on the UTC time line; wall-clock times that DST skipped resolve forward.
    future = [c for c in candidates if c.astimezone(UTC) > local.astimezone(UTC)]
    return min(future, key=lambda c: c.astimezone(UTC))
