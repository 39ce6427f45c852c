"""What came back, as flat rows for export: survey answers, clicks, unsubscribes."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import col

from campaigns.models import Customer, Interaction, InteractionKind, SurveyAnswer

# A spreadsheet runs a cell starting with one of these as a formula (OWASP "CSV injection").
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

COLUMNS = ("kind", "at", "customer_id", "email", "campaign", "survey", "question", "answer", "url")


@dataclass(frozen=True)
class ResponseRow:
    kind: str  # "answer" | "click" | "unsubscribe"
    at: datetime
    customer_id: str
    email: str
    campaign: str | None
    survey: str | None = None
    question: str | None = None
    answer: str | None = None
    url: str | None = None

    def as_dict(self) -> dict[str, Any]:
        row = asdict(self)
        row["at"] = self.at.isoformat()
        return row

    def as_csv_row(self) -> dict[str, Any]:
        """The row with text a spreadsheet would execute made inert by a leading quote."""
        return {key: spreadsheet_safe(value) for key, value in self.as_dict().items()}


def spreadsheet_safe(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def responses(
    session: Session, *, survey: str | None = None, since: datetime | None = None
) -> Iterator[ResponseRow]:
    """Answers first (optionally of one survey), then clicks and unsubscribes, each oldest first."""
    answers = (
        sa.select(SurveyAnswer, col(Customer.external_id), col(Customer.email))
        .join(Customer, col(Customer.id) == col(SurveyAnswer.customer_id))
        .order_by(col(SurveyAnswer.updated_at), col(SurveyAnswer.id))
    )
    if survey is not None:
        answers = answers.where(col(SurveyAnswer.survey_id) == survey)
    if since is not None:
        answers = answers.where(col(SurveyAnswer.updated_at) >= since)
    for answer, external_id, email in session.execute(answers).yield_per(1000):
        yield ResponseRow(
            "answer",
            answer.updated_at,
            external_id,
            email,
            answer.campaign_id,
            answer.survey_id,
            answer.question_id,
            answer.answer,
        )
    if survey is not None:
        return
    interactions = (
        sa.select(Interaction, col(Customer.external_id), col(Customer.email))
        .join(Customer, col(Customer.id) == col(Interaction.customer_id))
        .where(col(Interaction.kind).in_((InteractionKind.click, InteractionKind.unsubscribe)))
        .order_by(col(Interaction.created_at), col(Interaction.id))
    )
    if since is not None:
        interactions = interactions.where(col(Interaction.created_at) >= since)
    for interaction, external_id, email in session.execute(interactions).yield_per(1000):
        yield ResponseRow(
            interaction.kind,
            interaction.created_at,
            external_id,
            email,
            interaction.campaign_id,
            url=interaction.url,
        )
