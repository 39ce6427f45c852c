"""`defaults.max_send_rate` as a token bucket: one call per batch, never one per email.

A bucket holds up to ``limit`` tokens and refills at ``limit / window``; a sending
batch takes as many tokens as it has messages and sends as many as it got.  On
Redis the bucket is one hash shared by every worker on every machine, updated by
one Lua script (a single round trip, atomic); without Redis, the process's own.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Protocol

import redis

# KEYS[1]: the bucket; ARGV: tokens per millisecond, capacity, tokens wanted.  The clock is
# Redis's own, so workers on machines whose clocks disagree share one notion of time.
_TAKE = """
local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or capacity
local at = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - at) * rate)
local granted = math.min(want, math.floor(tokens))
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / rate) + 1000)
return granted
"""


class SendRate(Protocol):
    def take(self, wanted: int) -> int:
        """Take up to ``wanted`` tokens now; how many were taken (0 when the bucket is empty)."""
        ...

    def wait_ms(self, tokens: int) -> int:
        """About how long until ``tokens`` more are there, for a batch that got too few."""
        ...


class _Bucket:
    def __init__(self, limit: int, window_ms: int) -> None:
        self.capacity = limit
        self.per_ms = limit / window_ms

    def wait_ms(self, tokens: int) -> int:
        return max(1, math.ceil(tokens / self.per_ms))


class LocalBucket(_Bucket):
    """The bucket of one process (the in-process broker of `retention run`)."""

    def __init__(self, limit: int, window_ms: int) -> None:
        super().__init__(limit, window_ms)
        self._tokens = float(limit)
        self._at = time.monotonic() * 1000
        self._lock = threading.Lock()

    def take(self, wanted: int) -> int:
        with self._lock:
            now = time.monotonic() * 1000
            self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.per_ms)
            self._at = now
            granted = min(wanted, math.floor(self._tokens))
            self._tokens -= granted
            return granted


class RedisBucket(_Bucket):
    """The bucket every worker shares, in one Redis hash."""

    def __init__(self, client: redis.Redis, key: str, limit: int, window_ms: int) -> None:
        super().__init__(limit, window_ms)
        self.key = key
        self._take = client.register_script(_TAKE)

    def take(self, wanted: int) -> int:
        return int(self._take(keys=[self.key], args=[repr(self.per_ms), self.capacity, wanted]))


def bucket_for(broker_url: str, limit: int, window_ms: int) -> SendRate:
    if not broker_url:
        return LocalBucket(limit, window_ms)
    client = redis.Redis.from_url(broker_url, socket_timeout=5, socket_connect_timeout=5)
    return RedisBucket(client, f"retention:send-rate:{limit}:{window_ms}", limit, window_ms)
