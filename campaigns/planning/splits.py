"""Deterministic splits of customers: holdout groups and A/B variants, computed in SQL.

Each purpose (``holdout:ID``, ``variant:ID``) has its own random-looking quadratic hash
into 10,000 buckets, so the splits are statistically independent of each other: a linear
hash would make one split the other shifted by a constant, and a holdout would then skew
the variants.  Plain integer arithmetic below 2**63, identical on SQLite and PostgreSQL, so
a customer lands in the same group on every pass and every machine.
"""

from __future__ import annotations

import hashlib
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement

from campaigns.rules import Campaign
from campaigns.sql import fixed_sql

# A prime just under 2**31: x*x and a*x stay inside a signed 64-bit integer on every backend.
HASH_PRIME = 2_147_483_647
BUCKETS = 10_000


def hash_coefficients(purpose: str) -> tuple[int, int, int]:
    """(a, b, c) of the quadratic hash for one purpose (``holdout:ID``, ``variant:ID``, ...)."""
    digest = hashlib.blake2b(purpose.encode(), digest_size=24).digest()
    a, b, c = (int.from_bytes(digest[i : i + 8], "big") for i in (0, 8, 16))
    return a % (HASH_PRIME - 1) + 1, b % HASH_PRIME, c % HASH_PRIME


_X = f"({{0}} % {HASH_PRIME})"


@fixed_sql(
    f"((({{1}} * (({_X} * {_X}) % {HASH_PRIME})) % {HASH_PRIME} + ({{2}} * {_X}) % {HASH_PRIME} + {{3}}) "
    f"% {HASH_PRIME}) % {BUCKETS}"
)
class hash_bucket(FunctionElement[int]):  # lower-case: reads like the SQL function it is
    """(x, a, b, c): ``(a·x² + b·x + c) mod p mod 10,000`` with x reduced mod p first.

    One fixed expression rather than a tree of Core operators: it is in every holdout and
    variant split, so in most of a pass's statements (bench P1).
    """

    type = sa.BigInteger()


def bucket(customer_id: Any, purpose: str) -> ColumnElement[int]:
    """0–9999 from ``(a·x² + b·x + c) mod p``, with a, b, c drawn from the purpose's name."""
    big = sa.BigInteger()
    a, b, c = (sa.literal(v, big) for v in hash_coefficients(purpose))
    return hash_bucket(sa.cast(customer_id, big), a, b, c)


def held_out(customer_id: Any, campaign: Campaign) -> ColumnElement[bool]:
    """Whether the customer falls in the campaign's holdout share."""
    return bucket(customer_id, campaign.holdout_purpose) < round(campaign.holdout * BUCKETS / 100)


def variant_columns(campaign: Campaign, customer_id: Any) -> tuple[Any, Any]:
    """(template, variant) per row: a deterministic weighted split for A/B tests."""
    if campaign.variants is None:
        return sa.literal(campaign.template), sa.null()
    split = bucket(customer_id, campaign.variant_purpose)
    total = sum(v.weight for v in campaign.variants)
    bounds, cumulative = [], 0
    for variant in campaign.variants[:-1]:
        cumulative += variant.weight
        bounds.append((split < round(cumulative * BUCKETS / total), variant))
    last = campaign.variants[-1]
    template = sa.case(*((b, sa.literal(v.template)) for b, v in bounds), else_=sa.literal(last.template))
    label = sa.case(*((b, sa.literal(v.label)) for b, v in bounds), else_=sa.literal(last.label))
    return template, label
