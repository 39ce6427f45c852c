"""Rules: rules.yaml read into a typed schema, with every error located at file:line:col.

``schema`` holds the campaign model and its loading, ``conditions`` parses ``when:`` and
compiles it to SQL, ``durations`` reads ``30d``-style spans, ``yamlsource`` keeps the
positions that error messages point at.
"""

from __future__ import annotations

from campaigns.rules.conditions import Condition, SqlContext, compile_condition, describe, parse_when
from campaigns.rules.durations import format_duration, parse_duration
from campaigns.rules.schema import WEEKDAYS, Campaign, Defaults, Question, Rules, load_rules, parse_rules

__all__ = [
    "WEEKDAYS",
    "Campaign",
    "Condition",
    "Defaults",
    "Question",
    "Rules",
    "SqlContext",
    "compile_condition",
    "describe",
    "format_duration",
    "load_rules",
    "parse_duration",
    "parse_rules",
    "parse_when",
]
