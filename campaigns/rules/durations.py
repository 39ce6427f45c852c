"""Durations as marketing writes them: ``30m``, ``12h``, ``7d``, ``4w``."""

from __future__ import annotations

import re
from datetime import timedelta

MAX_DURATION = timedelta(days=36_525)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


def parse_duration(text: str) -> timedelta:
    """Parse ``7d`` into a timedelta; raise ValueError naming the bad value."""
    match = _PATTERN.match(str(text))
    if not match:
        raise ValueError(f"invalid duration {text!r}: write a number and a unit, e.g. 30m, 12h, 7d or 4w")
    amount, unit = match.groups()
    try:
        value = timedelta(**{_UNITS[unit]: float(amount)})
    except OverflowError:
        value = MAX_DURATION * 2
    if value > MAX_DURATION:
        raise ValueError(f"duration {text!r} is too long: at most 100 years")
    return value


def format_duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
