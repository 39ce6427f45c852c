"""What `retention check` and `retention plan` verify against the real data before anything is sent.

Templates render against a sample of the stored customers chosen to cover every
empty field, locale, plan and status (plus synthetic ones), so a template that
breaks for the 116 customers without a time zone fails `check`, not the send.
Condition values and event names no customer has are reported with the values
that exist, since a typo there silently matches nobody.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import col

from campaigns.delivery.context import (
    build_context,
    build_sample_context,
    customer_context,
    sample_customer,
)
from campaigns.delivery.rendering import TemplateStore
from campaigns.delivery.tokens import trackable
from campaigns.errors import SourceError, TemplateError
from campaigns.models import Customer
from campaigns.observed import (
    VOCABULARY_FIELDS,
    attribute_keys,
    did_you_mean,
    distinct_values,
    event_names,
    has_customers,
)
from campaigns.rules import Campaign, Rules
from campaigns.rules.condition_sql import SqlContext, compile_condition
from campaigns.rules.conditions import FieldTest, walk

_NULLABLE = ("first_name", "last_name", "plan", "locale", "timezone", "signed_up_at", "cancelled_at",
             "last_active_at", "cadence_days")
_SPREAD = ("locale", "plan", "status")
YamlPath = tuple[str | int, ...]
_PER_GROUP = 50  # distinct locales/plans/attribute keys sampled at most
# Fields whose test says the campaign chose whom it reaches among cancelled customers.
_STATUS_FIELDS = frozenset({"status", "cancelled_at", "days_since_cancel", "lapsed"})


@dataclass(frozen=True)
class Sample:
    """One customer a template is rendered for in `check`, and why it was chosen."""

    label: str  # how an error names it: "customer 'c42'" or "the synthetic customer"
    data: dict[str, Any]


# ---------------------------------------------------------------- templates


def template_errors(
    rules: Rules, templates: TemplateStore, *, session: Session | None, now: datetime
) -> list[SourceError]:
    """Every template, checked statically and rendered for every sample (those a campaign uses)."""
    samples = list(samples_for(session, now=now))
    synthetic = samples[0].data
    errors: list[SourceError] = []
    for index, campaign in enumerate(rules.campaigns):
        for number, template in enumerate(campaign.templates):
            if not (templates.root / template).is_dir():
                where = (
                    ("campaigns", index, "variants", number, "template")
                    if campaign.variants
                    else ("campaigns", index, "template")
                )
                errors.append(rules.error_at(where, _unknown_template(templates, template)))
                continue
            required = ("unsubscribe_url", "survey_url") if campaign.survey else ("unsubscribe_url",)
            context = _context(campaign, template, synthetic)
            found = templates.check(template, context, required_names=required)
            errors.extend(found)
            errors.extend(_sample_errors(templates, campaign, template, samples[1:],
                                         known={(e.file, e.line) for e in found}))
    # Templates no campaign uses yet, and the shared files at the root.
    errors.extend(templates.check_all(lambda name: build_sample_context(template=name, customer=synthetic)))
    return errors


def _unknown_template(templates: TemplateStore, template: str) -> str:
    from difflib import get_close_matches

    known = templates.names()
    close = get_close_matches(template, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    listed = ", ".join(known) or "none"
    return f"unknown template {template!r} ({hint}templates in {templates.root}: {listed})"


def _sample_errors(
    templates: TemplateStore, campaign: Campaign, template: str, samples: list[Sample],
    *, known: set[tuple[str, int | None]],
) -> list[TemplateError]:
    """Render errors for the other samples, one per place not ``known`` yet, naming who hit it first."""
    seen = set(known)
    found = []
    for sample in samples:
        for error in templates.check_render(template, _context(campaign, template, sample.data)):
            if (error.file, error.line) in seen:
                continue
            seen.add((error.file, error.line))
            found.append(TemplateError(f"for {sample.label}: {error.message}", file=error.file,
                                       line=error.line))
    return found


def _context(campaign: Campaign, template: str, customer: dict[str, Any]) -> dict[str, Any]:
    return build_context(
        customer=customer,
        campaign={"id": campaign.id, "template": template, "survey": campaign.survey},
        unsubscribe_url="https://retention.invalid/u/sample",
        survey_url="https://retention.invalid/s/sample" if campaign.survey else None,
        track=trackable,
    )


def samples_for(session: Session | None, *, now: datetime) -> Iterator[Sample]:
    """The synthetic customer, the real ones covering the data, and one with every optional field empty."""
    attributes: dict[str, Any] = {}
    rows: list[Customer] = []
    if session is not None and has_customers(session):
        rows = _covering_customers(session)
        for row in rows:
            for key, value in (row.attributes or {}).items():
                attributes.setdefault(key, value)
    yield Sample("the sample customer", sample_customer(attributes=attributes))
    for row in rows:
        yield Sample(f"customer {row.external_id!r}", customer_context(row, now=now))
    # Last, so an error names a real customer when one hits it.
    empty = dict.fromkeys(("first_name", "last_name", "plan", "locale", "timezone", "signed_up_at",
                           "cancelled_at", "last_active_at", "days_inactive", "cadence_days"))
    yield Sample("a customer whose optional fields are empty",
                 sample_customer(**empty, activity_count=0, attributes=attributes))


def _covering_customers(session: Session) -> list[Customer]:
    """A few hundred customers at most covering empty fields, each locale, plan, status and attribute."""
    picks: list[Any] = [sa.select(sa.func.min(col(Customer.id)))]
    for field in _NULLABLE:
        picks.append(sa.select(sa.func.min(col(Customer.id))).where(getattr(Customer, field).is_(None)))
    for field in _SPREAD:
        column = VOCABULARY_FIELDS[field]
        picks.append(
            sa.select(sa.func.min(col(Customer.id))).group_by(column).order_by(column).limit(_PER_GROUP)
        )
    for key in attribute_keys(session)[:_PER_GROUP]:
        value = col(Customer.attributes)[key].as_string()
        picks.append(sa.select(sa.func.min(col(Customer.id))).where(value.is_(None)))
        picks.append(sa.select(sa.func.min(col(Customer.id))).where(sa.func.coalesce(value, "") == ""))
    ids: set[int] = set()
    for pick in picks:
        ids.update(i for i in session.execute(pick).scalars() if i is not None)
    return list(session.execute(
        sa.select(Customer).where(col(Customer.id).in_(sorted(ids))).order_by(col(Customer.id))
    ).scalars())


# ---------------------------------------------------------------- conditions against the data


def data_warnings(rules: Rules, session: Session | None, *, now: datetime) -> list[str]:
    """Warnings about what the rules say compared with what the data holds (one line each)."""
    warnings = [w.format() for w in _campaign_warnings(rules)]
    if session is None or not has_customers(session):
        return warnings
    events = event_names(session)
    values: dict[str, list[str] | None] = {}
    for index, campaign in enumerate(rules.campaigns):
        path: tuple[str | int, ...] = ("campaigns", index)
        for where, field, wanted in _field_values(campaign.when, (*path, "when")):
            if field not in values:
                values[field] = distinct_values(session, field)
            seen = values[field]
            if seen is None:
                continue
            for value in wanted:
                if value not in seen:
                    warnings.append(rules.error_at(where, (
                        f"warning: no customer has {field} {value!r} (seen: {', '.join(seen) or 'none'})"
                        f"{did_you_mean(value, seen)}"
                    )).format())
        if events:
            for where, name in _event_names(campaign, path):
                if name not in events:
                    shown = ", ".join(events[:20]) + (", …" if len(events) > 20 else "")
                    warnings.append(rules.error_at(where, (
                        f"warning: no event {name!r} was ever recorded{did_you_mean(name, events)} "
                        f"(events seen: {shown})"
                    )).format())
    for campaign_id, count in cancelled_reach(session, rules, now=now).items():
        warnings.append(
            f"warning: {campaign_id}: reaches {count} cancelled customers; add `status: active` to its "
            "`when:` unless it is meant for them"
        )
    return warnings


def _campaign_warnings(rules: Rules) -> list[SourceError]:
    return [
        rules.error_at(("campaigns", index), (
            f"warning: {campaign.id}: no conditions: it reaches every customer, so its first pass is held "
            f"by the blast guard until `retention approve {campaign.id}`"
        ))
        for index, campaign in enumerate(rules.campaigns)
        if campaign.enabled and campaign.condition is None and campaign.trigger is None
    ]


def cancelled_reach(session: Session, rules: Rules, *, now: datetime) -> dict[str, int]:
    """Cancelled customers matching campaigns whose conditions never mention status or cancelling."""
    reach = {}
    context = SqlContext(now=now, passive_churn_after=rules.defaults.passive_churn_after)
    for campaign in rules.campaigns:
        if not campaign.enabled or campaign.trigger is not None:
            continue
        tests = walk(campaign.condition)
        if any(isinstance(t, FieldTest) and t.field in _STATUS_FIELDS for t in tests):
            continue
        query = sa.select(sa.func.count()).select_from(Customer).where(col(Customer.status) == "cancelled")
        if campaign.condition is not None:
            query = query.where(compile_condition(campaign.condition, context))
        count = int(session.execute(query).scalar_one())
        if count:
            reach[campaign.id] = count
    return reach


def _field_values(when: Any, path: YamlPath) -> Iterator[tuple[YamlPath, str, list[str]]]:
    """(path, field, text values) of every equality / in / not_in test on a vocabulary field."""
    if isinstance(when, list):
        for index, item in enumerate(when):
            yield from _field_values(item, (*path, index))
        return
    if not isinstance(when, dict):
        return
    for key, value in when.items():
        here = (*path, key)
        if key in ("all", "any", "not"):
            yield from _field_values(value, here)
        elif key in VOCABULARY_FIELDS or key.startswith("attributes."):
            if isinstance(value, dict):
                for operator in ("in", "not_in"):
                    listed = value.get(operator)
                    if isinstance(listed, list):
                        yield (*here, operator), key, [v for v in listed if isinstance(v, str)]
            elif isinstance(value, str):
                yield here, key, [value]


def _event_names(campaign: Campaign, path: YamlPath) -> Iterator[tuple[YamlPath, str]]:
    if campaign.trigger is not None:
        yield (*path, "trigger", "event"), campaign.trigger.event
    if campaign.goal is not None:
        yield (*path, "goal", "event"), campaign.goal.event
    yield from _when_events(campaign.when, (*path, "when"))


def _when_events(when: Any, path: YamlPath) -> Iterator[tuple[YamlPath, str]]:
    if isinstance(when, list):
        for index, item in enumerate(when):
            yield from _when_events(item, (*path, index))
    elif isinstance(when, dict):
        for key, value in when.items():
            if key in ("event", "no_event"):
                name = value.get("name") if isinstance(value, dict) else value
                if isinstance(name, str):
                    yield (*path, key), name
            elif key in ("all", "any", "not"):
                yield from _when_events(value, (*path, key))
