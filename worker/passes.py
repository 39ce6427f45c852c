"""One planning pass as the runtime runs it: plan, commit, enqueue, sweep."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import Session

from campaigns.delivery import outbox
from campaigns.delivery.outbox import Settled
from campaigns.delivery.sendwindow import rewait
from campaigns.models import utcnow
from campaigns.planning.conversions import credit_conversions
from campaigns.planning.planner import PassResult, Planner
from worker import heartbeat, observability
from worker.bounce_mailbox import read_bounce_mailbox
from worker.runtime import Runtime

log = logging.getLogger(__name__)

# Heartbeats of processes killed this long ago are removed (their claims were settled long before).
HEARTBEAT_PRUNE_AFTER = timedelta(days=1)

Enqueue = Callable[[list[int]], int]


@dataclass
class PassReport:
    result: PassResult
    enqueued: int
    swept_ids: list[int]
    seconds: float


class LostLeadership(RuntimeError):
    """Another scheduler holds the leader lock now: this pass must not take effect."""


def run_pass(
    rt: Runtime,
    enqueue: Enqueue,
    *,
    now: datetime | None = None,
    stale_after: timedelta | None = None,
    still_leader: Callable[[], bool] | None = None,
) -> PassReport:
    """Plan, commit, enqueue, sweep.  ``still_leader`` is asked before each step that takes effect.

    ``stale_after``: when a queued delivery's broker message counts as lost
    (default ``RETENTION_REQUEUE_AFTER_SECONDS``).
    """
    started = time.monotonic()
    now = now or utcnow()
    stale_after = rt.requeue_after if stale_after is None else stale_after

    def check_leadership() -> None:
        if still_leader is not None and not still_leader():
            raise LostLeadership("lost the leader lock during the pass; another scheduler takes over")

    try:
        with Session(rt.engine) as session:
            converted = credit_conversions(session, rt.rules, now=now)
            session.commit()
            if converted:
                log.info("%d deliveries converted (goal events since the last pass)", converted)
            result = Planner(rt.rules, now=now).run(session)
            check_leadership()  # before the commit: a deposed leader's plan is rolled back
            session.commit()
        # Committed first, enqueued second: a crash in between leaves rows the sweeper finds.
        check_leadership()
        enqueued = enqueue(result.queued_ids) if result.queued_ids else 0
        settle_stopped_workers(rt, enqueue, now=now)
        with Session(rt.engine) as session:
            rewait(session, rt.rules, now=now)  # before the sweep, which enqueues what became due
            stale = outbox.stale_queued(session, now=now, stale_after=stale_after)
        if stale:
            enqueue(stale)
        if rt.settings.bounce_mailbox:
            check_leadership()
            read_bounce_mailbox(rt, now=now)
    except Exception as exc:
        observability.record_pass(
            rt, started=now, seconds=time.monotonic() - started, error=f"{type(exc).__name__}: {exc}"[:500]
        )
        raise
    report = PassReport(result, enqueued, stale, time.monotonic() - started)
    observability.record_pass(rt, started=now, seconds=report.seconds, error=None)
    for plan in result.plans:
        if plan.inserted or plan.blast_guard:
            log.info(
                "campaign %s: %d new deliveries, %d queued%s",
                plan.campaign_id,
                plan.inserted,
                len(plan.queued_ids),
                f"; HELD by blast guard: {plan.blast_guard}" if plan.blast_guard else "",
            )
    log.info(
        "pass done in %.2fs: %d enqueued, %d re-enqueued by the sweeper", report.seconds, enqueued, len(stale)
    )
    return report


def settle_stopped_workers(rt: Runtime, enqueue: Enqueue, *, now: datetime | None = None) -> Settled:
    """Settle the `sending` deliveries of worker processes that stopped; enqueue those to resend.

    Run by every pass and, between passes, every half ``RETENTION_WORKER_DEAD_AFTER_SECONDS``
    by the scheduler, so a killed worker's deliveries wait about that long, not a pass.
    """
    now = now or utcnow()
    with Session(rt.engine) as session:
        settled = outbox.abandon_stale_sending(
            session, now=now, after=rt.sending_timeout, dead_after=rt.worker_dead_after
        )
        heartbeat.prune(session, older_than=HEARTBEAT_PRUNE_AFTER)
    if settled.unknown:
        log.error(
            "%d deliveries were left in `sending` by a worker that died; marked `unknown` "
            "(may or may not have been delivered; not resent): ids %s",
            len(settled.unknown),
            settled.unknown[:20],
        )
    if settled.requeued:
        enqueue(settled.requeued)
    return settled
