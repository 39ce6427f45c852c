"""`identify` and `track` actors for applications that already use Dramatiq (real Redis)."""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from sqlmodel import Session, select

from campaigns.models import Customer, Event
from tests.factories import drain
from worker.broker import QUEUE
from worker.daemon import start_roles


def test_messages_from_another_application_become_customers_and_events(make_runtime, redis_url):
    rt = make_runtime("console://", redis_url)
    roles = start_roles(rt, workers=2)
    # The other application knows only the actor names and the queue, not this package.
    theirs = RedisBroker(url=redis_url)

    def send(actor: str, **kwargs):
        theirs.enqueue(dramatiq.Message(queue_name=QUEUE, actor_name=actor, args=(), kwargs=kwargs,
                                        options={}))

    try:
        send("identify", id="app-1", email="Ada@Example.com", plan="pro", company="Acme")
        send("identify", id="app-2", email="not an email")  # dropped, logged
        for day in (1, 16, 31):
            send("track", customer_id="app-1", event="login", occurred_at=f"2026-01-{day:02d}T09:00:00Z",
                 id=f"login-{day}")
        send("track", customer_id="app-1", event="login", occurred_at="2026-01-31T09:00:00Z", id="login-31")

        def stored() -> bool:
            with Session(rt.engine) as session:
                return len(session.exec(select(Event)).all()) == 3

        drain(roles)  # every message, the duplicate and the bad one included
        assert stored()
    finally:
        roles.stop()
        theirs.close()
    with Session(rt.engine) as session:
        [customer] = session.exec(select(Customer)).all()
        assert customer.external_id == "app-1"
        assert customer.attributes == {"company": "Acme"}
        assert customer.activity_count == 3
        assert customer.cadence_days == 15
        assert customer.last_active_at.isoformat() == "2026-01-31T09:00:00+00:00"
