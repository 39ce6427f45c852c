"""How the demo's synthetic customers behave day by day, and how the emails change that.

A seeded model, not a forecast: engaged customers come back at their own cadence and
now and then drift away or cancel; drifting ones rarely return on their own; a "we miss
you", check-in or win-back email that was really sent (held-out customers get none)
raises the chance they come back.  Cancelled customers answer the exit survey with a
spread of reasons; a few recipients unsubscribe.  The same seed gives the same quarter.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from campaigns.demo_data import ACTIVITY_EVENTS, _Person

ENGAGED, DRIFTING, CANCELLED = "engaged", "drifting", "cancelled"

# Daily chances.  An engaged customer drifts away within a quarter about one time in
# five and cancels about one time in sixteen; a drifting one comes back on their own rarely.
DRIFT_PER_DAY = 0.0028
CANCEL_PER_DAY = 0.0007
RETURN_PER_DAY = 0.006
CANCELLED_RETURN_PER_DAY = 0.0004
# What an email that arrived (within ``NUDGE_DAYS``) does to those chances.
NUDGE_DAYS = 14
NUDGED_RETURN_PER_DAY = 0.045  # drifting customers who got a "we miss you" / win-back / check-in
NUDGED_CANCELLED_RETURN_PER_DAY = 0.012
NUDGED_ACTIVITY_BOOST = 1.6  # an engaged customer who got a check-in comes a little sooner
NUDGED_DRIFT_FACTOR = 0.35  # ... and drifts away less
WIN_BACK = ("we-miss-you", "check-in", "win-back-offer")

SURVEY_ANSWER_SHARE = 0.45
REASONS = (("price", 30), ("not_needed", 22), ("competitor", 15), ("quality", 12),
           ("service", 9), ("other", 12))
MISSING = ("an API for our BI tool", "offline mode", "SSO for the whole team", "better exports",
           "a mobile app", "Gantt charts")
COME_BACK = ("a cheaper plan for small teams", "the API", "if the exports get better",
             "a discount", "probably nothing, we closed the project")
UNSUBSCRIBE_SHARE = 0.012
BOUNCING_SHARE = 0.015  # addresses that no longer exist
BOUNCING_DOMAIN = "gone.example.net"


@dataclass
class Habit:
    external_id: str
    cadence: float
    zone: ZoneInfo
    state: str


@dataclass(frozen=True)
class Answer:
    """One exit-survey response, as the customer would type it into the form."""

    external_id: str
    answers: dict[str, list[str]]


class Behaviour:
    def __init__(self, people: Iterable[_Person], *, seed: int) -> None:
        self.rng = random.Random(seed * 7919 + 1)
        states = {"active": ENGAGED, "drifting": DRIFTING}
        self.habits = [
            Habit(p.external_id, p.cadence, ZoneInfo(p.zone) if p.zone else ZoneInfo("UTC"),
                  states.get(p.fate, CANCELLED))
            for p in people
        ]
        self._numbers = {h.external_id: 0 for h in self.habits}

    def bouncing(self, external_ids: Iterable[str]) -> set[str]:
        """The customers whose address will bounce (a stable share)."""
        return {i for i in external_ids if random.Random(f"bounce-{i}").random() < BOUNCING_SHARE}

    def day(self, start: datetime, nudged: Mapping[str, set[str]]) -> list[dict[str, Any]]:
        """The events of the day beginning at ``start`` (UTC midnight), given which campaigns
        each customer (by external id) received in the last ``NUDGE_DAYS``."""
        events: list[dict[str, Any]] = []
        for habit in self.habits:
            got = nudged.get(habit.external_id, set())
            win_back = bool(got & set(WIN_BACK))
            if habit.state == ENGAGED:
                drift = DRIFT_PER_DAY * (NUDGED_DRIFT_FACTOR if win_back else 1.0)
                roll = self.rng.random()
                if roll < CANCEL_PER_DAY:
                    habit.state = CANCELLED
                    events.append(self._event(habit, "cancelled", self._daytime(habit, start)))
                    continue
                if roll < CANCEL_PER_DAY + drift:
                    habit.state = DRIFTING
                    continue
                chance = min(1.0, (NUDGED_ACTIVITY_BOOST if win_back else 1.0) / max(habit.cadence, 1.0))
                if self.rng.random() < chance:
                    events.extend(self._active_day(habit, start))
            else:
                if habit.state == DRIFTING:
                    chance = NUDGED_RETURN_PER_DAY if win_back else RETURN_PER_DAY
                else:
                    chance = NUDGED_CANCELLED_RETURN_PER_DAY if win_back else CANCELLED_RETURN_PER_DAY
                if self.rng.random() < chance:
                    habit.state = ENGAGED
                    events.extend(self._active_day(habit, start))
        return events

    def exit_survey(self, external_id: str) -> Answer | None:
        """Whether a customer who got the exit survey answers it, and what."""
        if self.rng.random() >= SURVEY_ANSWER_SHARE:
            return None
        answers = {"reason": [self.rng.choices([r for r, _ in REASONS], [w for _, w in REASONS])[0]]}
        if self.rng.random() < 0.4:
            answers["missing"] = [self.rng.choice(MISSING)]
        if self.rng.random() < 0.3:
            answers["come_back"] = [self.rng.choice(COME_BACK)]
        return Answer(external_id, answers)

    def unsubscribes(self) -> bool:
        return self.rng.random() < UNSUBSCRIBE_SHARE

    def _active_day(self, habit: Habit, start: datetime) -> list[dict[str, Any]]:
        at = self._daytime(habit, start)
        events = [self._event(habit, "login", at)]
        for name, probability in ACTIVITY_EVENTS:
            if self.rng.random() < probability:
                at = at + timedelta(minutes=self.rng.randint(1, 20))
                events.append(self._event(habit, name, at))
        return events

    def _daytime(self, habit: Habit, start: datetime) -> datetime:
        """A moment of this UTC day in the customer's own daytime (08:00-20:59 local)."""
        local = start.astimezone(habit.zone).replace(
            hour=self.rng.randint(8, 20), minute=self.rng.randint(0, 59), second=0, microsecond=0)
        return min(max(local.astimezone(start.tzinfo), start), start + timedelta(hours=23, minutes=59))

    def _event(self, habit: Habit, name: str, at: datetime) -> dict[str, Any]:
        self._numbers[habit.external_id] += 1
        return {"id": f"{habit.external_id}-q{self._numbers[habit.external_id]:04d}",
                "customer_id": habit.external_id, "event": name, "occurred_at": at}
