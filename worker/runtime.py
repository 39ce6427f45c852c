"""Everything a process needs to plan and send, built once from Settings.

Actors run in worker threads that Dramatiq starts, so they reach this through
``current()``; the CLI builds it first and hands it over with ``install()``.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from campaigns.delivery.rendering import TemplateStore
from campaigns.delivery.sending import Sender
from campaigns.delivery.template_loader import SENDING_FRESH_FOR
from campaigns.delivery.tokens import Signer
from campaigns.errors import RulesError, RulesErrors, SourceError
from campaigns.models import utcnow
from campaigns.preflight import data_warnings, template_errors
from campaigns.responses.pages import Pages
from campaigns.rules import Rules, load_rules, parse_rules
from worker.database import ensure_secret_key, make_engine, read_setting, upgrade, write_setting
from worker.heartbeat import Heartbeat
from worker.mail import Transport, transport_from_url
from worker.send_rate import SendRate, bucket_for
from worker.settings import Settings, load_settings

log = logging.getLogger(__name__)


@dataclass
class RulesState:
    """The rules in force, and the last error when a newer edit was refused."""

    rules: Rules
    loaded_at: datetime
    fingerprint: str
    source: str = ""  # the text of rules.yaml last read, to notice edits
    error: str | None = None
    # False while running on the copy kept in the database because rules.yaml was invalid at
    # start: links and sending go on, but nothing is planned from rules no one has checked here.
    verified: bool = True


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    templates: TemplateStore
    state: RulesState
    _buckets: dict[tuple[int, int], SendRate] = field(default_factory=dict, repr=False)
    # Set when the process starts shutting down: batches stop after the message in flight.
    stopping: threading.Event = field(default_factory=threading.Event, repr=False)

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

    def send_limiter(self) -> SendRate | None:
        """The bucket of `defaults.max_send_rate`, or None; follows rule reloads."""
        rate = self.rules.defaults.max_send_rate
        if rate is None:
            return None
        with _current_lock:
            bucket = self._buckets.get(rate)
            if bucket is None:
                bucket = self._buckets[rate] = bucket_for(self.settings.broker_url, *rate)
        return bucket

    @cached_property
    def heartbeat(self) -> Heartbeat:
        return Heartbeat(self.engine, interval=self.worker_dead_after / 3)

    @property
    def worker_dead_after(self) -> timedelta:
        return timedelta(seconds=self.settings.worker_dead_after_seconds)

    @property
    def sending_timeout(self) -> timedelta:
        return timedelta(seconds=self.settings.sending_timeout_seconds)

    @property
    def requeue_after(self) -> timedelta:
        return timedelta(seconds=self.settings.requeue_after_seconds)

    def sender(self, *, worker: str | None = None) -> Sender:
        """``worker``: the heartbeat id sending threads record on each claim."""
        return Sender(
            rules=self.rules,
            templates=self.templates,
            signer=self.signer,
            public_url=self.settings.public_url,
            transport=self.transport,
            verp=self.settings.verp_address,
            worker=worker,
            stopping=self.stopping.is_set,
        )

    def close(self) -> None:
        if "transport" in self.__dict__:
            self.transport.close()
        if "heartbeat" in self.__dict__:
            self.heartbeat.stop()
        self.engine.dispose()


def check_files(
    rules_path: Path, templates: TemplateStore, *, engine: Engine | None = None
) -> tuple[Rules | None, list[str]]:
    """Validate rules.yaml and every template it uses; (rules, error lines).

    With an ``engine`` whose database holds customers, templates also render for a
    sample of them (every empty field, locale, plan and status).
    """
    try:
        rules = load_rules(rules_path)
    except RulesErrors as exc:
        return None, [e.format() for e in exc.errors]
    with _reading(engine) as session:
        errors: list[SourceError] = template_errors(rules, templates, session=session, now=utcnow())
    from worker.outgoing_webhooks import secret_problem  # it sends through this module's Runtime

    for index, webhook in enumerate(rules.webhooks):
        problem = secret_problem(webhook)
        if problem:
            errors.append(rules.error_at(("webhooks", index, "secret_env"), problem))
    errors.extend(Pages(templates.root).check())  # the user's overrides among the built-in pages
    lines = []
    for error in errors:
        line = error.format()
        if line not in lines:
            lines.append(line)
    return rules, lines


def check_warnings(rules: Rules, *, engine: Engine | None = None) -> list[str]:
    """What may be intended but usually is not: no conditions, values no customer has."""
    with _reading(engine) as session:
        return data_warnings(rules, session, now=utcnow())


@contextmanager
def _reading(engine: Engine | None) -> Iterator[Session | None]:
    """A session on a migrated database, or None (no database yet: checks skip the data)."""
    if engine is None or not sa.inspect(engine).has_table("customer"):
        yield None
        return
    with Session(engine) as session:
        yield session
        session.rollback()


def build(
    settings: Settings | None = None,
    *,
    migrate: bool = True,
    rules_path: Path | None = None,
    templates_path: Path | None = None,
    last_good: LastGood = "refuse",
) -> Runtime:
    """The runtime for one process.

    ``last_good`` says what an invalid rules.yaml does: ``"refuse"`` raises its errors (commands,
    the scheduler); ``"use"`` starts on the last good rules kept in the database and reports the
    file's errors, as a running daemon does after a bad edit (worker, import, run); ``"or-none"``
    also starts without any (web: unsubscribing never needs campaign rules).
    """
    settings = settings or load_settings()
    engine = make_engine(settings.database_url)
    if migrate:
        upgrade(engine)
    rules_file = rules_path or settings.rules
    if rules_path is not None:
        settings = settings.model_copy(update={"rules": rules_path})
    if templates_path is not None:
        settings = settings.model_copy(update={"templates": templates_path})
    try:
        rules = load_rules(rules_file)
    except RulesErrors as exc:
        if last_good == "refuse":
            raise
        state = _last_good_state(engine, rules_file, exc, allow_none=last_good == "or-none")
    else:
        state = RulesState(rules=rules, loaded_at=datetime.now(UTC), fingerprint=rules.fingerprint,
                           source=rules_file.read_text(encoding="utf-8"))
        if last_good != "refuse":
            remember_good_rules(engine, state.source)
    return Runtime(
        settings=settings,
        engine=engine,
        templates=TemplateStore(templates_path or settings.templates, fresh_for=SENDING_FRESH_FOR),
        state=state,
    )


LastGood = Literal["refuse", "use", "or-none"]
LAST_GOOD_RULES_KEY = "last_good_rules"


def remember_good_rules(engine: Engine, text: str) -> None:
    """Keep the text of valid rules where every machine finds them, for a start during a bad edit."""
    value = json.dumps({"text": text, "saved_at": datetime.now(UTC).isoformat()})
    try:
        write_setting(engine, LAST_GOOD_RULES_KEY, value)
    except sa.exc.SQLAlchemyError as exc:
        log.warning("could not keep the good rules in the database: %s", type(exc).__name__)


def _last_good_state(engine: Engine, rules_file: Path, exc: RulesErrors, *, allow_none: bool) -> RulesState:
    error = "; ".join(e.format() for e in exc.errors)
    stored = read_setting(engine, LAST_GOOD_RULES_KEY)
    try:
        source = rules_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        source = ""
    if stored is None:
        if not allow_none:
            raise RulesErrors([*exc.errors, RulesError(
                "and no last good rules are kept in the database yet to start with: fix the file "
                "(`retention check`)", file=str(rules_file))]) from None
        log.error("rules.yaml is invalid and no good rules were ever kept: serving links without "
                  "campaigns until it is fixed: %s", error)
        rules, saved_at = parse_rules("campaigns: []\n", str(rules_file)), datetime.now(UTC)
    else:
        kept = json.loads(stored)
        rules, saved_at = parse_rules(kept["text"], str(rules_file)), datetime.fromisoformat(kept["saved_at"])
        log.error("rules.yaml is invalid: running the last good rules kept in the database (saved %s) "
                  "until it is fixed: %s", saved_at.isoformat(timespec="seconds"), error)
    return RulesState(rules=rules, loaded_at=saved_at, fingerprint=rules.fingerprint, source=source,
                      error=error, verified=False)


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
            _current = build(last_good="use")  # a sending process, like `retention worker`
        return _current


def reload_rules(rt: Runtime, *, force: bool = False, templates_changed: bool = False) -> bool:
    """Load rules.yaml again if it (or a template) changed; a bad edit keeps the last good rules.

    Returns True when new rules took effect. ``force`` (SIGHUP) checks and logs the verdict even
    when nothing changed.
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
    if not force and not templates_changed and text == rt.state.source:
        return False
    rules, lines = check_files(path, rt.templates, engine=rt.engine)
    if rules is None or lines:
        rt.state.source = text
        error = "; ".join(lines)
        if force or error != rt.state.error:  # once per problem, however often the files are saved
            log.error("rules not reloaded, keeping the last good ones: %s", error)
        rt.state.error = error
        return False
    unchanged = rules.fingerprint == rt.state.fingerprint and rt.state.error is None
    rt.state = RulesState(
        rules=rules, loaded_at=datetime.now(UTC), fingerprint=rules.fingerprint, source=text
    )
    remember_good_rules(rt.engine, text)
    if unchanged and not force:
        log.debug("rules and templates checked again: unchanged")
        return False
    log.info("rules reloaded from %s (%d campaigns)", path, len(rules.campaigns))
    return True
