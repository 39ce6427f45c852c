"""The rules.yaml schema, its loading, and error reporting with file:line:col.

Unknown keys are errors, never ignored: a misspelt ``cooldwn`` that silently
vanished would mail customers every pass.
"""

from __future__ import annotations

import hashlib
import re
from datetime import time, timedelta
from difflib import get_close_matches
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

from croniter import croniter
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from campaigns.addresses import EXAMPLE as EXAMPLE_SENDER
from campaigns.addresses import parse_address
from campaigns.errors import RulesError, RulesErrors, UnknownCampaign
from campaigns.locales import LOCALE_TAG, best_match
from campaigns.rules.conditions import AnswerTest, Condition, ConditionError, parse_when, walk
from campaigns.rules.durations import parse_duration
from campaigns.rules.yamlsource import Located, YAMLSyntaxError, load_located
from campaigns.timezones import check_timezone


def _duration(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"invalid duration {value!r}: write a number and a unit, e.g. 30m, 12h, 7d or 4w")
    return parse_duration(value)


def _percent(value: Any) -> float:
    text = str(value).strip()
    try:
        number = float(text[:-1]) if text.endswith("%") else float(text) * 100
    except ValueError:
        raise ValueError(f"write a percentage like 10%, got {value!r}") from None
    if isinstance(value, bool) or (isinstance(value, int | float) and value > 1):
        raise ValueError(f"write a percentage like 10%, got {value!r}")
    if not 0 <= number <= 100:
        raise ValueError(f"a percentage between 0% and 100%, got {value!r}")
    return number


Duration = Annotated[timedelta, BeforeValidator(_duration)]


def _send_rate(value: Any) -> Any:
    """``20/s`` → (20, 1000 ms); also /m and /h."""
    if value is None or isinstance(value, tuple):
        return value
    windows = {"s": 1000, "m": 60_000, "h": 3_600_000}
    text = str(value).replace(" ", "")
    count, _, unit = text.partition("/")
    if not count.isdigit() or int(count) < 1 or unit not in windows:
        raise ValueError(f"write a send rate like 20/s, 600/m or 10000/h, got {value!r}")
    return (int(count), windows[unit])


Percent = Annotated[float, BeforeValidator(_percent)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FrequencyCap(Strict):
    max: int = Field(ge=1)
    per: Duration


class BlastGuard(Strict):
    factor: float = Field(default=3.0, gt=1)
    min: int = Field(default=100, ge=0)
    first_pass: int = Field(default=10_000, ge=0)
    # A first pass reaching more than this share of all customers is held: on a base of a few
    # thousand, `first_pass` alone never fires.
    share: Percent = 50.0


class QuietHours(Strict):
    start: time
    end: time

    def contains(self, moment: time) -> bool:
        if self.start <= self.end:
            return self.start <= moment < self.end
        return moment >= self.start or moment < self.end  # wraps midnight


def _quiet_hours(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        start, end = (time.fromisoformat(part.strip()) for part in value.split("-"))
    except ValueError:
        raise ValueError(f'write quiet hours as HH:MM-HH:MM, e.g. "21:00-08:00", got {value!r}') from None
    return {"start": start, "end": end}


def _sender(value: str | None) -> str | None:
    if value is not None:
        try:
            parse_address(value)
        except ValueError as exc:
            raise ValueError(f"{exc} (write e.g. {EXAMPLE_SENDER})") from None
    return value


Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
# In datetime.weekday() order: WEEKDAYS[moment.weekday()] is the moment's day.
WEEKDAYS: tuple[Weekday, ...] = get_args(Weekday)


class Defaults(Strict):
    sender: str = "Retention <retention@example.com>"
    timezone: str = "UTC"
    quiet_hours: Annotated[QuietHours | None, BeforeValidator(_quiet_hours)] = None
    frequency_cap: FrequencyCap | None = None
    passive_churn_after: Duration = timedelta(days=90)
    check_every: Duration = timedelta(minutes=5)
    non_activity_events: tuple[str, ...] = ()
    blast_guard: BlastGuard = BlastGuard()
    survey_valid_for: Duration = timedelta(days=90)
    # (messages, window in ms), shared by every worker on every machine.
    max_send_rate: Annotated[tuple[int, int] | None, BeforeValidator(_send_rate)] = None

    _check_timezone = field_validator("timezone")(check_timezone)
    _check_sender = field_validator("sender")(_sender)

    @field_validator("check_every")
    @classmethod
    def _not_too_often(cls, value: timedelta) -> timedelta:
        if value < timedelta(seconds=10):
            raise ValueError("check_every must be at least 10s")
        return value


class Trigger(Strict):
    event: str
    after: Duration = timedelta(0)
    # Events older than after + within are history, not triggers (e.g. on first deploy).
    within: Duration = timedelta(days=7)


class Goal(Strict):
    event: str
    within: Duration = timedelta(days=14)


class Variant(Strict):
    template: str
    weight: int = Field(default=1, ge=1)
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]+$", max_length=100)

    @property
    def label(self) -> str:
        return self.name or self.template


class Campaign(Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", max_length=100)
    template: str | None = None
    variants: tuple[Variant, ...] | None = None
    when: dict[str, Any] | None = None
    once: bool = False
    cooldown: Duration | None = None
    priority: int = 0
    trigger: Trigger | None = None
    schedule: str | None = None
    holdout: Percent = 0.0
    goal: Goal | None = None
    survey: str | None = None
    frequency_cap: FrequencyCap | None = None
    max_per_pass: int | None = Field(default=None, ge=1)
    send_days: tuple[Weekday, ...] | None = None
    # Over the frequency cap: `skip` closes this episode for the customer, `defer`
    # leaves it open so a later pass sends once the cap allows.
    over_cap: Literal["skip", "defer"] = "skip"
    sender: str | None = None
    enabled: bool = True

    _check_sender = field_validator("sender")(_sender)

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None and not croniter.is_valid(value):
            raise ValueError(
                f"invalid cron expression {value!r} (five fields: minute hour day month weekday, "
                'e.g. "0 10 * * TUE")'
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Campaign:
        if (self.template is None) == (self.variants is None):
            raise ValueError("give a campaign either `template:` or `variants:` (A/B test), not both or none")
        if self.variants is not None:
            labels = [v.label for v in self.variants]
            if len(self.variants) < 2 or len(set(labels)) != len(labels):
                raise ValueError("`variants` needs two or more, each with its own template or name")
        if self.once and self.trigger:
            raise ValueError("`once` and `trigger` exclude each other: a trigger sends once per event")
        return self

    # Parsed from `when` by parse_rules, which knows where in the file it stands.
    _condition: Condition | None = PrivateAttr(default=None)

    @property
    def condition(self) -> Condition | None:
        return self._condition

    @property
    def holdout_purpose(self) -> str:
        """Names this campaign's holdout hash; each purpose hashes independently of the others."""
        return f"holdout:{self.id}"

    @property
    def variant_purpose(self) -> str:
        # Independent of the holdout split, so variants are balanced inside the treated group.
        return f"variant:{self.id}"

    @property
    def templates(self) -> list[str]:
        if self.variants is not None:
            return [v.template for v in self.variants]
        return [self.template] if self.template else []


class Translation(Strict):
    """A question in another language: its wording and the labels of its choices."""

    ask: str | None = None
    choices: dict[str, str] = {}


class Question(Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    ask: str
    type: Literal["choice", "text"] | None = None
    choices: tuple[str, ...] | None = None
    required: bool = False
    max_length: int = Field(default=2000, ge=1, le=20_000)
    # locale tag (zh-CN, de) → the question in that language; customers get theirs with
    # the same fallback as templates (zh-TW → zh → the default wording).
    translations: dict[str, Translation] = {}

    @model_validator(mode="after")
    def _choices(self) -> Question:
        kind = self.kind
        if kind == "choice" and not self.choices:
            raise ValueError(f"a `{kind}` question needs `choices: [...]`")
        if kind == "text" and self.choices:
            raise ValueError("a `text` question has no choices (drop `choices` or the type)")
        for tag, translation in self.translations.items():
            if not LOCALE_TAG.match(tag):
                raise ValueError(f"translations: {tag!r} is not a locale tag (write e.g. zh-CN or de)")
            unknown = set(translation.choices) - set(self.choices or ())
            if unknown:
                raise ValueError(
                    f"translations.{tag}.choices: {', '.join(sorted(unknown))} is not one of this "
                    f"question's choices ({', '.join(self.choices or ()) or 'none'})"
                )
        return self

    def in_locale(self, locale: str | None) -> tuple[str, dict[str, str]]:
        """(the question's wording, choice → label) for a customer with ``locale``."""
        translation = best_match(self.translations, locale)
        if translation is None:
            return self.ask, {}
        return translation.ask or self.ask, dict(translation.choices)

    @property
    def kind(self) -> str:
        return self.type or ("choice" if self.choices else "text")


WebhookEventKind = Literal[
    "unsubscribed", "answered", "clicked", "converted", "bounced", "complained", "sent"
]
WEBHOOK_EVENT_KINDS: tuple[str, ...] = get_args(WebhookEventKind)


class Webhook(Strict):
    """An endpoint told about what customers do, signed per the Standard Webhooks specification."""

    url: str = Field(max_length=1000)
    events: tuple[WebhookEventKind, ...] = Field(min_length=1)
    secret_env: str

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"write an http:// or https:// URL, got {value!r}")
        return value

    @field_validator("secret_env")
    @classmethod
    def _env_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError(
                f"the name of an environment variable holding the secret (e.g. CRM_WEBHOOK_SECRET), "
                f"not {value!r}"
            )
        return value

    def wants(self, kind: str) -> bool:
        return kind in self.events


class Rules(Strict):
    defaults: Defaults = Defaults()
    campaigns: tuple[Campaign, ...] = ()
    surveys: dict[str, tuple[Question, ...]] = {}
    webhooks: tuple[Webhook, ...] = ()

    _source: Located | None = PrivateAttr(default=None)
    _file: str = PrivateAttr(default="rules.yaml")

    def error_at(self, path: tuple[str | int, ...], message: str) -> RulesError:
        """A RulesError pointing at ``path`` in the file these rules came from."""
        return _error(self._source or Located(data=None), self._file, path, message)

    def campaign(self, campaign_id: str) -> Campaign:
        for campaign in self.campaigns:
            if campaign.id == campaign_id:
                return campaign
        raise UnknownCampaign(campaign_id, [c.id for c in self.campaigns])

    def by_priority(self) -> list[Campaign]:
        """Highest priority first; file order breaks ties."""
        return sorted((c for c in self.campaigns if c.enabled), key=lambda c: -c.priority)

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:12]


# ---------------------------------------------------------------- loading


def load_rules(path: Path) -> Rules:
    """Load and validate rules.yaml; raise RulesErrors listing every problem found."""
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RulesErrors(
            [
                RulesError(
                    "file not found (set RETENTION_RULES or run from the folder holding rules.yaml)",
                    file=name,
                )
            ]
        ) from None
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise RulesErrors([RulesError(f"not UTF-8 text ({exc.reason}); save the file as UTF-8",
                                      file=name, line=line)]) from None
    except OSError as exc:
        raise RulesErrors([RulesError(f"cannot read: {exc}", file=name)]) from None
    return parse_rules(text, name)


def parse_rules(text: str, name: str = "rules.yaml") -> Rules:
    try:
        located = load_located(text)
    except YAMLSyntaxError as exc:
        raise RulesErrors([RulesError(str(exc), file=name, line=exc.line, column=exc.column)]) from None
    if located.data is None:
        # An empty file is what a truncated save or a broken deploy looks like; stopping every
        # campaign of a running daemon by accident must not pass as a valid edit.
        raise RulesErrors([RulesError(
            "the file is empty: it needs at least `campaigns:` (disable a campaign with "
            "`enabled: false`, or write `campaigns: []` to stop them all)", file=name, line=1)])
    data = located.data
    if not isinstance(data, dict):
        raise RulesErrors(
            [
                RulesError(
                    "the top level must be a mapping with defaults:, campaigns:, surveys: and webhooks:",
                    file=name,
                    line=1,
                )
            ]
        )
    conditions, errors = _parse_conditions(data, located, name)
    try:
        rules = Rules.model_validate(data)
    except ValidationError as exc:
        errors = _located_errors(exc, located, name) + errors
        raise RulesErrors(sorted(errors, key=lambda e: (e.line or 0, e.column or 0))) from None
    for campaign, condition in zip(rules.campaigns, conditions, strict=True):
        campaign._condition = condition
    errors += _check_references(rules, located, name)
    if errors:
        raise RulesErrors(sorted(errors, key=lambda e: (e.line or 0, e.column or 0)))
    rules._source = located
    rules._file = name
    return rules


def _parse_conditions(
    data: dict[str, Any], located: Located, name: str
) -> tuple[list[Condition | None], list[RulesError]]:
    """Parse every campaign's `when:` even if other keys are wrong, so all errors show at once."""
    conditions: list[Condition | None] = []
    errors: list[RulesError] = []
    campaigns = data.get("campaigns")
    for index, raw in enumerate(campaigns if isinstance(campaigns, list) else []):
        when = raw.get("when") if isinstance(raw, dict) else None
        condition = None
        if when is not None:
            try:
                condition = parse_when(when, ("campaigns", index, "when"))
            except ConditionError as exc:
                errors.append(_error(located, name, exc.path, str(exc)))
        conditions.append(condition)
    return conditions, errors


def _error(located: Located, name: str, path: tuple[str | int, ...], message: str) -> RulesError:
    position = located.position(path)
    line, column = position if position else (None, None)
    return RulesError(message, file=name, line=line, column=column, where=_where(path))


def _where(path: tuple[str | int, ...]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "rules"


def _located_errors(exc: ValidationError, located: Located, name: str) -> list[RulesError]:
    errors = []
    for error in exc.errors():
        path = _data_path(error["loc"], located.data, extra=error["type"] == "extra_forbidden")
        message = _humane(error, path)
        errors.append(_error(located, name, path, message))
    return errors


def _data_path(loc: tuple[Any, ...], data: Any, *, extra: bool) -> tuple[str | int, ...]:
    """The part of pydantic's error location that exists in the YAML (drops validator tags)."""
    path: list[str | int] = []
    for index, part in enumerate(loc):
        if isinstance(data, dict) and part in data:
            path.append(part)
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            path.append(part)
            data = data[part]
        elif extra and index == len(loc) - 1:
            path.append(part)
    return tuple(path)


def _humane(error: Any, path: tuple[str | int, ...]) -> str:
    kind = error["type"]
    if not path:
        return str(error["msg"]).removeprefix("Value error, ")
    if kind == "extra_forbidden":
        key = str(path[-1])
        known = _known_keys(path[:-1])
        hint = get_close_matches(key, known, n=1)
        suggestion = f" (did you mean `{hint[0]}`?)" if hint else ""
        return f"unknown key `{key}`{suggestion}; allowed here: {', '.join(known)}"
    if kind == "missing":
        return f"`{path[-1]}` is required here"
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    if "input" in error and kind not in ("value_error",) and not isinstance(error["input"], dict):
        message += f" (got {error['input']!r})"
    return message


def _known_keys(path: tuple[str | int, ...]) -> list[str]:
    model: Any = Rules
    for part in path:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is None:
            return []
        model = _model_in(field.annotation)
    return list(model.model_fields) if model is not None and hasattr(model, "model_fields") else []


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    for meta in getattr(annotation, "__metadata__", ()) or ():
        del meta
    origin = getattr(annotation, "__origin__", None)
    return _model_in(origin) if origin not in (None, annotation) and origin is not type else None


def _check_answers(
    rules: Rules, campaign: Campaign, located: Located, name: str, path: tuple[str | int, ...]
) -> list[RulesError]:
    """`answer:` conditions must name a survey, question and choices that exist."""
    errors = []
    where = (*path, "when")
    for test in walk(campaign.condition):
        if not isinstance(test, AnswerTest):
            continue
        questions = {q.id: q for q in rules.surveys.get(test.survey, ())}
        if test.survey not in rules.surveys:
            known = ", ".join(rules.surveys) or "none defined"
            errors.append(
                _error(
                    located, name, where, f"`answer` names unknown survey {test.survey!r} (surveys: {known})"
                )
            )
        elif test.question not in questions:
            errors.append(
                _error(
                    located,
                    name,
                    where,
                    f"survey {test.survey!r} has no question "
                    f"{test.question!r} (questions: {', '.join(questions)})",
                )
            )
        elif questions[test.question].choices and isinstance(test.value, tuple):
            unknown = [v for v in test.value if v not in (questions[test.question].choices or ())]
            if unknown:
                errors.append(
                    _error(
                        located,
                        name,
                        where,
                        f"{unknown[0]!r} is not a choice of {test.survey}.{test.question} "
                        f"(choices: {', '.join(questions[test.question].choices or ())})",
                    )
                )
    return errors


def _check_references(rules: Rules, located: Located, name: str) -> list[RulesError]:
    errors: list[RulesError] = []
    seen: dict[str, int] = {}
    for index, campaign in enumerate(rules.campaigns):
        path: tuple[str | int, ...] = ("campaigns", index)
        if campaign.id in seen:
            errors.append(
                _error(
                    located,
                    name,
                    (*path, "id"),
                    f"duplicate campaign id {campaign.id!r} (also campaigns[{seen[campaign.id]}])",
                )
            )
        seen.setdefault(campaign.id, index)
        if campaign.survey is not None and campaign.survey not in rules.surveys:
            known = ", ".join(rules.surveys) or "none defined"
            errors.append(
                _error(
                    located, name, (*path, "survey"), f"unknown survey {campaign.survey!r} (surveys: {known})"
                )
            )
        if campaign.when is None and campaign.trigger is None and not campaign.once:
            errors.append(
                _error(
                    located,
                    name,
                    path,
                    "a campaign needs `when:` conditions, a `trigger:`, or `once: true` "
                    "(otherwise it would mail every customer on every pass)",
                )
            )
        errors.extend(_check_answers(rules, campaign, located, name, path))
    urls: dict[str, int] = {}
    for index, webhook in enumerate(rules.webhooks):
        if webhook.url in urls:
            errors.append(_error(located, name, ("webhooks", index, "url"),
                                 f"the URL is also webhooks[{urls[webhook.url]}]: merge their events"))
        urls.setdefault(webhook.url, index)
    for survey_id, questions in rules.surveys.items():
        ids = [q.id for q in questions]
        for dup in {i for i in ids if ids.count(i) > 1}:
            errors.append(
                _error(
                    located,
                    name,
                    ("surveys", survey_id),
                    f"duplicate question id {dup!r} in survey {survey_id!r}",
                )
            )
    return errors
