"""A synthetic but plausible customer base, for `retention demo` and benchmarks.

Every customer has a personal cadence (every 1-30 days) and follows it with
some noise; some drift away (passive churn), about 8 % cancel (active churn),
several of them in the last two days so the exit survey has someone to ask.
Everything goes through ``upsert_customers`` / ``record_events``, the path real
data takes.  The output depends only on ``seed`` and ``now``; external ids and
event client ids are stable, so running it twice stores everything once.
Addresses use only example.com/.org/.net (RFC 2606): nothing can reach a real person.
"""

from __future__ import annotations

import logging
import random
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session

from campaigns.ingestion import CANCEL_EVENT, CustomerIn, EventIn, record_events, upsert_customers
from campaigns.models import AppSetting
from campaigns.sql import chunks

log = logging.getLogger(__name__)

FIRST_NAMES = (
    "Anna", "Ben", "Chloé", "David", "Emma", "Felix", "Grace", "Hiro", "Inès", "José",
    "Julia", "Karim", "Lena", "Łukasz", "Maya", "Noah", "Olga", "Pedro", "Priya", "Sofia",
    "Tom", "Zoë", "Mei", "Omar", "Björn", "Amélie",
)
LAST_NAMES = (
    "Schmidt", "Müller", "García", "Nowak", "Smith", "Johnson", "Rossi", "Dubois", "Tanaka",
    "Kowalski", "Silva", "Brown", "Nguyen", "Jensen", "Wójcik", "O'Brien", "Patel", "Larsen",
)
DOMAINS = ("example.com", "example.org", "example.net")
PLANS = (("free", 55), ("pro", 30), ("team", 15))
ZONES = (  # (IANA zone, locale, weight); None: the customer never told us
    ("Europe/Berlin", "de-DE", 25), ("Europe/London", "en-GB", 15),
    ("America/New_York", "en-US", 20), ("America/Los_Angeles", "en-US", 10),
    ("Europe/Warsaw", "pl-PL", 8), ("Europe/Madrid", "es-ES", 8),
    ("Asia/Tokyo", "ja-JP", 5), ("Australia/Sydney", "en-AU", 5), (None, None, 4),
)
SOURCES = ("ads", "referral", "organic", "partner")
# Personal cadences in days, weighted toward the weekly-to-monthly habits of B2B tools.
CADENCES = ((1, 4), (2, 5), (3, 5), (5, 10), (7, 16), (10, 12), (14, 16), (21, 14), (30, 18))
ACTIVITY_EVENTS = (  # besides the login that opens every active day: (name, probability)
    ("report_viewed", 0.45), ("export", 0.15), ("dashboard_viewed", 0.2), ("invite_sent", 0.05),
)
SIGNUP_SPAN_DAYS = 540  # ~18 months
HISTORY_DAYS = 80  # events kept before each customer's last activity
CANCEL_SHARE = 0.08
DRIFT_SHARE = 0.22
RECENT_CANCELS = 12  # cancellations 2-48 hours ago, for the exit survey
BATCH = 2000


@dataclass
class DemoSummary:
    customers: int = 0
    events: int = 0  # generated
    events_inserted: int = 0  # new in the database (0 on a second run)
    cancelled: int = 0
    cancelled_recently: int = 0  # 2-48 hours before `now`
    drifting: int = 0  # last activity 30-200 days before `now`
    plans: dict[str, int] = field(default_factory=dict)
    people: list[_Person] = field(default_factory=list, repr=False)

    def describe(self) -> str:
        plans = ", ".join(f"{count} {plan}" for plan, count in sorted(self.plans.items()))
        return (f"{self.customers} customers ({plans}), {self.events} events ({self.events_inserted} new); "
                f"{self.cancelled} cancelled, {self.drifting} drifting away")


@dataclass
class _Person:
    external_id: str
    record: dict[str, Any]
    events: list[dict[str, Any]]
    fate: str  # "active", "drifting", "cancelled", "cancelled_recently"
    cadence: float = 7.0
    zone: str | None = None


def generate_demo(
    session: Session,
    *,
    customers: int = 3000,
    now: datetime,
    seed: int = 7,
    non_activity_events: frozenset[str] = frozenset(),
) -> DemoSummary:
    """Create (or leave in place) the demo customers and their events; commits per batch."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware, e.g. datetime.now(UTC)")
    now = now.astimezone(UTC)
    people = demo_people(customers=customers, now=now, seed=seed)

    summary = DemoSummary(customers=customers, people=people)
    summary.plans = dict(Counter(p.record["plan"] for p in people))
    fates = Counter(p.fate for p in people)
    summary.cancelled = fates["cancelled"] + fates["cancelled_recently"]
    summary.cancelled_recently = fates["cancelled_recently"]
    summary.drifting = fates["drifting"]

    for group in chunks(people, BATCH):
        chunk = [CustomerIn.model_validate(p.record) for p in group]
        upsert_customers(session, chunk, now=now)
        session.commit()

    batch: list[EventIn] = []
    for person in people:  # customer by customer: each batch touches few customers
        for event in person.events:
            batch.append(EventIn.model_validate(event))
        if len(batch) >= BATCH:
            summary.events_inserted += _record(session, batch, non_activity_events, now)
            summary.events += len(batch)
            batch = []
    summary.events_inserted += _record(session, batch, non_activity_events, now)
    summary.events += len(batch)
    log.info(
        "demo data: %d customers, %d events (%d new), %d cancelled, %d drifting away",
        summary.customers, summary.events, summary.events_inserted, summary.cancelled,
        summary.drifting,
    )
    return summary


def demo_people(*, customers: int, now: datetime, seed: int) -> list[_Person]:
    """The synthetic customers and their history up to ``now``; the same for the same seed."""
    rng = random.Random(seed)
    recent = set(rng.sample(range(customers), min(customers, RECENT_CANCELS)))
    return [_person(rng, number, now, recently_cancelled=number in recent) for number in range(customers)]


def _record(
    session: Session, batch: list[EventIn], non_activity_events: frozenset[str], now: datetime
) -> int:
    if not batch:
        return 0
    result = record_events(session, batch, non_activity_events=non_activity_events, now=now)
    session.commit()
    return result.inserted


def _weighted(rng: random.Random, options: tuple[tuple[Any, ...], ...]) -> tuple[Any, ...]:
    return rng.choices(options, weights=[o[-1] for o in options])[0]


def ascii_slug(name: str) -> str:
    """'Łukasz' -> 'lukasz', "O'Brien" -> 'obrien': for the local part of demo addresses."""
    folded = unicodedata.normalize("NFKD", name.replace("Ł", "L").replace("ł", "l"))
    return "".join(c for c in folded.lower() if c.isascii() and c.isalnum())


def _person(rng: random.Random, number: int, now: datetime, *, recently_cancelled: bool) -> _Person:
    external_id = f"demo-{number + 1:05d}"
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    plan = _weighted(rng, PLANS)[0]
    zone, locale, _ = _weighted(rng, ZONES)
    cadence = _weighted(rng, CADENCES)[0]
    signed_up = now - timedelta(days=rng.uniform(1, SIGNUP_SPAN_DAYS))

    roll = rng.random()
    cancelled_at: datetime | None = None
    if recently_cancelled:
        fate = "cancelled_recently"
        cancelled_at = now - timedelta(hours=rng.uniform(2, 48))
        last_active = cancelled_at - timedelta(days=rng.uniform(0, cadence))
    elif roll < CANCEL_SHARE:
        fate = "cancelled"
        cancelled_at = now - timedelta(days=rng.uniform(3, 300))
        last_active = cancelled_at - timedelta(days=rng.uniform(0, cadence))
    elif roll < CANCEL_SHARE + DRIFT_SHARE:
        fate = "drifting"
        last_active = now - timedelta(days=rng.uniform(30, 200))
    else:
        fate = "active"
        last_active = now - timedelta(days=rng.uniform(0, cadence))
    # Nobody was active before signing up: such a customer signed up a little earlier.
    signed_up = min(signed_up, last_active - timedelta(days=rng.uniform(1, 60)))

    record: dict[str, Any] = {
        "id": external_id,
        "email": f"{ascii_slug(first)}.{ascii_slug(last)}{number + 1}@{DOMAINS[number % 3]}",
        "first_name": first,
        "last_name": last,
        "plan": plan,
        "signed_up_at": signed_up,
        "source": rng.choice(SOURCES),
    }
    if zone is not None:
        record["timezone"], record["locale"] = zone, locale
    if plan == "team":
        record["seats"] = rng.randint(3, 40)

    events = _activity(rng, external_id, zone, cadence, signed_up, last_active, now)
    if cancelled_at is not None:
        events.append({"id": f"{external_id}-cancel", "customer_id": external_id,
                       "event": CANCEL_EVENT, "occurred_at": cancelled_at,
                       "properties": {"reason": rng.choice(("price", "not_needed", "other"))}})
    return _Person(external_id, record, events, fate, cadence=cadence, zone=zone)


def _activity(
    rng: random.Random, external_id: str, zone: str | None, cadence: int,
    signed_up: datetime, last_active: datetime, now: datetime,
) -> list[dict[str, Any]]:
    """Active days from the last one backwards, each gap the cadence with some noise."""
    tz = ZoneInfo(zone) if zone else UTC
    start = max(signed_up, last_active - timedelta(days=HISTORY_DAYS))
    times: list[tuple[datetime, str]] = []
    day = last_active
    while day >= start:
        # People use the product in their own daytime; the latest day ends at its exact time.
        end = day if day == last_active else _daytime(rng, day, tz)
        names = ["login"] + [name for name, p in ACTIVITY_EVENTS if rng.random() < p]
        at = end - timedelta(minutes=rng.randint(1, 20) * (len(names) - 1))
        for name in names:
            times.append((min(at, end), name))
            at += timedelta(minutes=rng.randint(1, 20))
        day -= timedelta(days=max(0.5, cadence * rng.lognormvariate(0, 0.3)))
    times.sort()
    return [
        {"id": f"{external_id}-{number:05d}", "customer_id": external_id, "event": name,
         "occurred_at": at}
        for number, (at, name) in enumerate(times, start=1)
        if at <= now
    ]


def _daytime(rng: random.Random, moment: datetime, tz: Any) -> datetime:
    local = moment.astimezone(tz).replace(hour=rng.randint(8, 20), minute=rng.randint(0, 59))
    return local.astimezone(UTC)


def demo_anchor(session: Session) -> datetime:
    """The moment the demo data is built around, fixed at first run so a re-run changes nothing."""
    stored = session.get(AppSetting, "demo_anchor")
    if stored is None:
        stored = AppSetting(key="demo_anchor", value=datetime.now(UTC).isoformat())
        session.add(stored)
        session.commit()
    return datetime.fromisoformat(stored.value)
