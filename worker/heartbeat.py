"""A sending process's heartbeat in the database, so a dead worker's deliveries settle fast.

Every process that claims deliveries (``retention worker``, ``retention run``, Dramatiq's
own CLI on ``worker.consumer``) writes its row before its first claim and renews it every
``interval`` seconds from a daemon thread; a clean stop removes it.  The scheduler settles
the ``sending`` deliveries of a process whose row is missing or older than the dead-after
time (``campaigns.delivery.outbox.abandon_stale_sending``).  The database serves both
set-ups: the in-process queue and Redis.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from campaigns.models import WorkerHeartbeat, utcnow

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(self, engine: Engine, *, interval: timedelta) -> None:
        self.engine = engine
        self.interval = interval
        self.worker_id = f"{socket.gethostname()[:60]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def ensure_started(self) -> str:
        """Beat now (before the first claim) and keep beating; the worker id."""
        with self._lock:
            if self._thread is None:
                self.beat()
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
                self._thread.start()
        return self.worker_id

    def stop(self) -> None:
        """Stop beating and remove the row: this process's claims can be settled at once."""
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is None:
                return
            self._stop.set()
            thread.join(timeout=2)
            try:
                with Session(self.engine) as session:
                    session.execute(
                        sa.delete(WorkerHeartbeat).where(col(WorkerHeartbeat.worker_id) == self.worker_id)
                    )
                    session.commit()
            except sa.exc.SQLAlchemyError:
                log.warning("could not remove the heartbeat of %s; it expires by itself", self.worker_id)

    def beat(self) -> None:
        now = utcnow()
        with Session(self.engine) as session:
            renewed = session.execute(
                sa.update(WorkerHeartbeat)
                .where(col(WorkerHeartbeat.worker_id) == self.worker_id)
                .values(beat_at=now)
            ).rowcount  # type: ignore[attr-defined]
            if not renewed:
                session.add(WorkerHeartbeat(worker_id=self.worker_id, started_at=now, beat_at=now))
            session.commit()

    def _run(self) -> None:
        while not self._stop.wait(self.interval.total_seconds()):
            try:
                self.beat()
            except sa.exc.SQLAlchemyError as exc:  # the database away: try again next time
                log.warning("heartbeat of %s not recorded: %s", self.worker_id, exc)


def prune(session: Session, *, older_than: timedelta) -> int:
    """Remove heartbeats of processes gone long ago (killed: they could not remove their own)."""
    removed = session.execute(
        sa.delete(WorkerHeartbeat).where(col(WorkerHeartbeat.beat_at) < utcnow() - older_than)
    ).rowcount  # type: ignore[attr-defined]
    session.commit()
    return int(removed or 0)
