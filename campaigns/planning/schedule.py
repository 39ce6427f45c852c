"""Cron schedules: which fire a pass answers, and when the next one is."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import croniter

from campaigns.planning.state import PassState
from campaigns.rules import Campaign, Defaults


def scheduled_fire(
    campaign: Campaign, state: PassState | None, *, now: datetime, defaults: Defaults
) -> datetime | None:
    """The cron fire time this pass answers, or None when the schedule is not due."""
    if campaign.schedule is None:
        return None
    # croniter's get_prev is strictly before its start: start just after this minute began,
    # so a pass at exactly 10:00 answers the 10:00 fire.
    previous: datetime = croniter(
        campaign.schedule, _this_minute(now, defaults) + timedelta(seconds=1)
    ).get_prev(datetime)
    since = state.last_pass_at if state and state.last_pass_at else (now - 2 * defaults.check_every)
    return previous if previous > since else None


def next_fire(campaign: Campaign, *, now: datetime, defaults: Defaults) -> datetime | None:
    """The schedule's first fire after this minute, in the default time zone."""
    if campaign.schedule is None:
        return None
    fire: datetime = croniter(campaign.schedule, _this_minute(now, defaults)).get_next(datetime)
    return fire


def _this_minute(now: datetime, defaults: Defaults) -> datetime:
    local = now.astimezone(ZoneInfo(defaults.timezone))
    return local.replace(second=0, microsecond=0)
