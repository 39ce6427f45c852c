"""Checks across sections, after each has validated alone: unique ids, surveys and answers that exist."""

from __future__ import annotations

from typing import TYPE_CHECKING

from campaigns.errors import RulesError
from campaigns.rules.campaign import Campaign
from campaigns.rules.conditions import AnswerTest, walk
from campaigns.rules.locating import located_error
from campaigns.rules.yamlsource import Located

if TYPE_CHECKING:
    from campaigns.rules.document import Rules


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
                located_error(
                    located, name, where, f"`answer` names unknown survey {test.survey!r} (surveys: {known})"
                )
            )
        elif test.question not in questions:
            errors.append(
                located_error(
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
                    located_error(
                        located,
                        name,
                        where,
                        f"{unknown[0]!r} is not a choice of {test.survey}.{test.question} "
                        f"(choices: {', '.join(questions[test.question].choices or ())})",
                    )
                )
    return errors


def check_references(rules: Rules, located: Located, name: str) -> list[RulesError]:
    errors: list[RulesError] = []
    seen: dict[str, int] = {}
    for index, campaign in enumerate(rules.campaigns):
        path: tuple[str | int, ...] = ("campaigns", index)
        if campaign.id in seen:
            errors.append(
                located_error(
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
                located_error(
                    located, name, (*path, "survey"), f"unknown survey {campaign.survey!r} (surveys: {known})"
                )
            )
        if campaign.when is None and campaign.trigger is None and not campaign.once:
            errors.append(
                located_error(
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
            errors.append(located_error(located, name, ("webhooks", index, "url"),
                                 f"the URL is also webhooks[{urls[webhook.url]}]: merge their events"))
        urls.setdefault(webhook.url, index)
    for survey_id, questions in rules.surveys.items():
        ids = [q.id for q in questions]
        for dup in {i for i in ids if ids.count(i) > 1}:
            errors.append(
                located_error(
                    located,
                    name,
                    ("surveys", survey_id),
                    f"duplicate question id {dup!r} in survey {survey_id!r}",
                )
            )
    return errors
