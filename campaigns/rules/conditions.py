"""Campaign conditions (`when:`): the tree parsed from rules.yaml, and its wording.

``condition_sql`` compiles the tree to SQL; here it is only read and checked, each
error pointing at the key it comes from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from campaigns.models import CUSTOMER
from campaigns.rules.durations import format_duration, parse_duration

Path = tuple[str | int, ...]

CUSTOMER_FIELDS = {
    "id": CUSTOMER.c.external_id,
    "email": CUSTOMER.c.email,
    "first_name": CUSTOMER.c.first_name,
    "last_name": CUSTOMER.c.last_name,
    "plan": CUSTOMER.c.plan,
    "status": CUSTOMER.c.status,
    "timezone": CUSTOMER.c.timezone,
    "locale": CUSTOMER.c.locale,
    "signed_up_at": CUSTOMER.c.signed_up_at,
    "cancelled_at": CUSTOMER.c.cancelled_at,
    "last_active_at": CUSTOMER.c.last_active_at,
    "activity_count": CUSTOMER.c.activity_count,
    "cadence_days": CUSTOMER.c.cadence_days,
}
DAY_FIELDS = ("days_inactive", "days_since_signup", "days_since_cancel")
MAX_DAYS = 36_525  # a century: larger day counts overflow date arithmetic
COMPUTED_FIELDS = (*DAY_FIELDS, "overdue_ratio", "lapsed")
EVENT_KEYS = ("event", "no_event")
GROUP_KEYS = ("all", "any", "not")
OPERATORS = ("in", "not_in", "at_least", "at_most", "between", "before", "after", "exists")
ATTRIBUTE_KEY = re.compile(r"^attributes\.([A-Za-z0-9_-]+)$")


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
    if key in CUSTOMER_FIELDS or key in COMPUTED_FIELDS or ATTRIBUTE_KEY.match(key):
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
