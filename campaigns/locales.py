"""Locales: which translation a customer gets, most specific first.

One home for the fallback rule that templates, survey questions and the built-in pages
share: ``zh-CN`` → ``zh`` → the default.  Tags compare case-insensitively and ``_``
reads as ``-`` (``zh_cn`` is ``zh-CN``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")

# A BCP 47-style tag as marketing writes it in a folder or rules.yaml key: "de", "zh-CN",
# "pt_BR", "sr-Latn-RS".
LOCALE_TAG = re.compile(r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$")


def normalize(tag: str) -> str:
    return tag.strip().replace("_", "-").lower()


def locale_chain(locale: str | None) -> list[str]:
    """The normalized tags to try, most specific first: ``zh-CN`` → ``[zh-cn, zh]``."""
    tag = normalize(locale or "")
    if not tag or not LOCALE_TAG.match(tag):
        return []
    parts = tag.split("-")
    return ["-".join(parts[:i]) for i in range(len(parts), 0, -1)]


def best_match(available: Mapping[str, T], locale: str | None) -> T | None:
    """The entry of ``available`` (keyed by tags as written) for ``locale``, or None."""
    by_tag = {normalize(key): value for key, value in available.items()}
    for tag in locale_chain(locale):
        if tag in by_tag:
            return by_tag[tag]
    return None
