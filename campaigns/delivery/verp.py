"""VERP: a Return-Path per delivery, so a bounce names the delivery it is about.

With ``RETENTION_VERP_ADDRESS=bounces@acme.example`` the envelope sender of
delivery 1234 is ``bounces+1234@acme.example``; the bounce comes back to that
address, and the bounce mailbox reads the delivery id out of it.  The mail
server for acme.example must deliver ``bounces+anything`` to ``bounces``
(Postfix: ``recipient_delimiter = +``).
"""

from __future__ import annotations


def verp_address(base: str, delivery_id: int) -> str:
    """``bounces@acme.example`` → ``bounces+1234@acme.example``: the Return-Path of delivery 1234."""
    local, _, domain = base.rpartition("@")
    return f"{local}+{delivery_id}@{domain}"


def verp_delivery_id(base: str, addresses: list[str]) -> int | None:
    local, _, domain = base.lower().rpartition("@")
    for address in addresses:
        name, _, host = address.strip().lower().rpartition("@")
        prefix, plus, tag = name.partition("+")
        if plus and prefix == local and host == domain and tag.isdigit():
            return int(tag)
    return None
