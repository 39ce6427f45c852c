"""Everything a process needs to plan and send, built once from Settings.

Actors run in worker threads that Dramatiq starts, so they reach this through
``current()``; the CLI builds it first and hands it over with ``install()``.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy.engine import Engine

from campaigns.errors import RulesErrors, SourceError
from campaigns.rendering import TemplateStore, build_context, sample_customer
from campaigns.rules import Rules, load_rules
from campaigns.sending import Sender
from campaigns.tokens import Signer
from worker.database import ensure_secret_key, make_engine, upgrade
from worker.mail import Transport, transport_from_url
from worker.settings import Settings, load_settings

log = logging.getLogger(__name__)


@dataclass
class RulesState:
    """The rules in force, and the last error when a newer edit was refused."""

    rules: Rules
    loaded_at: datetime
    fingerprint: str
    error: str | None = None


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    templates: TemplateStore
    transport: Transport
    signer: Signer
    state: RulesState
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def rules(self) -> Rules:
        return self.state.rules

    def sender(self) -> Sender:
        return Sender(rules=self.rules, templates=self.templates, signer=self.signer,
                      public_url=self.settings.public_url, transport=self.transport)

    def close(self) -> None:
        self.transport.close()
        self.engine.dispose()


def check_files(rules_path: Path, templates: TemplateStore) -> tuple[Rules | None, list[str]]:
    """Validate rules.yaml and every template it uses; (rules, error lines)."""
    try:
        rules = load_rules(rules_path)
    except RulesErrors as exc:
        return None, [e.format() for e in exc.errors]
    errors: list[SourceError] = []
    for index, campaign in enumerate(rules.campaigns):
        if not templates.exists(campaign.template):
            known = ", ".join(templates.names()) or "none"
            errors.append(rules.error_at(
                ("campaigns", index, "template"),
                f"unknown template {campaign.template!r} (templates in {templates.root}: {known})"))
            continue
        context = build_context(
            customer=sample_customer(), campaign={"id": campaign.id, "template": campaign.template,
                                                  "survey": campaign.survey},
            unsubscribe_url="https://retention.invalid/u/sample",
            survey_url="https://retention.invalid/s/sample" if campaign.survey else None,
            track=lambda url: url,
        )
        errors.extend(templates.check(campaign.template, context))
    errors.extend(templates.check_all())
    lines = []
    for error in errors:
        line = error.format()
        if line not in lines:
            lines.append(line)
    return rules, lines


def build(settings: Settings | None = None, *, migrate: bool = True) -> Runtime:
    from datetime import UTC

    settings = settings or load_settings()
    engine = make_engine(settings.database_url)
    if migrate:
        upgrade(engine)
    templates = TemplateStore(settings.templates)
    rules = load_rules(settings.rules)
    return Runtime(
        settings=settings,
        engine=engine,
        templates=templates,
        transport=transport_from_url(settings.mail_url),
        signer=Signer(ensure_secret_key(engine, settings.secret_keys)),
        state=RulesState(rules=rules, loaded_at=datetime.now(UTC), fingerprint=rules.fingerprint),
    )


_current: Runtime | None = None
_current_lock = threading.Lock()


def install(runtime: Runtime) -> None:
    global _current
    _current = runtime


def current() -> Runtime:
    """The process's runtime, built from the environment on first use (e.g. under `dramatiq`)."""
    global _current
    with _current_lock:
        if _current is None:
            _current = build()
        return _current
