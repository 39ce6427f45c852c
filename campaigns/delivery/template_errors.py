"""Where a template failed: the file and line, for the emails' templates and the web pages alike."""

from __future__ import annotations

from collections.abc import Callable

import jinja2
from jinja2.exceptions import SecurityError


def template_location(
    exc: BaseException, shown: Callable[[str], str | None]
) -> tuple[str | None, int | None]:
    """(file, line) of the template that raised ``exc``, or (None, None).

    ``shown`` turns a template file name into the name to report, or None for
    a file that is not one of ours (Python code, Jinja's own frames).
    """
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return (shown(exc.filename) if exc.filename else None), exc.lineno
    where: tuple[str | None, int | None] = (None, None)
    # Jinja rewrites the traceback so template frames carry the template's file
    # name and line; the innermost one is where it went wrong.
    traceback = exc.__traceback__
    while traceback is not None:
        name = shown(traceback.tb_frame.f_code.co_filename)
        if name is not None:
            where = (name, traceback.tb_lineno)
        traceback = traceback.tb_next
    return where


def describe_failure(exc: Exception, display_root: str) -> str:
    if isinstance(exc, SecurityError):
        return f"unsafe template construct: {exc.message}"
    if isinstance(exc, jinja2.TemplateNotFound):
        return f"no template file {exc.name!r} in {display_root}/"
    if isinstance(exc, jinja2.TemplateError):
        return exc.message or type(exc).__name__
    return f"{type(exc).__name__}: {exc}"


def source_excerpt(lines: list[str], line: int) -> str:
    """`` — in: <the source line>``, shortened, so the error shows what to look for."""
    if not 1 <= line <= len(lines):
        return ""
    text = " ".join(lines[line - 1].split())
    if not text:
        return ""
    return f" — in: {text if len(text) <= 80 else text[:77] + '...'}"
