"""Campaigns paused while they run: by policy rejections in a row, bounces or complaints.

A paused campaign's deliveries stay queued until `retention approve`; the sweeper and
the senders leave them alone.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import col

from campaigns.models import CampaignState
from campaigns.sql import dialect_insert

# Policy rejections (SMTP 5.7.x: spam, DMARC, blocked content) say nothing about
# the recipient, so the address stays mailable; many in a row mean the campaign
# itself is being refused, and sending more only hurts the sender's reputation.
POLICY_FAILURES_TO_PAUSE = 10

_state = CampaignState.__table__  # type: ignore[attr-defined]


def record_policy_failure(session: Session, campaign_id: str, reason: str, *, now: datetime) -> bool:
    """Count one more policy rejection in a row; True when that paused the campaign."""
    _ensure_state(session, campaign_id)
    session.execute(
        sa.update(CampaignState)
        .where(col(CampaignState.campaign_id) == campaign_id)
        .values(policy_failures=col(CampaignState.policy_failures) + 1)
    )
    paused = pause(
        session, campaign_id, f"{POLICY_FAILURES_TO_PAUSE} policy rejections in a row, the last: {reason}",
        now=now, commit=False, when=col(CampaignState.policy_failures) >= POLICY_FAILURES_TO_PAUSE,
    )
    session.commit()
    return paused


def pause(
    session: Session, campaign_id: str, reason: str, *, now: datetime, commit: bool = True,
    when: sa.ColumnElement[bool] | None = None,
) -> bool:
    """Pause a campaign until `retention approve`; True when this paused it (it was running).

    Paused deliveries stay queued and the sweeper leaves them alone.
    """
    _ensure_state(session, campaign_id)
    conditions = [col(CampaignState.campaign_id) == campaign_id, col(CampaignState.paused_at).is_(None)]
    if when is not None:
        conditions.append(when)
    paused = session.execute(
        sa.update(CampaignState).where(*conditions).values(paused_at=now, paused_reason=reason[:1000])
    ).rowcount  # type: ignore[attr-defined]
    if commit:
        session.commit()
    return bool(paused)


def reset_policy_failures(session: Session, campaign_ids: Collection[str]) -> None:
    """A send ends these campaigns' runs of policy rejections (one statement per chunk sent)."""
    session.execute(_RESET, {"ids": sorted(campaign_ids)})


# Core, built once, one shape for any number of campaigns: it runs with every chunk of sends.
_RESET = (
    sa.update(_state)
    .where(_state.c.campaign_id.in_(sa.bindparam("ids", expanding=True)), _state.c.policy_failures > 0)
    .values(policy_failures=0)
)


def paused_reason(session: Session, campaign_id: str) -> str | None:
    state = session.get(CampaignState, campaign_id)
    return state.paused_reason if state is not None and state.paused_at is not None else None


def _ensure_state(session: Session, campaign_id: str) -> None:
    # ON CONFLICT rather than commit-or-rollback: the caller's transaction stays whole.
    insert = dialect_insert(session, CampaignState)
    session.execute(insert.values(campaign_id=campaign_id, policy_failures=0)
                    .on_conflict_do_nothing(index_elements=["campaign_id"]))
