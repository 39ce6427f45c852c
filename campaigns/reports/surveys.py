"""Why they leave: survey answers per question and choice, free-text answers listed."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import col

from campaigns.models import SurveyAnswer
from campaigns.rules import Question, Rules

TEXTS_SHOWN = 50  # newest free-text answers listed per question


@dataclass(frozen=True)
class ChoiceCount:
    choice: str
    count: int
    share: float  # % of this question's answers


@dataclass(frozen=True)
class TextAnswer:
    answer: str
    at: datetime


@dataclass(frozen=True)
class QuestionAnswers:
    survey: str
    question: str
    ask: str  # the question as rules.yaml asks it ("" when it is no longer there)
    kind: str  # "choice" | "text"
    answered: int
    choices: tuple[ChoiceCount, ...]  # choice questions: every choice, most chosen first
    texts: tuple[TextAnswer, ...]  # text questions: the newest TEXTS_SHOWN answers


def survey_answers(
    session: Session, rules: Rules, *, start: datetime, end: datetime
) -> list[QuestionAnswers]:
    """Answers given (or last changed) in [start, end), for every survey question that has any.

    Questions follow rules.yaml's order; answers to questions no longer in rules.yaml are
    still shown, counted like choices, after the known ones.
    """
    in_range = (col(SurveyAnswer.updated_at) >= start, col(SurveyAnswer.updated_at) < end)
    counts: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    query = (
        sa.select(col(SurveyAnswer.survey_id), col(SurveyAnswer.question_id), col(SurveyAnswer.answer),
                  sa.func.count().label("n"))
        .where(*in_range)
        .group_by(col(SurveyAnswer.survey_id), col(SurveyAnswer.question_id), col(SurveyAnswer.answer))
    )
    known: dict[tuple[str, str], Question] = {
        (survey, q.id): q for survey, questions in rules.surveys.items() for q in questions
    }
    text_keys = {key for key, q in known.items() if q.kind == "text"}
    totals: dict[tuple[str, str], int] = defaultdict(int)
    # Free text is rarely repeated: count text questions without grouping by the answer.
    for row in session.execute(query.where(_not_text(text_keys))):
        counts[row.survey_id, row.question_id][row.answer] = int(row.n)
        totals[row.survey_id, row.question_id] += int(row.n)
    for per_question in session.execute(
        sa.select(col(SurveyAnswer.survey_id), col(SurveyAnswer.question_id), sa.func.count().label("n"))
        .where(*in_range, sa.not_(_not_text(text_keys)))
        .group_by(col(SurveyAnswer.survey_id), col(SurveyAnswer.question_id))
    ):
        totals[per_question.survey_id, per_question.question_id] = int(per_question.n)
    order = [key for key in known if key in totals] + sorted(key for key in totals if key not in known)
    result = []
    for survey, question in order:
        spec = known.get((survey, question))
        total = totals[survey, question]
        if spec is not None and spec.kind == "text":
            texts = session.execute(
                sa.select(col(SurveyAnswer.answer), col(SurveyAnswer.updated_at))
                .where(*in_range, col(SurveyAnswer.survey_id) == survey,
                       col(SurveyAnswer.question_id) == question)
                .order_by(col(SurveyAnswer.updated_at).desc(), col(SurveyAnswer.id).desc())
                .limit(TEXTS_SHOWN)
            ).all()
            result.append(QuestionAnswers(survey, question, spec.ask, "text", total, (),
                                          tuple(TextAnswer(a, at) for a, at in texts)))
            continue
        found = counts[survey, question]
        names = list(spec.choices or ()) if spec else []
        names += sorted(set(found) - set(names))
        choices = sorted(
            (ChoiceCount(name, found.get(name, 0), found.get(name, 0) * 100.0 / total) for name in names),
            key=lambda c: -c.count,
        )
        result.append(QuestionAnswers(survey, question, spec.ask if spec else "", "choice", total,
                                      tuple(choices), ()))
    return result


def _not_text(text_keys: set[tuple[str, str]]) -> sa.ColumnElement[bool]:
    if not text_keys:
        return sa.true()
    return sa.not_(sa.or_(*(
        sa.and_(col(SurveyAnswer.survey_id) == survey, col(SurveyAnswer.question_id) == question)
        for survey, question in sorted(text_keys)
    )))
