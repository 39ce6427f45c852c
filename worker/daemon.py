"""`retention run`: scheduler, workers and web in one process (`--once` is worker.once)."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dramatiq
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from dramatiq.common import join_all
from redis import exceptions as redis_errors

from campaigns.errors import TransientDeliveryError
from campaigns.models import utcnow
from worker import outgoing_webhooks as webhooks
from worker import runtime as runtime_module
from worker.actors import Actors, batch_size, declare_configured
from worker.broker import QUEUE, enqueue_many, install_broker, is_in_process, start_worker
from worker.leader import LeaderLock
from worker.logs import Throttle
from worker.passes import LostLeadership, run_pass, settle_stopped_workers
from worker.reloading import Reloader
from worker.runtime import Runtime
from worker.serving import HttpServer, bind, ops_app

log = logging.getLogger(__name__)

# Webhooks announce within seconds, not at the next planning pass.
WEBHOOK_DISPATCH_SECONDS = 2.0

# After the grace period the sends still in flight have their connections cut; this is how
# long their threads get to record the outcome (`unknown` once the content has gone out).
ABORTED_SENDS_WAIT_S = 0.5
# Stopping the consumers once the worker threads are done (or given up on).
CONSUMERS_STOP_MS = 500


@dataclass
class Roles:
    broker: dramatiq.Broker
    actors: Actors
    worker: dramatiq.Worker | None
    webhook_worker: dramatiq.Worker | None = None
    stopping: threading.Event | None = None  # the runtime's: set first by stop()

    def enqueue(self, ids: list[int], *, batch: int | None = None) -> int:
        """Send ``ids`` in deliver_batch messages of ``batch`` ids (default: by the pass's size)."""
        return enqueue_many(self.actors.deliver_batch, ids, batch=batch or batch_size(len(ids)))

    def stop(self, timeout_s: float = 30.0, *, abort_sends: Callable[[], None] | None = None) -> None:
        """Let in-flight sends finish for ``timeout_s``; then ``abort_sends`` (cut their connections).

        Bounded whatever the mail server does: a server that never answers holds the
        stop for ``timeout_s`` plus about a second, not for its own timeouts.
        """
        if self.stopping is not None:
            self.stopping.set()
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
    rt.stopping.clear()  # roles stopped before (in the same process) are no reason to hold back
    broker = install_broker(rt.settings.broker_url)
    actors = declare_configured(broker, rt.settings)
    worker = webhook_worker = None
    if consume:
        _check_mail_server(rt)
        worker = start_worker(broker, QUEUE, workers)
        webhook_worker = start_worker(broker, webhooks.WEBHOOK_QUEUE, webhooks.WEBHOOK_THREADS)
    return Roles(broker, actors, worker, webhook_worker, rt.stopping)


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
    stop = threading.Event()
    reloader = Reloader(rt)

    def on_signal(signum: int, _frame: Any) -> None:
        if signum == signal.SIGHUP:
            reloader.reload_soon()
            return
        log.info("received %s: finishing in-flight sends, then exiting", signal.Signals(signum).name)
        stop.set()

    # Before anything that can send starts: a SIGTERM right after the first email (the first
    # pass runs at once) must stop the daemon cleanly, not kill it mid-send.
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    roles = start_roles(rt, workers=workers, consume=consume and workers > 0)
    scheduler = BackgroundScheduler(timezone="UTC")
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
