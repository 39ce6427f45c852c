"""The domain, stage by stage; no broker, SMTP, HTTP or worker/ imports.

The pipeline, in the order a customer meets it (each stage's ``__init__`` says more):

1. ``rules``      rules.yaml → typed campaigns; ``when:`` compiled to SQL.
2. ``ingestion``  customers and events in (API, actors, CSV); last activity and cadence.
3. ``planning``   the pass that decides who gets which campaign now; explain; conversions.
4. ``delivery``   outbox, rendering, MIME, send window, signed links: one message sent.
5. ``responses``  unsubscribes, survey answers, clicks; their export and pages.
6. ``reports``    churn, retention, cohorts, funnels with lift, at-risk customers.

Shared by every stage: ``models`` (the tables), ``errors`` (the one error tree),
``sql`` (dialect functions, the customer's reference moments, upserts),
``addresses`` (the email address check), ``timezones``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Where each name lives, in pipeline order.  Loaded on first use, so importing one
# module (campaigns.errors, campaigns.models) does not load the whole domain.
_HOMES = {
    "Rules": "campaigns.rules",
    "load_rules": "campaigns.rules",
    "upsert_customers": "campaigns.ingestion",
    "record_events": "campaigns.ingestion",
    "import_csv": "campaigns.ingestion",
    "Planner": "campaigns.planning",
    "explain": "campaigns.planning",
    "Sender": "campaigns.delivery",
    "TemplateStore": "campaigns.delivery",
    "unsubscribe": "campaigns.responses",
    "submit_survey": "campaigns.responses",
    "record_click": "campaigns.responses",
    "build_report": "campaigns.reports",
    "RetentionError": "campaigns.errors",
    "ConfigurationError": "campaigns.errors",
}

if TYPE_CHECKING:
    from campaigns.delivery import Sender, TemplateStore
    from campaigns.errors import ConfigurationError, RetentionError
    from campaigns.ingestion import import_csv, record_events, upsert_customers
    from campaigns.planning import Planner
    from campaigns.planning.explain import explain  # the function, not its module (mypy)
    from campaigns.reports import build_report
    from campaigns.responses import record_click, submit_survey, unsubscribe
    from campaigns.rules import Rules, load_rules

__all__ = [  # noqa: RUF022 - in pipeline order, as _HOMES
    "Rules",
    "load_rules",
    "upsert_customers",
    "record_events",
    "import_csv",
    "Planner",
    "explain",
    "Sender",
    "TemplateStore",
    "unsubscribe",
    "submit_survey",
    "record_click",
    "build_report",
    "RetentionError",
    "ConfigurationError",
]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'campaigns' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
