"""What comes back from a sent email: unsubscribes, clicks and survey answers.

Every function takes a session and a delivery id (from a verified link token)
and returns plain values; it commits its own writes, so a result means the
write is durable.  Repeating a call is harmless: a second unsubscribe changes
nothing, a second survey response replaces the first as a whole.

Concurrency: the delivery row is locked (``FOR UPDATE`` on PostgreSQL) before
anything is read, so two racing requests for the same email cannot both
record "the first" interaction.  SQLite serializes writers anyway.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import col

from campaigns.errors import SurveyUnavailable, SurveyValidationError, UnknownCampaign, UnknownDelivery
from campaigns.models import (
    Customer,
    Delivery,
    DeliveryStatus,
    Interaction,
    InteractionKind,
    SurveyAnswer,
)
from campaigns.responses.notify import notify
from campaigns.rules import Question, Rules
from campaigns.sql import dialect_insert

log = logging.getLogger(__name__)

URL_MAX_LENGTH = 2000  # Interaction.url column


@dataclass(frozen=True)
class UnsubscribeResult:
    customer_id: int
    email: str
    already_unsubscribed: bool
    # Deliveries that were queued or held for this customer and will not be sent now.
    suppressed_deliveries: int


@dataclass(frozen=True)
class ClickResult:
    delivery_id: int
    campaign_id: str
    url: str


@dataclass(frozen=True)
class FormQuestion:
    id: str
    ask: str  # in the customer's language when rules.yaml translates it
    kind: str  # "choice" or "text"
    choices: tuple[str, ...]
    required: bool
    max_length: int
    previous: str | None  # the stored answer, to prefill the form
    labels: dict[str, str] = field(default_factory=dict)  # choice → its translated label


@dataclass(frozen=True)
class SurveyForm:
    survey_id: str
    campaign_id: str
    questions: tuple[FormQuestion, ...]
    locale: str | None = None  # the customer's, for the page around the questions

    @property
    def answered_before(self) -> bool:
        return any(q.previous is not None for q in self.questions)


@dataclass(frozen=True)
class SurveyResult:
    survey_id: str
    campaign_id: str
    answers: dict[str, str]  # question id → stored answer
    replaced: bool  # an earlier response existed and this one took its place
    cleared: tuple[str, ...]  # questions answered before and left empty now


# ---------------------------------------------------------------- unsubscribe


def unsubscribe(session: Session, delivery_id: int, *, now: datetime) -> UnsubscribeResult:
    """Unsubscribe the customer this delivery went to and stop what is queued for them."""
    delivery = _locked_delivery(session, delivery_id)
    # Written before anything else is read: on SQLite this takes the write lock,
    # so the interaction check below cannot race another request.
    first = session.execute(
        sa.update(Customer)
        .where(col(Customer.id) == delivery.customer_id, col(Customer.unsubscribed_at).is_(None))
        .values(unsubscribed_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    _record_once(session, delivery, InteractionKind.unsubscribe, now=now)
    stopped = session.execute(
        sa.update(Delivery)
        .where(col(Delivery.customer_id) == delivery.customer_id,
               col(Delivery.status).in_((DeliveryStatus.queued, DeliveryStatus.held)))
        .values(status=DeliveryStatus.suppressed, last_error="unsubscribed", updated_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    email, external_id = session.execute(
        sa.select(col(Customer.email), col(Customer.external_id))
        .where(col(Customer.id) == delivery.customer_id)).one()
    if first:
        notify(session, "unsubscribed", key=f"unsubscribed:{delivery.customer_id}:{now.isoformat()}", at=now,
               customer_id=delivery.customer_id, delivery_id=delivery_id, campaign_id=delivery.campaign_id)
    session.commit()
    if first:  # the company's own customer id: the one its people search for
        log.info("customer %s unsubscribed (delivery %s, %s); %d queued deliveries suppressed",
                 external_id, delivery_id, delivery.campaign_id, stopped)
    return UnsubscribeResult(customer_id=delivery.customer_id, email=email or "",
                             already_unsubscribed=not first, suppressed_deliveries=stopped)


def is_unsubscribed(session: Session, delivery_id: int) -> tuple[str, bool]:
    """(email, already unsubscribed) of the customer a delivery went to; reads only."""
    row = session.execute(
        sa.select(col(Customer.email), col(Customer.unsubscribed_at))
        .join(Delivery, col(Delivery.customer_id) == col(Customer.id))
        .where(col(Delivery.id) == delivery_id)
    ).one_or_none()
    if row is None:
        raise UnknownDelivery(delivery_id)
    return row[0], row[1] is not None


def customer_locale(session: Session, delivery_id: int) -> str | None:
    """The locale of the customer a delivery went to, for the pages they see; reads only."""
    return session.scalar(
        sa.select(col(Customer.locale))
        .join(Delivery, col(Delivery.customer_id) == col(Customer.id))
        .where(col(Delivery.id) == delivery_id)
    )


# ---------------------------------------------------------------- clicks


def record_click(session: Session, delivery_id: int, url: str, *, now: datetime) -> ClickResult:
    """Record one click on a tracked link.  Every click counts; unique clicks are a query away."""
    delivery = session.get(Delivery, delivery_id)
    if delivery is None:
        raise UnknownDelivery(delivery_id)
    session.add(Interaction(
        kind=InteractionKind.click, delivery_id=delivery_id, customer_id=delivery.customer_id,
        campaign_id=delivery.campaign_id, url=url[:URL_MAX_LENGTH], created_at=now,
    ))
    notify(session, "clicked", at=now, customer_id=delivery.customer_id, delivery_id=delivery_id,
           campaign_id=delivery.campaign_id, data={"url": url[:URL_MAX_LENGTH]})
    session.commit()
    return ClickResult(delivery_id=delivery_id, campaign_id=delivery.campaign_id, url=url)


# ---------------------------------------------------------------- surveys


def survey_form(session: Session, rules: Rules, delivery_id: int) -> SurveyForm:
    """The survey of this delivery's campaign, prefilled with the customer's earlier answers."""
    delivery = session.get(Delivery, delivery_id)
    if delivery is None:
        raise UnknownDelivery(delivery_id)
    survey_id, questions = _survey_of(rules, delivery)
    previous = {question_id: answer for question_id, answer in session.execute(
        sa.select(col(SurveyAnswer.question_id), col(SurveyAnswer.answer))
        .where(col(SurveyAnswer.customer_id) == delivery.customer_id,
               col(SurveyAnswer.survey_id) == survey_id)
    )}
    customer = session.get(Customer, delivery.customer_id)
    locale = customer.locale if customer is not None else None
    form = []
    for q in questions:
        ask, labels = q.in_locale(locale)
        form.append(FormQuestion(id=q.id, ask=ask, kind=q.kind, choices=q.choices or (),
                                 required=q.required, max_length=q.max_length,
                                 previous=previous.get(q.id), labels=labels))
    return SurveyForm(survey_id=survey_id, campaign_id=delivery.campaign_id, questions=tuple(form),
                      locale=locale)


def submit_survey(
    session: Session, rules: Rules, delivery_id: int, answers: Mapping[str, Sequence[str]],
    *, now: datetime,
) -> SurveyResult:
    """Validate and store one response; it replaces the customer's earlier response as a whole.

    Raises SurveyValidationError (nothing stored) for an unknown question, an
    unknown choice, text over ``max_length`` or a required question left empty.
    """
    delivery = _locked_delivery(session, delivery_id)
    survey_id, questions = _survey_of(rules, delivery)
    cleaned = validate_answers(survey_id, questions, answers)

    existing = set(session.scalars(
        sa.select(col(SurveyAnswer.question_id))
        .where(col(SurveyAnswer.customer_id) == delivery.customer_id,
               col(SurveyAnswer.survey_id) == survey_id)
    ))
    for question_id, answer in cleaned.items():
        _upsert_answer(session, delivery, survey_id, question_id, answer, now=now)
    cleared = tuple(q.id for q in questions if q.id in existing and q.id not in cleaned)
    if cleared:
        session.execute(
            sa.delete(SurveyAnswer)
            .where(col(SurveyAnswer.customer_id) == delivery.customer_id,
                   col(SurveyAnswer.survey_id) == survey_id,
                   col(SurveyAnswer.question_id).in_(cleared))
            .execution_options(synchronize_session=False)
        )
    _record_once(session, delivery, InteractionKind.survey, now=now)
    notify(session, "answered", at=now, customer_id=delivery.customer_id, delivery_id=delivery_id,
           campaign_id=delivery.campaign_id, data={"survey_id": survey_id, "answers": cleaned})
    external_id = session.scalar(sa.select(col(Customer.external_id))
                                 .where(col(Customer.id) == delivery.customer_id))
    session.commit()
    log.info("survey %s answered by customer %s (delivery %s)%s", survey_id, external_id,
             delivery_id, ", replacing an earlier response" if existing else "")
    return SurveyResult(survey_id=survey_id, campaign_id=delivery.campaign_id, answers=cleaned,
                        replaced=bool(existing), cleared=cleared)


def validate_answers(
    survey_id: str, questions: Sequence[Question], answers: Mapping[str, Sequence[str]],
) -> dict[str, str]:
    """The answers to store (question id → value), or SurveyValidationError listing every problem.

    An empty or whitespace-only value counts as not answered.
    """
    by_id = {q.id: q for q in questions}
    errors: dict[str, str] = {}
    for key in answers:
        if key not in by_id:
            known = ", ".join(by_id) or "none"
            errors[key] = f"unknown question {key!r} (this survey asks: {known})"
    cleaned: dict[str, str] = {}
    for question in questions:
        values = [v.strip() for v in answers.get(question.id, ()) if v.strip()]
        if not values:
            if question.required:
                errors[question.id] = f"please answer “{question.ask}”"
            continue
        if len(values) > 1:
            errors[question.id] = f"one answer only, got {len(values)}"
            continue
        value = values[0]
        if question.kind == "choice":
            choices = question.choices or ()
            if value not in choices:
                errors[question.id] = f"{value!r} is not one of the choices ({', '.join(choices)})"
                continue
        else:
            value = value.replace("\r\n", "\n").replace("\r", "\n")
            if len(value) > question.max_length:
                errors[question.id] = (
                    f"at most {question.max_length} characters, got {len(value)}: please shorten it"
                )
                continue
            if any(ord(c) < 32 and c not in "\n\t" for c in value):
                # NUL and friends: PostgreSQL refuses them, and no keyboard types them.
                errors[question.id] = "contains control characters: please write plain text"
                continue
        cleaned[question.id] = value
    if not errors and not cleaned:
        errors[""] = "please answer at least one question"
    if errors:
        raise SurveyValidationError(survey_id, errors)
    return cleaned


# ---------------------------------------------------------------- helpers


def _locked_delivery(session: Session, delivery_id: int) -> Delivery:
    delivery = session.scalars(
        sa.select(Delivery).where(col(Delivery.id) == delivery_id).with_for_update()
    ).one_or_none()
    if delivery is None:
        raise UnknownDelivery(delivery_id)
    return delivery


def _id(delivery: Delivery) -> int:
    if delivery.id is None:
        raise ValueError("a delivery loaded from the database always has an id")
    return delivery.id


def _survey_of(rules: Rules, delivery: Delivery) -> tuple[str, tuple[Question, ...]]:
    try:
        campaign = rules.campaign(delivery.campaign_id)
    except UnknownCampaign:
        raise SurveyUnavailable(
            f"campaign {delivery.campaign_id!r} is no longer in rules.yaml, so its survey is closed"
        ) from None
    if campaign.survey is None or campaign.survey not in rules.surveys:
        raise SurveyUnavailable(f"campaign {campaign.id!r} has no survey (any more)")
    return campaign.survey, rules.surveys[campaign.survey]


def _record_once(session: Session, delivery: Delivery, kind: InteractionKind, *, now: datetime) -> None:
    delivery_id = _id(delivery)
    seen = session.scalar(
        sa.select(col(Interaction.id))
        .where(col(Interaction.delivery_id) == delivery_id, col(Interaction.kind) == kind).limit(1)
    )
    if seen is None:
        session.add(Interaction(kind=kind, delivery_id=delivery_id, customer_id=delivery.customer_id,
                                campaign_id=delivery.campaign_id, created_at=now))
        session.flush()


def _upsert_answer(
    session: Session, delivery: Delivery, survey_id: str, question_id: str, answer: str,
    *, now: datetime,
) -> None:
    # ON CONFLICT rather than read-then-write: a racing response cannot hit the UNIQUE constraint.
    values = {
        "customer_id": delivery.customer_id, "delivery_id": delivery.id,
        "campaign_id": delivery.campaign_id, "survey_id": survey_id, "question_id": question_id,
        "answer": answer, "created_at": now, "updated_at": now,
    }
    statement = dialect_insert(session, SurveyAnswer).values(**values)
    session.execute(statement.on_conflict_do_update(
        index_elements=["customer_id", "survey_id", "question_id"],
        set_={"answer": answer, "delivery_id": delivery.id, "campaign_id": delivery.campaign_id,
              "updated_at": now},
    ))
