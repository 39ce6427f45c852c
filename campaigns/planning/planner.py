"""One planning pass: which customers get which campaign now.

Per campaign, one SELECT computes every customer's *verdict* (``verdicts``: already sent,
cooldown, suppressed, capped, held out, send) into a temporary table, and one INSERT …
SELECT turns the sendable ones into ``Delivery`` rows.  The natural key ``(campaign_id,
customer_id, episode)`` is UNIQUE and the insert does nothing on conflict, so racing
planners cannot create a duplicate.  `retention plan` runs the very same pass in a
transaction it rolls back, so what it shows is exactly what a real pass would do.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from campaigns.ingestion.pending import fold_pending_activity
from campaigns.models import CUSTOMER, DELIVERY, DeliveryStatus
from campaigns.planning.recording import delivery_insert
from campaigns.planning.schedule import next_fire, scheduled_fire
from campaigns.planning.state import PassState, blast_guard_reason, locked_states, save_states
from campaigns.planning.verdicts import VERDICTS, VerdictQuery
from campaigns.rules import Campaign, Rules

log = logging.getLogger(__name__)

# One pass's materialized selection (see Planner._materialize); created per connection.
_PLAN_SELECTION = sa.Table(
    "plan_selection",
    sa.MetaData(),
    sa.Column("customer_id", sa.Integer, nullable=False),
    sa.Column("episode", sa.String(100), nullable=False),
    sa.Column("verdict", sa.String(20), nullable=False),
    prefixes=["TEMPORARY"],
)
# The same objects every pass: SQLAlchemy keeps their cache keys, not only their compiled forms.
_CLEAR = sa.text("DELETE FROM plan_selection")
_COUNTED = sa.select(_PLAN_SELECTION.c.verdict, sa.func.count()).group_by(_PLAN_SELECTION.c.verdict)


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
        self.verdicts = VerdictQuery(rules, now=now, customer_id=customer_id)

    def run(
        self, session: Session, *, campaign_ids: Sequence[str] | None = None, sample: int = 0
    ) -> PassResult:
        """Plan every enabled campaign, highest priority first; the caller commits or rolls back."""
        result = PassResult(now=self.now, plans=[], queued_ids=[])
        session.flush()  # the pass runs Core statements on the session's connection
        # What an import has stored but not yet applied (it is running, or was interrupted).
        fold_pending_activity(session, now=self.now,
                              non_activity_events=frozenset(self.rules.defaults.non_activity_events))
        connection = session.connection()
        postgresql = connection.dialect.name == "postgresql"
        if postgresql:
            # These statements cost PostgreSQL more than JIT compiling them saves: 0.3-0.4 s of
            # compilation per campaign statement from about 100k customers (bench P1).
            jit = connection.execute(sa.text("SELECT current_setting('jit'), set_config('jit', 'off', true)"))
            previous_jit = jit.scalar_one()
        # PostgreSQL drops it with the transaction; SQLite keeps it per connection, emptied each time.
        connection.execute(
            sa.text(
                "CREATE TEMPORARY TABLE IF NOT EXISTS plan_selection "
                "(customer_id INTEGER NOT NULL, episode VARCHAR(100) NOT NULL, "
                f"verdict VARCHAR(20) NOT NULL){' ON COMMIT DROP' if postgresql else ''}"
            )
        )
        campaigns = [c for c in self.rules.by_priority() if not campaign_ids or c.id in campaign_ids]
        states = locked_states(session, [c.id for c in campaigns])
        for campaign in campaigns:
            plan = self._plan_campaign(session, campaign, states[campaign.id], sample)
            result.plans.append(plan)
            result.queued_ids.extend(plan.queued_ids)
        save_states(session, [states[p.campaign_id] for p in result.plans if p.due])
        if postgresql:
            connection.execute(sa.select(sa.func.set_config("jit", previous_jit, True)))
        return result

    def _plan_campaign(
        self, session: Session, campaign: Campaign, state: PassState, sample: int
    ) -> CampaignPlan:
        """Plan one campaign, changing ``state`` as the pass would (``run`` saves it)."""
        plan = CampaignPlan(campaign.id)
        if state.paused_at is not None:
            plan.due = False
            plan.not_due_reason = (
                f"paused: {state.paused_reason}; resume with `retention approve {campaign.id}`"
            )
            return plan
        fire = scheduled_fire(campaign, state, now=self.now, defaults=self.rules.defaults)
        if campaign.schedule is not None and fire is None:
            plan.due = False
            upcoming = next_fire(campaign, now=self.now, defaults=self.rules.defaults)
            when = f"; next fire {upcoming:%Y-%m-%d %H:%M %Z}" if upcoming else ""
            plan.not_due_reason = f"schedule {campaign.schedule!r} not due{when}"
            return plan

        connection = session.connection()
        selection = _PLAN_SELECTION
        plan.counts.update(self._materialize(session, self.verdicts.selection(campaign, fire)))
        if campaign.max_per_pass is not None:
            plan.over_max_per_pass = max(0, plan.counts["send"] - campaign.max_per_pass)
        if sample:
            plan.sample = [
                (row.external_id, row.email)
                for row in connection.execute(
                    sa.select(CUSTOMER.c.external_id, CUSTOMER.c.email)
                    .join(selection, selection.c.customer_id == CUSTOMER.c.id)
                    .where(selection.c.verdict == "send")
                    .order_by(CUSTOMER.c.id)
                    .limit(sample)
                )
            ]

        if self.customer_id is None:
            plan.blast_guard = blast_guard_reason(
                self.rules.defaults.blast_guard,
                campaign,
                plan.audience,
                state,
                lambda: self._customer_total(session),
            )
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
        return plan

    def _materialize(self, session: Session, selection: sa.Select[*tuple[Any, ...]]) -> dict[str, int]:
        """Evaluate the selection once into the temporary table; return its rows per verdict.

        The counts, the sample and the insert all read it: evaluating the
        verdicts (correlated subqueries per customer) once instead of twice
        halves a pass on large audiences.  Temporary tables belong to the
        connection, so racing planners never see each other's (``run`` creates it).
        """
        connection = session.connection()
        table = _PLAN_SELECTION
        fill = sa.insert(table).from_select(["customer_id", "episode", "verdict"], selection)
        if connection.dialect.name == "postgresql":
            # One round trip: the sub-statements share one snapshot, so the DELETE clears the
            # previous campaign's rows and never sees the new ones.  (Counting in the same
            # statement too, over the INSERT's RETURNING, made a 1M pass 15 % slower.)
            connection.execute(fill.add_cte(sa.delete(table).cte("cleared")))
        else:
            connection.execute(_CLEAR)
            connection.execute(fill)
        return {verdict: count for verdict, count in connection.execute(_COUNTED)}

    def _earlier(self, session: Session, campaign: Campaign, selection: sa.Table) -> dict[str, int]:
        """What became of the deliveries that make customers "already_sent", by status."""
        rows = session.connection().execute(
            sa.select(DELIVERY.c.status, sa.func.count())
            .join(
                selection,
                sa.and_(
                    selection.c.customer_id == DELIVERY.c.customer_id,
                    selection.c.episode == DELIVERY.c.episode,
                ),
            )
            .where(DELIVERY.c.campaign_id == campaign.id, selection.c.verdict == "already_sent")
            .group_by(DELIVERY.c.status)
        )
        return {str(status): int(count) for status, count in rows}

    def _customer_total(self, session: Session) -> int:
        if self._total_customers is None:
            self._total_customers = int(
                session.connection().execute(sa.select(sa.func.count()).select_from(CUSTOMER)).scalar_one()
            )
        return self._total_customers

    def _insert(
        self, session: Session, campaign: Campaign, selection: sa.Table, *, held: bool
    ) -> list[tuple[int, str]]:
        """Insert the sendable and held-out rows; return (id, status) of those actually new."""
        connection = session.connection()
        statement, parameters = delivery_insert(
            connection.dialect.name, selection, campaign, held=held, now=self.now
        )
        inserted: list[tuple[int, str]] = connection.execute(statement, parameters).all()  # type: ignore[assignment]
        return inserted
