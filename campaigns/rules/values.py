"""Field types the rules.yaml sections share: durations, percentages, weekdays, senders.

Each reads what a person writes (``30m``, ``10%``, ``mon``) and says in its error how to
write it instead, since these messages end up next to a file:line:col.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict

from campaigns.addresses import EXAMPLE as EXAMPLE_SENDER
from campaigns.addresses import parse_address
from campaigns.rules.durations import parse_duration


class Strict(BaseModel):
    # Unknown keys are errors, never ignored: a misspelt ``cooldwn`` that silently
    # vanished would mail customers every pass.
    model_config = ConfigDict(extra="forbid", frozen=True)


def _duration(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"invalid duration {value!r}: write a number and a unit, e.g. 30m, 12h, 7d or 4w")
    return parse_duration(value)


Duration = Annotated[timedelta, BeforeValidator(_duration)]


def _percent(value: Any) -> float:
    text = str(value).strip()
    try:
        number = float(text[:-1]) if text.endswith("%") else float(text) * 100
    except ValueError:
        raise ValueError(f"write a percentage like 10%, got {value!r}") from None
    if isinstance(value, bool) or (isinstance(value, int | float) and value > 1):
        raise ValueError(f"write a percentage like 10%, got {value!r}")
    if not 0 <= number <= 100:
        raise ValueError(f"a percentage between 0% and 100%, got {value!r}")
    return number


Percent = Annotated[float, BeforeValidator(_percent)]


def check_sender(value: str | None) -> str | None:
    if value is not None:
        try:
            parse_address(value)
        except ValueError as exc:
            raise ValueError(f"{exc} (write e.g. {EXAMPLE_SENDER})") from None
    return value


Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
# In datetime.weekday() order: WEEKDAYS[moment.weekday()] is the moment's day.
WEEKDAYS: tuple[Weekday, ...] = get_args(Weekday)
