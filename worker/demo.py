"""`retention demo`: a quarter of a synthetic business, lived day by day through the real code.

Twelve weeks of daily activity (campaigns.demo_behaviour) go in through the ingestion
path; twice a day the real planning pass runs at that simulated moment and its emails
are sent through the configured transport by the real Sender, with the clock of the
simulation; customers answer the exit survey, a few unsubscribe and a few addresses
bounce, all through the same functions the web role calls.  What it shows afterwards
is the ordinary report.
"""

from __future__ import annotations

import logging
import textwrap
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from campaigns.delivery.sending import Outcome, Sender
from campaigns.demo_behaviour import BOUNCING_DOMAIN, Behaviour
from campaigns.demo_data import DemoSummary, generate_demo
from campaigns.errors import PermanentDeliveryError, RetentionError, TransientDeliveryError
from campaigns.ingestion import EventIn, record_events
from campaigns.models import Customer, Delivery, DeliveryStatus
from campaigns.reports import Report
from campaigns.responses.recording import submit_survey, unsubscribe
from worker.mail import BeforeData, Message, Transport, outgoing
from worker.passes import run_pass
from worker.runtime import Runtime

log = logging.getLogger(__name__)

QUARTER_DAYS = 84
# Two passes a day, in UTC: every customer's zone has one of them outside quiet hours.
PASS_TIMES = (time(7, 0), time(17, 0))
SEED = 7


@dataclass
class QuarterSummary:
    start: datetime
    end: datetime
    data: DemoSummary
    events: int = 0
    passes: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    by_campaign: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    answered: int = 0
    unsubscribed: int = 0
    goals: frozenset[str] = frozenset()  # campaigns with a goal: the ones a lift is measured for


def _bounces(message: Message) -> bool:
    return outgoing(message).recipients[0].endswith("@" + BOUNCING_DOMAIN)


class _Bouncing:
    """The configured transport, except that addresses at BOUNCING_DOMAIN no longer exist."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    def send(self, message: Message, *, before_data: BeforeData | None = None,
             then: Message | None = None) -> str:
        to = outgoing(message).recipients[0]
        if _bounces(message):
            raise PermanentDeliveryError(f"550 5.1.1 <{to}>: mailbox unknown (demo)",
                                         code=550, enhanced="5.1.1")
        # A message refused here never reaches the transport: it must not start its envelope.
        return self.transport.send(message, before_data=before_data,
                                   then=None if then is None or _bounces(then) else then)

    def close(self) -> None:
        self.transport.close()


def simulate_quarter(rt: Runtime, *, customers: int, end: datetime, seed: int = SEED,
                     on_day: Callable[[int], None] | None = None) -> QuarterSummary:
    """Build the customer base as it was 12 weeks before ``end``, then live the 12 weeks;
    ``on_day(n)`` is told after each simulated day (for a progress display)."""
    start = (end - timedelta(days=QUARTER_DAYS)).replace(hour=0, minute=0, second=0, microsecond=0)
    non_activity = frozenset(rt.rules.defaults.non_activity_events)
    with Session(rt.engine) as session:
        data = generate_demo(session, customers=customers, now=start, seed=seed,
                             non_activity_events=non_activity)
        behaviour = Behaviour(data.people, seed=seed)
        _mark_bouncing(session, behaviour)
        session.commit()
    summary = QuarterSummary(start=start, end=end, data=data,
                             goals=frozenset(c.id for c in rt.rules.campaigns if c.goal is not None))
    sender = rt.sender()
    sender.transport = _Bouncing(rt.transport)

    for number in range(QUARTER_DAYS):
        day = start + timedelta(days=number)
        with Session(rt.engine) as session:
            nudged = _recent_sends(session, since=day - timedelta(days=14), until=day)
        events = sorted(behaviour.day(day, nudged), key=lambda e: e["occurred_at"])
        moments = [datetime.combine(day.date(), t, tzinfo=UTC) for t in PASS_TIMES]
        for moment in [*moments, day + timedelta(days=1)]:
            due = [e for e in events if e["occurred_at"] < moment]
            events = events[len(due):]
            summary.events += _record(rt, due, non_activity, now=moment)
            if moment in moments:
                _pass(rt, sender, behaviour, summary, moment)
        if on_day is not None:
            on_day(number + 1)
    return summary


def _pass(rt: Runtime, sender: Sender, behaviour: Behaviour, summary: QuarterSummary,
          moment: datetime) -> None:
    queued: list[int] = []

    def enqueue(ids: list[int]) -> int:
        queued.extend(ids)
        return len(ids)

    run_pass(rt, enqueue, now=moment, stale_after=timedelta(0))
    summary.passes += 1
    sender.clock = lambda: moment
    with Session(rt.engine) as session:
        for delivery_id in queued:
            try:
                outcome = sender.deliver(session, delivery_id)
            except TransientDeliveryError:
                outcome = Outcome.retry  # waits for a later pass, as in production
            summary.outcomes[str(outcome)] += 1
            if outcome == Outcome.sent:
                _respond(session, rt, behaviour, summary, delivery_id, moment)


def _respond(session: Session, rt: Runtime, behaviour: Behaviour, summary: QuarterSummary,
             delivery_id: int, moment: datetime) -> None:
    delivery = session.get(Delivery, delivery_id)
    if delivery is None:
        return
    summary.by_campaign[delivery.campaign_id]["sent"] += 1
    customer = session.get(Customer, delivery.customer_id)
    later = moment + timedelta(hours=3)
    try:
        campaign = rt.rules.campaign(delivery.campaign_id)
        if campaign.survey and customer is not None:
            answer = behaviour.exit_survey(customer.external_id)
            if answer is not None:
                submit_survey(session, rt.rules, delivery_id, answer.answers, now=later)
                summary.answered += 1
                return
        if behaviour.unsubscribes():
            unsubscribe(session, delivery_id, now=later)
            session.commit()
            summary.unsubscribed += 1
    except RetentionError as exc:  # rules.campaign raises UnknownCampaign, one of them
        log.warning("demo: could not record a response to delivery %s: %s", delivery_id, exc)
        session.rollback()


def _record(rt: Runtime, events: list[dict[str, Any]], non_activity: frozenset[str], *,
            now: datetime) -> int:
    if not events:
        return 0
    with Session(rt.engine) as session:
        result = record_events(session, [EventIn.model_validate(e) for e in events],
                               non_activity_events=non_activity, now=now)
        session.commit()
    return result.inserted


def _recent_sends(session: Session, *, since: datetime, until: datetime) -> dict[str, set[str]]:
    rows = session.execute(
        sa.select(col(Customer.external_id), col(Delivery.campaign_id))
        .join(Customer, col(Customer.id) == col(Delivery.customer_id))
        .where(col(Delivery.status) == DeliveryStatus.sent, col(Delivery.sent_at) >= since,
               col(Delivery.sent_at) < until)
    ).all()
    nudged: dict[str, set[str]] = defaultdict(set)
    for external_id, campaign_id in rows:
        nudged[external_id].add(campaign_id)
    return nudged


def _mark_bouncing(session: Session, behaviour: Behaviour) -> None:
    ids = [h.external_id for h in behaviour.habits]
    for external_id in sorted(behaviour.bouncing(ids)):
        customer = session.exec(select(Customer).where(col(Customer.external_id) == external_id)).one()
        local = customer.email.split("@", 1)[0]
        customer.email = f"{local}@{BOUNCING_DOMAIN}"
        session.add(customer)


def story(summary: QuarterSummary, report: Report) -> list[str]:
    """The quarter in a few lines that read at 80 columns."""
    data = summary.data
    plans = ", ".join(f"{count} {plan}" for plan, count in sorted(data.plans.items()))
    sent = summary.outcomes["sent"]
    lines = [
        f"A quarter at a synthetic company: {summary.start:%Y-%m-%d} to {summary.end:%Y-%m-%d}, "
        f"{QUARTER_DAYS} days, {summary.passes} passes.",
        f"  customers  {data.customers} ({plans}); {summary.events} events during the quarter",
        f"  emails     {sent} sent, {summary.outcomes['bounced']} bounced (addresses suppressed), "
        f"{summary.unsubscribed} unsubscribed, {summary.answered} exit-survey responses",
    ]
    months = [p for p in report.periods if p.end > summary.start and not p.partial]
    if months:
        lines.append("churn per month (active + passive):")
        lines.extend(
            f"  {p.label}    {_pct(p.churn_rate)} = {_pct(p.active_churn_rate)} cancelled + "
            f"{_pct(p.passive_churn_rate)} drifted away  (of {p.customers_at_start})"
            for p in months
        )
    lines.append("campaigns against their holdout group (goal reached, 95 % interval):")
    for funnel in report.campaigns:
        if funnel.variant is not None:
            continue
        lift = funnel.lift
        goal = _goal(summary, funnel.campaign)
        if not goal:
            verdict = "no goal in rules.yaml: answers and unsubscribes only"
        elif lift.difference is None or lift.ci_low is None or lift.ci_high is None:
            verdict = f"{lift.verdict}: {lift.reason}"
        else:
            verdict = (f"{lift.rate or 0:.1f} % vs {lift.rate_held_out or 0:.1f} %, "
                       f"{lift.difference:+.1f} points [{lift.ci_low:+.1f}, {lift.ci_high:+.1f}] "
                       f"{lift.verdict}")
        lines.append(f"  {funnel.campaign:<16} {funnel.sent:>5} sent, {funnel.held_out:>4} held out:")
        lines.append(f"    {verdict}")
    for question in report.surveys:
        if question.kind == "choice" and question.answered:
            spread = ", ".join(f"{c.choice.replace('_', ' ')} {c.share:.0f}%"
                               for c in question.choices if c.count)
            lines.append(f"why they left ({question.answered} answers to {question.question!r}): {spread}")
    return [wrapped for line in lines for wrapped in _wrap(line)]


def _wrap(line: str, width: int = 80) -> list[str]:
    if not line.strip():
        return [line]
    indent = line[: len(line) - len(line.lstrip())]
    return textwrap.wrap(line, width=width, subsequent_indent=indent + "  ", break_on_hyphens=False)


def _goal(summary: QuarterSummary, campaign_id: str) -> bool:
    return campaign_id in summary.goals


def _pct(value: float | None) -> str:
    return "  -  " if value is None else f"{value:4.1f} %"
