"""P4: CSV import (customers, then events) against a raw executemany of the same rows.

The raw side reads the same file with the csv module and inserts the cells
as they are (text times, a JSON attributes column), BATCH_ROWS rows and one commit
per batch like the importer — no validation, no time zones, no upsert.
`api` sends the same events through POST /api/v1/events.
"""

from __future__ import annotations

import csv
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from campaigns.ingestion.csv_import import BATCH_ROWS, import_csv
from worker.database import make_engine

BATCH = BATCH_ROWS  # what `retention import` commits at, for both sides
API_BATCH = 1000  # the API's most items per call


def ours(url: str, path: str, kind: str) -> dict[str, Any]:
    engine = make_engine(url)
    with Session(engine) as session:
        started, cpu = time.perf_counter(), time.process_time()
        with open(path, newline="", encoding="utf-8") as source:
            report = import_csv(session, source, kind, batch_size=BATCH,  # type: ignore[arg-type]
                                non_activity_events=frozenset({"email_opened"}))
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    engine.dispose()
    if report.rejected_count:
        raise RuntimeError(f"{report.rejected_count} rows rejected: {report.rejected[:3]}")
    return {"seconds": seconds, "cpu_seconds": cpu, "rows": report.rows, "per_second": report.rows / seconds}


def raw(url: str, path: str, kind: str) -> dict[str, Any]:
    engine = make_engine(url)
    paramstyle = "?" if engine.dialect.name == "sqlite" else "%s"
    stamp = datetime.now(UTC).isoformat(" ")
    with engine.connect() as connection:
        dbapi: Any = connection.connection.dbapi_connection
        cursor = dbapi.cursor()
        started, cpu = time.perf_counter(), time.process_time()
        rows = 0
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            next(reader)
            columns: tuple[str, ...]
            if kind == "customers":
                columns = ("external_id", "email", "first_name", "plan", "status", "timezone",
                           "signed_up_at", "last_active_at", "attributes", "activity_count",
                           "created_at", "updated_at")
                convert: Any = lambda c: (*c[:8], json.dumps({"company": c[8]}), 0, stamp, stamp)  # noqa: E731
            else:
                cursor.execute("SELECT external_id, id FROM customer")
                ids = dict(cursor.fetchall())
                columns = ("client_id", "customer_id", "name", "occurred_at", "properties", "created_at")
                convert = lambda c: (c[0], ids[c[1]], c[2], c[3], c[4], stamp)  # noqa: E731
            table = "customer" if kind == "customers" else "event"
            statement = (f"INSERT INTO {table} ({', '.join(columns)}) "
                         f"VALUES ({', '.join([paramstyle] * len(columns))})")
            batch = []
            for cells in reader:
                batch.append(convert(cells))
                if len(batch) >= BATCH:
                    cursor.executemany(statement, batch)
                    dbapi.commit()
                    rows += len(batch)
                    batch = []
            if batch:
                cursor.executemany(statement, batch)
                dbapi.commit()
                rows += len(batch)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    engine.dispose()
    return {"seconds": seconds, "cpu_seconds": cpu, "rows": rows, "per_second": rows / seconds}


def api(url: str, customers_path: str, events_path: str) -> dict[str, Any]:
    """Events through ``POST /api/v1/events`` (batches of 1000, two clients) on loopback.

    The customers are imported first (not timed); the web app runs under uvicorn in this
    process, as `retention web` would, and the clients in a process of their own, as the
    company's senders would (in this one they would take the GIL from the server).
    """
    import multiprocessing
    import threading
    from concurrent.futures import ProcessPoolExecutor

    import uvicorn

    from bench.services import free_port
    from worker import runtime as runtime_module
    from worker.settings import Settings
    from worker.web import create_app

    root = Path(__file__).resolve().parent.parent
    settings = Settings(database_url=url, api_key="bench", secret_key="bench", rules=root / "rules.yaml",
                        templates=root / "templates")
    rt = runtime_module.build(settings)
    with Session(rt.engine) as session:
        with open(customers_path, newline="", encoding="utf-8") as source:
            import_csv(session, source, "customers")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(rt), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as clients:
        cpu = time.process_time()
        seconds, accepted = clients.submit(send_events, port, events_path, 2).result()
        cpu = time.process_time() - cpu
    server.should_exit = True
    thread.join(timeout=10)
    rt.close()
    return {"seconds": seconds, "cpu_seconds": cpu, "rows": accepted, "per_second": accepted / seconds}


def send_events(port: int, events_path: str, clients: int) -> tuple[float, int]:
    """The events CSV as API batches, posted by ``clients`` threads: (seconds, accepted).

    The bodies are built before the clock starts."""
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    batches: list[bytes] = []
    with open(events_path, newline="", encoding="utf-8") as handle:
        batch: list[dict[str, Any]] = []
        for row in csv.DictReader(handle):
            event: dict[str, Any] = {k: v for k, v in row.items() if v}
            if "properties" in event:  # a JSON object in the body, as clients send it, not the CSV's text
                event["properties"] = json.loads(event["properties"])
            batch.append(event)
            if len(batch) == API_BATCH:
                batches.append(json.dumps({"events": batch}).encode())
                batch = []
        if batch:
            batches.append(json.dumps({"events": batch}).encode())

    def post(body: bytes) -> int:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/v1/events", data=body, method="POST",
            headers={"Authorization": "Bearer bench", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=300) as response:  # loopback
            return int(json.loads(response.read())["accepted"])

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        accepted = sum(pool.map(post, batches))
    return time.perf_counter() - started, accepted
