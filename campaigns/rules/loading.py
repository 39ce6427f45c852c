"""Reading rules.yaml: every problem found at once, each located at file:line:col."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from campaigns.errors import RulesError, RulesErrors
from campaigns.rules.conditions import Condition, ConditionError, parse_when
from campaigns.rules.document import Rules
from campaigns.rules.locating import located_error, validation_errors
from campaigns.rules.references import check_references
from campaigns.rules.yamlsource import Located, YAMLSyntaxError, load_located


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
        errors = validation_errors(exc, Rules, located, name) + errors
        raise RulesErrors(sorted(errors, key=lambda e: (e.line or 0, e.column or 0))) from None
    for campaign, condition in zip(rules.campaigns, conditions, strict=True):
        campaign._condition = condition
    errors += check_references(rules, located, name)
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
                errors.append(located_error(located, name, exc.path, str(exc)))
        conditions.append(condition)
    return conditions, errors
