"""The ``webhooks:`` section: endpoints told about what customers do."""

from __future__ import annotations

import re
from typing import Literal, get_args
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from campaigns.rules.values import Strict

WebhookEventKind = Literal[
    "unsubscribed", "answered", "clicked", "converted", "bounced", "complained", "sent"
]
WEBHOOK_EVENT_KINDS: tuple[str, ...] = get_args(WebhookEventKind)


class Webhook(Strict):
    """An endpoint told about what customers do, signed per the Standard Webhooks specification."""

    url: str = Field(max_length=1000)
    events: tuple[WebhookEventKind, ...] = Field(min_length=1)
    secret_env: str

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"write an http:// or https:// URL, got {value!r}")
        return value

    @field_validator("secret_env")
    @classmethod
    def _env_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError(
                f"the name of an environment variable holding the secret (e.g. CRM_WEBHOOK_SECRET), "
                f"not {value!r}"
            )
        return value

    def wants(self, kind: str) -> bool:
        return kind in self.events
