"""The INSERT … SELECT that records one campaign's materialized selection as Delivery rows.

Its shape depends on a few yes/no facts of the campaign (held by the blast guard, capped
rows recorded, a per-pass limit, A/B variants); everything else (the campaign, its template,
the moment, the limit) is a bound parameter.  So a pass builds one statement per shape,
kept for the process, instead of one per campaign at every pass: SQLAlchemy then finds it
compiled, and its cache key computed, from the second campaign on (bench P1).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql.dml import Insert

from campaigns.models import DELIVERY, DeliveryStatus, UTCDateTime
from campaigns.planning.splits import variant_columns
from campaigns.rules import Campaign
from campaigns.sql import constant, insert_for

COLUMNS = (
    "campaign_id",
    "customer_id",
    "episode",
    "status",
    "template",
    "variant",
    "attempts",
    "due_at",
    "created_at",
    "updated_at",
    "enqueued_at",
)
_BUILT: dict[tuple[str, bool, bool, bool], Insert] = {}


def delivery_insert(
    dialect: str, selection: sa.Table, campaign: Campaign, *, held: bool, now: Any
) -> tuple[Insert, dict[str, Any]]:
    """(statement, parameters) inserting the sendable, held-out and (if recorded) capped rows."""
    parameters = {"campaign_id": campaign.id, "now": now, "max_per_pass": campaign.max_per_pass}
    shape = (dialect, held, campaign.over_cap == "skip", campaign.max_per_pass is not None)
    if campaign.variants is not None:  # the split's bounds and labels are the campaign's own
        return _build(shape, selection, variant_columns(campaign, selection.c.customer_id)), parameters
    if shape not in _BUILT:
        template = sa.bindparam("template", type_=sa.String())
        _BUILT[shape] = _build(shape, selection, (template, sa.null()))
    return _BUILT[shape], {**parameters, "template": campaign.template}


def _build(shape: tuple[str, bool, bool, bool], selection: sa.Table, split: tuple[Any, Any]) -> Insert:
    dialect, held, skip_capped, limited = shape
    new_status = DeliveryStatus.held if held else DeliveryStatus.queued
    status = sa.case(
        (selection.c.verdict == constant("held_out"), constant(DeliveryStatus.held_out)),
        (selection.c.verdict == constant("capped"), constant(DeliveryStatus.skipped)),
        else_=constant(new_status),
    )
    recorded = ["send", "held_out"] + (["capped"] if skip_capped else [])
    now = sa.bindparam("now", type_=UTCDateTime())
    template, variant = split
    rows = (
        sa.select(
            sa.bindparam("campaign_id", type_=sa.String()),
            selection.c.customer_id,
            selection.c.episode,
            status,
            template,
            variant,
            constant(0),
            now,
            now,
            now,
            sa.null() if held else now,
        )
        .where(selection.c.verdict.in_([constant(verdict) for verdict in recorded]))
        .order_by(selection.c.customer_id)
    )
    if limited:
        rows = rows.limit(sa.bindparam("max_per_pass", type_=sa.Integer()))
    # The table, not the ORM entity: the ORM's bulk-insert path turns each returned row
    # into an object first, which cost more than the INSERT itself (bench P1).
    insert = insert_for(dialect, DELIVERY)
    statement: Insert = (
        insert.from_select(list(COLUMNS), rows)
        .on_conflict_do_nothing(index_elements=["campaign_id", "customer_id", "episode"])
        .returning(DELIVERY.c.id, DELIVERY.c.status)
    )
    return statement
