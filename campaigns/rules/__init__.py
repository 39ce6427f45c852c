"""Rules: rules.yaml read into a typed schema, with every error located at file:line:col.

``document`` is the whole file (``Rules``), made of its sections ``defaults``, ``campaign``,
``surveys`` and ``webhooks``, which share the field types in ``values``.  ``loading`` reads
the file, ``locating`` turns a failure into file:line:col and plain advice, ``references``
checks what one section names in another.  ``conditions`` parses ``when:`` into a tree,
``condition_sql`` compiles that tree to SQL, ``durations`` reads ``30d``-style spans,
``yamlsource`` keeps the positions that error messages point at.
"""

from __future__ import annotations

from campaigns.rules.campaign import Campaign, Variant
from campaigns.rules.condition_sql import SqlContext, compile_condition
from campaigns.rules.conditions import Condition, describe, parse_when
from campaigns.rules.defaults import BlastGuard, Defaults, FrequencyCap, QuietHours
from campaigns.rules.document import Rules
from campaigns.rules.durations import format_duration, parse_duration
from campaigns.rules.loading import load_rules, parse_rules
from campaigns.rules.surveys import Question
from campaigns.rules.values import WEEKDAYS, Weekday
from campaigns.rules.webhooks import WEBHOOK_EVENT_KINDS, Webhook

__all__ = [
    "WEBHOOK_EVENT_KINDS",
    "WEEKDAYS",
    "BlastGuard",
    "Campaign",
    "Condition",
    "Defaults",
    "FrequencyCap",
    "Question",
    "QuietHours",
    "Rules",
    "SqlContext",
    "Variant",
    "Webhook",
    "Weekday",
    "compile_condition",
    "describe",
    "format_duration",
    "load_rules",
    "parse_duration",
    "parse_rules",
    "parse_when",
]
