"""Lift of a campaign's conversion rate over its holdout group, with a 95 % interval.

The interval for the difference of two proportions d = p1 − p2 is Newcombe's hybrid
score interval (Newcombe 1998, *Statistics in Medicine* 17:873, method 10; statsmodels'
``confint_proportions_2indep(method="newcomb")``).  With (l1, u1) and (l2, u2) the Wilson
score intervals of p1 and p2:

    L = d − z · sqrt(l1(1 − l1)/n1 + u2(1 − u2)/n2)
    U = d + z · sqrt(u1(1 − u1)/n1 + l2(1 − l2)/n2)

Unlike the Wald interval it stays inside [−1, 1] and keeps its coverage for the small
conversion rates campaigns have, zero conversions included, so the only data floor is
MIN_GROUP members in each group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

MIN_GROUP = 30  # members in each of the sent and held-out groups
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


def _shortfall(name: str, n: int) -> str | None:
    return f"{name} group has {n} (need {MIN_GROUP})" if n < MIN_GROUP else None


def wilson_interval(successes: int, n: int) -> tuple[float, float]:
    """The Wilson score interval of one proportion (as fractions)."""
    p, z2 = successes / n, Z * Z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_interval(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float]:
    """Newcombe's hybrid score interval for p1 − p2 (as fractions)."""
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson_interval(x1, n1)
    l2, u2 = wilson_interval(x2, n2)
    d = p1 - p2
    low = d - Z * math.sqrt(l1 * (1 - l1) / n1 + u2 * (1 - u2) / n2)
    high = d + Z * math.sqrt(u1 * (1 - u1) / n1 + l2 * (1 - l2) / n2)
    return low, high


def two_proportion_lift(sent: int, converted: int, held_out: int, converted_held_out: int) -> Lift:
    """Lift of the sent group's conversion rate over the held-out group's, with its 95 % CI."""
    problems = [p for p in (_shortfall("sent", sent), _shortfall("held-out", held_out)) if p]
    if problems:
        return Lift(sent, converted, held_out, converted_held_out, None, None, None,
                    NOT_ENOUGH_DATA, "; ".join(problems))
    difference = converted / sent - converted_held_out / held_out
    low, high = (bound * 100 for bound in newcombe_interval(converted, sent, converted_held_out, held_out))
    if low > 0:
        verdict, reason = SIGNIFICANT, "the campaign raised conversion"
    elif high < 0:
        verdict, reason = SIGNIFICANT, "the campaign lowered conversion"
    else:
        verdict, reason = NOT_SIGNIFICANT, "the interval includes zero: no measurable effect yet"
    return Lift(sent, converted, held_out, converted_held_out, difference * 100, low, high, verdict, reason)
