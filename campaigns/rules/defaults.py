"""The ``defaults:`` section: sender, time zone, quiet hours, caps and guards for every campaign."""

from __future__ import annotations

from datetime import time, timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, field_validator

from campaigns.rules.values import Duration, Percent, Strict, check_sender
from campaigns.timezones import check_timezone


def _send_rate(value: Any) -> Any:
    """``20/s`` → (20, 1000 ms); also /m and /h."""
    if value is None or isinstance(value, tuple):
        return value
    windows = {"s": 1000, "m": 60_000, "h": 3_600_000}
    text = str(value).replace(" ", "")
    count, _, unit = text.partition("/")
    if not count.isdigit() or int(count) < 1 or unit not in windows:
        raise ValueError(f"write a send rate like 20/s, 600/m or 10000/h, got {value!r}")
    return (int(count), windows[unit])


class FrequencyCap(Strict):
    max: int = Field(ge=1)
    per: Duration


class BlastGuard(Strict):
    factor: float = Field(default=3.0, gt=1)
    min: int = Field(default=100, ge=0)
    first_pass: int = Field(default=10_000, ge=0)
    # A first pass reaching more than this share of all customers is held: on a base of a few
    # thousand, `first_pass` alone never fires.
    share: Percent = 50.0


class QuietHours(Strict):
    start: time
    end: time

    def contains(self, moment: time) -> bool:
        if self.start <= self.end:
            return self.start <= moment < self.end
        return moment >= self.start or moment < self.end  # wraps midnight


def _quiet_hours(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        start, end = (time.fromisoformat(part.strip()) for part in value.split("-"))
    except ValueError:
        raise ValueError(f'write quiet hours as HH:MM-HH:MM, e.g. "21:00-08:00", got {value!r}') from None
    return {"start": start, "end": end}


class Defaults(Strict):
    sender: str = "Retention <retention@example.com>"
    timezone: str = "UTC"
    quiet_hours: Annotated[QuietHours | None, BeforeValidator(_quiet_hours)] = None
    frequency_cap: FrequencyCap | None = None
    passive_churn_after: Duration = timedelta(days=90)
    check_every: Duration = timedelta(minutes=5)
    non_activity_events: tuple[str, ...] = ()
    blast_guard: BlastGuard = BlastGuard()
    survey_valid_for: Duration = timedelta(days=90)
    # (messages, window in ms), shared by every worker on every machine.
    max_send_rate: Annotated[tuple[int, int] | None, BeforeValidator(_send_rate)] = None

    _check_timezone = field_validator("timezone")(check_timezone)
    _check_sender = field_validator("sender")(check_sender)

    @field_validator("check_every")
    @classmethod
    def _not_too_often(cls, value: timedelta) -> timedelta:
        if value < timedelta(seconds=10):
            raise ValueError("check_every must be at least 10s")
        return value
