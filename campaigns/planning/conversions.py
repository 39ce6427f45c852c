"""Conversions: a goal event after a delivery credits that delivery.

A campaign's ``goal: {event, within}`` turns the customer's next such event
within the window into a conversion of the latest delivery before it — sent or
held out alike, since the control group must be measured exactly like the
treated one for lift to mean anything.  It runs set-based in SQL at every
pass, so it does not matter whether the event came by CSV, API or actor.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session, aliased
from sqlmodel import col

from campaigns.models import Delivery, DeliveryStatus, Event
from campaigns.responses.notify import notify
from campaigns.rules import Rules
from campaigns.sql import days_since

CREDITED = (DeliveryStatus.sent, DeliveryStatus.held_out)
# Windows that closed this long ago are settled; looking further back only costs time.
SETTLED_AFTER = timedelta(days=7)


def _moment(delivery: type[Delivery] | Delivery) -> sa.ColumnElement[datetime]:
    return sa.func.coalesce(col(delivery.sent_at), col(delivery.created_at))


def credit_conversions(session: Session, rules: Rules, *, now: datetime) -> int:
    """Mark deliveries converted by goal events; returns how many were newly credited."""
    credited = 0
    for campaign in rules.campaigns:
        goal = campaign.goal
        if goal is None:
            continue
        # Deliveries of every campaign chasing the same goal event compete for the credit.
        rivals = [c.id for c in rules.campaigns if c.goal is not None and c.goal.event == goal.event]
        later = aliased(Delivery)
        first_goal_event = (
            sa.select(sa.func.min(col(Event.occurred_at)))
            .where(
                col(Event.customer_id) == col(Delivery.customer_id),
                col(Event.name) == goal.event,
                col(Event.occurred_at) > _moment(Delivery),
                days_since(_moment(Delivery), col(Event.occurred_at)) <= goal.within.total_seconds() / 86400,
                ~sa.select(col(later.id))
                .where(
                    col(later.customer_id) == col(Delivery.customer_id),
                    col(later.campaign_id).in_(rivals),
                    col(later.status).in_(CREDITED),
                    col(later.id) != col(Delivery.id),
                    _moment(later) > _moment(Delivery),
                    _moment(later) < col(Event.occurred_at),
                )
                # Correlate to the delivery being updated two levels up, not a fresh FROM.
                .correlate_except(later)
                .exists(),
            )
            .scalar_subquery()
        )
        converted = session.execute(
            sa.update(Delivery)
            .where(
                col(Delivery.campaign_id) == campaign.id,
                col(Delivery.status).in_(CREDITED),
                col(Delivery.converted_at).is_(None),
                _moment(Delivery) > now - goal.within - SETTLED_AFTER,
                first_goal_event.is_not(None),
            )
            .values(converted_at=first_goal_event)
            .returning(col(Delivery.id), col(Delivery.customer_id), col(Delivery.converted_at))
            .execution_options(synchronize_session=False)
        ).all()
        for delivery_id, customer_id, converted_at in converted:
            notify(session, "converted", key=f"converted:{delivery_id}", at=converted_at or now,
                   customer_id=customer_id, delivery_id=delivery_id, campaign_id=campaign.id,
                   data={"goal_event": goal.event})
        credited += len(converted)
    return credited
