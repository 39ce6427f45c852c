"""Holdout and A/B variant splits: independent of each other, balanced, stable everywhere.

The planner assigns both splits in SQL; these tests run a real pass over 100,000
customers on each backend and check the outcome against the binomial model and a
chi-square test of independence, and against the same hash computed in Python.
"""

from __future__ import annotations

import math
from collections import Counter
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlmodel import Session

from campaigns.models import Customer, Delivery, DeliveryStatus
from campaigns.planning import Planner
from campaigns.planning.splits import BUCKETS, HASH_PRIME, hash_coefficients
from tests.factories import NOW, migrated_engine, rules

CUSTOMERS = 100_000
SPLIT = """
    defaults:
      blast_guard: {first_pass: 1000000}
    campaigns:
      - id: spring-offer
        when: {days_inactive: {at_least: 30}}
        holdout: 25%
        variants:
          - {template: we_miss_you, name: A, weight: 1}
          - {template: win_back_offer, name: B, weight: 1}
"""


def python_bucket(customer_id: int, purpose: str) -> int:
    a, b, c = hash_coefficients(purpose)
    x = customer_id % HASH_PRIME
    return (a * x * x + b * x + c) % HASH_PRIME % BUCKETS


def bulk_customers(engine: sa.Engine, count: int) -> None:
    last_active = NOW - timedelta(days=40)
    rows = [
        {
            "external_id": f"c{i}", "email": f"c{i}@example.com", "status": "active",
            "last_active_at": last_active, "activity_count": 1, "attributes": {},
            "created_at": NOW, "updated_at": NOW,
        }
        for i in range(count)
    ]
    with engine.begin() as connection:
        connection.execute(sa.insert(Customer.__table__), rows)  # type: ignore[attr-defined]


def chi_square_2x2(table: dict[tuple[bool, str], int]) -> tuple[float, float]:
    """Pearson's statistic for independence of a 2×2 table, and its p-value (1 degree of freedom)."""
    total = sum(table.values())
    rows = {h: sum(n for (hh, _), n in table.items() if hh == h) for h in (True, False)}
    cols = {v: sum(n for (_, vv), n in table.items() if vv == v) for v in ("A", "B")}
    statistic = sum(
        (table[h, v] - rows[h] * cols[v] / total) ** 2 / (rows[h] * cols[v] / total)
        for h in (True, False)
        for v in ("A", "B")
    )
    return statistic, math.erfc(math.sqrt(statistic / 2))


def within_binomial(k: int, n: int, p: float, sigmas: float = 4.5) -> bool:
    return abs(k - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


@pytest.mark.timeout(300)
def test_holdout_and_variant_are_independent_and_balanced_at_100k(database_url):
    engine = migrated_engine(database_url)
    try:
        bulk_customers(engine, CUSTOMERS)
        with Session(engine) as session:
            Planner(rules(SPLIT), now=NOW).run(session)
            session.commit()
        with engine.connect() as connection:
            rows = connection.execute(
                sa.select(Delivery.customer_id, Delivery.status, Delivery.variant)  # type: ignore[call-overload]
            ).all()
    finally:
        engine.dispose()
    assert len(rows) == CUSTOMERS
    table = Counter((status == DeliveryStatus.held_out, variant) for _, status, variant in rows)
    held_out = table[True, "A"] + table[True, "B"]
    treated = CUSTOMERS - held_out
    assert within_binomial(held_out, CUSTOMERS, 0.25), f"{held_out} held out of {CUSTOMERS}"
    # The variants split the customers who are actually sent to 50/50, not 67/33.
    assert within_binomial(table[False, "A"], treated, 0.5), f"A {table[False, 'A']} of {treated}"
    statistic, p_value = chi_square_2x2(table)
    assert p_value > 0.001, f"holdout and variant are dependent: chi-square {statistic:.1f}, p={p_value:.2g}"
    # The same customer lands in the same groups on every backend and machine: the SQL
    # hash equals the reference hash in plain Python integers.
    for customer_id, status, variant in rows[:: CUSTOMERS // 2000]:
        assert (status == DeliveryStatus.held_out) == (
            python_bucket(customer_id, "holdout:spring-offer") < 2500
        )
        assert variant == ("A" if python_bucket(customer_id, "variant:spring-offer") < 5000 else "B")
