"""One error tree for everything a user can get wrong, plus delivery outcomes.

Errors a marketing user sees carry ``file:line:col`` so the CLI can print one
line that says where and what.  ``ConfigurationError`` stands outside the tree
on purpose: no ``except RetentionError`` may swallow a broken deployment.
"""

from __future__ import annotations

from collections.abc import Mapping


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


class UnknownCampaign(RetentionError, LookupError):
    """No campaign by that id in rules.yaml (any more)."""

    def __init__(self, campaign_id: str, known: list[str]) -> None:
        self.campaign_id = campaign_id
        super().__init__(
            f"no campaign by the id of {campaign_id!r} (known: {', '.join(known) or 'none'})"
        )


class InvalidAddress(RetentionError, ValueError):
    """Not an email address a message can be composed for; the message says why."""


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


# ---------------------------------------------------------------- per stage


class CsvFormatError(RetentionError):
    """The CSV file as a whole cannot be imported (missing column, not UTF-8, broken quoting)."""


class InvalidToken(RetentionError):
    """A link token that does not verify.  ``reason`` is one of "tampered",
    "wrong_purpose", "expired" or "malformed"; the web layer answers 4xx."""

    def __init__(self, message: str, *, purpose: str, reason: str) -> None:
        self.purpose = purpose
        self.reason = reason
        super().__init__(message)


class UnknownDelivery(RetentionError, LookupError):
    """A correctly signed link whose delivery no longer exists (e.g. the customer was deleted)."""

    def __init__(self, delivery_id: int) -> None:
        self.delivery_id = delivery_id
        super().__init__(f"no delivery by the id of {delivery_id}: it was deleted after the email went out")


class SurveyUnavailable(RetentionError, LookupError):
    """The delivery's campaign is gone from rules.yaml or no longer has a survey."""


class SurveyValidationError(RetentionError, ValueError):
    """Answers that do not fit the survey.  ``errors`` maps a question id (or ``""``
    for the response as a whole) to what is wrong with it; nothing was stored."""

    def __init__(self, survey_id: str, errors: Mapping[str, str]) -> None:
        self.survey_id = survey_id
        self.errors = dict(errors)
        listed = "; ".join(f"{key}: {message}" if key else message for key, message in errors.items())
        super().__init__(f"survey {survey_id!r}: {listed}")


class ReportError(RetentionError, ValueError):
    """A report asked for something that cannot be answered; the message says how to ask."""


class ConfigurationError(Exception):
    """The deployment is misconfigured (bad URL, unreadable directory).

    Deliberately not a RetentionError: nothing may catch and ignore it.
    """
