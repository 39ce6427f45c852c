"""`retention run --once --processes N`: the pass's batches dealt out to forked senders."""

from __future__ import annotations

from collections import Counter
from typing import Any

from campaigns.models import DeliveryStatus
from tests.test_delivery import add_inactive, wait_for_status
from worker.actors import batch_size
from worker.once import _dealt, enqueue_as_one, run_once


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
