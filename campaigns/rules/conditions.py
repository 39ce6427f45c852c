"""Campaign conditions (`when:`): parsed from rules.yaml, compiled to SQL.

Every condition becomes a SQLAlchemy expression over the ``customer`` table,
so a planning pass is one query per campaign, never a Python loop over
customers.  Computed fields (``days_inactive`` …) are compiled to timestamp
comparisons against values computed once per pass, which keeps them
index-friendly and identical on SQLite and PostgreSQL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import col

from campaigns.models import Customer, Event, SurveyAnswer, UTCDateTime
from campaigns.rules.durations import format_duration, parse_duration
from campaigns.sql import as_number, attribute_text, days_since, inactive_since, signup_moment

Path = tuple[str | int, ...]

CUSTOMER_FIELDS = {
    "id": col(Customer.external_id),
    "email": col(Customer.email),
    "first_name": col(Customer.first_name),
    "last_name": col(Customer.last_name),
    "plan": col(Customer.plan),
    "status": col(Customer.status),
    "timezone": col(Customer.timezone),
    "locale": col(Customer.locale),
    "signed_up_at": col(Customer.signed_up_at),
    "cancelled_at": col(Customer.cancelled_at),
    "last_active_at": col(Customer.last_active_at),
    "activity_count": col(Customer.activity_count),
    "cadence_days": col(Customer.cadence_days),
}
DAY_FIELDS = ("days_inactive", "days_since_signup", "days_since_cancel")
MAX_DAYS = 36_525  # a century: larger day counts overflow date arithmetic
COMPUTED_FIELDS = (*DAY_FIELDS, "overdue_ratio", "lapsed")
EVENT_KEYS = ("event", "no_event")
GROUP_KEYS = ("all", "any", "not")
OPERATORS = ("in", "not_in", "at_least", "at_most", "between", "before", "after", "exists")
_ATTRIBUTE = re.compile(r"^attributes\.([A-Za-z0-9_-]+)$")


class ConditionError(ValueError):
    """A bad condition; ``path`` locates it inside rules.yaml."""

    def __init__(self, message: str, path: Path) -> None:
        self.path = path
        super().__init__(message)


# ---------------------------------------------------------------- the tree


@dataclass(frozen=True)
class Group:
    kind: str  # "all" | "any" | "not"
    items: tuple[Condition, ...]


@dataclass(frozen=True)
class FieldTest:
    field: str  # a customer column, "attributes.KEY" or a computed field
    operator: str  # "eq" or one of OPERATORS
    value: Any


@dataclass(frozen=True)
class EventTest:
    name: str
    within: timedelta | None
    present: bool  # False for no_event


@dataclass(frozen=True)
class AnswerTest:
    """The customer's answer to a survey question (e.g. why they cancelled)."""

    survey: str
    question: str
    operator: str  # "in" | "not_in" | "exists"
    value: Any


Condition = Group | FieldTest | EventTest | AnswerTest


def known_fields() -> list[str]:
    return [*CUSTOMER_FIELDS, *COMPUTED_FIELDS, "attributes.KEY", *EVENT_KEYS, "answer", *GROUP_KEYS]


def parse_when(data: Any, path: Path) -> Condition:
    """A mapping of tests that must all hold (``all``/``any``/``not`` nest)."""
    if not isinstance(data, dict):
        raise ConditionError("write a mapping of field: test, e.g. `status: active`", path)
    items = tuple(_parse_entry(key, value, (*path, key)) for key, value in data.items())
    return items[0] if len(items) == 1 else Group("all", items)


def _parse_entry(key: str, value: Any, path: Path) -> Condition:
    if key in ("all", "any"):
        if isinstance(value, dict):
            value = [{k: v} for k, v in value.items()]
        if not isinstance(value, list) or not value:
            raise ConditionError(f"`{key}` takes a list of conditions", path)
        return Group(key, tuple(parse_when(item, (*path, i)) for i, item in enumerate(value)))
    if key == "not":
        return Group("not", (parse_when(value, path),))
    if key in EVENT_KEYS:
        return _parse_event(key, value, path)
    if key == "answer":
        return _parse_answer(value, path)
    if key in CUSTOMER_FIELDS or key in COMPUTED_FIELDS or _ATTRIBUTE.match(key):
        return _parse_field(key, value, path)
    from difflib import get_close_matches

    hint = get_close_matches(key, known_fields(), n=1)
    suggestion = f" (did you mean `{hint[0]}`?)" if hint else ""
    raise ConditionError(f"unknown field `{key}`{suggestion}; known: {', '.join(known_fields())}", path)


def _parse_event(key: str, value: Any, path: Path) -> EventTest:
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict) or "name" not in value:
        raise ConditionError(f"`{key}` needs a name, e.g. `{key}: {{name: login, within: 7d}}`", path)
    unknown = set(value) - {"name", "within"}
    if unknown:
        raise ConditionError(f"unknown key `{sorted(unknown)[0]}` in `{key}` (use name, within)", path)
    within = _duration(value["within"], (*path, "within")) if "within" in value else None
    return EventTest(str(value["name"]), within, present=key == "event")


def _parse_answer(value: Any, path: Path) -> AnswerTest:
    example = "e.g. `answer: {survey: why_you_left, question: reason, in: [price]}`"
    if not isinstance(value, dict) or "survey" not in value or "question" not in value:
        raise ConditionError(f"`answer` needs a survey and a question, {example}", path)
    operators = [k for k in value if k not in ("survey", "question")]
    if len(operators) != 1 or operators[0] not in ("in", "not_in", "exists"):
        raise ConditionError(f"`answer` takes one of in, not_in or exists, {example}", path)
    operator = operators[0]
    operand = value[operator]
    if operator == "exists":
        if not isinstance(operand, bool):
            raise ConditionError("`exists` takes true or false", (*path, operator))
    elif not isinstance(operand, list) or not operand:
        raise ConditionError(f"`{operator}` takes a non-empty list of answers", (*path, operator))
    else:
        operand = tuple(str(v) for v in operand)
    return AnswerTest(str(value["survey"]), str(value["question"]), operator, operand)


def walk(condition: Condition | None) -> list[Condition]:
    """Every test in a condition tree, groups included."""
    if condition is None:
        return []
    found: list[Condition] = [condition]
    if isinstance(condition, Group):
        for item in condition.items:
            found.extend(walk(item))
    return found


def _parse_field(field: str, value: Any, path: Path) -> FieldTest:
    if not isinstance(value, dict):
        if isinstance(value, list):
            raise ConditionError(f"to match one of several values write `{field}: {{in: [...]}}`", path)
        return FieldTest(field, "eq", _operand(field, "eq", value, path))
    if len(value) != 1:
        raise ConditionError(
            f"write one operator per field (got {', '.join(map(str, value))}); combine several with `all:`",
            path,
        )
    operator, operand = next(iter(value.items()))
    if operator not in OPERATORS:
        from difflib import get_close_matches

        hint = get_close_matches(str(operator), OPERATORS, n=1)
        suggestion = f" (did you mean `{hint[0]}`?)" if hint else ""
        raise ConditionError(
            f"unknown operator `{operator}`{suggestion}; use one of {', '.join(OPERATORS)}",
            (*path, operator),
        )
    return FieldTest(field, operator, _operand(field, operator, operand, (*path, operator)))


def _is_numeric_field(field: str) -> bool:
    return field in DAY_FIELDS or field in ("overdue_ratio", "activity_count", "cadence_days")


def _is_time_field(field: str) -> bool:
    return field in ("signed_up_at", "cancelled_at", "last_active_at")


def _operand(field: str, operator: str, value: Any, path: Path) -> Any:
    if operator == "exists":
        if not isinstance(value, bool):
            raise ConditionError("`exists` takes true or false", path)
        return value
    if operator in ("in", "not_in"):
        if not isinstance(value, list) or not value:
            raise ConditionError(f"`{operator}` takes a non-empty list, e.g. [pro, team]", path)
        return tuple(_scalar(field, v, (*path, i)) for i, v in enumerate(value))
    if operator == "between":
        if not isinstance(value, list) or len(value) != 2:
            raise ConditionError("`between` takes two values, e.g. [10, 20]", path)
        low, high = (_scalar(field, v, (*path, i)) for i, v in enumerate(value))
        if low > high:
            raise ConditionError(f"`between` needs the smaller value first, got [{low}, {high}]", path)
        return (low, high)
    if operator in ("at_least", "at_most") and not (
        _is_numeric_field(field) or field.startswith("attributes.")
    ):
        raise ConditionError(f"`{operator}` compares numbers; `{field}` is not a number", path)
    if operator in ("before", "after") and not _is_time_field(field):
        raise ConditionError(
            f"`{operator}` compares dates; `{field}` is not a date "
            "(for durations use days_inactive / days_since_signup with at_least/at_most)",
            path,
        )
    return _scalar(field, value, path)


def _scalar(field: str, value: Any, path: Path) -> Any:
    if field == "lapsed":
        if not isinstance(value, bool):
            raise ConditionError("`lapsed` is true or false", path)
        return value
    if _is_numeric_field(field):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConditionError(f"`{field}` is a number, got {value!r}", path)
        if field in DAY_FIELDS and abs(value) > MAX_DAYS:
            raise ConditionError(
                f"`{field}` of {value!r} days is beyond any calendar (at most {MAX_DAYS})", path
            )
        return value
    if _is_time_field(field):
        return _moment(value, path)
    if isinstance(value, dict | list) or value is None:
        raise ConditionError(f"`{field}` compares to a plain value, got {value!r}", path)
    if field.startswith("attributes."):
        return value
    if field == "status" and value not in ("active", "cancelled"):
        raise ConditionError(f"status is `active` or `cancelled`, got {value!r}", path)
    return str(value)


def _moment(value: Any, path: Path) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        raise ConditionError(f"not an ISO 8601 date: {value!r} (e.g. 2025-01-31)", path) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _duration(value: Any, path: Path) -> timedelta:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ConditionError(str(exc), path) from None


# ---------------------------------------------------------------- SQL


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
        return cast(ColumnElement[Any], col(Customer.cancelled_at))
    return inactive_since()


def compile_condition(condition: Condition, ctx: SqlContext) -> ColumnElement[bool]:
    if isinstance(condition, Group):
        parts = [compile_condition(c, ctx) for c in condition.items]
        if condition.kind == "not":
            return _negate(parts[0])
        return sa.and_(*parts) if condition.kind == "all" else sa.or_(*parts)
    if isinstance(condition, AnswerTest):
        answered = sa.select(col(SurveyAnswer.id)).where(
            col(SurveyAnswer.customer_id) == col(Customer.id),
            col(SurveyAnswer.survey_id) == condition.survey,
            col(SurveyAnswer.question_id) == condition.question,
        )
        if condition.operator == "exists":
            return answered.exists() if condition.value else sa.not_(answered.exists())
        matching = answered.where(col(SurveyAnswer.answer).in_(condition.value)).exists()
        return matching if condition.operator == "in" else sa.and_(answered.exists(), sa.not_(matching))
    if isinstance(condition, EventTest):
        query = sa.select(col(Event.id)).where(
            col(Event.customer_id) == col(Customer.id), col(Event.name) == condition.name
        )
        if condition.within is not None:
            query = query.where(col(Event.occurred_at) >= ctx.now - condition.within)
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
        ratio = days_since(reference_column("days_inactive"), now) / col(Customer.cadence_days)
        usable = sa.and_(
            col(Customer.cadence_days).is_not(None),
            col(Customer.cadence_days) > 0,
        )
        return sa.and_(usable, _compare(ratio, op, value))
    match = _ATTRIBUTE.match(field)
    if match:
        text = attribute_text(col(Customer.attributes), sa.literal(match.group(1)))
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


def describe(condition: Condition) -> str:
    """Human wording for `explain` and `plan`."""
    if isinstance(condition, Group):
        inner = [describe(c) for c in condition.items]
        if condition.kind == "not":
            return f"not ({inner[0]})"
        return f" {'and' if condition.kind == 'all' else 'or'} ".join(inner)
    if isinstance(condition, AnswerTest):
        value = (
            condition.value if isinstance(condition.value, bool) else "[" + ", ".join(condition.value) + "]"
        )
        return f"answer {condition.survey}.{condition.question} {condition.operator} {value}"
    if isinstance(condition, EventTest):
        within = f" within {format_duration(condition.within)}" if condition.within else ""
        return f"{'has' if condition.present else 'has no'} event {condition.name}{within}"
    words = {
        "eq": "=",
        "in": "in",
        "not_in": "not in",
        "at_least": ">=",
        "at_most": "<=",
        "between": "between",
        "before": "before",
        "after": "after",
        "exists": "exists",
    }
    value = condition.value
    if isinstance(value, tuple):
        value = "[" + ", ".join(str(v) for v in value) + "]"
    return f"{condition.field} {words[condition.operator]} {value}"
