"""Bounce and complaint rates, per campaign and per period, flagged against thresholds.

Rates are per email sent: hard bounces / sent and complaints / sent, where
"sent" counts deliveries whose ``sent_at`` falls in the range or period and the
bounces and complaints counted are those *about* those deliveries (so a
complaint in March about a February email counts for February).  A report
that names no delivery (matched by address alone to an older email) counts
where its delivery was sent, or, with no delivery at all, nowhere.

Gmail and Yahoo require bulk senders to stay under 0.3 % complaints; hard
bounces over a few percent mean the list is stale.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import col

from campaigns.models import Bounce, BounceKind, CampaignState, Delivery
from campaigns.reports.churn import percent
from campaigns.reports.periods import Grid, bucket


@dataclass(frozen=True)
class Thresholds:
    """Fractions (0.003 = 0.3 %), as RETENTION_COMPLAINT_RATE_THRESHOLD and
    RETENTION_HARD_BOUNCE_RATE_THRESHOLD give them."""

    complaint_rate: float = 0.003
    hard_bounce_rate: float = 0.02


@dataclass(frozen=True)
class Rates:
    label: str  # a campaign id, a period label, or "all"
    sent: int
    hard_bounces: int
    soft_bounces: int
    complaints: int
    flags: tuple[str, ...]  # what is over its threshold, in words
    paused: str | None = None  # campaigns only: why it is paused now

    @property
    def hard_bounce_rate(self) -> float | None:
        """Hard bounces / sent × 100."""
        return percent(self.hard_bounces, self.sent)

    @property
    def soft_bounce_rate(self) -> float | None:
        return percent(self.soft_bounces, self.sent)

    @property
    def complaint_rate(self) -> float | None:
        """Complaints / sent × 100."""
        return percent(self.complaints, self.sent)


@dataclass(frozen=True)
class Deliverability:
    thresholds: Thresholds
    totals: Rates
    campaigns: tuple[Rates, ...]
    periods: tuple[Rates, ...]


def deliverability(session: Session, grid: Grid, thresholds: Thresholds) -> Deliverability:
    start, end = grid.start, grid.end
    in_range = (col(Delivery.sent_at) >= start, col(Delivery.sent_at) < end)
    period = bucket(col(Delivery.sent_at), grid.bounds).label("period")
    # Each delivery counts once per kind, however many reports said so.
    kinds = [sa.func.count(sa.distinct(sa.case((col(Bounce.kind) == kind.value, col(Bounce.delivery_id)))))
             .label(kind.value) for kind in BounceKind]
    rows = session.execute(
        sa.select(col(Delivery.campaign_id), period, sa.func.count(sa.distinct(col(Delivery.id))), *kinds)
        .select_from(Delivery)
        .outerjoin(Bounce, col(Bounce.delivery_id) == col(Delivery.id))
        .where(*in_range)
        .group_by(col(Delivery.campaign_id), period)
    ).all()
    paused = dict(session.execute(
        sa.select(col(CampaignState.campaign_id), col(CampaignState.paused_reason))
        .where(col(CampaignState.paused_at).is_not(None))
    ).all())
    by_campaign: dict[str, list[int]] = {}
    by_period: dict[int, list[int]] = {}
    for campaign, index, *counts in rows:
        for totals in (by_campaign.setdefault(campaign, [0] * 4), by_period.setdefault(index, [0] * 4)):
            for i, value in enumerate(counts):
                totals[i] += int(value or 0)
    everything = [sum(values[i] for values in by_campaign.values()) for i in range(4)]

    def rates(label: str, values: list[int], paused_reason: str | None = None) -> Rates:
        sent, hard, soft, complaints = values
        flags = []
        if sent and complaints / sent > thresholds.complaint_rate:
            flags.append(f"complaints {complaints / sent:.2%} over {thresholds.complaint_rate:.1%}")
        if sent and hard / sent > thresholds.hard_bounce_rate:
            flags.append(f"hard bounces {hard / sent:.2%} over {thresholds.hard_bounce_rate:.0%}")
        return Rates(label, sent, hard, soft, complaints, tuple(flags), paused_reason)

    return Deliverability(
        thresholds=thresholds,
        totals=rates("all", everything),
        campaigns=tuple(rates(c, v, paused.get(c)) for c, v in sorted(by_campaign.items())),
        periods=tuple(rates(grid.label(i), by_period.get(i, [0, 0, 0, 0])) for i in range(grid.count)),
    )
