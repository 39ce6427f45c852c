"""One entry of ``campaigns:``: whom it mails (conditions, trigger, schedule), how often, what."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from croniter import croniter
from pydantic import Field, PrivateAttr, field_validator, model_validator

from campaigns.rules.conditions import Condition
from campaigns.rules.defaults import FrequencyCap
from campaigns.rules.values import Duration, Percent, Strict, Weekday, check_sender


class Trigger(Strict):
    event: str
    after: Duration = timedelta(0)
    # Events older than after + within are history, not triggers (e.g. on first deploy).
    within: Duration = timedelta(days=7)


class Goal(Strict):
    event: str
    within: Duration = timedelta(days=14)


class Variant(Strict):
    template: str
    weight: int = Field(default=1, ge=1)
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]+$", max_length=100)

    @property
    def label(self) -> str:
        return self.name or self.template


class Campaign(Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", max_length=100)
    template: str | None = None
    variants: tuple[Variant, ...] | None = None
    when: dict[str, Any] | None = None
    once: bool = False
    cooldown: Duration | None = None
    priority: int = 0
    trigger: Trigger | None = None
    schedule: str | None = None
    holdout: Percent = 0.0
    goal: Goal | None = None
    survey: str | None = None
    frequency_cap: FrequencyCap | None = None
    max_per_pass: int | None = Field(default=None, ge=1)
    send_days: tuple[Weekday, ...] | None = None
    # Over the frequency cap: `skip` closes this episode for the customer, `defer`
    # leaves it open so a later pass sends once the cap allows.
    over_cap: Literal["skip", "defer"] = "skip"
    sender: str | None = None
    enabled: bool = True

    _check_sender = field_validator("sender")(check_sender)

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None and not croniter.is_valid(value):
            raise ValueError(
                f"invalid cron expression {value!r} (five fields: minute hour day month weekday, "
                'e.g. "0 10 * * TUE")'
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Campaign:
        if (self.template is None) == (self.variants is None):
            raise ValueError("give a campaign either `template:` or `variants:` (A/B test), not both or none")
        if self.variants is not None:
            labels = [v.label for v in self.variants]
            if len(self.variants) < 2 or len(set(labels)) != len(labels):
                raise ValueError("`variants` needs two or more, each with its own template or name")
        if self.once and self.trigger:
            raise ValueError("`once` and `trigger` exclude each other: a trigger sends once per event")
        return self

    # Parsed from `when` by parse_rules, which knows where in the file it stands.
    _condition: Condition | None = PrivateAttr(default=None)

    @property
    def condition(self) -> Condition | None:
        return self._condition

    @property
    def holdout_purpose(self) -> str:
        """Names this campaign's holdout hash; each purpose hashes independently of the others."""
        return f"holdout:{self.id}"

    @property
    def variant_purpose(self) -> str:
        # Independent of the holdout split, so variants are balanced inside the treated group.
        return f"variant:{self.id}"

    @property
    def templates(self) -> list[str]:
        if self.variants is not None:
            return [v.template for v in self.variants]
        return [self.template] if self.template else []
