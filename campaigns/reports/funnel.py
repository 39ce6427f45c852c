"""Per campaign (and per A/B variant) what happened to its deliveries, and its lift."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import col

from campaigns.models import Delivery, DeliveryStatus, Interaction, InteractionKind
from campaigns.reports.lift import Lift, two_proportion_lift

PENDING = (DeliveryStatus.queued, DeliveryStatus.sending, DeliveryStatus.held)


@dataclass(frozen=True)
class Funnel:
    campaign: str
    variant: str | None  # None: the campaign as a whole (every variant together)
    planned: int  # deliveries recorded, held-out ones included (capped/skipped ones not)
    held_out: int  # control group: recorded, never sent
    pending: int  # queued, sending, or held by the blast guard
    sent: int
    failed: int
    bounced: int
    suppressed: int  # unsubscribed or suppressed between planning and sending
    skipped: int  # over the frequency cap, episode closed
    clicked: int  # deliveries with at least one click
    surveyed: int  # deliveries with a survey response
    unsubscribed: int  # deliveries whose link unsubscribed the customer
    converted: int  # sent deliveries credited with the campaign's goal
    converted_held_out: int  # held-out deliveries whose customer reached the goal anyway
    lift: Lift


COUNTS = tuple(f.name for f in fields(Funnel) if f.name not in ("campaign", "variant", "lift"))


def _with_lift(campaign: str, variant: str | None, counts: dict[str, int]) -> Funnel:
    lift = two_proportion_lift(
        counts["sent"], counts["converted"], counts["held_out"], counts["converted_held_out"]
    )
    return Funnel(campaign=campaign, variant=variant, lift=lift, **counts)


def funnels(session: Session, *, start: datetime, end: datetime) -> list[Funnel]:
    """Deliveries planned in [start, end), per campaign; variants follow their campaign's row.

    A variant's lift compares it with the held-out customers who would have got that
    variant (the planner assigns variants to held-out rows too).
    """
    touched = (
        sa.select(
            col(Interaction.delivery_id).label("delivery_id"),
            *(
                sa.func.max(sa.case((col(Interaction.kind) == kind.value, 1), else_=0)).label(kind.value)
                for kind in (InteractionKind.click, InteractionKind.survey, InteractionKind.unsubscribe)
            ),
        )
        .group_by(col(Interaction.delivery_id))
        .subquery("touched")
    )
    status = col(Delivery.status)
    converted = col(Delivery.converted_at).is_not(None)

    def count(condition: sa.ColumnElement[bool]) -> sa.ColumnElement[int]:
        return sa.func.sum(sa.case((condition, 1), else_=0))

    def flag(name: str) -> sa.ColumnElement[int]:
        return sa.func.sum(sa.func.coalesce(touched.c[name], 0))

    query: Any = (
        sa.select(
            col(Delivery.campaign_id).label("campaign"),
            col(Delivery.variant).label("variant"),
            count(status != DeliveryStatus.skipped.value).label("planned"),
            count(status == DeliveryStatus.held_out.value).label("held_out"),
            count(status.in_([s.value for s in PENDING])).label("pending"),
            count(status == DeliveryStatus.sent.value).label("sent"),
            count(status == DeliveryStatus.failed.value).label("failed"),
            count(status == DeliveryStatus.bounced.value).label("bounced"),
            count(status == DeliveryStatus.suppressed.value).label("suppressed"),
            count(status == DeliveryStatus.skipped.value).label("skipped"),
            flag(InteractionKind.click.value).label("clicked"),
            flag(InteractionKind.survey.value).label("surveyed"),
            flag(InteractionKind.unsubscribe.value).label("unsubscribed"),
            count(sa.and_(status == DeliveryStatus.sent.value, converted)).label("converted"),
            count(sa.and_(status == DeliveryStatus.held_out.value, converted)).label("converted_held_out"),
        )
        .select_from(Delivery)
        .outerjoin(touched, touched.c.delivery_id == col(Delivery.id))
        .where(col(Delivery.created_at) >= start, col(Delivery.created_at) < end)
        .group_by(col(Delivery.campaign_id), col(Delivery.variant))
    )
    by_campaign: dict[str, list[Funnel]] = {}
    for row in session.execute(query):
        counts = {name: int(row._mapping[name] or 0) for name in COUNTS}
        by_campaign.setdefault(row.campaign, []).append(_with_lift(row.campaign, row.variant, counts))
    result: list[Funnel] = []
    for campaign in sorted(by_campaign):
        rows = sorted(by_campaign[campaign], key=lambda f: f.variant or "")
        result.append(_total(rows))
        if any(f.variant is not None for f in rows):
            result.extend(rows)
    return result


def _total(rows: Sequence[Funnel]) -> Funnel:
    counts = {name: sum(getattr(row, name) for row in rows) for name in COUNTS}
    return _with_lift(rows[0].campaign, None, counts)
