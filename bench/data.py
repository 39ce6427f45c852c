"""Synthetic customers, events and delivery history, loaded fast (executemany / COPY).

The shapes are chosen so every guardrail of the bench rules has work to do:
recent sends (frequency cap), older sends (cooldown), suppressed and
unsubscribed addresses, recent cancellations (exit-survey triggers) and
cancellations a month ago (win-back).  Everything derives from a seeded RNG
and one ``now``, so two loads of the same size are the same data.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from worker.database import make_engine, upgrade

PLANS = ("free", "free", "free", "free", "free", "pro", "pro", "pro", "team", "team")
ZONES = ("Europe/Berlin", "America/New_York", "Asia/Tokyo", "UTC", None)
FIRST_NAMES = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Margaret", "Ken")
CUSTOMER_COLUMNS = (
    "id", "external_id", "email", "first_name", "last_name", "plan", "status", "timezone", "locale",
    "signed_up_at", "cancelled_at", "last_active_at", "activity_count", "cadence_days", "attributes",
    "unsubscribed_at", "created_at", "updated_at",
)
EVENT_COLUMNS = ("id", "customer_id", "name", "occurred_at", "client_id", "properties", "created_at")
DELIVERY_COLUMNS = (
    "id", "campaign_id", "customer_id", "episode", "status", "template", "attempts", "due_at",
    "enqueued_at", "sent_at", "created_at", "updated_at",
)
SUPPRESSION_COLUMNS = ("id", "email", "reason", "created_at")
BATCH = 20_000


@dataclass
class Loaded:
    customers: int
    events: int
    deliveries: int
    suppressions: int
    seconds: float


class Clock:
    """Formats moments as the backend stores them (SQLite: naive UTC text)."""

    def __init__(self, now: datetime, backend: str) -> None:
        self.now = now
        self.epoch = now.timestamp()
        self.sqlite = backend == "sqlite"

    def ago(self, days: float) -> str:
        moment = datetime.fromtimestamp(self.epoch - days * 86400, UTC)
        if self.sqlite:
            return moment.replace(tzinfo=None).isoformat(" ", "microseconds")
        return moment.isoformat(" ", "microseconds")


def customers(n: int, clock: Clock, seed: int = 1) -> Iterator[tuple[Any, ...]]:
    rng = random.Random(seed)
    now = clock.ago(0)
    for i in range(1, n + 1):
        cancelled = rng.random() < 0.12
        # 55 % came back within a month, the rest drift away over half a year.
        inactive = rng.uniform(0, 30) if rng.random() < 0.55 else rng.uniform(30, 200)
        signed_up = inactive + rng.uniform(30, 1200)
        cadence = round(rng.uniform(1, 30), 2) if rng.random() < 0.7 else None
        yield (
            i, f"c{i}", f"customer{i}@example.com", rng.choice(FIRST_NAMES), "Tester",
            rng.choice(PLANS), "cancelled" if cancelled else "active", rng.choice(ZONES), "en",
            clock.ago(signed_up), clock.ago(rng.uniform(0, 120)) if cancelled else None,
            clock.ago(inactive), rng.randint(1, 300), cadence, "{}",
            now if rng.random() < 0.01 else None, now, now,
        )


def history(n: int, clock: Clock, seed: int = 2) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """(deliveries, suppressions) from earlier passes."""
    rng = random.Random(seed)
    deliveries: list[tuple[Any, ...]] = []
    suppressions: list[tuple[Any, ...]] = []
    for customer_id in range(1, n + 1):
        roll = rng.random()
        if roll < 0.20:  # got a "we miss you" between 5 and 90 days ago: cooldown for some
            sent = clock.ago(rng.uniform(5, 90))
            deliveries.append(("we-miss-you", customer_id, f"active:{customer_id}", "sent", "we_miss_you",
                               1, sent, sent, sent, sent, sent))
        elif roll < 0.23:  # two newsletters this week: over the frequency cap
            for name in ("newsletter-a", "newsletter-b"):
                sent = clock.ago(rng.uniform(0.5, 6))
                deliveries.append((name, customer_id, "once", "sent", "we_miss_you", 1, sent, sent, sent,
                                   sent, sent))
        if rng.random() < 0.01:
            suppressions.append((f"customer{customer_id}@example.com", "bounce: 550 5.1.1",
                                 clock.ago(rng.uniform(1, 300))))
    return (
        [(i, *row) for i, row in enumerate(deliveries, start=1)],
        [(i, *row) for i, row in enumerate(suppressions, start=1)],
    )


def events(n: int, clock: Clock, per_customer: int, seed: int = 3) -> Iterator[tuple[Any, ...]]:
    """A ``cancelled`` event for recent cancellations, and ``per_customer`` activity events each."""
    rng = random.Random(seed)
    now = clock.ago(0)
    recent = clock.ago(10)
    event_id = 0
    for customer in customers(n, clock):  # the same seeded stream as the loaded customers
        cancelled_at = customer[10]
        if cancelled_at is not None and cancelled_at >= recent:
            event_id += 1
            yield (event_id, customer[0], "cancelled", cancelled_at, None, "{}", now)
        for _ in range(per_customer):
            event_id += 1
            name = "login" if rng.random() < 0.8 else "report_viewed"
            yield (event_id, customer[0], name, clock.ago(rng.uniform(0, 400)), None, "{}", now)


def _batches(rows: Iterable[tuple[Any, ...]], size: int = BATCH) -> Iterator[list[tuple[Any, ...]]]:
    batch: list[tuple[Any, ...]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _load_sqlite(raw: Any, table: str, columns: Sequence[str], rows: Iterable[tuple[Any, ...]]) -> int:
    statement = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    count = 0
    cursor = raw.cursor()
    for batch in _batches(rows):
        cursor.executemany(statement, batch)
        count += len(batch)
    return count


def _load_postgres(raw: Any, table: str, columns: Sequence[str], rows: Iterable[tuple[Any, ...]]) -> int:
    count = 0
    with raw.cursor() as cursor, cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
            count += 1
    return count


def create(url: str) -> None:
    """The real schema, through the real migrations."""
    engine = make_engine(url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()


def load(url: str, n: int, now: datetime, *, events_per_customer: int = 0,
         with_history: bool = True) -> Loaded:
    """Create the schema and fill it; returns what was loaded and how long it took."""
    import time

    started = time.monotonic()
    create(url)
    backend = sa.engine.make_url(url).get_backend_name()
    clock = Clock(now, backend)
    deliveries, suppressions = history(n, clock) if with_history else ([], [])
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            raw: Any = connection.connection.dbapi_connection
            if backend == "sqlite":
                raw.execute("PRAGMA synchronous=OFF")
                loader = _load_sqlite
            else:
                loader = _load_postgres
            counts = [
                loader(raw, "customer", CUSTOMER_COLUMNS, customers(n, clock)),
                loader(raw, "event", EVENT_COLUMNS, events(n, clock, events_per_customer)),
                loader(raw, "delivery", DELIVERY_COLUMNS, deliveries),
                loader(raw, "suppression", SUPPRESSION_COLUMNS, suppressions),
            ]
            raw.commit()
            if backend == "postgresql":
                _after_copy(raw)
    finally:
        engine.dispose()
    return Loaded(customers=counts[0], events=counts[1], deliveries=counts[2], suppressions=counts[3],
                  seconds=time.monotonic() - started)


def _after_copy(raw: Any) -> None:
    # COPY with explicit ids leaves the sequences at 1; autovacuum would analyze later.
    for table in ("customer", "event", "delivery", "suppression"):
        raw.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                    f"COALESCE((SELECT max(id) FROM {table}), 0) + 1, false)")
    raw.commit()
    raw.autocommit = True
    raw.execute("VACUUM ANALYZE")
    raw.autocommit = False


# ------------------------------------------------------------------ CSV files for P4


def write_customers_csv(path: Path, n: int, now: datetime, *, offset: int = 0) -> None:
    rng = random.Random(4)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "email", "first_name", "plan", "status", "timezone", "signed_up_at",
                         "last_active_at", "company"])
        for i in range(offset + 1, offset + n + 1):
            inactive = rng.uniform(0, 200)
            writer.writerow([
                f"csv{i}", f"csv{i}@example.com", rng.choice(FIRST_NAMES), rng.choice(PLANS),
                "active", rng.choice(ZONES[:4]),
                (now - timedelta(days=inactive + rng.uniform(30, 900))).isoformat(timespec="seconds"),
                (now - timedelta(days=inactive)).isoformat(timespec="seconds"),
                f"Company {i % 997}",
            ])


def write_events_csv(path: Path, n: int, customers_n: int, now: datetime) -> None:
    rng = random.Random(5)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "customer_id", "event", "occurred_at", "properties"])
        for i in range(1, n + 1):
            writer.writerow([
                f"e{i}", f"csv{rng.randint(1, customers_n)}",
                "login" if rng.random() < 0.9 else "email_opened",
                (now - timedelta(days=rng.uniform(0, 60))).isoformat(timespec="seconds"),
                json.dumps({"source": "web"}),
            ])
