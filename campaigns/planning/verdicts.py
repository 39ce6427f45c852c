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

from campaigns.models import CUSTOMER, EVENT, UTCDateTime
from campaigns.planning.guards import (
    cooling_down,
    over_campaign_cap,
    over_cap,
    sent_this_episode,
    suppressed,
    taken_this_pass,
)
from campaigns.planning.splits import held_out
from campaigns.rules import Campaign, Rules, SqlContext, compile_condition
from campaigns.sql import constant, epoch_seconds, inactive_since

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

    def verdict(self, campaign: Campaign, episode: ColumnElement[str]) -> ColumnElement[str]:
        """Why a customer matching the conditions would or would not get this campaign."""
        customer, now = CUSTOMER.c.id, self.now_literal()
        campaign_id = sa.literal(campaign.id)
        cases: list[tuple[ColumnElement[bool], ColumnElement[str]]] = [
            (sent_this_episode(customer, campaign_id, episode), constant("already_sent")),
        ]
        if campaign.cooldown is not None:
            cooling = cooling_down(customer, campaign_id, self._since(campaign.cooldown))
            cases.append((cooling, constant("cooldown")))
        cases.append((suppressed(CUSTOMER.c.unsubscribed_at, CUSTOMER.c.email), constant("suppressed")))
        # At most one campaign per customer per pass: the higher priority ran first.
        cases.append((taken_this_pass(customer, now), constant("other_campaign")))
        cap = self.rules.defaults.frequency_cap
        if cap is not None:
            cases.append((over_cap(customer, self._since(cap.per), cap.max), constant("capped")))
        cap = campaign.frequency_cap
        if cap is not None:
            over = over_campaign_cap(customer, self._since(cap.per), cap.max, campaign_id)
            cases.append((over, constant("capped")))
        if campaign.holdout > 0:
            cases.append((held_out(customer, campaign), constant("held_out")))
        return sa.case(*cases, else_=constant("send"))

    def _since(self, per: timedelta) -> ColumnElement[datetime]:
        return sa.literal(self.now - per, UTCDateTime())

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
