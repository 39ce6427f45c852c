"""`retention run --once`: one planning pass, deliver all that is due, exit -- on several processes.

With ``processes`` > 1 the pass runs in this process and its batches are dealt out to
forked sending processes, each with its own in-process broker, threads, SMTP
connections and heartbeat; the database says when all is settled.
"""

from __future__ import annotations

import functools
import json
import logging
import multiprocessing
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col

from campaigns.models import Delivery, DeliveryStatus, UTCDateTime, utcnow
from campaigns.sql import chunks, json_rows, unindexed_text
from worker import runtime as runtime_module
from worker.actors import batch_size
from worker.broker import is_in_process
from worker.daemon import Roles, start_roles
from worker.mail import SMTPTransport
from worker.passes import Enqueue, run_pass
from worker.runtime import Runtime
from worker.wording import plural

log = logging.getLogger(__name__)

ONCE_TIMEOUT = timedelta(minutes=10)
# `--processes` unset: one sending process per core, up to this many (measured on 2 cores
# only; with SQLite every process shares the one writer).
MAX_DEFAULT_PROCESSES = 4
# How late the end of the sends may be noticed; a count of the open ids costs a few ms.
MAX_POLL_S = 0.1


def default_processes(rt: Runtime) -> int:
    """Sending processes when `--processes` is not given: one per core this process may use,
    for SMTP.  Each process holds the GIL for its own threads: measured with smtp-sink, two
    processes sent 1.3-1.5x as fast as one on two cores, SQLite included (docs/benchmarks.md).
    Maildir and console stay in one process: nothing to win, and a console's order kept."""
    if not isinstance(rt.transport, SMTPTransport):
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, MAX_DEFAULT_PROCESSES))


@dataclass
class CampaignSummary:
    campaign_id: str
    planned: int = 0
    held_out: int = 0
    sent: int = 0
    other: dict[str, int] = field(default_factory=dict)


@dataclass
class OnceSummary:
    rows: list[CampaignSummary]
    pending: int
    where: str
    held: list[tuple[str, str]] = field(default_factory=list)  # (campaign, why) held by the blast guard


def run_once(
    rt: Runtime, *, workers: int = 8, processes: int = 1, timeout: timedelta = ONCE_TIMEOUT
) -> OnceSummary:
    """One pass, then deliver what it queued (and what earlier runs left due) before returning.

    ``workers`` sending threads in each of ``processes`` processes.
    """
    runtime_module.install(rt)
    # Forked first, before this process has threads or connections a child could inherit.
    helpers = [_Helper.fork(rt, workers=workers) for _ in range(max(0, processes - 1))]
    roles = start_roles(rt, workers=workers)
    try:
        # Nothing survives in an in-process queue: everything queued and due is ours to send.
        stale_after = timedelta(0) if is_in_process(roles.broker) else None
        report = run_pass(rt, _dealt(roles, helpers), stale_after=stale_after)
        ids = report.result.queued_ids + report.swept_ids
        _wait_until_settled(rt, ids, timeout)
    finally:
        for helper in helpers:
            helper.stop()
        roles.stop(abort_sends=lambda: rt.transport.close())
        rt.transport.close()
        if "heartbeat" in rt.__dict__:
            rt.heartbeat.stop()
        for helper in helpers:
            helper.join(rt.settings.shutdown_grace_seconds + 5)
    return OnceSummary(
        rows=_summarize(rt, report.result, ids), pending=still_waiting(rt), where=where_mail_went(rt),
        held=[(p.campaign_id, p.blast_guard) for p in report.result.plans if p.blast_guard],
    )


def _dealt(own: Roles, helpers: Sequence[_Helper]) -> Enqueue:
    """An enqueue that deals batches of ids out to this process and the helpers in turn.

    The batches are cut here, for the whole pass, and each lane sends its own as they
    come: a lane cutting them again would send the pass in sixteenths of a batch.
    """
    if not helpers:
        return own.enqueue
    lanes: list[Callable[[list[int]], object]] = [
        lambda ids: enqueue_as_one(own, ids), *(helper.enqueue for helper in helpers)]
    turn = [0]

    def enqueue(ids: list[int]) -> int:
        for batch in chunks(ids, batch_size(len(ids))):
            lanes[turn[0] % len(lanes)](list(batch))
            turn[0] += 1
        return len(ids)

    return enqueue


def enqueue_as_one(roles: Roles, ids: list[int]) -> int:
    """One dealt batch, as one deliver_batch message."""
    return roles.enqueue(ids, batch=len(ids))


class _Helper:
    """A forked sending process of `run --once`: enqueues on its own broker what it is sent."""

    def __init__(self, process: Any, conn: Connection) -> None:
        self.process = process
        self.conn = conn

    @classmethod
    def fork(cls, rt: Runtime, *, workers: int) -> _Helper:
        context = multiprocessing.get_context("fork")
        ours, theirs = context.Pipe()
        process = context.Process(target=_helper_main, args=(rt, workers, theirs, ours),
                                  name="retention-send", daemon=True)
        process.start()
        theirs.close()
        return cls(process, ours)

    def enqueue(self, ids: list[int]) -> int:
        self.conn.send(ids)
        return len(ids)

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except OSError:  # already gone: its deliveries are settled like a dead worker's
            pass

    def join(self, timeout: float) -> None:
        self.process.join(timeout)
        if self.process.is_alive():
            log.warning("a sending process did not stop within %gs; killed", timeout)
            self.process.kill()
            self.process.join()
        self.conn.close()


def _helper_main(rt: Runtime, workers: int, conn: Connection, parents: Connection) -> None:
    parents.close()
    # Connections and cached objects of the parent are the parent's: start from none.
    rt.engine.dispose(close=False)
    for name in ("transport", "heartbeat"):
        rt.__dict__.pop(name, None)
    runtime_module.install(rt)
    roles: Roles | None = None
    try:
        roles = start_roles(rt, workers=workers)
        while True:
            try:
                ids = conn.recv()
            except EOFError:  # the parent is gone
                break
            if ids is None:
                break
            enqueue_as_one(roles, ids)
    finally:
        if roles is not None:
            roles.stop(rt.settings.shutdown_grace_seconds, abort_sends=lambda: rt.transport.close())
        rt.close()


def _wait_until_settled(rt: Runtime, ids: list[int], timeout: timedelta) -> int:
    """Wait while a delivery is being sent or still awaits its first attempt.

    Retries after a temporary failure are left to the next pass, so a mail
    server that is down cannot hold `--once` for the whole backoff schedule.
    """
    deadline = time.monotonic() + timeout.total_seconds()
    parts = list(chunks(ids))
    settled = 0  # parts[:settled] were found settled: sends go roughly in id order
    pause = 0.05
    while settled < len(parts) and time.monotonic() <= deadline:
        with Session(rt.engine) as session:
            # Counting stops at the first part still busy: a poll costs a query or two, not one
            # per 900 ids (a 1M-customer pass would count 400 times a poll against the senders).
            while settled < len(parts) and not _busy(session, parts[settled]):
                settled += 1
        if settled == len(parts):
            break
        # Start quick for small passes, then back off.
        time.sleep(pause)
        pause = min(MAX_POLL_S, pause * 2)
    with Session(rt.engine) as session:
        return sum(
            session.scalar(
                sa.select(sa.func.count())
                .select_from(Delivery)
                .where(
                    col(Delivery.id).in_(chunk),
                    col(Delivery.status).in_((DeliveryStatus.queued, DeliveryStatus.sending)),
                )
            )
            or 0
            for chunk in chunks(ids)
        )


def _busy(session: Session, ids: Sequence[int]) -> bool:
    """Whether one of ``ids`` is being sent or still awaits its first attempt."""
    rows = json.dumps([[delivery_id] for delivery_id in ids])
    return session.scalar(_busy_query(session.get_bind().dialect.name),
                          {"rows": rows, "now": utcnow()}) is not None


@functools.cache
def _busy_query(dialect: str) -> sa.Select[int]:
    # Polled ten times a second while the senders work: built once, and its 900 ids are one
    # JSON parameter (an IN list of them is rendered again at every execution).
    batch = json_rows(dialect, [("id", sa.Integer())])
    status = unindexed_text(col(Delivery.status))  # each id by its key, not every queued row
    return (
        sa.select(sa.literal(1))
        .select_from(Delivery)
        .where(
            col(Delivery.id).in_(sa.select(batch.c.id)),
            sa.or_(
                status == DeliveryStatus.sending.value,
                sa.and_(
                    status == DeliveryStatus.queued.value,
                    col(Delivery.attempts) == 0,
                    col(Delivery.due_at) <= sa.bindparam("now", type_=UTCDateTime()),
                ),
            ),
        )
        .limit(1)
    )


def _summarize(rt: Runtime, result: Any, ids: list[int]) -> list[CampaignSummary]:
    rows = {p.campaign_id: CampaignSummary(p.campaign_id, planned=p.inserted) for p in result.plans}
    statuses: dict[str, Counter[str]] = defaultdict(Counter)
    with Session(rt.engine) as session:
        for chunk in chunks(ids):
            for campaign_id, status, count in session.execute(
                sa.select(col(Delivery.campaign_id), col(Delivery.status), sa.func.count())
                .where(col(Delivery.id).in_(chunk))
                .group_by(col(Delivery.campaign_id), col(Delivery.status))
            ):
                statuses[campaign_id][status] += count
    for campaign_id, counter in statuses.items():
        row = rows.setdefault(campaign_id, CampaignSummary(campaign_id))
        row.sent = counter.pop(DeliveryStatus.sent, 0)
        row.other = dict(counter)
    for plan in result.plans:
        row = rows[plan.campaign_id]
        row.held_out = plan.recorded.get(DeliveryStatus.held_out, 0)
        # Recorded by the planner, never queued: name them, or the columns do not add up.
        for status, label in ((DeliveryStatus.skipped, "skipped (over the cap)"),
                              (DeliveryStatus.held, "held by the blast guard")):
            if plan.recorded.get(status):
                row.other[label] = plan.recorded[status]
    return list(rows.values())


def still_waiting(rt: Runtime) -> int:
    """Deliveries of any pass not sent yet: waiting for the send window, a retry, or a worker."""
    with Session(rt.engine) as session:
        return int(session.scalar(
            sa.select(sa.func.count()).select_from(Delivery)
            .where(col(Delivery.status).in_((DeliveryStatus.queued, DeliveryStatus.sending)))
        ) or 0)


def where_mail_went(rt: Runtime) -> str:
    url = rt.settings.mail_url
    if url.startswith("maildir://"):
        path = Path(url.removeprefix("maildir://"))
        count = len(list((path / "new").glob("*"))) if (path / "new").is_dir() else 0
        return (
            f"emails are in {path}/ (a Maildir, {plural(count, 'message')} in {path}/new): open it with any "
            f"mail client, e.g. `mutt -f {path}`"
        )
    if url.startswith("console://"):
        return "emails were printed above (console://)"
    from worker.mail import mask_url

    return f"emails went to {mask_url(url)}"


