"""Everything a process needs to plan and send, built once from Settings.

Actors run in worker threads that Dramatiq starts, so they reach this through
``current()``; the CLI builds it first and hands it over with ``install()``.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from campaigns.delivery.rendering import TemplateStore, build_context, sample_customer
from campaigns.delivery.sending import Sender
from campaigns.delivery.tokens import Signer
from campaigns.errors import RulesErrors, SourceError
from campaigns.responses.pages import Pages
from campaigns.rules.schema import Rules, load_rules
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
    source: str = ""  # the text they were loaded from, to notice edits
    error: str | None = None


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    templates: TemplateStore
    state: RulesState

    @property
    def rules(self) -> Rules:
        return self.state.rules

    @cached_property
    def transport(self) -> Transport:
        return transport_from_url(self.settings.mail_url)

    @cached_property
    def signer(self) -> Signer:
        # Lazy: a dry run (`plan`, `check`) must not write a generated key.
        return Signer(ensure_secret_key(self.engine, self.settings.secret_keys))

    @cached_property
    def _rate_backend(self) -> Any:
        from dramatiq.rate_limits.backends import RedisBackend, StubBackend

        # On Redis the window is shared by every worker on every machine.
        return RedisBackend(url=self.settings.broker_url) if self.settings.broker_url else StubBackend()

    def send_limiter(self) -> Any:
        """A limiter for `defaults.max_send_rate`, or None; follows rule reloads."""
        from dramatiq.rate_limits import WindowRateLimiter

        rate = self.rules.defaults.max_send_rate
        if rate is None:
            return None
        limit, window_ms = rate
        return WindowRateLimiter(
            self._rate_backend,
            f"retention-send-rate-{limit}-{window_ms}",
            limit=limit,
            window=max(1, window_ms // 1000),
        )

    def sender(self) -> Sender:
        return Sender(
            rules=self.rules,
            templates=self.templates,
            signer=self.signer,
            public_url=self.settings.public_url,
            transport=self.transport,
            verp=self.settings.verp_address,
        )

    def close(self) -> None:
        if "transport" in self.__dict__:
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
        for number, template in enumerate(campaign.templates):
            if not templates.exists(template):
                known = ", ".join(templates.names()) or "none"
                where = (
                    ("campaigns", index, "variants", number, "template")
                    if campaign.variants
                    else ("campaigns", index, "template")
                )
                errors.append(
                    rules.error_at(
                        where, f"unknown template {template!r} (templates in {templates.root}: {known})"
                    )
                )
                continue
            context = build_context(
                customer=sample_customer(),
                campaign={"id": campaign.id, "template": template, "survey": campaign.survey},
                unsubscribe_url="https://retention.invalid/u/sample",
                survey_url="https://retention.invalid/s/sample" if campaign.survey else None,
                track=lambda url: url,
            )
            required = ("unsubscribe_url", "survey_url") if campaign.survey else ("unsubscribe_url",)
            errors.extend(templates.check(template, context, required_names=required))
    from worker.outgoing_webhooks import secret_problem  # it sends through this module's Runtime

    for index, webhook in enumerate(rules.webhooks):
        problem = secret_problem(webhook)
        if problem:
            errors.append(rules.error_at(("webhooks", index, "secret_env"), problem))
    errors.extend(templates.check_all())
    errors.extend(Pages(templates.root).check())  # the user's overrides among the built-in pages
    lines = []
    for error in errors:
        line = error.format()
        if line not in lines:
            lines.append(line)
    return rules, lines


def build(
    settings: Settings | None = None,
    *,
    migrate: bool = True,
    rules_path: Path | None = None,
    templates_path: Path | None = None,
) -> Runtime:
    settings = settings or load_settings()
    engine = make_engine(settings.database_url)
    if migrate:
        upgrade(engine)
    rules_file = rules_path or settings.rules
    rules = load_rules(rules_file)
    if rules_path is not None:
        settings = settings.model_copy(update={"rules": rules_path})
    if templates_path is not None:
        settings = settings.model_copy(update={"templates": templates_path})
    return Runtime(
        settings=settings,
        engine=engine,
        templates=TemplateStore(templates_path or settings.templates),
        state=RulesState(
            rules=rules,
            loaded_at=datetime.now(UTC),
            fingerprint=rules.fingerprint,
            source=rules_file.read_text(encoding="utf-8"),
        ),
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


def reload_rules(rt: Runtime, *, force: bool = False) -> bool:
    """Load rules.yaml again if it changed; a bad edit keeps the last good rules running.

    Returns True when new rules took effect.
    """
    path = rt.settings.rules
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        if isinstance(exc, UnicodeDecodeError):
            line = exc.object[: exc.start].count(b"\n") + 1
            rt.state.error = f"{path}:{line}: not UTF-8 text ({exc.reason}); save the file as UTF-8"
        else:
            rt.state.error = f"{path}: cannot read: {exc}"
        log.error("%s; keeping the rules loaded at %s", rt.state.error, rt.state.loaded_at)
        return False
    if not force and text == rt.state.source:
        return False
    rules, lines = check_files(path, rt.templates)
    if rules is None or lines:
        rt.state.source = text  # report once per edit, not on every tick
        rt.state.error = "; ".join(lines)
        log.error("rules not reloaded, keeping the last good ones: %s", rt.state.error)
        return False
    rt.state = RulesState(
        rules=rules, loaded_at=datetime.now(UTC), fingerprint=rules.fingerprint, source=text
    )
    log.info("rules reloaded from %s (%d campaigns)", path, len(rules.campaigns))
    return True
