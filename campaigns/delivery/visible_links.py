"""Is a link really there for a reader? Checked on the parsed HTML, not on its text.

A commented-out link, an empty ``<a href=…></a>`` or one inside an element hidden
by ``display:none`` or the ``hidden`` attribute contains the URL but shows nothing
anyone can click.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

_VOID = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
)
# Elements whose content is never shown as part of the page.
_INVISIBLE_TAGS = frozenset({"head", "script", "style", "template", "title", "noscript"})
_HIDING_STYLE = re.compile(
    r"(?:^|;)\s*(?:display\s*:\s*none|visibility\s*:\s*hidden|mso-hide\s*:\s*all|opacity\s*:\s*0(?:\.0*)?"
    r"|font-size\s*:\s*0(?:px|em|rem|pt|%)?|max-height\s*:\s*0(?:px)?)\s*(?:!important)?\s*(?:;|$)",
    re.IGNORECASE,
)


def has_visible_link(html: str, url: str) -> bool:
    """True when ``html`` has an ``<a href="url">`` with visible text (or an image with alt text)
    outside comments and hidden elements."""
    finder = _LinkFinder(url)
    finder.feed(html)
    finder.close()
    return finder.found


def _hides(tag: str, attributes: dict[str, str | None]) -> bool:
    if tag in _INVISIBLE_TAGS or "hidden" in attributes:
        return True
    if (attributes.get("aria-hidden") or "").lower() == "true":
        return True
    if tag == "input" and (attributes.get("type") or "").lower() == "hidden":
        return True
    return bool(_HIDING_STYLE.search(attributes.get("style") or ""))


class _LinkFinder(HTMLParser):
    def __init__(self, url: str) -> None:
        super().__init__(convert_charrefs=True)
        self.url = url
        self.found = False
        self._stack: list[tuple[str, bool]] = []  # (tag, hidden here or above)
        self._link_depth: int | None = None  # stack depth of an open matching, visible <a>

    @property
    def _hidden(self) -> bool:
        return bool(self._stack) and self._stack[-1][1]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name.lower(): value for name, value in attrs}
        hidden = self._hidden or _hides(tag, attributes)
        if tag == "img" and self._link_depth is not None and not hidden:
            self.found = self.found or bool((attributes.get("alt") or "").strip())
        if tag in _VOID:
            return
        self._stack.append((tag, hidden))
        if tag == "a" and not hidden and (attributes.get("href") or "").strip() == self.url:
            self._link_depth = len(self._stack)

    def handle_endtag(self, tag: str) -> None:
        for depth in range(len(self._stack) - 1, -1, -1):
            if self._stack[depth][0] == tag:
                del self._stack[depth:]
                if self._link_depth is not None and self._link_depth > len(self._stack):
                    self._link_depth = None
                return

    def handle_data(self, data: str) -> None:
        if self._link_depth is not None and not self._hidden and data.strip():
            self.found = True
