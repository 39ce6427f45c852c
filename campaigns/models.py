"""Tables.  Every datetime is timezone-aware in Python and UTC in the database."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out, on SQLite and PostgreSQL alike.

    SQLite has no time zone type, so values are stored there as naive UTC; the
    same conversion applies to bound literals, so comparisons stay correct.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: attach a time zone before storing it")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _dt(**kwargs: Any) -> Any:
    return Field(sa_type=UTCDateTime(), **kwargs)


class CustomerStatus(StrEnum):
    active = "active"
    cancelled = "cancelled"


class DeliveryStatus(StrEnum):
    queued = "queued"  # planned; a message is (or will be) on the broker
    sending = "sending"  # claimed by a worker; the SMTP conversation may be under way
    sent = "sent"
    failed = "failed"  # permanent failure, or retries exhausted
    bounced = "bounced"  # recipient does not exist: the address is suppressed
    suppressed = "suppressed"  # unsubscribed or suppressed between planning and sending
    held_out = "held_out"  # control group: recorded, never sent
    held = "held"  # blast guard: waits for `retention approve`
    skipped = "skipped"  # over the frequency cap with `over_cap: skip`: this episode is closed
    # A worker died mid-send: the mail may or may not have gone.  Never resent
    # automatically (no double send); listed for review.
    unknown = "unknown"


class Customer(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    external_id: str = Field(index=True, unique=True, max_length=255)
    email: str = Field(max_length=320, index=True)
    first_name: str | None = Field(default=None, max_length=255)
    last_name: str | None = Field(default=None, max_length=255)
    plan: str | None = Field(default=None, max_length=100, index=True)
    status: str = Field(default=CustomerStatus.active, max_length=20, index=True)
    timezone: str | None = Field(default=None, max_length=64)
    locale: str | None = Field(default=None, max_length=35)
    signed_up_at: datetime | None = _dt(default=None)
    cancelled_at: datetime | None = _dt(default=None)
    last_active_at: datetime | None = _dt(default=None, index=True)
    activity_count: int = Field(default=0)
    # Median gap in days between distinct active days; null with too little history.
    cadence_days: float | None = Field(default=None)
    attributes: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON)
    unsubscribed_at: datetime | None = _dt(default=None)
    created_at: datetime = _dt(default_factory=utcnow)
    updated_at: datetime = _dt(default_factory=utcnow)


class Event(SQLModel, table=True):
    __table_args__ = (
        sa.Index("ix_event_customer_name_time", "customer_id", "name", "occurred_at"),
        # Cadence: one customer's recent active days, newest first.
        sa.Index("ix_event_customer_time", "customer_id", "occurred_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    customer_id: int = Field(foreign_key="customer.id", ondelete="CASCADE")
    name: str = Field(max_length=100, index=True)
    occurred_at: datetime = _dt()
    # The sender's own id for the event: the same id twice is stored once.
    client_id: str | None = Field(default=None, max_length=255, unique=True)
    properties: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON)
    created_at: datetime = _dt(default_factory=utcnow)


class PendingActivity(SQLModel, table=True):
    """Activity an import stored events for but has not yet applied to its customers.

    Written in the events' own transaction, so an interrupted import loses none of it;
    ``campaigns.ingestion.pending.fold_pending_activity`` applies and deletes the rows at
    the end of each import and before each planning pass.  (Updating every customer named
    by each batch rewrote most customer pages once per batch: the import's largest cost.)
    No foreign key: a deleted customer's rows simply match nothing when folded.
    """

    __tablename__ = "pending_activity"

    id: int | None = Field(default=None, primary_key=True)
    customer_id: int
    latest_at: datetime = _dt()  # the newest activity event's time
    count: int  # activity events stored


class Delivery(SQLModel, table=True):
    """One planned message.  The database is the outbox and the source of truth."""

    __table_args__ = (
        sa.UniqueConstraint("campaign_id", "customer_id", "episode", name="uq_delivery_natural_key"),
        sa.Index("ix_delivery_customer_created", "customer_id", "created_at"),
        sa.Index("ix_delivery_status_updated", "status", "updated_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    campaign_id: str = Field(max_length=100, index=True)
    customer_id: int = Field(foreign_key="customer.id", ondelete="CASCADE")
    # What this one send answers: last activity (condition campaigns), the
    # triggering event id, or "once".  Part of the natural key.
    episode: str = Field(max_length=100)
    status: str = Field(default=DeliveryStatus.queued, max_length=20)
    template: str = Field(max_length=100)
    variant: str | None = Field(default=None, max_length=100)
    attempts: int = Field(default=0)
    last_error: str | None = Field(default=None)
    # Derived from the natural key when the message is built, so a resend keeps it.
    # Indexed: a bounce or complaint finds its delivery by it.
    message_id: str | None = Field(default=None, max_length=255, index=True)
    # The worker process of the current claim (WorkerHeartbeat.worker_id): when it stops
    # beating, the delivery is settled without waiting for the sending timeout.
    claimed_by: str | None = Field(default=None, max_length=100)
    due_at: datetime = _dt(default_factory=utcnow)
    # When a message for it last went to the broker; the sweeper re-enqueues stale ones.
    enqueued_at: datetime | None = _dt(default=None)
    sent_at: datetime | None = _dt(default=None)
    converted_at: datetime | None = _dt(default=None)
    created_at: datetime = _dt(default_factory=utcnow)
    updated_at: datetime = _dt(default_factory=utcnow)


class WorkerHeartbeat(SQLModel, table=True):
    """A sending process's sign of life, renewed every few seconds while it runs."""

    __tablename__ = "worker_heartbeat"

    worker_id: str = Field(primary_key=True, max_length=100)  # host:pid:random
    started_at: datetime = _dt(default_factory=utcnow)
    beat_at: datetime = _dt(default_factory=utcnow)


class Suppression(SQLModel, table=True):
    """Addresses never to be mailed again (hard bounces, complaints, manual)."""

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(max_length=320, unique=True)
    reason: str = Field(max_length=255)
    created_at: datetime = _dt(default_factory=utcnow)


class CampaignState(SQLModel, table=True):
    """What the planner remembers about a campaign between passes."""

    __tablename__ = "campaign_state"

    campaign_id: str = Field(primary_key=True, max_length=100)
    last_pass_at: datetime | None = _dt(default=None)
    last_audience: int | None = Field(default=None)
    # Blast guard: the audience size someone approved with `retention approve`.
    approved_audience: int | None = Field(default=None)
    held_since: datetime | None = _dt(default=None)
    # Policy rejections (SMTP 5.7.x) in a row; too many pause the campaign.
    policy_failures: int = Field(default=0)
    paused_at: datetime | None = _dt(default=None)
    paused_reason: str | None = Field(default=None)
    # Last `retention approve`: the complaint rate that pauses a campaign counts from here.
    approved_at: datetime | None = _dt(default=None)


class InteractionKind(StrEnum):
    click = "click"
    unsubscribe = "unsubscribe"
    survey = "survey"
    complaint = "complaint"  # marked as spam: the strongest "no" there is


class BounceKind(StrEnum):
    hard = "hard"  # the address does not exist (5.1.x): suppressed at once
    soft = "soft"  # a full mailbox, a server down: suppressed after several within a window
    complaint = "complaint"  # marked as spam (ARF, a provider's feedback loop)


class Bounce(SQLModel, table=True):
    """A bounce or spam complaint reported after the send (provider webhook, bounce mailbox).

    ``key`` is the report's own identity (its source and id, and the recipient), so
    the same notification delivered twice is stored, and counted, once.
    """

    __table_args__ = (sa.Index("ix_bounce_email_kind_time", "email", "kind", "occurred_at"),)

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=255, unique=True)
    source: str = Field(max_length=20)
    kind: str = Field(max_length=20)
    email: str = Field(max_length=320)
    delivery_id: int | None = Field(default=None, foreign_key="delivery.id", ondelete="SET NULL", index=True)
    campaign_id: str | None = Field(default=None, max_length=100, index=True)
    reason: str | None = Field(default=None, max_length=1000)
    occurred_at: datetime = _dt(default_factory=utcnow)
    created_at: datetime = _dt(default_factory=utcnow)


class Interaction(SQLModel, table=True):
    """Something a customer did with one email: a click, an unsubscribe, a survey answer."""

    __table_args__ = (sa.Index("ix_interaction_delivery_kind", "delivery_id", "kind"),)

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=20, index=True)
    delivery_id: int = Field(foreign_key="delivery.id", ondelete="CASCADE")
    customer_id: int = Field(foreign_key="customer.id", ondelete="CASCADE", index=True)
    campaign_id: str = Field(max_length=100)
    url: str | None = Field(default=None, max_length=2000)
    created_at: datetime = _dt(default_factory=utcnow, index=True)


class SurveyAnswer(SQLModel, table=True):
    """One customer's answer to one question; answering again replaces it."""

    __tablename__ = "survey_answer"
    __table_args__ = (
        sa.UniqueConstraint("customer_id", "survey_id", "question_id", name="uq_survey_answer"),
    )

    id: int | None = Field(default=None, primary_key=True)
    customer_id: int = Field(foreign_key="customer.id", ondelete="CASCADE")
    delivery_id: int | None = Field(default=None, foreign_key="delivery.id", ondelete="SET NULL")
    campaign_id: str | None = Field(default=None, max_length=100)
    survey_id: str = Field(max_length=100, index=True)
    question_id: str = Field(max_length=100)
    answer: str
    created_at: datetime = _dt(default_factory=utcnow)
    updated_at: datetime = _dt(default_factory=utcnow)


class AppSetting(SQLModel, table=True):
    """Small shared values every machine must agree on (e.g. the generated secret key)."""

    __tablename__ = "app_setting"

    key: str = Field(primary_key=True, max_length=100)
    value: str


def message_id_for(delivery: Delivery, domain: str) -> str:
    """Deterministic Message-ID from the natural key: a resend is recognisably the same mail."""
    key = f"{delivery.campaign_id}\0{delivery.customer_id}\0{delivery.episode}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    return f"<{delivery.campaign_id}.{digest}@{domain}>"


class WebhookEvent(SQLModel, table=True):
    """Something a webhook may announce, written in the transaction that made it happen (an outbox)."""

    __tablename__ = "webhook_event"

    id: int | None = Field(default=None, primary_key=True)
    # What it answers (``sent:<delivery id>``): recording the same thing twice announces it once.
    key: str = Field(max_length=200, unique=True)
    kind: str = Field(max_length=20)
    customer_id: int | None = Field(default=None, foreign_key="customer.id", ondelete="CASCADE")
    delivery_id: int | None = Field(default=None)
    campaign_id: str | None = Field(default=None, max_length=100)
    data: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON)
    occurred_at: datetime = _dt(default_factory=utcnow)
    # Fanned out to the endpoints subscribed at that moment; null while waiting.
    dispatched_at: datetime | None = _dt(default=None, index=True)


class WebhookMessage(SQLModel, table=True):
    """One event for one endpoint; the body is fixed at fan-out, so every retry sends the same bytes."""

    __tablename__ = "webhook_message"
    __table_args__ = (
        sa.UniqueConstraint("event_id", "url", name="uq_webhook_message"),
        sa.Index("ix_webhook_message_status_updated", "status", "updated_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    event_id: int = Field(foreign_key="webhook_event.id", ondelete="CASCADE")
    url: str = Field(max_length=1000)
    kind: str = Field(max_length=20)
    body: str
    status: str = Field(default="pending", max_length=20)  # pending | delivered | failed
    attempts: int = Field(default=0)
    last_error: str | None = Field(default=None)
    created_at: datetime = _dt(default_factory=utcnow)
    updated_at: datetime = _dt(default_factory=utcnow)
    delivered_at: datetime | None = _dt(default=None)


class WebhookAttempt(SQLModel, table=True):
    """One HTTP attempt at a webhook message, as the endpoint answered it."""

    __tablename__ = "webhook_attempt"

    id: int | None = Field(default=None, primary_key=True)
    message_id: int = Field(foreign_key="webhook_message.id", ondelete="CASCADE", index=True)
    attempted_at: datetime = _dt(default_factory=utcnow, index=True)
    status_code: int | None = Field(default=None)
    error: str | None = Field(default=None)
    duration_ms: int = Field(default=0)


# The Core tables, for SQL that needs no ORM (the planner's): a statement over the classes'
# columns (``col(Customer.id)``) passes through the ORM's compile step, and its first use
# configures every mapper, a cost a cold planning pass would otherwise pay (bench P1).
def _core(model: type[SQLModel]) -> sa.Table:
    table: sa.Table = model.__table__  # type: ignore[attr-defined]
    return table


CUSTOMER = _core(Customer)
EVENT = _core(Event)
DELIVERY = _core(Delivery)
SUPPRESSION = _core(Suppression)
CAMPAIGN_STATE = _core(CampaignState)
SURVEY_ANSWER = _core(SurveyAnswer)
