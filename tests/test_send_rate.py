"""`max_send_rate` as a token bucket: one call per batch, shared through Redis by every worker."""

from __future__ import annotations

import time

import pytest
import redis

from worker.send_rate import LocalBucket, RedisBucket, bucket_for


@pytest.fixture(params=["local", "redis"])
def make_bucket(request: pytest.FixtureRequest):
    def make(limit: int, window_ms: int, key: str = "b") -> LocalBucket | RedisBucket:
        if request.param == "local":
            return LocalBucket(limit, window_ms)
        url = request.getfixturevalue("redis_url")
        return RedisBucket(redis.Redis.from_url(url), f"test-bucket-{key}-{time.time_ns()}", limit, window_ms)
    return make


def test_a_batch_takes_what_the_bucket_holds_and_no_more(make_bucket):
    bucket = make_bucket(10, 1000)
    assert bucket.take(100) == 10
    assert bucket.take(5) == 0
    assert bucket.wait_ms(5) == 500  # 10 a second: five more in half a second


def test_the_bucket_refills_at_the_rate(make_bucket):
    bucket = make_bucket(20, 1000)
    assert bucket.take(20) == 20
    time.sleep(0.3)
    assert 4 <= bucket.take(20) <= 8  # about 6 tokens in 0.3 s, whatever the machine's pace


def test_workers_share_one_bucket_through_redis(redis_url):
    key = f"test-shared-{time.time_ns()}"
    first, second = (RedisBucket(redis.Redis.from_url(redis_url), key, 10, 3_600_000) for _ in range(2))
    assert first.take(7) == 7
    assert second.take(7) == 3  # the hour's ten, between them
    assert first.take(1) + second.take(1) == 0


def test_an_hourly_rate_costs_one_redis_key(redis_url):
    client = redis.Redis.from_url(redis_url)
    bucket = bucket_for(redis_url, 3601, 3_600_000)
    before = set(client.keys("retention:send-rate:*"))
    bucket.take(100)
    assert len(set(client.keys("retention:send-rate:*")) - before) <= 1
