"""The verdict SQL: for every customer matching a campaign, why they would or would not get it.

One CASE expression per customer, tested in order (already sent this episode, in cooldown,
suppressed, taken by a higher-priority campaign this pass, over a frequency cap, held out)
with ``send`` when none applies.  `retention plan` counts these verdicts; the pass inserts
the ``send`` ones (and records held-out and capped ones) as Delivery rows.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement

from campaigns.models import CUSTOMER, DELIVERY, EVENT, SUPPRESSION, DeliveryStatus, UTCDateTime
from campaigns.planning.splits import held_out
from campaigns.rules import Campaign, FrequencyCap, Rules, SqlContext, compile_condition
from campaigns.sql import epoch_seconds, inactive_since

# Deliveries that are, or will be, real messages: they count against frequency caps.
IN_FLIGHT = (DeliveryStatus.queued, DeliveryStatus.sending, DeliveryStatus.sent, DeliveryStatus.held)
COOLING = (*IN_FLIGHT, DeliveryStatus.held_out)
VERDICTS = (
    "no_match",
    "already_sent",
    "cooldown",
    "suppressed",
    "other_campaign",
    "capped",
    "held_out",
    "send",
)


class VerdictQuery:
    """Builds one campaign's selection at the moment ``now`` (optionally for one customer)."""

    def __init__(self, rules: Rules, *, now: datetime, customer_id: int | None = None) -> None:
        self.rules = rules
        self.now = now
        self.customer_id = customer_id
        self.sql = SqlContext(now=now, passive_churn_after=rules.defaults.passive_churn_after)

    def now_literal(self) -> ColumnElement[datetime]:
        return sa.literal(self.now, UTCDateTime())

    def episode(self, campaign: Campaign, fire: datetime | None) -> ColumnElement[str]:
        if campaign.once:
            return sa.literal("once")
        if campaign.trigger is not None:
            return sa.literal("event:") + sa.cast(EVENT.c.id, sa.String)
        if fire is not None:
            return sa.literal("cron:" + fire.isoformat())
        # One send per absence: coming back starts a new episode.
        return sa.literal("active:") + sa.cast(epoch_seconds(inactive_since()), sa.String)

    def _recent(self, per: timedelta) -> ColumnElement[bool]:
        return sa.func.coalesce(DELIVERY.c.sent_at, DELIVERY.c.created_at) > self.now - per

    def _capped(self, cap: FrequencyCap, campaign_id: str | None) -> ColumnElement[bool]:
        count = sa.select(sa.func.count()).where(
            DELIVERY.c.customer_id == CUSTOMER.c.id,
            DELIVERY.c.status.in_(IN_FLIGHT),
            self._recent(cap.per),
        )
        if campaign_id is not None:
            count = count.where(DELIVERY.c.campaign_id == campaign_id)
        return count.scalar_subquery() >= cap.max

    def verdict(self, campaign: Campaign, episode: ColumnElement[str]) -> ColumnElement[str]:
        """Why a customer matching the conditions would or would not get this campaign."""
        mine = sa.and_(
            DELIVERY.c.customer_id == CUSTOMER.c.id, DELIVERY.c.campaign_id == campaign.id
        )
        cases: list[tuple[ColumnElement[bool], str]] = [
            (
                sa.select(DELIVERY.c.id).where(mine, DELIVERY.c.episode == episode).exists(),
                "already_sent",
            ),
        ]
        if campaign.cooldown is not None:
            # Held-out rows start a cooldown too, so both groups are paced alike.
            spaced = sa.select(DELIVERY.c.id).where(
                mine, self._recent(campaign.cooldown), DELIVERY.c.status.in_(COOLING)
            )
            cases.append((spaced.exists(), "cooldown"))
        suppressed = sa.or_(
            CUSTOMER.c.unsubscribed_at.is_not(None),
            sa.select(SUPPRESSION.c.id)
            .where(SUPPRESSION.c.email == sa.func.lower(CUSTOMER.c.email))
            .exists(),
        )
        cases.append((suppressed, "suppressed"))
        # At most one campaign per customer per pass: the higher priority ran first.
        taken = (
            sa.select(DELIVERY.c.id)
            .where(
                DELIVERY.c.customer_id == CUSTOMER.c.id,
                DELIVERY.c.created_at >= self.now_literal(),
                DELIVERY.c.status.in_(IN_FLIGHT),
            )
            .exists()
        )
        cases.append((taken, "other_campaign"))
        for cap, scope in ((self.rules.defaults.frequency_cap, None), (campaign.frequency_cap, campaign.id)):
            if cap is not None:
                cases.append((self._capped(cap, scope), "capped"))
        if campaign.holdout > 0:
            cases.append((held_out(CUSTOMER.c.id, campaign), "held_out"))
        return sa.case(*cases, else_="send")

    def selection(self, campaign: Campaign, fire: datetime | None) -> sa.Select[*tuple[Any, ...]]:
        """Every customer matching the campaign's conditions: (customer_id, episode, verdict)."""
        episode = self.episode(campaign, fire)
        query: sa.Select[*tuple[Any, ...]] = sa.select(
            CUSTOMER.c.id.label("customer_id"),
            episode.label("episode"),
            self.verdict(campaign, episode).label("verdict"),
        )
        if campaign.trigger is not None:
            trigger = campaign.trigger
            query = query.join(
                EVENT,
                sa.and_(
                    EVENT.c.customer_id == CUSTOMER.c.id,
                    EVENT.c.name == trigger.event,
                    EVENT.c.occurred_at <= self.now - trigger.after,
                    EVENT.c.occurred_at > self.now - trigger.after - trigger.within,
                ),
            )
        condition = campaign.condition
        query = query.where(compile_condition(condition, self.sql) if condition else sa.true())
        if self.customer_id is not None:
            query = query.where(CUSTOMER.c.id == self.customer_id)
        return query
