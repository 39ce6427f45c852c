"""Lift of a campaign's conversion rate over its holdout group, with a 95 % interval.

The interval is the unpooled Wald interval for a difference of two proportions:

    d = p1 − p2,   SE = sqrt(p1(1 − p1)/n1 + p2(1 − p2)/n2),   d ± 1.959964 · SE

(e.g. Agresti, *Categorical Data Analysis*, §1.4; it is statsmodels'
``confint_proportions_2indep(method="wald")``).  It rests on the normal
approximation, which is only trustworthy when each group has at least
MIN_GROUP members and at least MIN_OUTCOMES conversions *and* non-conversions;
otherwise the answer is "not enough data" with the reason, not a misleading
interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

MIN_GROUP = 30  # members in each of the sent and held-out groups
MIN_OUTCOMES = 5  # conversions and non-conversions in each group (n·p ≥ 5, n·(1 − p) ≥ 5)
CONFIDENCE = 0.95
Z = NormalDist().inv_cdf(0.5 + CONFIDENCE / 2)  # 1.959963984540054

SIGNIFICANT = "significant"
NOT_SIGNIFICANT = "not significant"
NOT_ENOUGH_DATA = "not enough data"


@dataclass(frozen=True)
class Lift:
    sent: int
    converted: int
    held_out: int
    converted_held_out: int
    # Differences in percentage points (p1 − p2) × 100; None with not enough data.
    difference: float | None
    ci_low: float | None
    ci_high: float | None
    verdict: str  # SIGNIFICANT | NOT_SIGNIFICANT | NOT_ENOUGH_DATA
    reason: str  # why not enough data, or what the interval says

    @property
    def rate(self) -> float | None:
        return self.converted * 100.0 / self.sent if self.sent else None

    @property
    def rate_held_out(self) -> float | None:
        return self.converted_held_out * 100.0 / self.held_out if self.held_out else None

    @property
    def relative(self) -> float | None:
        """(p1 / p2 − 1) × 100: how many percent more often the sent group converted."""
        if self.rate is None or not self.rate_held_out:
            return None
        return (self.rate / self.rate_held_out - 1) * 100


def _shortfall(name: str, n: int, converted: int) -> str | None:
    if n < MIN_GROUP:
        return f"{name} group has {n} (need {MIN_GROUP})"
    if converted < MIN_OUTCOMES:
        return f"{name} group has {converted} conversions (need {MIN_OUTCOMES})"
    if n - converted < MIN_OUTCOMES:
        return f"{name} group has {n - converted} non-conversions (need {MIN_OUTCOMES})"
    return None


def two_proportion_lift(sent: int, converted: int, held_out: int, converted_held_out: int) -> Lift:
    """Lift of the sent group's conversion rate over the held-out group's, with its 95 % CI."""
    problems = [
        p for p in (_shortfall("sent", sent, converted), _shortfall("held-out", held_out, converted_held_out))
        if p
    ]
    if problems:
        return Lift(sent, converted, held_out, converted_held_out, None, None, None,
                    NOT_ENOUGH_DATA, "; ".join(problems))
    p1, p2 = converted / sent, converted_held_out / held_out
    se = math.sqrt(p1 * (1 - p1) / sent + p2 * (1 - p2) / held_out)
    difference, margin = p1 - p2, Z * se
    low, high = (difference - margin) * 100, (difference + margin) * 100
    if low > 0:
        verdict, reason = SIGNIFICANT, "the campaign raised conversion"
    elif high < 0:
        verdict, reason = SIGNIFICANT, "the campaign lowered conversion"
    else:
        verdict, reason = NOT_SIGNIFICANT, "the interval includes zero: no measurable effect yet"
    return Lift(sent, converted, held_out, converted_held_out, difference * 100, low, high, verdict, reason)
