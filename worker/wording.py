"""Counted nouns for what people read ("1 delivery", "2 deliveries")."""

from __future__ import annotations

_IRREGULAR = {"delivery": "deliveries", "reply": "replies"}


def plural(count: int, noun: str) -> str:
    """``count`` and ``noun`` ("held delivery"), its last word in the plural unless the count is one."""
    if count == 1:
        return f"{count} {noun}"
    head, _, last = noun.rpartition(" ")
    return f"{count} {head + ' ' if head else ''}{_IRREGULAR.get(last, last + 's')}"
