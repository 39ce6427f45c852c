"""The web pages customers see after clicking a link: unsubscribe, survey, thanks, errors.

The built-in ones ship inside this package (``builtin_pages/``), so a user's own
templates folder needs none of them; a file in ``templates/pages/`` replaces the
built-in page of the same name, one by one, so marketing restyles them like the
emails.  They render in an environment of their own: HTML-autoescaped,
sandboxed, strict about undefined names, and unaware of the email context.
Every page extends ``base.html.j2`` (overriding only that one restyles all).
A page may be translated: ``pages/zh-CN/survey.html.j2`` (or the built-in
``builtin_pages/zh-CN/``) is chosen for a customer whose locale is ``zh-CN``
with the same fallback as the emails (``zh-TW`` → ``zh`` → the default page).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from campaigns.delivery.template_errors import template_location
from campaigns.delivery.template_files import PAGES_DIR
from campaigns.errors import TemplateError
from campaigns.locales import LOCALE_TAG, locale_chain, normalize

log = logging.getLogger(__name__)

BUILTIN_DIR = Path(__file__).parent / "builtin_pages"

UNSUBSCRIBE_CONFIRM = "unsubscribe_confirm.html.j2"
UNSUBSCRIBED = "unsubscribed.html.j2"
SURVEY = "survey.html.j2"
SURVEY_THANKS = "survey_thanks.html.j2"
ERROR = "error.html.j2"

# What each page is rendered with, for `check()`: the same names the web layer passes.
_SAMPLE_QUESTIONS = [
    {"id": "reason", "ask": "What made you cancel?", "kind": "choice",
     "choices": ["price", "not_needed"], "required": True, "max_length": 2000, "value": "price",
     "labels": {"price": "Too expensive"}},
    {"id": "missing", "ask": "Was there a feature you missed?", "kind": "text", "choices": [],
     "required": False, "max_length": 2000, "value": "", "labels": {}},
]
SAMPLE_CONTEXTS: dict[str, dict[str, Any]] = {
    UNSUBSCRIBE_CONFIRM: {"email": "ada@example.com", "action": "/u/sample", "already": False},
    UNSUBSCRIBED: {"email": "ada@example.com", "already": False},
    SURVEY: {"action": "/s/sample", "questions": _SAMPLE_QUESTIONS, "answered_before": True,
             "errors": {"": "please answer at least one question", "missing": "too long"}},
    SURVEY_THANKS: {"replaced": True},
    ERROR: {"status": 400, "title": "This link does not work", "message": "It was changed."},
}


class Pages:
    """Renders ``templates/pages/NAME``, else the built-in page; any failure is a TemplateError
    located in the file."""

    def __init__(self, templates_root: Path) -> None:
        self.root = Path(os.path.normpath(Path(templates_root, PAGES_DIR).absolute()))
        self._env = ImmutableSandboxedEnvironment(
            loader=jinja2.ChoiceLoader([jinja2.FileSystemLoader(str(self.root)),
                                        jinja2.FileSystemLoader(str(BUILTIN_DIR))]),
            undefined=jinja2.StrictUndefined,
            autoescape=True,
            trim_blocks=True,
            lstrip_blocks=True,
            auto_reload=True,  # a restyle reaches the running web server
        )

    def render(self, name: str, context: Mapping[str, Any],
               locale: str | Sequence[str | None] | None = None) -> str:
        """Render page ``name`` in the first of ``locale`` (one tag, or several in order of
        preference, as from Accept-Language) that has a translation, else the default page."""
        try:
            return self._env.select_template([*self._translations(name, locale), name]).render(context)
        except Exception as exc:  # located and re-raised, never swallowed
            raise self._error(exc, name) from exc

    def _translations(self, name: str, locale: str | Sequence[str | None] | None) -> list[str]:
        wanted = [locale] if locale is None or isinstance(locale, str) else list(locale)
        folders = {normalize(p.name): p.name for root in (BUILTIN_DIR, self.root) if root.is_dir()
                   for p in root.iterdir() if p.is_dir() and LOCALE_TAG.match(p.name)}
        return [f"{folders[tag]}/{name}" for one in wanted for tag in locale_chain(one) if tag in folders]

    def locales(self) -> list[str]:
        """The locales with at least one translated page (built in or the user's)."""
        return sorted({p.name for root in (BUILTIN_DIR, self.root) if root.is_dir()
                       for p in root.iterdir() if p.is_dir() and LOCALE_TAG.match(p.name)})

    def check(self) -> list[TemplateError]:
        """Every page parses and renders with the names the web server passes."""
        errors = []
        for locale in (None, *self.locales()):
            for name, context in SAMPLE_CONTEXTS.items():
                try:
                    self.render(name, context, locale)
                except TemplateError as exc:
                    errors.append(exc)
        return list({e.format(): e for e in errors}.values())

    def _error(self, exc: Exception, name: str) -> TemplateError:
        display = f"{self.root.as_posix()}/{name}"
        if isinstance(exc, jinja2.TemplateNotFound):
            return TemplateError(f"missing page template {exc.name!r} in {self.root.as_posix()}/",
                                 file=display)
        where, line = template_location(exc, lambda file: file if file.endswith(".j2") else None)
        message = exc.message if isinstance(exc, jinja2.TemplateError) and exc.message else (
            f"{type(exc).__name__}: {exc}")
        return TemplateError(message, file=where or display, line=line)
