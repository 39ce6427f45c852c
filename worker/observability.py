"""Health and Prometheus metrics.

Counters and histograms live in the process that does the work (sending
threads, the planner); deliveries by status and queue depth are read from
the database and Redis at scrape time, so any web process reports the whole
deployment, not just itself.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlmodel import Session, col

from campaigns.models import AppSetting, Bounce, CampaignState, Delivery, utcnow
from worker.broker import QUEUE
from worker.runtime import Runtime

log = logging.getLogger(__name__)

PASS_DURATION = Histogram(
    "retention_pass_duration_seconds",
    "Duration of one planning pass.",
    buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
)
PASSES = Counter("retention_passes_total", "Planning passes by outcome.", ["outcome"])
SEND_LATENCY = Histogram(
    "retention_send_seconds",
    "Time to send one delivery (claim to recorded).",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)
SEND_OUTCOMES = Counter("retention_send_outcomes_total", "Send attempts by outcome.", ["outcome"])
SMTP_ERRORS = Counter("retention_smtp_errors_total", "SMTP failures by class.", ["error_class"])

LAST_PASS_KEY = "last_pass"


def record_pass(rt: Runtime, *, started: datetime, seconds: float, error: str | None) -> None:
    """Remember the last pass in the database, where every web process can see it."""
    PASS_DURATION.observe(seconds)
    PASSES.labels(outcome="error" if error else "ok").inc()
    remember(rt, LAST_PASS_KEY, {"at": started.isoformat(), "seconds": round(seconds, 3), "error": error})


def remember(rt: Runtime, key: str, outcome: dict[str, Any]) -> None:
    """Store an outcome as JSON in the database, where every web process's /healthz can see it."""
    try:
        with Session(rt.engine) as session:
            row = session.get(AppSetting, key)
            if row is None:
                session.add(AppSetting(key=key, value=json.dumps(outcome)))
            else:
                row.value = json.dumps(outcome)
            session.commit()
    except sa.exc.SQLAlchemyError:
        log.warning("could not record the %s outcome", key, exc_info=True)


# What each role needs to do its work (readiness); the web answers links without the broker.
ROLE_NEEDS = {"web": ("database",), "worker": ("database", "broker"),
              "scheduler": ("database", "broker"), "run": ("database", "broker")}


def readiness(rt: Runtime, role: str) -> tuple[bool, dict[str, Any]]:
    """Whether this process can do its role's work now, with what it checked."""
    _, checks = health(rt)
    needs = ROLE_NEEDS.get(role, ("database", "broker"))
    missing = [name for name in needs if not _ok(checks.get(name))]
    body: dict[str, Any] = {"role": role, "ready": not missing, "database": checks["database"],
                            "broker": checks["broker"]}
    if missing:
        body["not_ready_because"] = [f"{name}: {checks[name]}" for name in missing]
    elif not _ok(checks["broker"]):
        body["note"] = "the broker is down: links in emails still work; nothing is queued meanwhile"
    return not missing, body


def _ok(value: Any) -> bool:
    return value in ("ok", "in-process")


def health(rt: Runtime) -> tuple[bool, dict[str, Any]]:
    checks: dict[str, Any] = {}
    healthy = True
    last_pass: dict[str, Any] | None = None
    try:
        with Session(rt.engine) as session:
            session.execute(sa.text("SELECT 1"))
            stored = session.get(AppSetting, LAST_PASS_KEY)
            last_pass = json.loads(stored.value) if stored else None
        checks["database"] = "ok"
    except Exception as exc:  # reported in the response
        checks["database"] = f"error: {type(exc).__name__}"
        healthy = False
    if rt.settings.broker_url:
        try:
            _redis(rt).ping()
            checks["broker"] = "ok"
        except Exception as exc:  # reported in the response
            checks["broker"] = f"error: {type(exc).__name__}"
            healthy = False
    else:
        checks["broker"] = "in-process"
    checks["rules"] = {
        "loaded_at": rt.state.loaded_at.isoformat(),
        "campaigns": len(rt.rules.campaigns),
        "error": rt.state.error,
        "file": str(rt.settings.rules),
        "source": "file" if rt.state.verified else "database (the last good rules; the file is invalid)",
    }
    if rt.state.error:
        healthy = False
    if last_pass is not None:
        age = utcnow() - datetime.fromisoformat(last_pass["at"])
        late = age > 3 * rt.rules.defaults.check_every + timedelta(minutes=1)
        checks["last_pass"] = {**last_pass, "late": late}
        if last_pass.get("error") or late:
            healthy = False
    else:
        checks["last_pass"] = None
    checks.update(deliverability_health(rt))
    return healthy, checks


def deliverability_health(rt: Runtime) -> dict[str, Any]:
    """Campaigns paused until `retention approve` and why; the bounce mailbox's last read.

    Neither makes the process unhealthy: it is alive and doing its job (holding them back).
    """
    from worker.bounce_mailbox import STATE_KEY, mask

    checks: dict[str, Any] = {}
    try:
        with Session(rt.engine) as session:
            checks["paused_campaigns"] = {
                campaign: reason for campaign, reason in session.execute(
                    sa.select(col(CampaignState.campaign_id), col(CampaignState.paused_reason))
                    .where(col(CampaignState.paused_at).is_not(None)))
            }
            if rt.settings.bounce_mailbox:
                stored = session.get(AppSetting, STATE_KEY)
                checks["bounce_mailbox"] = {"url": mask(rt.settings.bounce_mailbox),
                                            "last_read": json.loads(stored.value) if stored else None}
    except sa.exc.SQLAlchemyError:
        pass  # the database check above already says so
    return checks


def _redis(rt: Runtime) -> Any:
    import redis

    return redis.Redis.from_url(rt.settings.broker_url, socket_timeout=2, socket_connect_timeout=2)


class _StoreCollector(Collector):
    """Deliveries by campaign and status, and the broker's queue depth, read at scrape time."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def collect(self) -> Iterator[GaugeMetricFamily]:
        deliveries = GaugeMetricFamily(
            "retention_deliveries", "Deliveries by campaign and status.", labels=["campaign", "status"]
        )
        bounces = GaugeMetricFamily(
            "retention_bounces", "Bounces and complaints reported after the send, by campaign and kind.",
            labels=["campaign", "kind"],
        )
        try:
            with Session(self.rt.engine) as session:
                for campaign, status, count in session.execute(
                    sa.select(col(Delivery.campaign_id), col(Delivery.status), sa.func.count()).group_by(
                        col(Delivery.campaign_id), col(Delivery.status)
                    )
                ):
                    deliveries.add_metric([campaign, status], count)
                for campaign, kind, count in session.execute(
                    sa.select(col(Bounce.campaign_id), col(Bounce.kind), sa.func.count())
                    .group_by(col(Bounce.campaign_id), col(Bounce.kind))
                ):
                    bounces.add_metric([campaign or "", kind], count)
        except sa.exc.SQLAlchemyError:
            log.warning("metrics: database unavailable")
        yield deliveries
        yield bounces
        if self.rt.settings.broker_url:
            depth = GaugeMetricFamily("retention_queue_depth", "Messages waiting in the broker queue.")
            try:
                client = _redis(self.rt)
                # Dramatiq's Redis broker keeps message bodies in a hash per queue.
                depth.add_metric([], client.hlen(f"dramatiq:{QUEUE}.msgs"))
                yield depth
            except Exception:  # a scrape must not fail for this
                log.warning("metrics: broker unavailable")


def metrics_registry(rt: Runtime) -> CollectorRegistry:
    from prometheus_client import REGISTRY

    registry = CollectorRegistry()
    registry.register(_StoreCollector(rt))

    class _Process(Collector):
        def collect(self) -> Iterator[Any]:
            yield from REGISTRY.collect()

    registry.register(_Process())
    return registry


def render_metrics(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
