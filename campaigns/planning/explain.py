"""`retention explain`: why one customer would or would not get each campaign now.

It runs the real pass narrowed to that customer inside a transaction the
caller rolls back, so the verdicts are the planner's own (priority, caps and
all), then words each one with the customer's actual values.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import col

from campaigns.delivery.sendwindow import WAITING, next_send_time
from campaigns.models import Customer, Delivery, DeliveryStatus, Suppression, UTCDateTime
from campaigns.planning.guards import IN_FLIGHT
from campaigns.planning.planner import CampaignPlan, Planner
from campaigns.rules import Campaign, Rules
from campaigns.rules.condition_sql import SqlContext, compile_condition, reference_column
from campaigns.rules.conditions import (
    DAY_FIELDS,
    AnswerTest,
    Condition,
    EventTest,
    FieldTest,
    Group,
    describe,
    walk,
)
from campaigns.rules.durations import format_duration
from campaigns.sql import days_since
from campaigns.timezones import customer_zone


@dataclass(frozen=True)
class Verdict:
    campaign_id: str
    verdict: str  # would_send, held_out, no_match, already_sent, cooldown, suppressed, …
    reason: str


@dataclass(frozen=True)
class PastDelivery:
    campaign_id: str
    status: str
    created_at: datetime
    sent_at: datetime | None
    converted_at: datetime | None
    last_error: str | None


def explain(session: Session, rules: Rules, customer: Customer, *, now: datetime) -> list[Verdict]:
    """Verdicts in priority order; writes inside the session, which the caller must roll back."""
    if customer.id is None:
        raise ValueError("the customer must be stored")
    result = Planner(rules, now=now, customer_id=customer.id).run(session)
    verdicts = []
    taken_by: str | None = None
    for plan in result.plans:
        campaign = rules.campaign(plan.campaign_id)
        verdict = _word(session, rules, campaign, plan, customer, now, taken_by)
        if verdict.verdict in ("would_send", "would_wait"):
            taken_by = taken_by or campaign.id
        verdicts.append(verdict)
    return verdicts


def past_deliveries(session: Session, customer: Customer, limit: int = 20) -> list[PastDelivery]:
    rows = session.scalars(
        sa.select(Delivery)
        .where(col(Delivery.customer_id) == customer.id)
        .order_by(col(Delivery.created_at).desc())
        .limit(limit)
    )
    return [
        PastDelivery(d.campaign_id, d.status, d.created_at, d.sent_at, d.converted_at, d.last_error)
        for d in rows
    ]


def _word(
    session: Session,
    rules: Rules,
    campaign: Campaign,
    plan: CampaignPlan,
    customer: Customer,
    now: datetime,
    taken_by: str | None,
) -> Verdict:
    def verdict(kind: str, reason: str) -> Verdict:
        return Verdict(campaign.id, kind, reason)

    if not plan.due:
        return verdict("not_due", plan.not_due_reason or "not due")
    counts = {k: v for k, v in plan.counts.items() if v}
    if not counts:
        if campaign.trigger is not None and _holds(session, campaign.condition, customer, now, rules):
            return verdict(
                "no_match",
                f"no `{campaign.trigger.event}` event between "
                f"{_ago(campaign.trigger.after + campaign.trigger.within)} and "
                f"{_ago(campaign.trigger.after)} ago",
            )
        return verdict("no_match", _failed_conditions(session, rules, campaign, customer, now))
    for kind in ("send", "held_out", "capped", "other_campaign", "suppressed", "cooldown", "already_sent"):
        if kind in counts:
            break
    if kind == "send":
        wait = next_send_time(
            now,
            customer_zone(customer.timezone, rules.defaults.timezone),
            rules.defaults.quiet_hours,
            campaign.send_days,
        )
        if wait is not None:
            local = wait.astimezone(customer_zone(customer.timezone, rules.defaults.timezone))
            return verdict(
                "would_wait",
                f"would be queued now and sent at {local:%Y-%m-%d %H:%M %Z} "
                "(quiet hours or send days in the customer's time zone)",
            )
        return verdict("would_send", "matches every condition; would be sent now")
    if kind == "held_out":
        return verdict(
            "held_out", f"in the control group ({campaign.holdout:g}% holdout): recorded, never sent"
        )
    if kind == "capped":
        return verdict("capped", _capped_by(session, rules, campaign, customer, now))
    if kind == "other_campaign":
        return verdict(
            "other_campaign",
            f"gets {taken_by or 'a higher-priority campaign'} in this pass "
            "(one campaign per customer per pass)",
        )
    if kind == "suppressed":
        if customer.unsubscribed_at is not None:
            return verdict("suppressed", f"unsubscribed on {customer.unsubscribed_at:%Y-%m-%d}")
        reason = session.scalar(
            sa.select(col(Suppression.reason)).where(col(Suppression.email) == customer.email.lower())
        )
        return verdict("suppressed", f"address suppressed: {reason}")
    last = session.scalars(
        sa.select(Delivery)
        .where(col(Delivery.customer_id) == customer.id, col(Delivery.campaign_id) == campaign.id)
        .order_by(col(Delivery.created_at).desc(), col(Delivery.id).desc())
    ).first()
    when = f"{last.status} on {last.created_at:%Y-%m-%d}" if last else "earlier"
    if kind == "cooldown" and campaign.cooldown is not None and last is not None:
        return verdict(
            "cooldown",
            f"last one {when}; cooldown {format_duration(campaign.cooldown)} ends "
            f"{last.created_at + campaign.cooldown:%Y-%m-%d}",
        )
    if last is None:  # pragma: no cover - the verdict says a delivery exists
        return verdict("already_planned", "already planned for this episode")
    return verdict(*_existing(last, campaign, now))


def _existing(delivery: Delivery, campaign: Campaign, now: datetime) -> tuple[str, str]:
    """(verdict, reason) for this episode's delivery, named by what became of it."""
    on = f"{delivery.created_at:%Y-%m-%d}"
    status = delivery.status
    if status == DeliveryStatus.sent:
        sent = delivery.sent_at or delivery.created_at
        return "already_sent", f"already sent for this episode ({sent:%Y-%m-%d})"
    if status == DeliveryStatus.queued:
        if delivery.due_at > now and (delivery.last_error or "").startswith(WAITING):
            return "waiting", f"planned on {on}, {delivery.last_error}"
        return "queued", f"planned on {on}, queued and not sent yet"
    if status == DeliveryStatus.sending:
        return "sending", f"planned on {on}, being sent now"
    if status == DeliveryStatus.held:
        return "held", (
            f"planned on {on}, held by the blast guard; `retention approve {campaign.id}` releases it"
        )
    if status == DeliveryStatus.skipped:
        return "capped", f"skipped on {on}: it was over the frequency cap (over_cap: skip ends the episode)"
    if status == DeliveryStatus.held_out:
        return "held_out", f"in the control group for this episode since {on}: recorded, never sent"
    error = f": {delivery.last_error}" if delivery.last_error else ""
    return str(status), f"planned on {on}, {status}{error}"


def _holds(
    session: Session, condition: Condition | None, customer: Customer, now: datetime, rules: Rules
) -> bool:
    if condition is None:
        return True
    context = SqlContext(now=now, passive_churn_after=rules.defaults.passive_churn_after)
    return bool(
        session.scalar(
            sa.select(compile_condition(condition, context)).where(col(Customer.id) == customer.id)
        )
    )


def _failed_conditions(
    session: Session, rules: Rules, campaign: Campaign, customer: Customer, now: datetime
) -> str:
    condition = campaign.condition
    if condition is None:
        return "does not match"
    tests = list(condition.items) if isinstance(condition, Group) and condition.kind == "all" else [condition]
    failed = [t for t in tests if not _holds(session, t, customer, now, rules)]
    words = [f"{describe(t)} ({_actual(session, t, customer, now)})" for t in failed]
    return "fails: " + "; ".join(words) if words else "does not match"


def _actual(session: Session, test: Condition, customer: Customer, now: datetime) -> str:
    if isinstance(test, EventTest):
        return "no such event" if test.present else "has that event"
    if isinstance(test, Group):
        # The customer's values for every test inside, so `any:` / `not:` say why.
        values = dict.fromkeys(f"{_subject(t)} {_actual(session, t, customer, now)}" for t in walk(test)
                               if not isinstance(t, Group))
        return "; ".join(values) or "not met"
    if not isinstance(test, FieldTest):
        return "not met"
    field = test.field
    if field.startswith("attributes."):
        return f"is {customer.attributes.get(field.split('.', 1)[1])!r}"
    if field in DAY_FIELDS:
        days = _days_since(session, reference_column(field), customer, now)
        return f"is {days:.1f}" if days is not None else "unknown"
    if field == "overdue_ratio":
        days = _days_since(session, reference_column("days_inactive"), customer, now)
        if not customer.cadence_days or days is None:
            return "no cadence yet: fewer than 3 active days"
        return f"is {days / customer.cadence_days:.2f}"
    if field == "lapsed":
        return "not lapsed" if test.value else "lapsed"
    value = getattr(customer, "external_id" if field == "id" else field, None)
    return f"is {value!r}"


def _subject(test: Condition) -> str:
    if isinstance(test, FieldTest):
        return test.field
    if isinstance(test, EventTest):
        return f"event {test.name}:"
    if isinstance(test, AnswerTest):
        return f"answer {test.survey}.{test.question}:"
    return ""


def _days_since(
    session: Session, reference: sa.ColumnElement[Any], customer: Customer, now: datetime
) -> float | None:
    # The planner's own reference moment, read back: never a Python copy that could drift.
    moment = sa.literal(now, UTCDateTime())
    value = session.scalar(sa.select(days_since(reference, moment)).where(col(Customer.id) == customer.id))
    return None if value is None else float(value)


def _capped_by(session: Session, rules: Rules, campaign: Campaign, customer: Customer, now: datetime) -> str:
    cap = campaign.frequency_cap or rules.defaults.frequency_cap
    recent = session.scalars(
        sa.select(Delivery)
        .where(
            col(Delivery.customer_id) == customer.id,
            col(Delivery.status).in_(IN_FLIGHT),
            col(Delivery.created_at) < now,
        )
        .order_by(col(Delivery.created_at).desc())
        .limit(5)
    ).all()
    listed = ", ".join(f"{d.campaign_id} {d.status} {d.created_at:%Y-%m-%d}" for d in recent)
    limit = f"{cap.max} per {format_duration(cap.per)}" if cap else "the cap"
    return f"over the frequency cap ({limit}) after: {listed or 'earlier sends'}"


def _ago(delta: timedelta) -> str:
    return format_duration(delta)
