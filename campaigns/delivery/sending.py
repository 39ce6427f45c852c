"""Sending deliveries: claim, re-check, render, send, record -- a batch at a time.

The transport is passed in (anything with ``send(message) -> str``), so this
whole path runs in tests against a real SMTP server without a broker, and the
Dramatiq actors that call it stay a few lines long.

A batch costs a handful of transactions, not four per email: one claim for
all of it, one read of their customers and suppressions, then per chunk of
``CHUNK`` messages one hand-over mark (right before the first of them leaves)
and one record of the sent ones.  A worker killed during a chunk leaves at most
that chunk `unknown` (see docs/reliability.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import col

import campaigns.delivery.outbox as outbox
import campaigns.delivery.pausing as pausing
from campaigns.delivery.context import build_context, customer_context
from campaigns.delivery.emails import OutgoingEmail, build_email, build_outgoing, sender_domain
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
from campaigns.models import Customer, Delivery, DeliveryStatus, Suppression, message_id_for, utcnow
from campaigns.rules import Campaign, Rules
from campaigns.timezones import customer_zone

log = logging.getLogger(__name__)

MAX_ATTEMPTS = outbox.MAX_ATTEMPTS

# Messages per hand-over mark and per record of outcomes: the most a kill -9 can leave
# `unknown` per sending thread, against two transactions per CHUNK messages.
CHUNK = 10


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
    message: OutgoingEmail


@dataclass
class Batch:
    """What ``deliver_many`` did with each id; ``retry`` holds those to send again later."""

    outcomes: dict[int, Outcome] = field(default_factory=dict)
    # delivery id -> (its attempts so far, why): a temporary failure (SMTP 4xx) or a crash.
    retry: dict[int, tuple[int, Exception]] = field(default_factory=dict)
    # Addresses suppressed while the batch was sent (a bounce): its later messages to them stop.
    suppressed: dict[str, str] = field(default_factory=dict)


class Sender:
    def __init__(
        self, *, rules: Rules, templates: TemplateStore, signer: Signer, public_url: str,
        transport: Transport, clock: Callable[[], datetime] = utcnow,
        max_attempts: int = MAX_ATTEMPTS, verp: str = "", worker: str | None = None,
        stopping: Callable[[], bool] = lambda: False,
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
        self.stopping = stopping  # True once the process is shutting down

    def deliver(self, session: Session, delivery_id: int) -> Outcome:
        """Send one delivery if it is still ours to send; raise TransientDeliveryError to retry
        (and an unexpected exception as it came, its claim given back)."""
        batch = self.deliver_many(session, [delivery_id])
        if delivery_id in batch.retry:
            raise batch.retry[delivery_id][1]
        return batch.outcomes.get(delivery_id, Outcome.skipped)

    def deliver_many(self, session: Session, delivery_ids: Sequence[int]) -> Batch:
        """Send those of ``delivery_ids`` still ours to send (a batch: tens to a few hundred)."""
        batch = Batch()
        now = self.clock()
        claimed = outbox.claim_many(session, delivery_ids, now=now, worker=self.worker)
        ready = self._prepare_many(session, claimed, now, batch)
        handover = _Handover(session, self.clock,
                             announce_sent=any(w.wants("sent") for w in self.rules.webhooks))
        for start in range(0, len(ready), CHUNK):
            self._send_chunk(session, ready[start:start + CHUNK + 1], handover, batch)
        handover.record()
        for delivery_id in delivery_ids:
            batch.outcomes.setdefault(delivery_id, Outcome.skipped)
        return batch

    def _prepare_many(
        self, session: Session, claimed: list[Delivery], now: datetime, batch: Batch
    ) -> list[Composed]:
        """Re-check each claim against what may have changed since planning, and compose it."""
        if not claimed:
            return []
        customers = {c.id: c for c in session.scalars(
            sa.select(Customer).where(col(Customer.id).in_({d.customer_id for d in claimed})))}
        suppressed = dict(session.execute(
            sa.select(col(Suppression.email), col(Suppression.reason))
            .where(col(Suppression.email).in_({c.email.lower() for c in customers.values()}))
        ).all())
        paused: dict[str, str | None] = {}
        ready = []
        for delivery in claimed:
            customer = customers.get(delivery.customer_id)
            try:
                composed_or_outcome = self._prepare(session, delivery, customer, suppressed, paused, now)
            except PermanentDeliveryError as exc:  # e.g. an address no server could accept (5.1.3)
                batch.outcomes[_id(delivery)] = self._permanent(
                    session, delivery, customer.email if customer else "", exc, batch)
                continue
            except RetentionError as exc:
                # A template or rules problem: retrying will not fix it, a human must.
                log.error("delivery %s (%s) cannot be composed: %s", delivery.id, delivery.campaign_id, exc)
                outbox.finish(session, delivery, DeliveryStatus.failed, now=now, error=str(exc)[:2000])
                batch.outcomes[_id(delivery)] = Outcome.failed
                continue
            except Exception as exc:
                self._crashed(session, delivery, "composing", exc, batch)
                continue
            if isinstance(composed_or_outcome, Outcome):
                batch.outcomes[_id(delivery)] = composed_or_outcome
            else:
                ready.append(composed_or_outcome)
        return ready

    def _prepare(
        self, session: Session, delivery: Delivery, customer: Customer | None,
        suppressed: dict[str, str], paused: dict[str, str | None], now: datetime,
    ) -> Composed | Outcome:
        if customer is None:
            outbox.finish(session, delivery, DeliveryStatus.failed, now=now, error="customer deleted")
            return Outcome.failed
        reason = "unsubscribed" if customer.unsubscribed_at is not None else None
        if reason is None and customer.email.lower() in suppressed:
            reason = f"suppressed: {suppressed[customer.email.lower()]}"
        if reason:
            outbox.finish(session, delivery, DeliveryStatus.suppressed, now=now, error=reason)
            return Outcome.suppressed
        try:
            campaign = self.rules.campaign(delivery.campaign_id)
        except UnknownCampaign:
            outbox.finish(session, delivery, DeliveryStatus.failed, now=now,
                          error="campaign no longer in rules.yaml")
            return Outcome.failed
        if campaign.id not in paused:
            paused[campaign.id] = pausing.paused_reason(session, campaign.id)
        if paused[campaign.id]:
            # Kept queued; the sweeper leaves paused campaigns alone until `retention approve`.
            outbox.release(session, delivery, now=now, enqueued=False,
                           error=f"campaign paused: {paused[campaign.id]}")
            return Outcome.deferred
        wait_until = next_send_time(
            now, customer_zone(customer.timezone, self.rules.defaults.timezone),
            self.rules.defaults.quiet_hours, campaign.send_days,
        )
        if wait_until is not None:
            outbox.release(session, delivery, now=now, due_at=wait_until, enqueued=False,
                           error=waiting_note(wait_until))
            return Outcome.deferred
        parts = self.message_parts(delivery, customer, campaign, now)
        return Composed(delivery, customer, campaign, build_outgoing(**parts))

    def compose(self, delivery: Delivery, customer: Customer, campaign: Campaign,
                now: datetime) -> EmailMessage:
        """Render the message of one delivery as an EmailMessage (`preview`, `send-test`)."""
        return build_email(**self.message_parts(delivery, customer, campaign, now))

    def message_parts(self, delivery: Delivery, customer: Customer, campaign: Campaign,
                      now: datetime) -> dict[str, Any]:
        """Render one delivery: the arguments of ``build_email`` / ``build_outgoing``."""
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
        return {
            "rendered": rendered, "sender": sender, "to": customer.email,
            "message_id": message_id_for(delivery, domain),
            "unsubscribe_url": link.unsubscribe_url,
            "headers": {"X-Retention-Campaign": campaign.id,
                        **({"Return-Path": verp_address(self.verp, delivery.id)} if self.verp else {})},
            "date": now,
        }

    def _permanent(
        self, session: Session, delivery: Delivery, email: str, exc: PermanentDeliveryError,
        batch: Batch,
    ) -> Outcome:
        """Never retried: a bad mailbox bounces and is suppressed; anything else just fails."""
        now = self.clock()
        if exc.is_recipient_failure and email:
            outbox.finish(session, delivery, DeliveryStatus.bounced, now=now, error=str(exc)[:2000])
            outbox.suppress(session, email, f"bounce: {exc}", now=now)
            batch.suppressed[email.lower()] = f"bounce: {exc}"[:255]
            return Outcome.bounced
        outbox.finish(session, delivery, DeliveryStatus.failed, now=now, error=str(exc)[:2000])
        if exc.is_policy_rejection and pausing.record_policy_failure(
            session, delivery.campaign_id, str(exc), now=now
        ):
            log.error("campaign %s paused after %d policy rejections in a row (last: %s); "
                      "fix the content or sender, then `retention approve %s`", delivery.campaign_id,
                      pausing.POLICY_FAILURES_TO_PAUSE, exc, delivery.campaign_id)
        return Outcome.failed

    def _send_chunk(self, session: Session, chunk_and_next: list[Composed], handover: _Handover,
                    batch: Batch) -> None:
        """Send a chunk: ``chunk_and_next`` is the chunk and the next chunk's first message (the
        transport may start that one's envelope behind the chunk's last content)."""
        chunk = chunk_and_next[:CHUNK]
        handover.start(chunk)
        for index, composed in enumerate(chunk):
            if self.stopping():
                # Shutting down: the message in flight finishes, the rest of the batch waits in the
                # outbox for the next pass (not an attempt) instead of holding up the exit.
                outbox.release(session, composed.delivery, now=self.clock(), enqueued=False,
                               error="the worker stopped before sending it; queued again")
                batch.outcomes[_id(composed.delivery)] = Outcome.deferred
                continue
            address = composed.customer.email.lower()
            if address in batch.suppressed:  # bounced earlier in this batch
                outbox.finish(session, composed.delivery, DeliveryStatus.suppressed, now=self.clock(),
                              error=f"suppressed: {batch.suppressed[address]}"[:2000])
                batch.outcomes[_id(composed.delivery)] = Outcome.suppressed
                continue
            then = chunk_and_next[index + 1] if index + 1 < len(chunk_and_next) else None
            if then is not None and then.customer.email.lower() in batch.suppressed:
                then = None
            outcome = self._send(session, composed, handover, batch, then)
            batch.outcomes[_id(composed.delivery)] = outcome
            if outcome is Outcome.sent:
                handover.accepted.append(composed.delivery)
                log.debug("sent %s to customer %s (%s)", composed.campaign.id,
                          composed.customer.external_id, composed.delivery.id)

    def _send(self, session: Session, composed: Composed, handover: _Handover, batch: Batch,
              then: Composed | None = None) -> Outcome:
        """Hand one message to the transport; Outcome.sent is recorded by the caller, with its chunk.
        ``then``: the message this thread sends next."""
        delivery = composed.delivery
        message_id = composed.message.message_id
        try:
            self.transport.send(composed.message, before_data=lambda: handover.before_data(composed),
                                then=then.message if then is not None else None)
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
            batch.retry[_id(delivery)] = (delivery.attempts, exc)
            return Outcome.retry
        except PermanentDeliveryError as exc:
            return self._permanent(session, delivery, composed.customer.email, exc, batch)
        except Exception as exc:
            # Unknown failure (a bug, the database…): the claim goes back so nothing is lost.
            return self._crashed(session, delivery, "sending", exc, batch)
        return Outcome.sent

    def _crashed(self, session: Session, delivery: Delivery, stage: str, exc: Exception,
                 batch: Batch) -> Outcome:
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
            batch.outcomes[_id(delivery)] = Outcome.failed
            return Outcome.failed
        log.exception("delivery %s crashed while %s; it will be retried", delivery.id, stage,
                      exc_info=exc)
        outbox.release(session, delivery, now=self.clock(), error=reason)
        batch.retry[_id(delivery)] = (delivery.attempts, exc)
        batch.outcomes[_id(delivery)] = Outcome.retry
        return Outcome.retry


class _Handover:
    """The hand-over marks of a batch, a chunk at a time, and the record of what was sent.

    Right before the first content of a chunk leaves, one transaction marks the whole
    chunk and records the previous chunk's accepted messages as sent.  So at any moment
    at most one chunk is marked and not recorded: what a kill -9 can turn `unknown`.  A
    message refused before its content (RCPT 5xx) is marked by the next one's turn.
    """

    def __init__(self, session: Session, clock: Callable[[], datetime], *, announce_sent: bool) -> None:
        self.session = session
        self.clock = clock
        self.announce_sent = announce_sent
        self.chunk: list[Composed] = []
        self.asked: set[int] = set()
        self.ours: set[int] = set()
        self.accepted: list[Delivery] = []  # the server said 250; not recorded as sent yet

    def start(self, chunk: list[Composed]) -> None:
        self.chunk, self.asked, self.ours = chunk, set(), set()

    def before_data(self, composed: Composed) -> None:
        delivery_id = _id(composed.delivery)
        if delivery_id not in self.asked:
            index = self.chunk.index(composed)
            rest = [c for c in self.chunk[index:] if _id(c.delivery) not in self.asked]
            self.ours |= outbox.mark_handing_over_many(
                self.session, {c.message.message_id: c.delivery for c in rest}, now=self.clock(),
                sent=self.accepted, announce_sent=self.announce_sent)
            self.accepted = []
            self.asked |= {_id(c.delivery) for c in rest}
        if delivery_id not in self.ours:
            raise _TakenOver(f"delivery {delivery_id} is no longer being sent by this worker")

    def record(self) -> None:
        if self.accepted:
            outbox.finish_sent(self.session, self.accepted, now=self.clock(),
                               announce=self.announce_sent)
            self.accepted = []


def _id(delivery: Delivery) -> int:
    if delivery.id is None:
        raise ValueError("a claimed delivery always has an id")
    return delivery.id


def _server_unavailable(exc: TransientDeliveryError) -> bool:
    """No connection, a dropped one, or 421 (the server closing the channel): about the server,
    not this message."""
    return exc.code is None or exc.code == 421
