"""P1: one planning pass (four campaigns with guardrails) against the hand-written INSERT … SELECT.

Both run in a child process each, inside a transaction that is rolled back, on
the same loaded database, alternately, `repeats(n)` times; the fastest run of each counts.  Each child
times two passes: the first ("cold") pays the process's one-time costs (SQLAlchemy compiling
each statement, the database's first plans), the second ("warm", after a rollback) is what a
running daemon pays at every ``check_every``.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from bench import child, handsql
from campaigns.planning.planner import Planner
from campaigns.rules import load_rules
from worker.database import make_engine

RULES = Path(__file__).resolve().parent / "rules.yaml"


def ours(url: str, now: str) -> dict[str, Any]:
    rules = load_rules(RULES)
    engine = make_engine(url)
    times = []
    for _ in range(2):
        with Session(engine) as session:
            session.connection()  # connected before the clock starts, as the hand side is
            started = time.perf_counter()
            result = Planner(rules, now=datetime.fromisoformat(now)).run(session)
            session.flush()
            times.append(time.perf_counter() - started)
            session.rollback()
    engine.dispose()
    return {"seconds": times[0], "warm_seconds": times[1],
            "inserted": {p.campaign_id: p.inserted for p in result.plans}, "queued": len(result.queued_ids)}


def hand(url: str, now: str) -> dict[str, Any]:
    rules = load_rules(RULES)
    engine = make_engine(url)
    times = []
    for _ in range(2):
        with engine.connect() as connection:
            transaction = connection.begin()
            started = time.perf_counter()
            inserted, queued = handsql.run(connection, rules, datetime.fromisoformat(now))
            times.append(time.perf_counter() - started)
            transaction.rollback()
    engine.dispose()
    return {"seconds": times[0], "warm_seconds": times[1], "inserted": inserted, "queued": len(queued)}


def repeats(customers: int) -> int:
    """Runs per side: a 10k pass lasts tens of milliseconds, where this shared machine's noise
    moves a single run by half; the minimum of several is the figure that holds."""
    return 8 if customers <= 10_000 else 4 if customers <= 100_000 else 2


def measure(url: str, now: datetime, *, repeat: int = 2, profile: Path | None = None) -> dict[str, Any]:
    """Best of ``repeat`` for each side (cold and warm apart), plus whether both inserted the same rows."""
    best: dict[str, dict[str, Any]] = {}
    warm: dict[str, float] = {}
    for _ in range(repeat):
        for side in ("hand", "ours"):
            result = child.run(f"bench.plan:{side}", url=url, now=now.isoformat())
            warm[side] = min(warm.get(side, result["warm_seconds"]), result["warm_seconds"])
            if side not in best or result["seconds"] < best[side]["seconds"]:
                best[side] = result
    for side, seconds in warm.items():
        best[side]["warm_seconds"] = seconds
    if profile is not None:
        child.run("bench.plan:ours", url=url, now=now.isoformat(), profile=profile)
    return {"ours": best["ours"], "hand": best["hand"],
            "same_rows": best["ours"]["inserted"] == best["hand"]["inserted"]}
