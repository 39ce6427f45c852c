"""SQL written as fixed text around compiled arguments (campaigns.sql.fixed_sql, constant).

The planner's guards and hash are written this way to keep a cold pass cheap; these tests
pin what that must not break: a ``%`` in the text on a pyformat driver (psycopg), one
cached compiled form serving statements whose bound values differ, constants that stay
constants.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from campaigns.planning.splits import BUCKETS, HASH_PRIME, bucket, hash_coefficients
from campaigns.sql import constant
from worker.database import make_engine


def python_bucket(customer_id: int, purpose: str) -> int:
    a, b, c = hash_coefficients(purpose)
    x = customer_id % HASH_PRIME
    return (a * x * x + b * x + c) % HASH_PRIME % BUCKETS


def test_hash_bucket_matches_python_for_every_purpose_on_each_backend(database_url: str) -> None:
    # The same statement shape for every purpose: the second and later executions reuse the
    # first one's compiled SQL, and must still get their own coefficients.
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            for purpose in ("holdout:a", "holdout:b", "variant:a"):
                for customer_id in (1, 2, 4_096, HASH_PRIME + 5, 2**40 + 3):
                    got = connection.execute(sa.select(bucket(sa.literal(customer_id), purpose))).scalar_one()
                    assert got == python_bucket(customer_id, purpose), (purpose, customer_id)
    finally:
        engine.dispose()


def test_constant_is_written_into_the_sql_not_bound() -> None:
    compiled = sa.select(constant("held_out"), constant(0)).compile()
    assert "'held_out'" in str(compiled) and " 0" in str(compiled)
    assert compiled.params == {}


def test_constant_refuses_anything_but_a_plain_word() -> None:
    with pytest.raises(ValueError, match=r"constant \"it's\" is not a plain word: bind it instead"):
        constant("it's")
