"""One planning leader among scheduler replicas: a Redis lock with a token and renewal.

The holder renews well before the lock expires; a replica that cannot renew
(network split, long GC pause) stops believing it leads before another can
take over, and a pass checks again right before it commits and enqueues.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from typing import Any

from worker.logs import Throttle

log = logging.getLogger(__name__)

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""


class LeaderLock:
    def __init__(self, client: Any, *, key: str = "retention:scheduler-leader", ttl_s: float = 30.0) -> None:
        self.client = client
        self.key = key
        self.ttl_ms = int(ttl_s * 1000)
        # Who holds it, readable by the replicas that wait: "host:pid:random".
        self.token = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(8)}"
        self._unavailable = Throttle(60.0)
        self._confirmed_at = 0.0  # monotonic time of the last successful acquire/renew
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def try_acquire(self) -> bool:
        """Take the lock if free, or renew it if ours; False if another replica leads."""
        started = time.monotonic()
        try:
            if self.client.set(self.key, self.token, nx=True, px=self.ttl_ms) or self._renew(
                keys=[self.key], args=[self.token, self.ttl_ms]
            ):
                if self._confirmed_at == 0.0 or not self._fresh(started - 1e-9):
                    log.info("this scheduler is now the planning leader")
                self._confirmed_at = started
                self._unavailable.reset()
                return True
            self._unavailable.reset()
        except Exception as exc:  # Redis away: we cannot know, so we do not lead
            self._unavailable.log(log, logging.WARNING, "leader lock: Redis unavailable (%s)", exc)
        if self._confirmed_at:
            log.warning("this scheduler lost the planning leadership")
        self._confirmed_at = 0.0
        return False

    def _fresh(self, now: float) -> bool:
        # Stop believing a little before the lock could expire under us.
        return now - self._confirmed_at < (self.ttl_ms / 1000) * 0.8

    def holder(self) -> str | None:
        """Who leads now ("host:pid"), or None when no one does or Redis cannot say."""
        try:
            value = self.client.get(self.key)
        except Exception:  # Redis away: unknown
            return None
        if value is None:
            return None
        text = value.decode() if isinstance(value, bytes) else str(value)
        return text.rsplit(":", 1)[0]

    def is_leader(self) -> bool:
        """Confirm with Redis right now (used right before a pass takes effect)."""
        return self.try_acquire()

    def start(self) -> None:
        """Keep trying to acquire, and renewing, in the background."""

        def loop() -> None:
            while not self._stop.wait(self.ttl_ms / 1000 / 3):
                self.try_acquire()

        self.try_acquire()
        self._thread = threading.Thread(target=loop, name="leader-lock", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self._release(keys=[self.key], args=[self.token])
        except Exception:  # it expires on its own
            log.debug("leader lock release failed; it expires by itself", exc_info=True)
        self._confirmed_at = 0.0
