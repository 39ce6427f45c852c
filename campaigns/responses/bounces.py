"""Bounces and spam complaints that arrive after the send: match them to a delivery, apply them.

The relays companies use (SES, SendGrid, Postmark, Mailgun, a Postfix of their
own) accept a message with 250 and report its fate later, as a webhook or as a
DSN / ARF report in a mailbox.  Whatever the channel, it becomes one
``BounceReport`` and goes through ``record``:

- **hard** bounce: the delivery becomes ``bounced``, the address is suppressed;
- **soft** bounce: counted; ``soft_limit`` of them within ``soft_window`` suppress the address;
- **complaint**: the customer is unsubscribed and the address suppressed at once, and the
  complaint is recorded as a response (an ``Interaction``); a campaign whose complaint rate
  crosses ``complaint_rate`` over at least ``complaint_min_sends`` sends pauses itself until
  `retention approve`.

Each report carries a key (its source, the provider's id for it, the recipient);
the ``bounce`` table's UNIQUE constraint on it makes a report delivered twice a
no-op, and everything a report changes is written in the same transaction as
that row.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import col

from campaigns.delivery import outbox, pausing
from campaigns.models import (
    Bounce,
    BounceKind,
    CampaignState,
    Customer,
    Delivery,
    DeliveryStatus,
    Interaction,
    InteractionKind,
)
from campaigns.responses.notify import notify
from campaigns.sql import dialect_insert

log = logging.getLogger(__name__)

KEY_MAX = 255
# Statuses in which the message left: a bounce can only be about one of these.
LEFT = (DeliveryStatus.sent, DeliveryStatus.unknown, DeliveryStatus.bounced)


@dataclass(frozen=True)
class BounceReport:
    """One recipient's bounce or complaint, as a provider or a mailbox reported it."""

    kind: BounceKind
    key: str  # "<source>:<the report's own id>:<recipient>": the same report twice has the same key
    source: str  # ses, sendgrid, postmark, mailgun, api, mailbox
    email: str = ""  # empty when the reporter redacted it (ARF reports often do)
    message_id: str | None = None  # the Message-ID of the email that bounced
    campaign_id: str | None = None  # its X-Retention-Campaign header
    delivery_id: int | None = None  # from a VERP Return-Path
    reason: str = ""
    occurred_at: datetime | None = None


@dataclass(frozen=True)
class Policy:
    soft_limit: int = 3
    soft_window: timedelta = timedelta(days=30)
    complaint_rate: float = 0.003  # Gmail's and Yahoo's bulk-sender limit: 0.3 %
    complaint_min_sends: int = 500


@dataclass(frozen=True)
class Recorded:
    duplicate: bool  # this report was applied before: nothing changed
    matched: bool  # an address (and maybe a delivery) was found to apply it to
    delivery_id: int | None = None
    campaign_id: str | None = None
    email: str = ""
    suppressed: bool = False  # the address is suppressed now because of this report
    paused: str | None = None  # why the campaign paused itself, when this report paused it


def record(session: Session, report: BounceReport, *, policy: Policy, now: datetime) -> Recorded:
    """Apply one report (idempotent) and commit."""
    delivery = match_delivery(session, report)
    email = (report.email or _customer_email(session, delivery) or "").strip().lower()
    if not email:
        log.warning("%s %s from %s matches no delivery and names no address; ignored",
                    report.kind, report.key, report.source)
        return Recorded(duplicate=False, matched=False)
    campaign_id = delivery.campaign_id if delivery is not None else report.campaign_id
    delivery_id = delivery.id if delivery is not None else None
    occurred = report.occurred_at or now
    if not _store(session, report, email=email, delivery_id=delivery_id, campaign_id=campaign_id,
                  occurred=occurred, now=now):
        session.rollback()
        return Recorded(duplicate=True, matched=True, delivery_id=delivery_id, campaign_id=campaign_id,
                        email=email)
    suppressed, paused = False, None
    reason = f"{report.kind} bounce ({report.source}): {report.reason}" if report.reason else (
        f"{report.kind} bounce ({report.source})")
    if report.kind == BounceKind.hard:
        if delivery is not None:
            _mark_bounced(session, delivery, report.reason or "hard bounce", now=now)
        suppressed = outbox.suppress(session, email, reason, now=now, commit=False)
    elif report.kind == BounceKind.soft:
        recent = _soft_bounces(session, email, since=occurred - policy.soft_window)
        if recent >= policy.soft_limit:
            days = policy.soft_window.total_seconds() / 86400
            suppressed = outbox.suppress(
                session, email, f"{recent} soft bounces within {days:g} days, the last: {report.reason}",
                now=now, commit=False)
    else:
        _unsubscribe(session, email, now=now)
        suppressed = outbox.suppress(session, email, f"spam complaint ({report.source})", now=now,
                                     commit=False)
        if delivery is not None:
            _record_complaint(session, delivery, now=now)
        if campaign_id is not None:
            paused = _pause_on_complaint_rate(session, campaign_id, policy, now=now)
    announced = {BounceKind.hard: "bounced"}.get(report.kind, None if report.kind == BounceKind.soft
                                                  else "complained")
    if announced is not None:
        # Keyed like the sender's own SMTP bounce: a delivery known both ways is announced once.
        notify(session, announced, at=occurred, key=f"{announced}:{delivery_id or report.key}",
               customer_id=delivery.customer_id if delivery is not None else None,
               delivery_id=delivery_id, campaign_id=campaign_id,
               data={"email": email, "source": report.source, "reason": report.reason or None})
    session.commit()
    log.info("%s from %s for %s (delivery %s, campaign %s)%s", report.kind, report.source, email,
             delivery_id, campaign_id, "; address suppressed" if suppressed else "")
    if paused:
        log.error("campaign %s paused: %s; look into it, then `retention approve %s`",
                  campaign_id, paused, campaign_id)
    return Recorded(duplicate=False, matched=True, delivery_id=delivery_id, campaign_id=campaign_id,
                    email=email, suppressed=suppressed, paused=paused)


# ---------------------------------------------------------------- matching


def match_delivery(session: Session, report: BounceReport) -> Delivery | None:
    """The delivery a report is about: by VERP delivery id, Message-ID, campaign + address, address."""
    address = report.email.strip().lower()
    if report.delivery_id is not None:
        delivery = session.get(Delivery, report.delivery_id)
        # A VERP address is guessable: it must agree with the recipient when one is named.
        if delivery is not None and (not address or _customer_email(session, delivery) == address):
            return delivery
    if report.message_id:
        wanted = normalize_message_id(report.message_id)
        found = session.scalars(
            sa.select(Delivery).where(col(Delivery.message_id) == wanted).order_by(col(Delivery.id).desc())
            .limit(1)
        ).first()
        if found is not None:
            return found
    if not address:
        return None
    query = (
        sa.select(Delivery)
        .join(Customer, col(Customer.id) == col(Delivery.customer_id))
        .where(sa.func.lower(col(Customer.email)) == address, col(Delivery.status).in_(LEFT))
        .order_by(col(Delivery.sent_at).desc(), col(Delivery.id).desc())
        .limit(1)
    )
    if report.campaign_id:
        found = session.scalars(query.where(col(Delivery.campaign_id) == report.campaign_id)).first()
        if found is not None:
            return found
    return session.scalars(query).first()


def normalize_message_id(value: str) -> str:
    """``<id@host>`` whatever the reporter did to the brackets and surrounding space."""
    return f"<{value.strip().strip('<>').strip()}>"


def report_key(source: str, report_id: str, email: str) -> str:
    return f"{source}:{report_id}:{email.strip().lower()}"[:KEY_MAX]


# ---------------------------------------------------------------- effects


def _store(session: Session, report: BounceReport, *, email: str, delivery_id: int | None,
           campaign_id: str | None, occurred: datetime, now: datetime) -> bool:
    """Insert the report's row; False when its key is there already (a repeat)."""
    insert = dialect_insert(session, Bounce)
    inserted = session.execute(
        insert.values(key=report.key[:KEY_MAX], source=report.source, kind=report.kind, email=email[:320],
                      delivery_id=delivery_id, campaign_id=campaign_id, reason=report.reason[:1000] or None,
                      occurred_at=occurred, created_at=now)
        .on_conflict_do_nothing(index_elements=["key"])
        # RETURNING, not rowcount: an ORM-enabled INSERT does not report rowcount on every driver.
        .returning(col(Bounce.id))
    ).first()
    return inserted is not None


def _customer_email(session: Session, delivery: Delivery | None) -> str | None:
    if delivery is None:
        return None
    email = session.scalar(sa.select(col(Customer.email)).where(col(Customer.id) == delivery.customer_id))
    return email.strip().lower() if email else None


def _mark_bounced(session: Session, delivery: Delivery, reason: str, *, now: datetime) -> None:
    session.execute(
        sa.update(Delivery)
        .where(col(Delivery.id) == delivery.id,
               col(Delivery.status).in_((DeliveryStatus.sent, DeliveryStatus.unknown)))
        .values(status=DeliveryStatus.bounced, last_error=f"bounced after sending: {reason}"[:2000],
                updated_at=now)
        .execution_options(synchronize_session=False)
    )


def _soft_bounces(session: Session, email: str, *, since: datetime) -> int:
    return session.scalar(
        sa.select(sa.func.count()).select_from(Bounce)
        .where(col(Bounce.email) == email, col(Bounce.kind) == BounceKind.soft,
               col(Bounce.occurred_at) >= since)
    ) or 0


def _unsubscribe(session: Session, email: str, *, now: datetime) -> None:
    session.execute(
        sa.update(Customer)
        .where(sa.func.lower(col(Customer.email)) == email, col(Customer.unsubscribed_at).is_(None))
        .values(unsubscribed_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )


def _record_complaint(session: Session, delivery: Delivery, *, now: datetime) -> None:
    seen = session.scalar(
        sa.select(col(Interaction.id))
        .where(col(Interaction.delivery_id) == delivery.id,
               col(Interaction.kind) == InteractionKind.complaint)
        .limit(1)
    )
    if seen is None and delivery.id is not None:
        session.add(Interaction(kind=InteractionKind.complaint, delivery_id=delivery.id,
                                customer_id=delivery.customer_id, campaign_id=delivery.campaign_id,
                                created_at=now))
        session.flush()


def _pause_on_complaint_rate(
    session: Session, campaign_id: str, policy: Policy, *, now: datetime
) -> str | None:
    """Pause the campaign when its complaints since the last approval cross the threshold."""
    since = session.scalar(
        sa.select(col(CampaignState.approved_at)).where(col(CampaignState.campaign_id) == campaign_id))
    sent = sa.select(sa.func.count()).select_from(Delivery).where(
        col(Delivery.campaign_id) == campaign_id, col(Delivery.sent_at).is_not(None))
    complaints = sa.select(sa.func.count()).select_from(Bounce).where(
        col(Bounce.campaign_id) == campaign_id, col(Bounce.kind) == BounceKind.complaint)
    if since is not None:
        sent = sent.where(col(Delivery.sent_at) >= since)
        complaints = complaints.where(col(Bounce.created_at) >= since)
    sends, complained = session.scalar(sent) or 0, session.scalar(complaints) or 0
    if sends < policy.complaint_min_sends or complained / sends <= policy.complaint_rate:
        return None
    reason = (f"spam complaint rate {complained / sends:.2%} ({complained} of {sends} sends) is over "
              f"{policy.complaint_rate:.2%}")
    return reason if pausing.pause(session, campaign_id, reason, now=now, commit=False) else None
