"""P1's reference: the bench campaigns' selection written by hand, one INSERT … SELECT each.

Same rows as the planner inserts (the bench checks the counts match): matching
customers minus already sent in this episode, in cooldown, suppressed or
unsubscribed, or taken by a higher-priority campaign this pass; recorded as
skipped when over the frequency cap, held out by the same hash.  What it leaves out is everything
the planner does besides: the per-verdict counts (`retention plan`, blast
guard), campaign state rows, SQLAlchemy compilation.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from campaigns.planning.splits import BUCKETS, HASH_PRIME, hash_coefficients
from campaigns.rules import Rules

IN_FLIGHT = "('queued', 'sending', 'sent', 'held')"
COOLING = "('queued', 'sending', 'sent', 'held', 'held_out')"
LAST = "coalesce(c.last_active_at, c.signed_up_at, c.created_at)"


def _dialect(backend: str) -> dict[str, str]:
    if backend == "sqlite":
        return {
            "epoch": f"CAST(strftime('%s', {LAST}) AS INTEGER)",
            "days_inactive": f"(julianday(:now) - julianday({LAST}))",
            "id": "c.id",
            "text": "TEXT",
        }
    return {
        "epoch": f"CAST(EXTRACT(EPOCH FROM {LAST}) AS BIGINT)",
        "days_inactive": f"(EXTRACT(EPOCH FROM (CAST(:now AS timestamptz) - {LAST})) / 86400.0)",
        "id": "CAST(c.id AS BIGINT)",
        "text": "VARCHAR",
    }


def statements(rules: Rules, backend: str) -> list[tuple[str, str]]:
    """(campaign id, SQL) in priority order, for the four campaigns of bench/rules.yaml."""
    d = _dialect(backend)
    condition_episode = f"'active:' || CAST({d['epoch']} AS {d['text']})"
    shapes: dict[str, dict[str, str]] = {
        "exit-survey": {
            "join": "JOIN event e ON e.customer_id = c.id AND e.name = 'cancelled' "
                    "AND e.occurred_at <= :trigger_until AND e.occurred_at > :trigger_since",
            "where": "1 = 1",
            "episode": f"'event:' || CAST(e.id AS {d['text']})",
        },
        "we-miss-you": {
            "join": "",
            "where": f"c.status = 'active' AND {LAST} <= :inactive_30 AND c.plan IN ('pro', 'team')",
            "episode": condition_episode,
        },
        "win-back-offer": {
            "join": "",
            "where": "c.status = 'cancelled' AND c.cancelled_at <= :cancel_30 "
                     "AND c.cancelled_at >= :cancel_45",
            "episode": "'once'",
        },
        "check-in": {
            "join": "",
            "where": f"c.status = 'active' AND c.cadence_days IS NOT NULL AND c.cadence_days > 0 "
                     f"AND {d['days_inactive']} / (c.cadence_days + 0.0) >= 0.67 AND {LAST} >= :inactive_29",
            "episode": condition_episode,
        },
    }
    out = []
    for campaign in rules.by_priority():
        shape = shapes[campaign.id]
        episode = shape["episode"]
        cooldown = ""
        if campaign.cooldown is not None:
            cooldown = (
                "AND NOT EXISTS (SELECT 1 FROM delivery d WHERE d.customer_id = c.id "
                f"AND d.campaign_id = :campaign AND d.status IN {COOLING} "
                f"AND coalesce(d.sent_at, d.created_at) > :cooldown_since_{_key(campaign.id)})"
            )
        # Over the cap is recorded as skipped (over_cap: skip, the default): that episode is closed.
        capped = (f"(SELECT count(*) FROM delivery d WHERE d.customer_id = c.id AND d.status IN {IN_FLIGHT} "
                  "AND coalesce(d.sent_at, d.created_at) > :cap_since) >= :cap_max")
        held_out = ""
        if campaign.holdout > 0:
            a, b, c = hash_coefficients(campaign.holdout_purpose)
            cut = round(campaign.holdout * BUCKETS / 100)
            x, p = f"({d['id']} % {HASH_PRIME})", HASH_PRIME
            bucket = f"(({a} * ({x} * {x} % {p}) % {p} + {b} * {x} % {p} + {c}) % {p}) % {BUCKETS}"
            held_out = f"WHEN {bucket} < {cut} THEN 'held_out'"
        status = f"CASE WHEN {capped} THEN 'skipped' {held_out} ELSE 'queued' END"
        sql = f"""
INSERT INTO delivery (campaign_id, customer_id, episode, status, template, variant, attempts,
                      due_at, created_at, updated_at, enqueued_at)
SELECT CAST(:campaign AS VARCHAR), c.id, {episode}, {status}, '{campaign.template}', NULL, 0,
       :now, :now, :now, :now
FROM customer c {shape['join']}
WHERE {shape['where']}
  AND c.unsubscribed_at IS NULL
  AND NOT EXISTS (SELECT 1 FROM suppression s WHERE s.email = lower(c.email))
  AND NOT EXISTS (SELECT 1 FROM delivery d WHERE d.customer_id = c.id AND d.campaign_id = :campaign
                  AND d.episode = {episode})
  {cooldown}
  AND NOT EXISTS (SELECT 1 FROM delivery d WHERE d.customer_id = c.id AND d.created_at >= :now
                  AND d.status IN {IN_FLIGHT})
ORDER BY c.id
ON CONFLICT (campaign_id, customer_id, episode) DO NOTHING
RETURNING id, status"""
        out.append((campaign.id, sql))
    return out


def _key(campaign_id: str) -> str:
    return campaign_id.replace("-", "_")


def parameters(rules: Rules, backend: str, now: datetime) -> dict[str, Any]:
    cap = rules.defaults.frequency_cap
    if cap is None:
        raise ValueError("the bench rules need defaults.frequency_cap")
    moments: dict[str, datetime] = {
        "now": now,
        "cap_since": now - cap.per,
        "inactive_30": now - timedelta(days=30),
        "inactive_29": now - timedelta(days=29),
        "cancel_30": now - timedelta(days=30),
        "cancel_45": now - timedelta(days=45),
    }
    for campaign in rules.campaigns:
        if campaign.cooldown is not None:
            moments[f"cooldown_since_{_key(campaign.id)}"] = now - campaign.cooldown
        if campaign.trigger is not None:
            moments["trigger_until"] = now - campaign.trigger.after
            moments["trigger_since"] = now - campaign.trigger.after - campaign.trigger.within
    params: dict[str, Any] = {"cap_max": cap.max}
    for name, moment in moments.items():
        # SQLite holds naive UTC text; PostgreSQL compares timestamptz.
        params[name] = moment.replace(tzinfo=None).isoformat(" ", "microseconds") if backend == "sqlite" \
            else moment
    return params


def run(connection: Connection, rules: Rules, now: datetime) -> tuple[dict[str, int], list[int]]:
    """Run the four inserts in the caller's transaction: (rows per campaign, ids to enqueue)."""
    backend = connection.dialect.name
    params = parameters(rules, backend, now)
    inserted = {}
    queued: list[int] = []
    for campaign_id, sql in statements(rules, backend):
        rows = connection.execute(sa.text(sql), {**params, "campaign": campaign_id}).all()
        inserted[campaign_id] = len(rows)
        queued.extend(row.id for row in rows if row.status == "queued")
    return inserted, queued
