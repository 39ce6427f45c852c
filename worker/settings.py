"""Configuration from the environment (``RETENTION_*``) and an optional ``.env`` file.

Only the entry points (CLI, actors' module set-up) build a Settings object;
everything below them gets plain values through arguments.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from campaigns.errors import ConfigurationError

# Backoff between retries of a temporary SMTP failure (Dramatiq doubles it each time).
DEFAULT_MIN_BACKOFF_MS = 15_000
DEFAULT_MAX_BACKOFF_MS = 3_600_000


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
    log_format: str = Field(default="text", pattern="^(text|json)$")
    log_level: str = "INFO"

    @field_validator("public_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https:// (it is the base of links in emails)")
        return value.rstrip("/")

    @field_validator("broker_url")
    @classmethod
    def _known_broker(cls, value: str) -> str:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be empty (in-process queue) or a redis:// URL")
        return value

    @property
    def secret_keys(self) -> list[str]:
        return [k.strip() for k in self.secret_key.split(",") if k.strip()]


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0] if exc.errors() else None
        if first:
            name = "RETENTION_" + str(first["loc"][0]).upper()
            raise ConfigurationError(f"{name}: {first['msg']}") from exc
        raise ConfigurationError(str(exc)) from exc
