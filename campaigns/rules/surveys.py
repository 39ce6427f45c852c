"""The ``surveys:`` section: questions a campaign's email links to, in every locale."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from campaigns.locales import LOCALE_TAG, best_match
from campaigns.rules.values import Strict


class Translation(Strict):
    """A question in another language: its wording and the labels of its choices."""

    ask: str | None = None
    choices: dict[str, str] = Field(default_factory=dict)


class Question(Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    ask: str
    type: Literal["choice", "text"] | None = None
    choices: tuple[str, ...] | None = None
    required: bool = False
    max_length: int = Field(default=2000, ge=1, le=20_000)
    # locale tag (zh-CN, de) → the question in that language; customers get theirs with
    # the same fallback as templates (zh-TW → zh → the default wording).
    translations: dict[str, Translation] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _choices(self) -> Question:
        kind = self.kind
        if kind == "choice" and not self.choices:
            raise ValueError(f"a `{kind}` question needs `choices: [...]`")
        if kind == "text" and self.choices:
            raise ValueError("a `text` question has no choices (drop `choices` or the type)")
        for tag, translation in self.translations.items():
            if not LOCALE_TAG.match(tag):
                raise ValueError(f"translations: {tag!r} is not a locale tag (write e.g. zh-CN or de)")
            unknown = set(translation.choices) - set(self.choices or ())
            if unknown:
                raise ValueError(
                    f"translations.{tag}.choices: {', '.join(sorted(unknown))} is not one of this "
                    f"question's choices ({', '.join(self.choices or ()) or 'none'})"
                )
        return self

    def in_locale(self, locale: str | None) -> tuple[str, dict[str, str]]:
        """(the question's wording, choice → label) for a customer with ``locale``."""
        translation = best_match(self.translations, locale)
        if translation is None:
            return self.ask, {}
        return translation.ask or self.ask, dict(translation.choices)

    @property
    def kind(self) -> str:
        return self.type or ("choice" if self.choices else "text")
