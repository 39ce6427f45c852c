"""Jinja's file loader, for processes that render the same few templates thousands of times."""

from __future__ import annotations

import time
from collections.abc import Callable

import jinja2

# Seconds a sending process trusts what it looked up about the templates (see TemplateStore).
SENDING_FRESH_FOR = 1.0


class SeldomCheckingLoader(jinja2.FileSystemLoader):
    """Jinja's loader, asking whether a compiled template is current at most every ``fresh_for`` s.

    Jinja asks on every ``get_template``, a layout's ``extends`` included: a stat per file
    per email.
    """

    def __init__(self, root: str, *, fresh_for: float) -> None:
        super().__init__(root)
        self.fresh_for = fresh_for

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str, Callable[[], bool]]:
        source, filename, uptodate = super().get_source(environment, template)
        if not self.fresh_for:
            return source, filename, uptodate
        checked = [time.monotonic()]

        def seldom_uptodate() -> bool:
            now = time.monotonic()
            if now - checked[0] < self.fresh_for:
                return True
            checked[0] = now
            return uptodate()

        return source, filename, seldom_uptodate
