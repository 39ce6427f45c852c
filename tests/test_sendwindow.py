"""Quiet hours and send days in the customer's own time zone, across DST changes."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaigns.delivery.sendwindow import next_send_time
from campaigns.rules import QuietHours
from campaigns.timezones import customer_zone

NIGHT = QuietHours(start=time(21), end=time(8))
BERLIN = ZoneInfo("Europe/Berlin")


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(("now", "expected"), [
    ("2026-11-25T12:00", None),                      # 13:00 in Berlin: fine
    ("2026-11-25T20:30", "2026-11-26T07:00"),        # 21:30 Berlin → 08:00 Berlin (UTC+1)
    ("2026-11-25T06:59", "2026-11-25T07:00"),        # 07:59 → one minute later
    ("2026-03-28T21:00", "2026-03-29T06:00"),        # night into summer time: 08:00 is UTC+2
    ("2026-10-24T20:00", "2026-10-25T07:00"),        # night into winter time: 08:00 is UTC+1
], ids=["daytime", "evening", "early-morning", "spring-forward", "fall-back"])
def test_quiet_hours_hold_the_send_until_the_local_morning(now, expected):
    found = next_send_time(utc(now), BERLIN, NIGHT, None)
    assert found == (utc(expected) if expected else None)


def test_send_days_wait_for_an_allowed_day_in_the_customers_zone():
    saturday_noon = utc("2026-11-28T11:00")
    assert next_send_time(saturday_noon, BERLIN, None, ("mon", "tue")) == utc("2026-11-29T23:00")
    assert next_send_time(saturday_noon, BERLIN, NIGHT, ("mon",)) == utc("2026-11-30T07:00")


def test_an_unknown_zone_falls_back_to_the_default():
    assert customer_zone("Mars/Olympus", "Europe/Berlin") == BERLIN
    assert customer_zone(None, "UTC") == ZoneInfo("UTC")


@settings(max_examples=300, deadline=None)
@given(moment=st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2028, 1, 1),
                           timezones=st.just(UTC)),
       zone=st.sampled_from(["Europe/Berlin", "America/New_York", "Australia/Sydney", "Asia/Kolkata"]),
       days=st.one_of(st.none(), st.lists(st.sampled_from(["mon", "tue", "wed", "thu", "fri", "sat", "sun"]),
                                          min_size=1, unique=True)))
def test_the_chosen_moment_is_never_early_never_quiet_and_within_a_week(moment, zone, days):
    tz = ZoneInfo(zone)
    found = next_send_time(moment, tz, NIGHT, days)
    when = found or moment
    local = when.astimezone(tz)
    assert when >= moment and when - moment <= timedelta(days=8)
    assert not NIGHT.contains(local.time().replace(tzinfo=None))
    if days:
        assert ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[local.weekday()] in days
