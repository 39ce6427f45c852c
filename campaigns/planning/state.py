"""Campaign state across passes: the blast guard's baseline and hold, policy pauses, approval."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import col

from campaigns.models import CAMPAIGN_STATE, CampaignState, Delivery, DeliveryStatus
from campaigns.rules import BlastGuard, Campaign
from campaigns.sql import dialect_insert


@dataclass
class PassState:
    """The part of a campaign's ``CampaignState`` row that a pass reads and changes.

    Plain values, not an ORM object: creating the first one would configure every mapper,
    which a cold pass does not otherwise need (bench P1).
    """

    campaign_id: str
    last_pass_at: datetime | None
    last_audience: int | None
    approved_audience: int | None
    held_since: datetime | None
    paused_at: datetime | None
    paused_reason: str | None


_READ = tuple(f.name for f in fields(PassState))
# What a pass writes back (see save_states).
_CHANGED = ("last_pass_at", "last_audience", "approved_audience", "held_since")


def locked_states(session: Session, campaign_ids: Sequence[str]) -> dict[str, PassState]:
    """The campaigns' rows, created if new and locked: racing planners take turns (PostgreSQL).

    One upsert whose no-op update takes the row locks, in campaign id order so that two
    passes over different campaigns cannot deadlock (SQLite has one writer anyway).  The
    pass writes its changes back with ``save_states``.
    """
    if not campaign_ids:
        return {}
    insert = dialect_insert(session, CAMPAIGN_STATE)
    # Executed with one parameter set per campaign, not built with .values(list): SQLAlchemy
    # still sends a single multi-row INSERT, but compiles it once per process rather than at
    # every pass (a multi-VALUES statement is never cached).
    rows = session.connection().execute(
        insert.on_conflict_do_update(
            index_elements=[CAMPAIGN_STATE.c.campaign_id], set_={"campaign_id": insert.excluded.campaign_id}
        ).returning(*(CAMPAIGN_STATE.c[name] for name in _READ)),
        [{"campaign_id": i} for i in sorted(campaign_ids)],
    )
    return {row.campaign_id: PassState(*row) for row in rows}


def save_states(session: Session, states: Sequence[PassState]) -> None:
    """Write what a pass changed in ``states`` (see locked_states)."""
    if not states:
        return
    table = CAMPAIGN_STATE
    session.connection().execute(
        table.update()
        .where(table.c.campaign_id == sa.bindparam("key"))
        .values({name: sa.bindparam(name) for name in _CHANGED}),
        [{"key": state.campaign_id, **{name: getattr(state, name) for name in _CHANGED}} for state in states],
    )
    if not session.identity_map:
        return  # nothing loaded, nothing stale (and no need to wake the ORM's mappers)
    for state in states:
        # A copy the session loaded earlier would now be stale: reload it when next used.
        loaded = session.identity_map.get(session.identity_key(CampaignState, state.campaign_id))
        if loaded is not None:
            session.expire(loaded)


def blast_guard_reason(
    guard: BlastGuard,
    campaign: Campaign,
    audience: int,
    state: PassState,
    total_customers: Callable[[], int],
) -> str | None:
    """Why this pass's audience is held for approval, or None when it may go out.

    ``total_customers`` is asked only for a first pass that neither limit has stopped.
    """
    previous = state.last_audience
    if previous is None:
        if audience > guard.first_pass:
            return f"first pass matches {audience} customers (over first_pass {guard.first_pass})"
        if audience and campaign.condition is None and campaign.trigger is None:
            return (
                f"first pass of a campaign without conditions matches {audience} customers "
                "(add `when:` to narrow it, or approve it as it is)"
            )
        total = total_customers()
        if audience > guard.min and audience > total * guard.share / 100:
            return (
                f"first pass matches {audience} of {total} customers "
                f"(over share {guard.share:g}% and over min {guard.min})"
            )
        return None
    if audience > guard.min and audience > guard.factor * previous:
        return (
            f"audience jumped from {previous} to {audience} customers "
            f"(over {guard.factor:g}x and over min {guard.min})"
        )
    return None


def approve(session: Session, campaign_id: str, *, now: datetime) -> int:
    """Release what the blast guard held (its audience becomes the new baseline) and resume a
    campaign paused by policy rejections."""
    state = session.get(CampaignState, campaign_id)
    released = session.execute(
        sa.update(Delivery)
        .where(col(Delivery.campaign_id) == campaign_id, col(Delivery.status) == DeliveryStatus.held)
        .values(status=DeliveryStatus.queued, enqueued_at=None, due_at=now, updated_at=now)
    ).rowcount  # type: ignore[attr-defined]
    if state is not None:
        if state.approved_audience is not None:
            state.last_audience = state.approved_audience
        state.approved_audience = None
        state.held_since = None
        if state.paused_at is not None:
            state.approved_at = now  # complaints before this were seen; the rate counts afresh
        state.paused_at = None
        state.paused_reason = None
        state.policy_failures = 0
    return int(released or 0)
