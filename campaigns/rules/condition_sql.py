"""Campaign conditions compiled to SQL.

Every condition becomes a SQLAlchemy expression over the ``customer`` table,
so a planning pass is one query per campaign, never a Python loop over
customers.  Computed fields (``days_inactive`` …) are compiled to timestamp
comparisons against values computed once per pass, which keeps them
index-friendly and identical on SQLite and PostgreSQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement

from campaigns.models import CUSTOMER, EVENT, SURVEY_ANSWER, UTCDateTime
from campaigns.rules.conditions import (
    ATTRIBUTE_KEY,
    CUSTOMER_FIELDS,
    DAY_FIELDS,
    AnswerTest,
    Condition,
    EventTest,
    FieldTest,
    Group,
)
from campaigns.sql import as_number, attribute_text, days_since, inactive_since, signup_moment


@dataclass(frozen=True)
class SqlContext:
    """Values fixed for one pass, so every campaign sees the same moment."""

    now: datetime
    passive_churn_after: timedelta = timedelta(days=90)


def reference_column(field: str) -> ColumnElement[Any]:
    """The moment a day field counts from (see campaigns.sql)."""
    if field == "days_since_signup":
        return signup_moment()
    if field == "days_since_cancel":
        return cast(ColumnElement[Any], CUSTOMER.c.cancelled_at)
    return inactive_since()


def compile_condition(condition: Condition, ctx: SqlContext) -> ColumnElement[bool]:
    if isinstance(condition, Group):
        parts = [compile_condition(c, ctx) for c in condition.items]
        if condition.kind == "not":
            return _negate(parts[0])
        return sa.and_(*parts) if condition.kind == "all" else sa.or_(*parts)
    if isinstance(condition, AnswerTest):
        answered = sa.select(SURVEY_ANSWER.c.id).where(
            SURVEY_ANSWER.c.customer_id == CUSTOMER.c.id,
            SURVEY_ANSWER.c.survey_id == condition.survey,
            SURVEY_ANSWER.c.question_id == condition.question,
        )
        if condition.operator == "exists":
            return answered.exists() if condition.value else sa.not_(answered.exists())
        matching = answered.where(SURVEY_ANSWER.c.answer.in_(condition.value)).exists()
        return matching if condition.operator == "in" else sa.and_(answered.exists(), sa.not_(matching))
    if isinstance(condition, EventTest):
        query = sa.select(EVENT.c.id).where(
            EVENT.c.customer_id == CUSTOMER.c.id, EVENT.c.name == condition.name
        )
        if condition.within is not None:
            query = query.where(EVENT.c.occurred_at >= ctx.now - condition.within)
        exists = query.exists()
        return exists if condition.present else sa.not_(exists)
    return _compile_field(condition, ctx)


def _compile_field(test: FieldTest, ctx: SqlContext) -> ColumnElement[bool]:
    field, op, value = test.field, test.operator, test.value
    if field in DAY_FIELDS:
        return _compile_days(reference_column(field), op, value, ctx.now)
    if field == "lapsed":
        lapsed = _compile_days(
            reference_column("days_inactive"),
            "at_least",
            ctx.passive_churn_after.total_seconds() / 86400,
            ctx.now,
        )
        return lapsed if value else sa.not_(lapsed)
    if field == "overdue_ratio":
        now = sa.literal(ctx.now, UTCDateTime())
        ratio = days_since(reference_column("days_inactive"), now) / CUSTOMER.c.cadence_days
        usable = sa.and_(
            CUSTOMER.c.cadence_days.is_not(None),
            CUSTOMER.c.cadence_days > 0,
        )
        return sa.and_(usable, _compare(ratio, op, value))
    match = ATTRIBUTE_KEY.match(field)
    if match:
        text = attribute_text(CUSTOMER.c.attributes, sa.literal(match.group(1)))
        if op == "exists":
            present = sa.and_(text.is_not(None))
            return present if value else sa.not_(present)
        sample = value[0] if isinstance(value, tuple) else value
        if isinstance(sample, bool):
            # "true", "TRUE" and True alike; anything else is neither true nor false.
            normalized: ColumnElement[Any] = sa.func.lower(sa.func.trim(text))
            value = tuple(str(v).lower() for v in value) if isinstance(value, tuple) else str(value).lower()
            return _compare(normalized, op, value)
        if isinstance(sample, int | float):
            # Imported CSV cells are text: a cell like "n/a" is no number, not an error.
            return _compare(as_number(text), op, value)
        return _compare(text, op, value)
    column = cast(ColumnElement[Any], CUSTOMER_FIELDS[field])
    if field == "email":
        column = sa.func.lower(column)
        value = (
            tuple(v.lower() for v in value)
            if isinstance(value, tuple)
            else (value.lower() if isinstance(value, str) else value)
        )
    return _compare(column, op, value)


def _negate(expression: ColumnElement[bool]) -> ColumnElement[bool]:
    """The exact complement: an unknown (NULL) test counts as false, so `not` makes it true."""
    return sa.not_(sa.func.coalesce(expression, sa.false()))


def _compare(column: ColumnElement[Any], op: str, value: Any) -> ColumnElement[bool]:
    if isinstance(value, tuple) and any(isinstance(v, float) for v in value):
        # PostgreSQL would bind a list starting with an integer as INTEGER and round the rest.
        value = tuple(sa.literal(float(v), sa.Float()) for v in value)
    # SQLAlchemy types the comparison operators of a column of unknown type as Any.
    compared: ColumnElement[bool]
    if op == "eq":
        compared = column == value
        return compared
    if op == "in":
        return column.in_(value)
    if op == "not_in":
        return sa.or_(column.is_(None), column.not_in(value))
    if op in ("at_least", "after"):
        compared = column >= value
        return compared
    if op in ("at_most", "before"):
        compared = column <= value if op == "at_most" else column < value
        return compared
    if op == "between":
        return column.between(*value)
    if op == "exists":
        return column.is_not(None) if value else column.is_(None)
    raise ValueError(f"operator {op!r} cannot be compiled")  # parse_when lets none through


def _compile_days(reference: ColumnElement[Any], op: str, value: Any, now: datetime) -> ColumnElement[bool]:
    """Days elapsed since ``reference`` compared as timestamps (uses indexes, dialect-neutral).

    A bare number means whole days: ``days_inactive: 30`` matches 30.0 to 30.99 days.
    """

    def ago(days: float) -> datetime:
        return now - timedelta(days=days)

    if op == "exists":
        return reference.is_not(None) if value else reference.is_(None)
    if op == "eq":
        return sa.and_(reference <= ago(value), reference > ago(value + 1))
    if op == "in":
        return sa.or_(*(sa.and_(reference <= ago(v), reference > ago(v + 1)) for v in value))
    if op == "not_in":
        return _negate(sa.or_(*(sa.and_(reference <= ago(v), reference > ago(v + 1)) for v in value)))
    if op == "at_least":
        return reference <= ago(value)
    if op == "at_most":
        return reference >= ago(value)
    if op == "between":
        low, high = value
        return sa.and_(reference <= ago(low), reference >= ago(high))
    raise ValueError(f"operator {op!r} does not apply to a number of days")
