"""`retention run`: scheduler, workers and web in one process; and `--once`."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import dramatiq
import sqlalchemy as sa
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from dramatiq.common import join_all
from redis import exceptions as redis_errors
from sqlmodel import Session, col

from campaigns.errors import TransientDeliveryError
from campaigns.models import Delivery, DeliveryStatus, utcnow
from campaigns.sql import chunks
from worker import outgoing_webhooks as webhooks
from worker import runtime as runtime_module
from worker.actors import BATCH, Actors, declare_configured
from worker.broker import QUEUE, enqueue_many, install_broker, is_in_process
from worker.leader import LeaderLock
from worker.logs import Throttle
from worker.passes import LostLeadership, run_pass, settle_stopped_workers
from worker.reloading import Reloader
from worker.runtime import Runtime
from worker.serving import HttpServer, bind, ops_app
from worker.wording import plural

log = logging.getLogger(__name__)

ONCE_TIMEOUT = timedelta(minutes=10)
# Webhooks announce within seconds, not at the next planning pass.
WEBHOOK_DISPATCH_SECONDS = 2.0

# After the grace period the sends still in flight have their connections cut; this is how
# long their threads get to record the outcome (`unknown` once the content has gone out).
ABORTED_SENDS_WAIT_S = 0.5
# Stopping the consumers once the worker threads are done (or given up on).
CONSUMERS_STOP_MS = 500


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


@dataclass
class Roles:
    broker: dramatiq.Broker
    actors: Actors
    worker: dramatiq.Worker | None
    webhook_worker: dramatiq.Worker | None = None

    def enqueue(self, ids: list[int]) -> int:
        return enqueue_many(self.actors.deliver_batch, ids, batch=BATCH)

    def stop(self, timeout_s: float = 30.0, *, abort_sends: Callable[[], None] | None = None) -> None:
        """Let in-flight sends finish for ``timeout_s``; then ``abort_sends`` (cut their connections).

        Bounded whatever the mail server does: a server that never answers holds the
        stop for ``timeout_s`` plus about a second, not for its own timeouts.
        """
        workers = [w for w in (self.worker, self.webhook_worker) if w is not None]
        threads = [thread for worker in workers for thread in worker.workers]
        for thread in threads:
            thread.stop()  # take no new message; the current one may finish
        join_all(threads, timeout_s * 1000)
        late = [thread for thread in threads if thread.is_alive()]
        if late and abort_sends is not None:
            log.warning("%d sends still in flight after the %gs grace period; cutting their "
                        "connections (deliveries whose content went out become `unknown`)",
                        len(late), timeout_s)
            abort_sends()
            join_all(late, ABORTED_SENDS_WAIT_S * 1000)
        # The worker threads are done or given up on (daemon threads: they end with the
        # process); what is left is stopping the consumers and handing back prefetched messages.
        for worker in workers:
            worker.stop(timeout=CONSUMERS_STOP_MS)
        self.broker.close()


def start_roles(rt: Runtime, *, workers: int, consume: bool = True) -> Roles:
    broker = install_broker(rt.settings.broker_url)
    actors = declare_configured(broker, rt.settings)
    worker = webhook_worker = None
    if consume:
        _check_mail_server(rt)
        worker = dramatiq.Worker(broker, queues={QUEUE}, worker_threads=workers, worker_timeout=100)
        worker.start()
        # Separate threads: Dramatiq's threads serve every queue of their worker alike.
        webhook_worker = dramatiq.Worker(broker, queues={webhooks.WEBHOOK_QUEUE},
                                         worker_threads=webhooks.WEBHOOK_THREADS, worker_timeout=100)
        webhook_worker.start()
    return Roles(broker, actors, worker, webhook_worker)


def _check_mail_server(rt: Runtime) -> None:
    """A sending role stops at once on a login the server refuses; a server that is merely
    unreachable now is retried by each send."""
    check = getattr(rt.transport, "check", None)
    if check is None:
        return
    try:
        check()
    except TransientDeliveryError as exc:
        log.warning("the mail server does not answer yet (%s); sends retry with backoff", exc)


def run_once(rt: Runtime, *, workers: int = 8, timeout: timedelta = ONCE_TIMEOUT) -> OnceSummary:
    """One pass, then deliver what it queued (and what earlier runs left due) before returning."""
    runtime_module.install(rt)
    roles = start_roles(rt, workers=workers)
    try:
        # Nothing survives in an in-process queue: everything queued and due is ours to send.
        stale_after = timedelta(0) if is_in_process(roles.broker) else None
        report = run_pass(rt, roles.enqueue, stale_after=stale_after)
        ids = report.result.queued_ids + report.swept_ids
        _wait_until_settled(rt, ids, timeout)
    finally:
        roles.stop(abort_sends=lambda: rt.transport.close())
        rt.transport.close()
        if "heartbeat" in rt.__dict__:
            rt.heartbeat.stop()
    return OnceSummary(
        rows=_summarize(rt, report.result, ids), pending=still_waiting(rt), where=where_mail_went(rt),
        held=[(p.campaign_id, p.blast_guard) for p in report.result.plans if p.blast_guard],
    )


def _wait_until_settled(rt: Runtime, ids: list[int], timeout: timedelta) -> int:
    """Wait while a delivery is being sent or still awaits its first attempt.

    Retries after a temporary failure are left to the next pass, so a mail
    server that is down cannot hold `--once` for the whole backoff schedule.
    """
    deadline = time.monotonic() + timeout.total_seconds()
    pending = 0
    pause = 0.05
    while ids:
        with Session(rt.engine) as session:
            pending = 0
            for chunk in chunks(ids):
                pending += (
                    session.scalar(
                        sa.select(sa.func.count())
                        .select_from(Delivery)
                        .where(
                            col(Delivery.id).in_(chunk),
                            sa.or_(
                                col(Delivery.status) == DeliveryStatus.sending,
                                sa.and_(
                                    col(Delivery.status) == DeliveryStatus.queued,
                                    col(Delivery.attempts) == 0,
                                    col(Delivery.due_at) <= utcnow(),
                                ),
                            ),
                        )
                    )
                    or 0
                )
        if pending == 0 or time.monotonic() > deadline:
            break
        # Start quick for small passes, then back off: counting competes with the senders.
        time.sleep(pause)
        pause = min(1.0, pause * 2)
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


# ---------------------------------------------------------------- the daemon


def serve(
    rt: Runtime,
    *,
    workers: int,
    web: tuple[str, int] | None,
    plan: bool = True,
    consume: bool = True,
    role: str = "run",
    ops: tuple[str, int] | None = None,
) -> None:
    """Run until SIGTERM/SIGINT; SIGHUP (and saving the files) reloads rules.yaml and templates.

    ``web`` serves the whole site (links in emails included); ``ops`` only /healthz, /readyz and
    /metrics, for the scheduler and worker roles. Ports are bound before anything starts, so a
    port in use is one line and exit 1, never a process that serves nothing.
    """
    sockets = _bind_all(web, ops)
    runtime_module.install(rt)
    roles = start_roles(rt, workers=workers, consume=consume and workers > 0)
    stop = threading.Event()
    scheduler = BackgroundScheduler(timezone="UTC")
    reloader = Reloader(rt)
    leader = _leader_lock(rt) if plan else None
    waiting_for: list[str | None] = [None]
    broker_down = Throttle(60.0)

    def tick() -> None:
        reloader.reload()
        if not rt.state.verified:
            log.warning("not planning: %s is invalid and this process started on the last good rules "
                        "from the database; fix it (`retention check`) and planning starts",
                        rt.settings.rules)
            return
        if leader is not None and not leader.is_leader():
            holder = leader.holder()
            if holder != waiting_for[0]:
                waiting_for[0] = holder
                log.info("another scheduler leads (%s); this one waits and takes over if it stops",
                         holder or "unknown: Redis does not answer")
            return
        waiting_for[0] = None
        try:
            run_pass(rt, roles.enqueue, still_leader=leader.is_leader if leader else None)
            broker_down.reset()
        except LostLeadership as exc:
            log.warning("%s", exc)
        except redis_errors.ConnectionError as exc:
            broker_down.log(log, logging.ERROR, "planning pass failed: the broker is unavailable (%s)", exc)
        except Exception:  # the daemon outlives a bad pass; the next tick tries again
            log.exception("planning pass failed")

    def announce() -> None:
        if leader is not None and not leader.is_leader():
            return
        try:
            webhooks.dispatch(rt, roles.actors.send_webhook)
        except Exception:  # the next tick tries again; the events wait in their outbox
            log.exception("dispatching webhooks failed")

    if plan:
        scheduler.add_job(announce, IntervalTrigger(seconds=WEBHOOK_DISPATCH_SECONDS), id="webhooks",
                          max_instances=1, coalesce=True)

    def recover() -> None:
        if leader is not None and not leader.is_leader():
            return
        try:
            settle_stopped_workers(rt, roles.enqueue)
        except Exception:  # the next run tries again
            log.exception("settling the deliveries of stopped workers failed")

    if plan:
        # Between passes too: a killed worker's deliveries should not wait for the next pass.
        scheduler.add_job(
            recover,
            IntervalTrigger(seconds=rt.settings.worker_dead_after_seconds / 2),
            id="recover",
            max_instances=1,
            coalesce=True,
        )
        scheduler.add_job(
            tick,
            IntervalTrigger(seconds=rt.rules.defaults.check_every.total_seconds()),
            id="plan",
            max_instances=1,
            coalesce=True,
            next_run_time=utcnow(),
        )
        interval = [rt.rules.defaults.check_every]
        planning_waits = [not rt.state.verified]

        def reschedule(rt: Runtime) -> None:
            if rt.rules.defaults.check_every != interval[0]:
                interval[0] = rt.rules.defaults.check_every
                scheduler.reschedule_job("plan", trigger=IntervalTrigger(seconds=interval[0].total_seconds()))
                log.info("planning every %s from now on (check_every changed)", interval[0])
            if planning_waits[0] and rt.state.verified:  # the file is valid again: plan now
                planning_waits[0] = False
                scheduler.modify_job("plan", next_run_time=utcnow())

        reloader.on_reload(reschedule)
        scheduler.start()
    from worker.web import create_app

    servers = [HttpServer(create_app(rt, role), sockets[0], "web").start()] if web else []
    if ops:
        servers.append(HttpServer(ops_app(rt, role), sockets[-1], "ops").start())
    reloader.start()

    def on_signal(signum: int, _frame: Any) -> None:
        if signum == signal.SIGHUP:
            reloader.reload_soon()
            return
        log.info("received %s: finishing in-flight sends, then exiting", signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    log.info(
        "retention daemon running: broker %s, %d worker threads, a pass every %s%s%s",
        "in-process" if is_in_process(roles.broker) else "redis",
        workers,
        rt.rules.defaults.check_every,
        f", web on http://{web[0]}:{web[1]}" if web else "",
        f", /healthz /readyz /metrics on http://{ops[0]}:{ops[1]}" if ops else "",
    )
    stop.wait()
    reloader.stop()
    if plan:
        scheduler.shutdown(wait=True)
    if leader is not None:
        leader.stop()
    for server in servers:
        server.server.should_exit = True
    roles.stop(rt.settings.shutdown_grace_seconds, abort_sends=lambda: rt.transport.close())
    for server in servers:
        server.stop(timeout=5)
    rt.close()
    log.info("stopped")


def serve_web(rt: Runtime, *, host: str, port: int) -> None:
    """The web role alone; SIGHUP reloads; exits 0 on SIGTERM/SIGINT once open requests are answered."""
    [sock] = _bind_all((host, port), None)
    runtime_module.install(rt)
    stop = threading.Event()
    reloader = Reloader(rt)

    def on_signal(signum: int, _frame: Any) -> None:
        if signum == signal.SIGHUP:
            reloader.reload_soon()
        else:
            stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    from worker.web import create_app

    server = HttpServer(create_app(rt, "web"), sock, "web").start()
    reloader.start()
    log.info("web on http://%s:%d", host, port)
    stop.wait()
    reloader.stop()
    server.stop(timeout=rt.settings.shutdown_grace_seconds)
    rt.close()


def _bind_all(web: tuple[str, int] | None, ops: tuple[str, int] | None) -> list[Any]:
    sockets = []
    try:
        if web:
            sockets.append(bind(*web, option="--port"))
        if ops:
            sockets.append(bind(*ops, option="--metrics-port (or RETENTION_METRICS_PORT)"))
    except Exception:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _leader_lock(rt: Runtime) -> LeaderLock | None:
    """Scheduler replicas share Redis; without it there is one process and nothing to elect."""
    if not rt.settings.broker_url:
        return None
    import redis

    client = redis.Redis.from_url(rt.settings.broker_url, socket_timeout=5, socket_connect_timeout=5)
    lock = LeaderLock(client, ttl_s=30.0)
    lock.start()
    return lock
