"""Configuration from the environment (``RETENTION_*``) and an optional ``.env`` file.

Only the entry points (CLI, actors' module set-up) build a Settings object;
everything below them gets plain values through arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from campaigns.errors import ConfigurationError

# Backoff between retries of a temporary SMTP failure (Dramatiq doubles it each time).
DEFAULT_MIN_BACKOFF_MS = 15_000
DEFAULT_MAX_BACKOFF_MS = 3_600_000
# Longer than the longest send (the reply after DATA alone may take 600 s); also the
# deliver actor's time limit.
DEFAULT_SENDING_TIMEOUT_SECONDS = 900.0


def _empty_or_scheme(schemes: tuple[str, ...], message: str) -> Callable[[str], str]:
    """A validator for an optional URL: empty (the feature is off), or one of ``schemes``."""

    def check(value: str) -> str:
        if value and not value.startswith(schemes):
            raise ValueError(message)
        return value

    return check


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RETENTION_", env_file=".env", extra="ignore", populate_by_name=True
    )

    database_url: str = "sqlite:///retention.db"
    broker_url: str = ""  # empty: in-process queue inside `retention run`
    mail_url: str = "maildir://./outbox"
    public_url: str = "http://127.0.0.1:8000"
    # Comma-separated; the first one signs, all of them verify (key rotation).
    secret_key: str = ""
    api_key: str = ""
    rules: Path = Path("rules.yaml")
    templates: Path = Path("templates")
    retry_min_backoff_ms: int = Field(default=DEFAULT_MIN_BACKOFF_MS, ge=0)
    retry_max_backoff_ms: int = Field(default=DEFAULT_MAX_BACKOFF_MS, ge=0)
    # How long SIGTERM waits for in-flight sends (systemd's default stop timeout is 90 s).
    shutdown_grace_seconds: float = Field(default=30.0, gt=0, le=600)
    # A sending process whose heartbeat is older than this is dead: its deliveries in
    # `sending` are settled (queued again, or `unknown` once handed over).  It beats every
    # third of this, and the scheduler looks every half.
    worker_dead_after_seconds: float = Field(default=30.0, ge=3, le=3600)
    # Any delivery `sending` this long is settled whatever its worker's heartbeat says
    # (a claim without heartbeat, a send that hangs).
    sending_timeout_seconds: float = Field(default=DEFAULT_SENDING_TIMEOUT_SECONDS, ge=10, le=86400)
    # A queued, due delivery whose broker message is older than this is presumed lost
    # (Redis flushed, the in-process queue of a dead process) and enqueued again.
    requeue_after_seconds: float = Field(default=600.0, ge=1, le=86400)
    log_format: str = Field(default="text", pattern="^(text|json)$")
    log_level: str = "INFO"
    # Deliverability: bounces and complaints reported after the send (docs/deployment.md).
    bounce_mailbox: str = ""  # imaps://user:pass@host/INBOX, imap://…, maildir://PATH
    verp_address: str = ""  # bounces@acme.example → Return-Path bounces+<delivery id>@acme.example
    ses_topic_arns: str = ""  # comma-separated; empty: notifications of any topic are accepted
    ses_cert_url_pattern: str = r"^https://sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?/"
    sendgrid_public_key: str = ""  # the Signed Event Webhook's verification key (base64)
    postmark_webhook_auth: str = ""  # user:password of the webhook URL's basic auth
    mailgun_signing_key: str = ""  # the HTTP webhook signing key
    soft_bounce_limit: int = Field(default=3, ge=1)
    soft_bounce_window_days: float = Field(default=30, gt=0)
    complaint_rate_threshold: float = Field(default=0.003, gt=0, lt=1)  # pauses the campaign
    complaint_pause_min_sends: int = Field(default=500, ge=1)
    hard_bounce_rate_threshold: float = Field(default=0.02, gt=0, lt=1)  # flagged in the report
    # `retention scheduler` / `retention worker` serve /healthz, /readyz and /metrics here when set.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_host: str = "127.0.0.1"

    @field_validator("public_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https:// (it is the base of links in emails)")
        return value.rstrip("/")

    _known_broker = field_validator("broker_url")(
        _empty_or_scheme(("redis://", "rediss://", "unix://"),
                         "must be empty (in-process queue) or a redis:// URL")
    )
    _known_mailbox = field_validator("bounce_mailbox")(
        _empty_or_scheme(("imap://", "imaps://", "maildir://"),
                         "must be imaps://user:pass@host/FOLDER, imap://… or maildir://PATH")
    )

    @field_validator("verp_address")
    @classmethod
    def _verp_is_an_address(cls, value: str) -> str:
        if value and (value.count("@") != 1 or "+" in value or value.startswith("@") or value.endswith("@")):
            raise ValueError("must be a plain address such as bounces@acme.example (no +tag)")
        return value

    @property
    def secret_keys(self) -> list[str]:
        return [k.strip() for k in self.secret_key.split(",") if k.strip()]


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        # Every bad variable at once, one line each: fixing them one run at a time is tedious.
        lines = [_describe(error) for error in exc.errors()]
        raise ConfigurationError("\n".join(lines) or str(exc)) from None


def _describe(error: Any) -> str:
    name = "RETENTION_" + str(error["loc"][0]).upper() if error.get("loc") else "settings"
    message = str(error["msg"]).removeprefix("Value error, ")
    given = error.get("input")
    if isinstance(given, str) and "url" not in name.lower() and "key" not in name.lower():
        message += f" (got {given!r})"  # never echo URLs or keys: they may hold passwords
    return f"{name}: {message}"
