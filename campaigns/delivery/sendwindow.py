"""When a message may go out: quiet hours and send days, in the customer's own time zone."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import col

from campaigns.errors import UnknownCampaign
from campaigns.models import Customer, Delivery, DeliveryStatus
from campaigns.rules import WEEKDAYS, QuietHours, Rules
from campaigns.timezones import customer_zone

# The start of `last_error` on a delivery deferred by the send window (see sending.py).
WAITING = "waiting for the send window"


def waiting_note(until: datetime) -> str:
    return f"{WAITING} until {until.isoformat()}"


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


def rewait(session: Session, rules: Rules, *, now: datetime) -> int:
    """Recompute the wait of every delivery deferred by the send window under the rules in force.

    A delivery waits with the ``due_at`` computed when it was deferred; after quiet hours or
    send days change, that wait may be too long (or too short).  The wait depends only on the
    campaign and the customer's time zone, so it is computed once per such pair and applied
    with one UPDATE.  Returns how many deliveries became due now.
    """
    waiting = sa.and_(
        col(Delivery.status) == DeliveryStatus.queued,
        col(Delivery.due_at) > now,
        col(Delivery.last_error).startswith(WAITING),
    )
    pairs = session.execute(
        sa.select(col(Delivery.campaign_id), col(Customer.timezone))
        .join(Customer, col(Customer.id) == col(Delivery.customer_id))
        .where(waiting)
        .distinct()
    ).all()
    released = 0
    for campaign_id, timezone in pairs:
        try:
            send_days = rules.campaign(campaign_id).send_days
        except UnknownCampaign:
            continue  # the sender fails it: the campaign is gone from rules.yaml
        until = next_send_time(now, customer_zone(timezone, rules.defaults.timezone),
                               rules.defaults.quiet_hours, send_days)
        same_zone = (col(Customer.timezone).is_(None) if timezone is None
                     else col(Customer.timezone) == timezone)
        ids = sa.select(col(Customer.id)).where(same_zone)
        values: dict[str, object] = (
            {"due_at": now, "enqueued_at": None, "last_error": None} if until is None
            else {"due_at": until, "last_error": waiting_note(until)}
        )
        changed = session.execute(
            sa.update(Delivery)
            .where(waiting, col(Delivery.campaign_id) == campaign_id, col(Delivery.customer_id).in_(ids))
            .values(**values)
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
        if until is None:
            released += int(changed or 0)
    session.commit()
    return released
