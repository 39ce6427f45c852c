"""Send failed deliveries again after a fix (`retention retry CAMPAIGN`).

A retried delivery goes back to ``queued`` with its natural key and Message-ID
unchanged, so the outbox sweeper hands it to a worker and the worker's send-time
checks (unsubscribe, suppression, quiet hours) apply as for any delivery.  What
the worker does not check is the frequency cap, which the planner enforces: it
is re-checked here against what the customer got since.  ``unknown`` deliveries
(a worker died mid-send: the mail may have arrived) are only retried when asked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import col

from campaigns.delivery import outbox
from campaigns.models import Customer, Delivery, DeliveryStatus
from campaigns.planning.guards import IN_FLIGHT
from campaigns.rules import Campaign, FrequencyCap, Rules

RETRIABLE = (DeliveryStatus.failed, DeliveryStatus.unknown)


@dataclass
class RetryResult:
    requeued: list[int] = field(default_factory=list)
    suppressed: int = 0  # unsubscribed or suppressed since: closed as suppressed
    capped: int = 0  # the customer reached a frequency cap since: left as they were

    @property
    def considered(self) -> int:
        return len(self.requeued) + self.suppressed + self.capped


def retry(
    session: Session, rules: Rules, campaign_id: str, *, status: DeliveryStatus, now: datetime
) -> RetryResult:
    """Queue the campaign's deliveries in ``status`` again; the caller commits."""
    if status not in RETRIABLE:
        raise ValueError(f"only {' or '.join(RETRIABLE)} deliveries can be retried, not {status}")
    campaign = rules.campaign(campaign_id)
    result = RetryResult()
    rows = session.execute(
        sa.select(Delivery, Customer)
        .join(Customer, col(Customer.id) == col(Delivery.customer_id))
        .where(col(Delivery.campaign_id) == campaign.id, col(Delivery.status) == status)
        .order_by(col(Delivery.id))
    ).all()
    for delivery, customer in rows:
        reason = outbox.suppression_reason(session, customer)
        if reason:
            delivery.status, delivery.last_error, delivery.updated_at = DeliveryStatus.suppressed, reason, now
            result.suppressed += 1
            continue
        if _capped(session, rules, campaign, customer, now=now):
            result.capped += 1
            continue
        delivery.status = DeliveryStatus.queued
        delivery.attempts = 0
        delivery.due_at = now
        delivery.enqueued_at = None  # the sweeper's next round hands it to a worker
        delivery.updated_at = now
        delivery.last_error = f"retried after: {delivery.last_error}" if delivery.last_error else None
        result.requeued.append(int(delivery.id or 0))
        session.flush()  # the next customer's cap counts this one
    return result


def _capped(session: Session, rules: Rules, campaign: Campaign, customer: Customer, *, now: datetime) -> bool:
    caps: list[tuple[FrequencyCap, str | None]] = []
    if rules.defaults.frequency_cap is not None:
        caps.append((rules.defaults.frequency_cap, None))
    if campaign.frequency_cap is not None:
        caps.append((campaign.frequency_cap, campaign.id))
    for cap, scope in caps:
        recent = sa.select(sa.func.count()).where(
            col(Delivery.customer_id) == customer.id,
            col(Delivery.status).in_(IN_FLIGHT),
            sa.func.coalesce(col(Delivery.sent_at), col(Delivery.created_at)) > now - cap.per,
        )
        if scope is not None:
            recent = recent.where(col(Delivery.campaign_id) == scope)
        if int(session.execute(recent).scalar_one()) >= cap.max:
            return True
    return False
