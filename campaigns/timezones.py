"""Time zone names: the one check that rules.yaml, ingested records and sending share."""

from __future__ import annotations

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


def check_timezone(value: str) -> str:
    """``value`` when it names an IANA time zone; otherwise ValueError saying what to write."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {value!r} (use an IANA name such as 'Europe/Berlin')"
        ) from None
    return value


def customer_zone(timezone: str | None, default: str) -> ZoneInfo:
    """The customer's own zone when it is a valid one, else the default (rules.yaml's)."""
    try:
        return ZoneInfo(check_timezone(timezone)) if timezone else ZoneInfo(default)
    except ValueError:
        return ZoneInfo(default)
