"""Sending one delivery: claim, re-check, render, send, record.

The transport is passed in (anything with ``send(EmailMessage) -> str``), so
this whole path runs in tests against a real SMTP server without a broker,
and the Dramatiq actor that calls it stays a few lines long.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from enum import StrEnum

from sqlalchemy.orm import Session

import campaigns.delivery.outbox as outbox
from campaigns.delivery.context import build_context, customer_context
from campaigns.delivery.emails import build_email, sender_domain
from campaigns.delivery.rendering import TemplateStore
from campaigns.delivery.sendwindow import next_send_time, waiting_note
from campaigns.delivery.tokens import Signer, links
from campaigns.delivery.transport import Transport
from campaigns.delivery.verp import verp_address
from campaigns.errors import (
    AmbiguousDeliveryError,
    PermanentDeliveryError,
    RetentionError,
    TransientDeliveryError,
    UnknownCampaign,
)
from campaigns.models import Customer, Delivery, DeliveryStatus, message_id_for, utcnow
from campaigns.rules import Campaign, Rules
from campaigns.timezones import customer_zone

log = logging.getLogger(__name__)

MAX_ATTEMPTS = outbox.MAX_ATTEMPTS


class _TakenOver(Exception):
    """The delivery stopped being this worker's between the claim and the hand-over."""


class Outcome(StrEnum):
    sent = "sent"
    skipped = "skipped"  # not ours: already claimed, not due, or already final
    suppressed = "suppressed"
    deferred = "deferred"  # quiet hours / send days: waits for the sweeper
    retry = "retry"  # transient failure: the broker should retry with backoff
    failed = "failed"
    bounced = "bounced"
    unknown = "unknown"  # the content went out, the verdict did not come back: never resent


@dataclass(frozen=True)
class Composed:
    delivery: Delivery
    customer: Customer
    campaign: Campaign
    message: EmailMessage


class Sender:
    def __init__(
        self, *, rules: Rules, templates: TemplateStore, signer: Signer, public_url: str,
        transport: Transport, clock: Callable[[], datetime] = utcnow,
        max_attempts: int = MAX_ATTEMPTS, verp: str = "", worker: str | None = None,
    ) -> None:
        self.rules = rules
        self.templates = templates
        self.signer = signer
        self.public_url = public_url
        self.transport = transport
        self.clock = clock
        self.max_attempts = max_attempts
        self.verp = verp  # base address for a per-delivery Return-Path; empty: the From address
        self.worker = worker  # the heartbeat id recorded on each claim

    def deliver(self, session: Session, delivery_id: int) -> Outcome:
        """Send one delivery if it is still ours to send; raise TransientDeliveryError to retry."""
        now = self.clock()
        delivery = outbox.claim(session, delivery_id, now=now, worker=self.worker)
        if delivery is None:
            return Outcome.skipped
        try:
            composed_or_outcome = self._prepare(session, delivery, now)
        except PermanentDeliveryError as exc:  # e.g. an address no server could accept (5.1.3)
            customer = session.get(Customer, delivery.customer_id)
            return self._permanent(session, delivery, customer.email if customer else "", exc)
        except RetentionError as exc:
            # A template or rules problem: retrying will not fix it, a human must.
            log.error("delivery %s (%s) cannot be composed: %s", delivery.id, delivery.campaign_id, exc)
            outbox.finish(session, delivery, DeliveryStatus.failed, now=now, error=str(exc)[:2000])
            return Outcome.failed
        except Exception as exc:
            self._crashed(session, delivery, "composing", exc)
            raise
        if isinstance(composed_or_outcome, Outcome):
            return composed_or_outcome
        return self._send(session, composed_or_outcome)

    def _prepare(self, session: Session, delivery: Delivery, now: datetime) -> Composed | Outcome:
        customer = session.get(Customer, delivery.customer_id)
        if customer is None:
            outbox.finish(session, delivery, DeliveryStatus.failed, now=now, error="customer deleted")
            return Outcome.failed
        reason = outbox.suppression_reason(session, customer)
        if reason:
            outbox.finish(session, delivery, DeliveryStatus.suppressed, now=now, error=reason)
            return Outcome.suppressed
        try:
            campaign = self.rules.campaign(delivery.campaign_id)
        except UnknownCampaign:
            outbox.finish(session, delivery, DeliveryStatus.failed, now=now,
                          error="campaign no longer in rules.yaml")
            return Outcome.failed
        paused = outbox.paused_reason(session, campaign.id)
        if paused:
            # Kept queued; the sweeper leaves paused campaigns alone until `retention approve`.
            outbox.release(session, delivery, now=now, enqueued=False, error=f"campaign paused: {paused}")
            return Outcome.deferred
        wait_until = next_send_time(
            now, customer_zone(customer.timezone, self.rules.defaults.timezone),
            self.rules.defaults.quiet_hours, campaign.send_days,
        )
        if wait_until is not None:
            outbox.release(session, delivery, now=now, due_at=wait_until, enqueued=False,
                           error=waiting_note(wait_until))
            return Outcome.deferred
        return Composed(delivery, customer, campaign, self.compose(delivery, customer, campaign, now))

    def compose(self, delivery: Delivery, customer: Customer, campaign: Campaign,
                now: datetime) -> EmailMessage:
        """Render the message of one delivery (also used by `preview`)."""
        if delivery.id is None:
            raise ValueError("the delivery must be stored before it can be composed")
        link = links(self.public_url, self.signer, delivery.id)
        context = build_context(
            customer=customer_context(customer, now=now),
            campaign={"id": campaign.id, "template": delivery.template, "survey": campaign.survey},
            unsubscribe_url=link.unsubscribe_url,
            survey_url=link.survey_url if campaign.survey else None,
            track=link.track,
        )
        rendered = self.templates.render(delivery.template, context, locale=customer.locale)
        sender = campaign.sender or self.rules.defaults.sender
        try:
            domain = sender_domain(sender)
        except ValueError as exc:
            # Loaded rules passed the same check; rules built otherwise must fail here, once.
            path = (
                ("campaigns", self.rules.campaigns.index(campaign), "sender")
                if campaign.sender else ("defaults", "sender")
            )
            raise self.rules.error_at(path, str(exc)) from None
        return build_email(
            rendered=rendered, sender=sender, to=customer.email,
            message_id=message_id_for(delivery, domain),
            unsubscribe_url=link.unsubscribe_url,
            headers={"X-Retention-Campaign": campaign.id,
                     **({"Return-Path": verp_address(self.verp, delivery.id)} if self.verp else {})},
            date=now,
        )

    def _permanent(
        self, session: Session, delivery: Delivery, email: str, exc: PermanentDeliveryError
    ) -> Outcome:
        """Never retried: a bad mailbox bounces and is suppressed; anything else just fails."""
        now = self.clock()
        if exc.is_recipient_failure and email:
            outbox.finish(session, delivery, DeliveryStatus.bounced, now=now, error=str(exc)[:2000])
            outbox.suppress(session, email, f"bounce: {exc}", now=now)
            return Outcome.bounced
        outbox.finish(session, delivery, DeliveryStatus.failed, now=now, error=str(exc)[:2000])
        if exc.is_policy_rejection and outbox.record_policy_failure(
            session, delivery.campaign_id, str(exc), now=now
        ):
            log.error("campaign %s paused after %d policy rejections in a row (last: %s); "
                      "fix the content or sender, then `retention approve %s`", delivery.campaign_id,
                      outbox.POLICY_FAILURES_TO_PAUSE, exc, delivery.campaign_id)
        return Outcome.failed

    def _send(self, session: Session, composed: Composed) -> Outcome:
        delivery = composed.delivery
        message_id = str(composed.message["Message-ID"])

        def handing_over() -> None:
            # Recorded right before the content leaves (SMTP DATA): if this worker dies from
            # here on, the server may have the message, and the delivery is held as `unknown`
            # rather than sent twice; a worker that dies before this is simply sent again.
            if not outbox.mark_handing_over(session, delivery, message_id=message_id, now=self.clock()):
                raise _TakenOver(f"delivery {delivery.id} is no longer being sent by this worker")

        try:
            reply = self.transport.send(composed.message, before_data=handing_over)
        except _TakenOver as exc:
            log.warning("%s; not sending it", exc)
            return Outcome.skipped
        except AmbiguousDeliveryError as exc:
            # The same policy as for a worker that dies in this window: a customer may miss
            # one email, none gets two.
            log.error("delivery %s (%s) may or may not have been delivered; marked `unknown`, "
                      "not resent: %s", delivery.id, delivery.campaign_id, exc)
            outbox.finish(session, delivery, DeliveryStatus.unknown, now=self.clock(),
                          error=str(exc)[:2000], message_id=message_id)
            return Outcome.unknown
        except TransientDeliveryError as exc:
            now = self.clock()
            if delivery.attempts >= self.max_attempts:
                if _server_unavailable(exc):
                    # An outage says nothing about this message: it waits in the outbox and is
                    # tried again with every pass (the sweeper) until the server answers, instead
                    # of being failed after a few minutes of retries.  Not counted as an attempt.
                    outbox.release(session, delivery, now=now, enqueued=False, error=(
                        f"the mail server is unavailable; tried again with every pass: {exc}")[:2000])
                    return Outcome.deferred
                outbox.finish(session, delivery, DeliveryStatus.failed, now=now,
                              error=f"gave up after {delivery.attempts} attempts: {exc}")
                return Outcome.failed
            outbox.release(session, delivery, now=now, error=str(exc)[:2000])
            raise
        except PermanentDeliveryError as exc:
            return self._permanent(session, delivery, composed.customer.email, exc)
        except Exception as exc:
            # Unknown failure (a bug, the database…): the claim goes back so nothing is lost.
            self._crashed(session, delivery, "sending", exc)
            raise
        outbox.finish(session, delivery, DeliveryStatus.sent, now=self.clock(), error=None,
                      message_id=message_id)
        outbox.record_success(session, delivery.campaign_id)
        log.debug("sent %s to customer %s (%s): %s", delivery.campaign_id,
                 composed.customer.external_id, delivery.id, reply)
        return Outcome.sent

    def _crashed(self, session: Session, delivery: Delivery, stage: str, exc: Exception) -> None:
        """An unexpected exception: give the claim back to be retried, or give up on a poison one.

        A delivery that crashes its worker on every attempt (bad data, a bug) would
        otherwise be retried by the broker, then re-enqueued by the sweeper, forever.
        """
        session.rollback()  # the failed statement, if it was one, must not poison the next
        reason = f"crashed while {stage}: {type(exc).__name__}: {exc}"[:2000]
        if delivery.attempts >= self.max_attempts:
            log.error("delivery %s crashed on each of %d attempts; marked failed: %s",
                      delivery.id, delivery.attempts, reason)
            outbox.finish(session, delivery, DeliveryStatus.failed, now=self.clock(),
                          error=f"gave up after {delivery.attempts} attempts: {reason}"[:2000])
        else:
            outbox.release(session, delivery, now=self.clock(), error=reason)


def _server_unavailable(exc: TransientDeliveryError) -> bool:
    """No connection, a dropped one, or 421 (the server closing the channel): about the server,
    not this message."""
    return exc.code is None or exc.code == 421
