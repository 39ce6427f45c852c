"""One error tree for everything a user can get wrong, plus delivery outcomes.

Errors a marketing user sees carry ``file:line:col`` so the CLI can print one
line that says where and what.  ``ConfigurationError`` stands outside the tree
on purpose: no ``except RetentionError`` may swallow a broken deployment.
"""

from __future__ import annotations


class RetentionError(Exception):
    """Base of every error the domain raises on purpose."""


class SourceError(RetentionError):
    """An error located in a file marketing edits (rules.yaml or a template)."""

    def __init__(
        self, message: str, *, file: str, line: int | None = None, column: int | None = None,
        where: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.column = column
        self.where = where
        super().__init__(self.format())

    def format(self) -> str:
        location = self.file
        if self.line is not None:
            location += f":{self.line}"
            if self.column is not None:
                location += f":{self.column}"
        where = f" {self.where}:" if self.where else ""
        return f"{location}:{where} {self.message}"


class RulesError(SourceError):
    """rules.yaml is invalid."""


class TemplateError(SourceError):
    """A template is missing, does not parse, or fails to render."""


class RulesErrors(RetentionError):
    """Several located errors at once, so `retention check` can list them all."""

    def __init__(self, errors: list[SourceError]) -> None:
        self.errors = errors
        super().__init__("\n".join(e.format() for e in errors))


class DeliveryError(RetentionError):
    """Sending one message failed."""

    def __init__(self, message: str, *, code: int | None = None, enhanced: str | None = None):
        self.code = code
        self.enhanced = enhanced
        super().__init__(message)


class TransientDeliveryError(DeliveryError):
    """Worth retrying later: SMTP 4xx, dropped connection, timeout."""


class AmbiguousDeliveryError(DeliveryError):
    """The message content went out, but the server's verdict never came back.

    The server may hold the message; sending it again could mail the customer twice,
    so the delivery is recorded as ``unknown`` and never retried automatically.
    """


class PermanentDeliveryError(DeliveryError):
    """Never retried: SMTP 5xx."""

    @property
    def is_recipient_failure(self) -> bool:
        """Bad mailbox (5.1.x, 5.2.1, user unknown): the address should be suppressed."""
        if self.enhanced:
            return self.enhanced.startswith("5.1.") or self.enhanced == "5.2.1"
        return self.code == 550 and "unknown" in str(self).lower()

    @property
    def is_policy_rejection(self) -> bool:
        """Refused for what was sent or who sent it (5.7.x), not for who receives it."""
        return bool(self.enhanced and self.enhanced.startswith("5.7."))


class ConfigurationError(Exception):
    """The deployment is misconfigured (bad URL, unreadable directory).

    Deliberately not a RetentionError: nothing may catch and ignore it.
    """
