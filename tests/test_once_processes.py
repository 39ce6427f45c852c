"""`retention run --once --processes N`: the pass's batches dealt out to forked senders."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from campaigns.models import DeliveryStatus
from tests.test_delivery import add_inactive, wait_for_status
from worker.actors import batch_size
from worker.once import MAX_DEFAULT_PROCESSES, _dealt, default_processes, enqueue_as_one, run_once


class _Lane:
    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def enqueue(self, ids: list[int], *, batch: int | None = None) -> int:
        # Roles.enqueue cuts its ids into batches of ``batch`` (its own size when None).
        size = batch or batch_size(len(ids))
        self.batches += [ids[i:i + size] for i in range(0, len(ids), size)]
        return len(ids)


class _Helper:
    """A forked sender as _dealt sees it: what it is sent, its process enqueues (_helper_main)."""

    def __init__(self) -> None:
        self.roles = _Lane()

    def enqueue(self, ids: list[int]) -> int:
        return enqueue_as_one(self.roles, ids)  # type: ignore[arg-type]


def test_each_lane_sends_the_batches_dealt_to_it_whole() -> None:
    own, helper = _Lane(), _Helper()
    ids = list(range(1, 1001))
    assert _dealt(own, [helper])(ids) == 1000  # type: ignore[arg-type, list-item]
    size = batch_size(len(ids))
    lanes = (own, helper.roles)
    sizes = Counter(len(b) for lane in lanes for b in lane.batches)
    assert set(sizes) <= {size, len(ids) % size}, sizes  # not cut again by the lane
    assert abs(len(own.batches) - len(helper.roles.batches)) <= 1
    assert sorted(i for lane in lanes for b in lane.batches for i in b) == ids


def test_two_processes_send_every_email_once(make_runtime, smtp_sink: Any) -> None:
    rt = make_runtime(smtp_sink.url)
    ids = add_inactive(rt, 40)
    summary = run_once(rt, workers=2, processes=2)
    rows = wait_for_status(rt, ids, {DeliveryStatus.sent})
    assert len(rows) == 40 and summary.pending == 0
    recipients = [tuple(m.rcpt_tos) for m in smtp_sink.messages]
    assert len(recipients) == len(set(recipients)) == 40


@pytest.mark.parametrize("cores", [1, 2, 16])
def test_smtp_sends_from_one_process_per_core_by_default(make_runtime, smtp_sink: Any, monkeypatch,
                                                          cores: int) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    assert default_processes(make_runtime(smtp_sink.url)) == min(cores, MAX_DEFAULT_PROCESSES)


@pytest.mark.parametrize("scheme", ["maildir", "console"])
def test_maildir_and_console_send_from_one_process(make_runtime, tmp_path: Path, monkeypatch,
                                                   scheme: str) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    url = f"maildir://{tmp_path / 'mail'}" if scheme == "maildir" else "console://"
    assert default_processes(make_runtime(url)) == 1
