"""CSS inlining for the HTML part: many mail clients drop ``<style>`` blocks."""

from __future__ import annotations

import re

import css_inline

# Remote stylesheets would make rendering depend on the network; @media rules cannot be
# inlined and stay in a <style> block for the clients that honour it.
_INLINER = css_inline.CSSInliner(keep_at_rules=True, load_remote_stylesheets=False)
_STYLE_TAG = re.compile(r"<style\b", re.IGNORECASE)


def inline_css(html: str) -> str:
    """Move the rules of ``<style>`` blocks into ``style`` attributes (at-rules stay)."""
    if not _STYLE_TAG.search(html):
        return html
    return str(_INLINER.inline(html))
