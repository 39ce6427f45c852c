"""Bounce and complaint reports from any channel (webhooks, the bounce mailbox) into the database."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlmodel import Session

from campaigns.responses.bounces import BounceReport, Policy, record
from worker.settings import Settings


def bounce_policy(settings: Settings) -> Policy:
    return Policy(
        soft_limit=settings.soft_bounce_limit,
        soft_window=timedelta(days=settings.soft_bounce_window_days),
        complaint_rate=settings.complaint_rate_threshold,
        complaint_min_sends=settings.complaint_pause_min_sends,
    )


@dataclass
class Applied:
    applied: int = 0
    duplicates: int = 0
    unmatched: int = 0
    paused: dict[str, str] = field(default_factory=dict)  # campaign → why, for those paused now

    def as_dict(self) -> dict[str, object]:
        return {"applied": self.applied, "duplicates": self.duplicates, "unmatched": self.unmatched,
                "paused": self.paused}


def apply_reports(session: Session, reports: Iterable[BounceReport], *, policy: Policy,
                  now: datetime) -> Applied:
    """Record each report (each commits on its own: one bad row cannot undo the others)."""
    result = Applied()
    for report in reports:
        outcome = record(session, report, policy=policy, now=now)
        if outcome.duplicate:
            result.duplicates += 1
        elif not outcome.matched:
            result.unmatched += 1
        else:
            result.applied += 1
        if outcome.paused and outcome.campaign_id:
            result.paused[outcome.campaign_id] = outcome.paused
    return result
