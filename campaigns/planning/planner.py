"""One planning pass: which customers get which campaign now.

Per campaign, one SELECT computes every customer's *verdict* as a CASE
expression (already sent, cooldown, suppressed, capped, held out, send) and
one INSERT … SELECT turns the sendable ones into ``Delivery`` rows.  The
natural key ``(campaign_id, customer_id, episode)`` is UNIQUE and the insert
does nothing on conflict, so racing planners cannot create a duplicate.
`retention plan` runs the very same pass in a transaction it rolls back, so
what it shows is exactly what a real pass would do.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from croniter import croniter
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import col

from campaigns.models import (
    CampaignState,
    Customer,
    Delivery,
    DeliveryStatus,
    Event,
    Suppression,
    UTCDateTime,
)
from campaigns.rules.conditions import SqlContext, compile_condition
from campaigns.rules.schema import Campaign, FrequencyCap, Rules
from campaigns.sql import dialect_insert, epoch_seconds, inactive_since

log = logging.getLogger(__name__)

# Deliveries that are, or will be, real messages: they count against frequency caps.
IN_FLIGHT = (DeliveryStatus.queued, DeliveryStatus.sending, DeliveryStatus.sent, DeliveryStatus.held)
COOLING = (*IN_FLIGHT, DeliveryStatus.held_out)
VERDICTS = (
    "no_match",
    "already_sent",
    "cooldown",
    "suppressed",
    "other_campaign",
    "capped",
    "held_out",
    "send",
)
# A prime just under 2**31: x*x and a*x stay inside a signed 64-bit integer on every backend.
HASH_PRIME = 2_147_483_647
BUCKETS = 10_000


# One pass's materialized selection (see Planner._materialize); created per connection.
_PLAN_SELECTION = sa.Table(
    "plan_selection",
    sa.MetaData(),
    sa.Column("customer_id", sa.Integer, nullable=False),
    sa.Column("episode", sa.String(100), nullable=False),
    sa.Column("verdict", sa.String(20), nullable=False),
    prefixes=["TEMPORARY"],
)


def hash_coefficients(purpose: str) -> tuple[int, int, int]:
    """(a, b, c) of the quadratic hash for one purpose (``holdout:ID``, ``variant:ID``, ...)."""
    digest = hashlib.blake2b(purpose.encode(), digest_size=24).digest()
    a, b, c = (int.from_bytes(digest[i : i + 8], "big") for i in (0, 8, 16))
    return a % (HASH_PRIME - 1) + 1, b % HASH_PRIME, c % HASH_PRIME


def _bucket(customer_id: Any, purpose: str) -> ColumnElement[int]:
    """0–9999 from ``(a·x² + b·x + c) mod p``, with a, b, c drawn from the purpose's name.

    Each purpose (holdout, variant split, ...) has its own random-looking quadratic, so the
    splits are statistically independent of each other: a linear hash would make one split
    the other shifted by a constant, and a holdout would then skew the variants.  Plain
    integer arithmetic below 2**63, identical on SQLite and PostgreSQL, so a customer lands
    in the same group on every pass and every machine.
    """
    big = sa.BigInteger()
    a, b, c = (sa.literal(v, big) for v in hash_coefficients(purpose))
    prime = sa.literal(HASH_PRIME, big)
    x = sa.cast(customer_id, big) % prime
    mixed = (a * (x * x % prime) % prime + b * x % prime + c) % prime
    return mixed % BUCKETS


@dataclass
class CampaignPlan:
    """What one pass did (or would do) for one campaign."""

    campaign_id: str
    due: bool = True
    not_due_reason: str | None = None
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(VERDICTS[1:], 0))
    over_max_per_pass: int = 0
    blast_guard: str | None = None  # why the new deliveries are held, if they are
    inserted: int = 0
    recorded: dict[str, int] = field(default_factory=dict)  # new rows of this pass by status
    earlier: dict[str, int] = field(default_factory=dict)  # "already_sent" rows by their status
    queued_ids: list[int] = field(default_factory=list)
    sample: list[tuple[str, str]] = field(default_factory=list)  # (external id, email)

    @property
    def audience(self) -> int:
        """Customers matching the conditions, whether already sent or not."""
        return sum(self.counts.values())

    @property
    def sendable(self) -> int:
        """Deliveries this pass creates for sending, whether released now or held."""
        return self.counts["send"] - self.over_max_per_pass

    @property
    def to_send(self) -> int:
        return 0 if self.blast_guard else self.sendable

    @property
    def held(self) -> int:
        return self.sendable if self.blast_guard else 0


@dataclass
class PassResult:
    now: datetime
    plans: list[CampaignPlan]
    queued_ids: list[int]  # new deliveries to put on the broker

    def plan(self, campaign_id: str) -> CampaignPlan:
        return next(p for p in self.plans if p.campaign_id == campaign_id)


class Planner:
    def __init__(self, rules: Rules, *, now: datetime, customer_id: int | None = None) -> None:
        """``customer_id`` narrows the pass to one customer (for `explain`; blast guard off)."""
        if now.tzinfo is None:
            raise ValueError("the planning moment must be timezone-aware")
        self.rules = rules
        self.now = now
        self.customer_id = customer_id
        self._total_customers: int | None = None
        self.sql = SqlContext(now=now, passive_churn_after=rules.defaults.passive_churn_after)

    # ------------------------------------------------------------ expressions

    def _now(self) -> ColumnElement[datetime]:
        return sa.literal(self.now, UTCDateTime())

    def scheduled_fire(self, campaign: Campaign, state: CampaignState | None) -> datetime | None:
        """The cron fire time this pass answers, or None when the schedule is not due."""
        if campaign.schedule is None:
            return None
        # croniter's get_prev is strictly before its start: start just after this minute began,
        # so a pass at exactly 10:00 answers the 10:00 fire.
        previous: datetime = croniter(
            campaign.schedule, self._this_minute() + timedelta(seconds=1)
        ).get_prev(datetime)
        since = (
            state.last_pass_at
            if state and state.last_pass_at
            else (self.now - 2 * self.rules.defaults.check_every)
        )
        return previous if previous > since else None

    def _this_minute(self) -> datetime:
        local = self.now.astimezone(ZoneInfo(self.rules.defaults.timezone))
        return local.replace(second=0, microsecond=0)

    def next_fire(self, campaign: Campaign) -> datetime | None:
        """The schedule's first fire after this minute, in the default time zone."""
        if campaign.schedule is None:
            return None
        fire: datetime = croniter(campaign.schedule, self._this_minute()).get_next(datetime)
        return fire

    def episode(self, campaign: Campaign, fire: datetime | None) -> ColumnElement[str]:
        if campaign.once:
            return sa.literal("once")
        if campaign.trigger is not None:
            return sa.literal("event:") + sa.cast(col(Event.id), sa.String)
        if fire is not None:
            return sa.literal("cron:" + fire.isoformat())
        # One send per absence: coming back starts a new episode.
        return sa.literal("active:") + sa.cast(epoch_seconds(inactive_since()), sa.String)

    def _recent(self, per: timedelta) -> ColumnElement[bool]:
        return sa.func.coalesce(col(Delivery.sent_at), col(Delivery.created_at)) > self.now - per

    def _capped(self, cap: FrequencyCap, campaign_id: str | None) -> ColumnElement[bool]:
        count = sa.select(sa.func.count()).where(
            col(Delivery.customer_id) == col(Customer.id),
            col(Delivery.status).in_(IN_FLIGHT),
            self._recent(cap.per),
        )
        if campaign_id is not None:
            count = count.where(col(Delivery.campaign_id) == campaign_id)
        return count.scalar_subquery() >= cap.max

    def verdict(self, campaign: Campaign, episode: ColumnElement[str]) -> ColumnElement[str]:
        """Why a customer matching the conditions would or would not get this campaign."""
        mine = sa.and_(
            col(Delivery.customer_id) == col(Customer.id), col(Delivery.campaign_id) == campaign.id
        )
        cases: list[tuple[ColumnElement[bool], str]] = [
            (
                sa.select(col(Delivery.id)).where(mine, col(Delivery.episode) == episode).exists(),
                "already_sent",
            ),
        ]
        if campaign.cooldown is not None:
            # Held-out rows start a cooldown too, so both groups are paced alike.
            spaced = sa.select(col(Delivery.id)).where(
                mine, self._recent(campaign.cooldown), col(Delivery.status).in_(COOLING)
            )
            cases.append((spaced.exists(), "cooldown"))
        suppressed = sa.or_(
            col(Customer.unsubscribed_at).is_not(None),
            sa.select(col(Suppression.id))
            .where(col(Suppression.email) == sa.func.lower(col(Customer.email)))
            .exists(),
        )
        cases.append((suppressed, "suppressed"))
        # At most one campaign per customer per pass: the higher priority ran first.
        taken = (
            sa.select(col(Delivery.id))
            .where(
                col(Delivery.customer_id) == col(Customer.id),
                col(Delivery.created_at) >= self._now(),
                col(Delivery.status).in_(IN_FLIGHT),
            )
            .exists()
        )
        cases.append((taken, "other_campaign"))
        for cap, scope in ((self.rules.defaults.frequency_cap, None), (campaign.frequency_cap, campaign.id)):
            if cap is not None:
                cases.append((self._capped(cap, scope), "capped"))
        if campaign.holdout > 0:
            bucket = _bucket(col(Customer.id), campaign.holdout_purpose)
            cases.append((bucket < round(campaign.holdout * BUCKETS / 100), "held_out"))
        return sa.case(*cases, else_="send")

    def selection(self, campaign: Campaign, fire: datetime | None) -> sa.Subquery:
        """Every customer matching the campaign's conditions, with episode and verdict."""
        episode = self.episode(campaign, fire)
        query: sa.Select[*tuple[Any, ...]] = sa.select(
            col(Customer.id).label("customer_id"),
            episode.label("episode"),
            self.verdict(campaign, episode).label("verdict"),
        )
        if campaign.trigger is not None:
            trigger = campaign.trigger
            query = query.join(
                Event,
                sa.and_(
                    col(Event.customer_id) == col(Customer.id),
                    col(Event.name) == trigger.event,
                    col(Event.occurred_at) <= self.now - trigger.after,
                    col(Event.occurred_at) > self.now - trigger.after - trigger.within,
                ),
            )
        condition = campaign.condition
        query = query.where(compile_condition(condition, self.sql) if condition else sa.true())
        if self.customer_id is not None:
            query = query.where(col(Customer.id) == self.customer_id)
        return query.subquery("selection")

    # ------------------------------------------------------------ the pass

    def run(
        self, session: Session, *, campaign_ids: Sequence[str] | None = None, sample: int = 0
    ) -> PassResult:
        """Plan every enabled campaign, highest priority first; the caller commits or rolls back."""
        result = PassResult(now=self.now, plans=[], queued_ids=[])
        for campaign in self.rules.by_priority():
            if campaign_ids and campaign.id not in campaign_ids:
                continue
            plan = self._plan_campaign(session, campaign, sample)
            result.plans.append(plan)
            result.queued_ids.extend(plan.queued_ids)
        return result

    def _plan_campaign(self, session: Session, campaign: Campaign, sample: int) -> CampaignPlan:
        plan = CampaignPlan(campaign.id)
        state = self._state(session, campaign.id)
        if state.paused_at is not None:
            plan.due = False
            plan.not_due_reason = (
                f"paused: {state.paused_reason}; resume with `retention approve {campaign.id}`"
            )
            return plan
        fire = self.scheduled_fire(campaign, state)
        if campaign.schedule is not None and fire is None:
            plan.due = False
            upcoming = self.next_fire(campaign)
            when = f"; next fire {upcoming:%Y-%m-%d %H:%M %Z}" if upcoming else ""
            plan.not_due_reason = f"schedule {campaign.schedule!r} not due{when}"
            return plan

        selection = self._materialize(session, self.selection(campaign, fire))
        for verdict, count in session.execute(
            sa.select(selection.c.verdict, sa.func.count()).group_by(selection.c.verdict)
        ):
            plan.counts[verdict] = count
        if campaign.max_per_pass is not None:
            plan.over_max_per_pass = max(0, plan.counts["send"] - campaign.max_per_pass)
        if sample:
            plan.sample = [
                (row.external_id, row.email)
                for row in session.execute(
                    sa.select(col(Customer.external_id), col(Customer.email))
                    .join(selection, selection.c.customer_id == col(Customer.id))
                    .where(selection.c.verdict == "send")
                    .order_by(col(Customer.id))
                    .limit(sample)
                )
            ]

        if self.customer_id is None:
            plan.blast_guard = self._blast_guard(session, campaign, plan.audience, state)
        state.last_pass_at = self.now
        if plan.blast_guard:
            log.warning(
                "campaign %s held by the blast guard: %s; release it with `retention approve %s`",
                campaign.id,
                plan.blast_guard,
                campaign.id,
            )
            state.held_since = state.held_since or self.now
            state.approved_audience = None
            held_audience = plan.audience
        else:
            state.last_audience = plan.audience
            held_audience = None
        if plan.counts["already_sent"]:
            plan.earlier = self._earlier(session, campaign, selection)
        inserted = self._insert(session, campaign, selection, held=bool(plan.blast_guard))
        plan.inserted = len(inserted)
        for _, status in inserted:
            plan.recorded[status] = plan.recorded.get(status, 0) + 1
        plan.queued_ids = [i for i, status in inserted if status == DeliveryStatus.queued]
        if held_audience is not None:
            state.approved_audience = held_audience  # what `approve` accepts as the new baseline
        session.flush()
        return plan

    def _materialize(self, session: Session, selection: sa.Subquery) -> sa.Table:
        """Evaluate the selection once into a temporary table.

        The counts, the sample and the insert all read it: evaluating the
        verdicts (correlated subqueries per customer) once instead of twice
        halves a pass on large audiences.  Temporary tables belong to the
        connection, so racing planners never see each other's.
        """
        dialect = session.get_bind().dialect.name
        # PostgreSQL drops it with the transaction; SQLite keeps it per connection, emptied each time.
        suffix = " ON COMMIT DROP" if dialect == "postgresql" else ""
        session.execute(
            sa.text(
                "CREATE TEMPORARY TABLE IF NOT EXISTS plan_selection "
                "(customer_id INTEGER NOT NULL, episode VARCHAR(100) NOT NULL, "
                f"verdict VARCHAR(20) NOT NULL){suffix}"
            )
        )
        session.execute(sa.text("DELETE FROM plan_selection"))
        session.execute(
            sa.insert(_PLAN_SELECTION).from_select(
                ["customer_id", "episode", "verdict"],
                sa.select(selection.c.customer_id, selection.c.episode, selection.c.verdict),
            )
        )
        return _PLAN_SELECTION

    def _earlier(self, session: Session, campaign: Campaign, selection: sa.Table) -> dict[str, int]:
        """What became of the deliveries that make customers "already_sent", by status."""
        rows = session.execute(
            sa.select(col(Delivery.status), sa.func.count())
            .join(
                selection,
                sa.and_(
                    selection.c.customer_id == col(Delivery.customer_id),
                    selection.c.episode == col(Delivery.episode),
                ),
            )
            .where(col(Delivery.campaign_id) == campaign.id, selection.c.verdict == "already_sent")
            .group_by(col(Delivery.status))
        )
        return {str(status): int(count) for status, count in rows}

    def _variant_columns(self, campaign: Campaign, selection: sa.FromClause) -> tuple[Any, Any]:
        """(template, variant) per row: a deterministic weighted split for A/B tests."""
        if campaign.variants is None:
            return sa.literal(campaign.template), sa.null()
        bucket = _bucket(selection.c.customer_id, campaign.variant_purpose)
        total = sum(v.weight for v in campaign.variants)
        bounds, cumulative = [], 0
        for variant in campaign.variants[:-1]:
            cumulative += variant.weight
            bounds.append((bucket < round(cumulative * BUCKETS / total), variant))
        last = campaign.variants[-1]
        template = sa.case(*((b, sa.literal(v.template)) for b, v in bounds), else_=sa.literal(last.template))
        label = sa.case(*((b, sa.literal(v.label)) for b, v in bounds), else_=sa.literal(last.label))
        return template, label

    def _state(self, session: Session, campaign_id: str) -> CampaignState:
        """The campaign's row, locked: racing planners take turns per campaign (PostgreSQL)."""
        insert = dialect_insert(session, CampaignState)
        session.execute(insert.values(campaign_id=campaign_id).on_conflict_do_nothing())
        state = session.get(CampaignState, campaign_id, with_for_update=True, populate_existing=True)
        if state is None:  # pragma: no cover - inserted just above
            raise LookupError(f"campaign state {campaign_id!r} vanished")
        return state

    def _blast_guard(
        self, session: Session, campaign: Campaign, audience: int, state: CampaignState
    ) -> str | None:
        guard = self.rules.defaults.blast_guard
        previous = state.last_audience
        if previous is None:
            if audience > guard.first_pass:
                return f"first pass matches {audience} customers (over first_pass {guard.first_pass})"
            if audience and campaign.condition is None and campaign.trigger is None:
                return (
                    f"first pass of a campaign without conditions matches {audience} customers "
                    "(add `when:` to narrow it, or approve it as it is)"
                )
            total = self._customer_total(session)
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

    def _customer_total(self, session: Session) -> int:
        if self._total_customers is None:
            self._total_customers = int(
                session.execute(sa.select(sa.func.count()).select_from(Customer)).scalar_one()
            )
        return self._total_customers

    def _insert(
        self, session: Session, campaign: Campaign, selection: sa.FromClause, *, held: bool
    ) -> list[tuple[int, str]]:
        """Insert the sendable and held-out rows; return (id, status) of those actually new."""
        new_status = DeliveryStatus.held if held else DeliveryStatus.queued
        status = sa.case(
            (selection.c.verdict == "held_out", sa.literal(DeliveryStatus.held_out.value)),
            (selection.c.verdict == "capped", sa.literal(DeliveryStatus.skipped.value)),
            else_=sa.literal(new_status.value),
        )
        template, variant = self._variant_columns(campaign, selection)
        recorded = ["send", "held_out"] + (["capped"] if campaign.over_cap == "skip" else [])
        now = self._now()
        rows = (
            sa.select(
                sa.literal(campaign.id),
                selection.c.customer_id,
                selection.c.episode,
                status,
                template,
                variant,
                sa.literal(0),
                now,
                now,
                now,
                now if not held else sa.null(),
            )
            .where(selection.c.verdict.in_(recorded))
            .order_by(selection.c.customer_id)
        )
        if campaign.max_per_pass is not None:
            rows = rows.limit(campaign.max_per_pass)
        columns = [
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
        ]
        # The table, not the ORM entity: the ORM's bulk-insert path turns each returned row
        # into an object first, which cost more than the INSERT itself (bench P1).
        table: Any = Delivery.__table__  # type: ignore[attr-defined]
        insert = dialect_insert(session, table)
        statement = (
            insert.from_select(columns, rows)
            .on_conflict_do_nothing(index_elements=["campaign_id", "customer_id", "episode"])
            .returning(table.c.id, table.c.status)
        )
        inserted: list[tuple[int, str]] = session.connection().execute(statement).all()  # type: ignore[assignment]
        return inserted


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
