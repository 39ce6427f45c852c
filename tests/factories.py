"""Small builders shared by tests: a migrated database, customers, rules from text."""

from __future__ import annotations

import itertools
import textwrap
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session

from campaigns.models import Customer, Delivery, DeliveryStatus, Event, message_id_for
from campaigns.rules import Rules, parse_rules
from worker.broker import QUEUE
from worker.daemon import Roles
from worker.database import make_engine, upgrade

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)  # a Wednesday, 13:00 in Berlin
_ids = itertools.count(1)


def migrated_engine(url: str) -> Engine:
    """A database brought up by the real migrations, as `retention db upgrade` does."""
    engine = make_engine(url)
    upgrade(engine)
    return engine


def add_customer(session: Session, *, inactive_days: float | None = None, **fields: Any) -> Customer:
    number = next(_ids)
    fields.setdefault("external_id", f"cus-{number}")
    fields.setdefault("email", f"customer{number}@example.com")
    fields.setdefault("signed_up_at", NOW - timedelta(days=400))
    fields.setdefault("timezone", "Europe/Berlin")
    if inactive_days is not None:
        fields["last_active_at"] = NOW - timedelta(days=inactive_days)
    customer = Customer(**fields)
    session.add(customer)
    session.flush()
    return customer


def add_event(session: Session, customer: Customer, name: str, at: datetime) -> Event:
    event = Event(customer_id=customer.id, name=name, occurred_at=at)  # type: ignore[arg-type]
    session.add(event)
    session.flush()
    return event


def rules(text: str, **defaults: Any) -> Rules:
    """Rules from an indented YAML snippet; quiet hours off unless a test asks for them."""
    return parse_rules(textwrap.dedent(text))


def add_sent_delivery(session: Session, *, campaign_id: str = "we-miss-you", sent_at: datetime | None = None,
                      **customer_fields: Any) -> Delivery:
    """A delivery that went out to a new customer, with the Message-ID the sender gives it; committed."""
    customer = add_customer(session, **customer_fields)
    delivery = Delivery(campaign_id=campaign_id, customer_id=customer.id, episode="once",
                        status=DeliveryStatus.sent, template="we_miss_you", sent_at=sent_at or NOW)
    session.add(delivery)
    session.flush()
    delivery.message_id = message_id_for(delivery, "acme.example")
    session.commit()
    session.refresh(delivery)
    return delivery


def drain(roles: Roles, timeout_s: float = 30.0) -> None:
    """Return once every message on the queue, delayed retries included, has been processed:
    the broker's join, then the worker's.  A wrong extra send would have happened by then."""
    roles.broker.join(QUEUE, timeout=int(timeout_s * 1000))
    if roles.worker is not None:
        roles.worker.join()
