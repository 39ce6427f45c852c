"""Fixtures of the chaos suite; the fault-injection tools themselves are in support.py.

At the end of a run the suite prints its figures (tests, SMTP messages accepted, deliveries,
duplicate Message-IDs, `unknown` deliveries): docs/reliability.md quotes them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import Session, col

from campaigns.models import Delivery, DeliveryStatus
from tests.chaos.support import ChaosSink, Processes, RedisProcess
from worker import runtime as runtime_module

FIGURES: Counter[str] = Counter()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "chaos: a slow reliability test with real processes (deselect: -m 'not chaos')"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, None]:
    outcome = yield
    FIGURES["tests"] += 1
    FIGURES["passed"] += outcome.excinfo is None
    funcargs = getattr(item, "funcargs", {})
    for name in ("chaos_sink", "smtp_sink"):
        sink = funcargs.get(name)
        if sink is not None:
            ids = [str(m.parsed["Message-ID"]) for m in sink.messages]
            FIGURES["messages"] += len(ids)
            FIGURES["duplicates"] += len(ids) - len(set(ids))
    rt = runtime_module._current  # the runtime this test's make_runtime built last
    if "make_runtime" in getattr(item, "fixturenames", ()) and rt is not None:
        try:
            with Session(rt.engine) as session:
                for status, count in session.execute(
                    sa.select(col(Delivery.status), sa.func.count()).group_by(col(Delivery.status))
                ):
                    FIGURES["deliveries"] += count
                    FIGURES["unknown"] += count if status == DeliveryStatus.unknown else 0
        except sa.exc.SQLAlchemyError:
            pass  # figures only; the test itself decides what counts


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES["tests"]:
        f = FIGURES
        terminalreporter.write_line(
            f"chaos figures: {f['tests']} tests ({f['passed']} passed), {f['messages']} SMTP messages "
            f"accepted, {f['deliveries']} deliveries, {f['duplicates']} duplicate messages, "
            f"{f['unknown']} unknown (ambiguous: counted, never resent)"
        )


@pytest.fixture
def chaos_sink() -> Iterator[ChaosSink]:
    sink = ChaosSink()
    sink.start()
    try:
        yield sink
    finally:
        sink.resume()  # a held session must not keep the server's loop busy
        sink.stop()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    started = Processes(tmp_path)
    try:
        yield started
    finally:
        started.kill_all()


@pytest.fixture
def redis_process(tmp_path: Path) -> Iterator[RedisProcess]:
    """A persistent redis-server of this test's own, which the test may stop and start."""
    server = RedisProcess(tmp_path, persistent=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()
