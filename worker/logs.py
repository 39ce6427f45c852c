"""Logging set-up; only the CLI calls it."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from datetime import UTC, datetime


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                                               datefmt="%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Dramatiq logs every worker thread start at INFO; keep the daemon's log readable.
    logging.getLogger("dramatiq").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))
    # watchfiles says "1 change detected" at INFO for every save; the reload's verdict is ours.
    logging.getLogger("watchfiles").setLevel(max(logging.WARNING, root.level))


class Throttle:
    """At most one log line per ``seconds`` for a recurring problem (Redis down, every 10 s...),
    saying how many were left out; a fresh start once the problem is gone."""

    def __init__(self, seconds: float = 60.0) -> None:
        self.seconds = seconds
        self._last = -float("inf")
        self._skipped = 0
        self._lock = threading.Lock()

    def allow(self) -> tuple[bool, int]:
        """(log it now?, how many were skipped since the last line)."""
        with self._lock:
            now = time.monotonic()
            if now - self._last < self.seconds:
                self._skipped += 1
                return False, 0
            skipped, self._skipped, self._last = self._skipped, 0, now
            return True, skipped

    def reset(self) -> None:
        with self._lock:
            self._last, self._skipped = -float("inf"), 0

    def log(self, logger: logging.Logger, level: int, message: str, *args: object) -> None:
        allowed, skipped = self.allow()
        if allowed:
            suffix = f" ({skipped} more like this in the last {self.seconds:.0f} s)" if skipped else ""
            logger.log(level, "%s%s", message % args if args else message, suffix)
