"""Sandboxed Jinja2 rendering of the templates marketing edits.

Layout: ``templates/NAME/subject.j2`` and ``templates/NAME/body.txt.j2`` are
required, ``templates/NAME/body.html.j2`` is optional and may extend a layout
at the templates root.  ``templates/NAME/LOCALE/`` (``zh-CN``, ``de``) may hold any of
the three files in another language: each file is looked up for the customer's locale,
then its language (``zh-CN`` → ``zh``), then the default, file by file.  ``<style>``
blocks in the HTML part are inlined into ``style`` attributes after rendering, because
many mail clients drop them.  Templates see plain data only (dicts, strings, numbers,
datetimes) plus ``track(url)``; the immutable sandbox keeps them from reaching
Python internals or mutating that data.

Every failure, at ``retention check`` time or while sending, surfaces as a
``TemplateError`` located at ``file:line`` so marketing can fix it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from campaigns.delivery.context import CUSTOMER_FIELDS, build_sample_context
from campaigns.delivery.css import inline_css
from campaigns.delivery.sandbox import (
    RENDER_BUDGET,
    LocatingUndefined,
    Sandbox,
    finalize,
    prepare,
    render_budget,
)
from campaigns.delivery.template_errors import describe_failure, source_excerpt, template_location
from campaigns.delivery.template_files import (
    HTML_BODY,
    REQUIRED_FILES,
    SUBJECT,
    TEXT_BODY,
    locale_folders,
    resolve_files,
    template_directories,
    valid_name,
)
from campaigns.delivery.template_loader import SeldomCheckingLoader
from campaigns.delivery.template_names import unknown_names
from campaigns.delivery.visible_links import has_visible_link
from campaigns.errors import TemplateError

CAMPAIGN_FIELDS = ("id", "template", "survey")  # the keys of the ``campaign`` dict
_PART_NAMES = {TEXT_BODY: "text", HTML_BODY: "HTML"}
_REQUIREMENT_REASONS = {
    "unsubscribe_url": "every email must carry a visible unsubscribe link",
    "survey_url": "a survey campaign must link to its survey",
}


@dataclass(frozen=True)
class RenderedMessage:
    subject: str
    text: str
    html: str | None


def _one_line(text: str) -> str:
    # Collapsing all whitespace also removes CR/LF: no header injection.
    return " ".join(text.split())


class TemplateStore:
    """The templates directory: list, check and render templates by name."""

    def __init__(self, path: Path, *, fresh_for: float = 0.0) -> None:
        self.root = Path(path)
        self._root_abs = Path(os.path.normpath(self.root.absolute()))
        self._display_root = _display_path(self._root_abs)
        # Two environments so escaping follows the part being rendered, not file
        # names: everything the HTML body extends or includes is escaped, nothing
        # in the subject or text part ever is.
        self._html_env = self._environment(autoescape=True)
        self._text_env = self._environment(autoescape=False)
        self._sending_envs = (
            (self._environment(autoescape=True, fresh_for=fresh_for),
             self._environment(autoescape=False, fresh_for=fresh_for)) if fresh_for else None
        )
        # What ``render`` looks up on disk (which files a locale gets, whether each compiled
        # template is still current) may be kept for ``fresh_for`` seconds: a sending process
        # then stats a few files a second rather than six per email, and an edit reaches it
        # within that.  The checks (`retention check`, a reload's verdict) always read the disk.
        self.fresh_for = fresh_for
        self._resolved: dict[tuple[str, str | None], tuple[float, dict[str, str]]] = {}

    def _environment(self, *, autoescape: bool, fresh_for: float = 0.0) -> Sandbox:
        return Sandbox(
            loader=SeldomCheckingLoader(str(self._root_abs), fresh_for=fresh_for),
            undefined=LocatingUndefined,
            autoescape=autoescape,
            finalize=finalize,
            trim_blocks=True,
            lstrip_blocks=True,
            auto_reload=True,  # marketing edits reach a running daemon
        )

    def names(self) -> list[str]:
        """Template directories that have every required file."""
        return [name for name in self._directories() if self.exists(name)]

    def exists(self, name: str) -> bool:
        if not valid_name(name):
            return False
        folder = self._root_abs / name
        return all((folder / file).is_file() for file in REQUIRED_FILES)

    def forget(self) -> None:
        """Drop what ``render`` keeps for ``fresh_for``: a watcher that saw a saved edit calls
        this, so the next render reads the disk rather than a copy up to ``fresh_for`` old."""
        self._resolved.clear()
        for env in self._sending_envs or ():
            if env.cache is not None:
                env.cache.clear()

    def render(self, name: str, context: Mapping[str, Any], *, locale: str | None = None) -> RenderedMessage:
        """Render one message in ``locale`` (falling back file by file to the default);
        any failure is a TemplateError located in the file."""
        return self._render_resolved(self._files(name, locale), prepare(context))

    def _files(self, name: str, locale: str | None) -> dict[str, str]:
        now = time.monotonic()
        kept = self._resolved.get((name, locale))
        if kept is not None and kept[0] > now:
            return kept[1]
        if not self.exists(name):
            raise TemplateError(
                f"no template {name!r}: expected {name}/{SUBJECT} and {name}/{TEXT_BODY}"
                f" (templates here: {', '.join(self.names()) or 'none'})",
                file=self._display(name),
            )
        files = self.resolve(name, locale)
        if self.fresh_for:
            self._resolved[(name, locale)] = (now + self.fresh_for, files)
        return files

    def locales(self, name: str) -> list[str]:
        """The locale folders of one template, as named on disk."""
        return locale_folders(self._root_abs, name)

    def resolve(self, name: str, locale: str | None) -> dict[str, str]:
        """For each file of the template, the path (relative to the templates root) that
        a customer with ``locale`` gets; the HTML part only when one exists."""
        return resolve_files(self._root_abs, name, locale)

    def _render_resolved(self, files: Mapping[str, str], prepared: Mapping[str, Any]) -> RenderedMessage:
        cached = self.fresh_for > 0
        subject = _one_line(self._render_file(files[SUBJECT], prepared, cached=cached))
        if not subject:
            raise TemplateError("the subject renders empty", file=self._display(files[SUBJECT]))
        text = self._render_file(files[TEXT_BODY], prepared, cached=cached).strip("\n") + "\n"
        html = None
        if HTML_BODY in files:
            html = self._inline(self._render_file(files[HTML_BODY], prepared, cached=cached),
                                files[HTML_BODY])
        return RenderedMessage(subject=subject, text=text, html=html)

    def _inline(self, html: str, path: str) -> str:
        try:
            return inline_css(html)
        except ValueError as exc:  # css_inline.InlineError: unparseable CSS
            raise TemplateError(f"cannot inline the <style> CSS: {exc}", file=self._display(path)) from exc

    def check(
        self,
        name: str,
        sample_context: Mapping[str, Any],
        *,
        required_names: tuple[str, ...] = ("unsubscribe_url",),
    ) -> list[TemplateError]:
        """Every problem of one template, in every locale: missing files, syntax, names
        unknown on any branch, no visible unsubscribe link.  Returns them all rather than
        stopping at the first."""
        if not valid_name(name) or not (self._root_abs / name).is_dir():
            return [
                TemplateError(
                    f"no template directory {name!r}{self._folder_hint(name)}: "
                    f"create {name}/{SUBJECT} and {name}/{TEXT_BODY}",
                    file=self._display(name),
                )
            ]
        errors: list[TemplateError] = []
        for file in REQUIRED_FILES:
            if not (self._root_abs / name / file).is_file():
                errors.append(
                    TemplateError(
                        f"missing {file}: every template needs {SUBJECT} and {TEXT_BODY}",
                        file=self._display(name, file),
                    )
                )
        # Each locale is checked as the customers of that locale get it: its own files
        # where it has them, the default ones elsewhere.
        checked: set[str] = set()
        for locale in (None, *self.locales(name)):
            files = self.resolve(name, locale)
            errors.extend(self._check_files(files, sample_context, required_names, checked))
        return errors

    def _check_files(
        self,
        files: Mapping[str, str],
        sample_context: Mapping[str, Any],
        required_names: tuple[str, ...],
        checked: set[str],
    ) -> list[TemplateError]:
        errors: list[TemplateError] = []
        parsed = {}
        for file, path in files.items():
            try:
                self._env_for(path).get_template(path)
            except Exception as exc:  # reported to the user, not swallowed
                if path not in checked:
                    errors.append(self._error(exc, path))
            else:
                if path not in checked:
                    errors.extend(self.check_names(path, sample_context))
                parsed[file] = path
            checked.add(path)

        # Sentinels in place of the required links: if one never reaches the
        # output, that part of the email lacks the link.
        sentinels = {key: f"https://sentinel.invalid/{key}/f3a9c1" for key in required_names}
        prepared = prepare({**sample_context, **sentinels})
        outputs: dict[str, str] = {}
        for file, path in parsed.items():
            try:
                outputs[file] = self._render_file(path, prepared)
                if file == HTML_BODY:
                    outputs[file] = self._inline(outputs[file], path)
            except TemplateError as exc:
                if (exc.file, exc.line) not in {(e.file, e.line) for e in errors}:  # not found twice
                    errors.append(exc)
        if SUBJECT in outputs and not _one_line(outputs[SUBJECT]):
            errors.append(TemplateError("the subject renders empty", file=self._display(files[SUBJECT])))
        for file in (TEXT_BODY, HTML_BODY):
            for key, sentinel in sentinels.items():
                if file not in outputs:
                    continue
                if file == HTML_BODY:
                    shown = has_visible_link(outputs[file], sentinel)
                    problem = (f"the HTML part has no visible link to {{{{ {key} }}}} (an <a href> with "
                               "text, outside comments and hidden elements)")
                else:
                    shown = sentinel in outputs[file]
                    problem = f"the text part never shows {{{{ {key} }}}}"
                if not shown:
                    reason = _REQUIREMENT_REASONS.get(key, "this campaign needs it")
                    errors.append(TemplateError(f"{problem}: {reason}", file=self._display(files[file])))
        return errors

    def check_render(self, name: str, context: Mapping[str, Any]) -> list[TemplateError]:
        """Render every file of a template as the context's customer gets it (their locale);
        the errors, located, without stopping at the first."""
        prepared = prepare(context)
        customer = context.get("customer")
        locale = customer.get("locale") if isinstance(customer, Mapping) else None
        errors = []
        for file, path in self.resolve(name, locale).items():
            try:
                output = self._render_file(path, prepared)
                if file == HTML_BODY:
                    self._inline(output, path)
            except TemplateError as exc:
                errors.append(exc)
        return errors

    def check_names(self, template_file: str, sample_context: Mapping[str, Any]) -> list[TemplateError]:
        """Names read on any branch of one file that the context will not hold."""
        env = self._env_for(template_file)
        try:
            source, filename, _ = env.loader.get_source(env, template_file)  # type: ignore[union-attr]
            tree = env.parse(source, template_file, filename)
        except Exception:  # get_template reports syntax errors, located
            return []
        keys: dict[str, tuple[str, ...] | None] = {key: None for key in sample_context}
        if "customer" in keys:
            keys["customer"] = CUSTOMER_FIELDS
        if "campaign" in keys:
            keys["campaign"] = CAMPAIGN_FIELDS
        lines = source.splitlines()
        return [
            TemplateError(
                problem.message + source_excerpt(lines, problem.line),
                file=self._display(template_file),
                line=problem.line,
            )
            for problem in unknown_names(tree, context=keys, globals_=list(env.globals))
        ]

    def _folder_hint(self, name: str) -> str:
        from difflib import get_close_matches

        close = get_close_matches(name, self._directories(), n=1)
        return f" (did you mean {close[0]!r}?)" if close else ""

    def check_all(
        self,
        sample_context: Callable[[str], Mapping[str, Any]] | None = None,
    ) -> list[TemplateError]:
        """Check every template directory and every shared file at the root."""
        make_context = sample_context or (lambda name: build_sample_context(template=name))
        errors: list[TemplateError] = []
        for path in sorted(self._root_abs.glob("*.j2")):
            try:
                self._env_for(path.name).get_template(path.name)
            except Exception as exc:  # reported to the user, not swallowed
                errors.append(self._error(exc, path.name))
            else:
                errors.extend(self.check_names(path.name, make_context(path.name)))
        for name in self._directories():
            errors.extend(self.check(name, make_context(name)))
        # A broken layout shows up once per template (and locale) that extends it.
        unique = {error.format(): error for error in errors}
        return list(unique.values())

    def _directories(self) -> list[str]:
        return template_directories(self._root_abs)

    def _render_file(self, path: str, context: Mapping[str, Any], *, cached: bool = False) -> str:
        """Render one file, ``path`` relative to the templates root (``NAME/zh-CN/subject.j2``)."""
        token = render_budget.set([RENDER_BUDGET])
        try:
            return self._env_for(path, cached=cached).get_template(path).render(context)
        except Exception as exc:
            error = self._error(exc, path)
            if isinstance(exc, jinja2.UndefinedError) and error.message.startswith("undefined name"):
                error = TemplateError(
                    f"{error.message} — available: {', '.join(sorted(context))}",
                    file=error.file,
                    line=error.line,
                )
            raise error from exc
        finally:
            render_budget.reset(token)

    def _env_for(self, path: str, *, cached: bool = False) -> Sandbox:
        # Shared files at the root (layouts, partials) count as HTML unless named .txt.j2.
        html, text = self._sending_envs if cached and self._sending_envs else (self._html_env, self._text_env)
        if path.rpartition("/")[2] == SUBJECT or path.endswith(".txt.j2"):
            return text
        return html

    def _error(self, exc: Exception, path: str) -> TemplateError:
        """Locate a jinja (or template-triggered Python) exception in its source file;
        ``path`` (relative to the templates root) is where it is reported otherwise."""
        where, line = template_location(exc, self._display_template_file)
        if isinstance(exc, jinja2.TemplateSyntaxError):
            message = exc.message or str(exc)
            if exc.source and exc.lineno:
                message += source_excerpt(exc.source.splitlines(), exc.lineno)
        else:
            message = describe_failure(exc, self._display_root)
            if line is not None and where is not None:
                message += self._excerpt(where, line)
        return TemplateError(message, file=where or self._display(path), line=line)

    def _excerpt(self, display: str, line: int) -> str:
        relative = display.removeprefix(self._display_root).lstrip("/")
        try:
            lines = (self._root_abs / relative).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            return ""
        return source_excerpt(lines, line)

    def _display_template_file(self, filename: str) -> str | None:
        path = Path(os.path.normpath(filename))
        if path.suffix != ".j2" or not path.is_relative_to(self._root_abs):
            return None
        return self._display(*path.relative_to(self._root_abs).parts)

    def _display(self, *parts: str) -> str:
        return "/".join((self._display_root, *parts))


def _display_path(path: Path) -> str:
    # Relative to the working directory when inside it, so the CLI prints
    # "templates/we_miss_you/body.txt.j2" the user can open directly.
    try:
        return path.relative_to(Path.cwd()).as_posix() or "."
    except ValueError:
        return path.as_posix()

