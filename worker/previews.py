"""Messages rendered for looking at, not for delivery: `preview`, `send-test`, `preview --serve`.

They go through the same ``Sender.compose`` as a real send, so what marketing sees is
what a customer gets; only the delivery is a stand-in that is never stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage

import sqlalchemy as sa
from sqlmodel import Session, col, or_, select

from campaigns.addresses import parse_address
from campaigns.delivery.context import sample_customer
from campaigns.delivery.sending import Sender
from campaigns.delivery.tokens import TEST_DELIVERY_ID
from campaigns.errors import RetentionError
from campaigns.models import Customer, Delivery
from campaigns.rules import Campaign

SAMPLE_ID = sample_customer()["id"]


@dataclass(frozen=True)
class Parts:
    """What a mail client shows of one message."""

    sender: str
    to: str
    subject: str
    text: str
    html: str | None
    unsubscribe: str


def sample() -> Customer:
    """The synthetic customer `check` renders with, as an unsaved row."""
    data = sample_customer()
    columns = {k: v for k, v in data.items() if k in Customer.model_fields and k != "id"}
    return Customer(id=0, external_id=data["id"], **columns)


def find_customer(session: Session, external_id: str | None) -> Customer:
    """The customer with this id of yours, or the sample customer when none is given."""
    if external_id is None or external_id == SAMPLE_ID:
        return sample()
    customer = session.exec(select(Customer).where(col(Customer.external_id) == external_id)).first()
    if customer is None:
        raise RetentionError(
            f"no customer with id {external_id!r} "
            "(import customers first: retention import customers FILE.csv)"
        )
    return customer


def search_customers(session: Session, query: str, *, limit: int = 20) -> list[Customer]:
    """Customers whose id, email or name contains ``query`` (case-insensitive)."""
    statement = select(Customer)
    if query.strip():
        pattern = f"%{query.strip().lower()}%"
        statement = statement.where(or_(*(
            sa.func.lower(col(column)).like(pattern)
            for column in (Customer.external_id, Customer.email, Customer.first_name, Customer.last_name)
        )))
    return list(session.exec(statement.order_by(col(Customer.external_id)).limit(limit)).all())


def variant_template(campaign: Campaign, variant: str | None) -> str:
    """The template of one A/B variant (the first when ``variant`` is None)."""
    if variant is None:
        return campaign.templates[0]
    labels = {v.label: v.template for v in campaign.variants or ()}
    if variant not in labels:
        known = ", ".join(labels) or "none"
        raise RetentionError(f"campaign {campaign.id!r} has no variant {variant!r} (variants: {known})")
    return labels[variant]


def compose(sender: Sender, campaign: Campaign, customer: Customer, *, template: str,
            now: datetime, locale: str | None = None) -> EmailMessage:
    """The message ``customer`` would get, optionally as if their locale were ``locale``."""
    if locale is not None:
        customer = customer.model_copy(update={"locale": locale or None})
    delivery = Delivery(id=TEST_DELIVERY_ID, campaign_id=campaign.id, customer_id=customer.id or 0,
                        episode="preview", template=template)
    return sender.compose(delivery, customer, campaign, now)


def as_test(message: EmailMessage, to: str) -> EmailMessage:
    """The same message addressed to ``to``, its subject marked ``[TEST]``.

    Raises InvalidAddress for a ``to`` that no message can be composed for.
    """
    subject = message["Subject"]
    del message["To"], message["Subject"]
    message["To"] = parse_address(to)
    message["Subject"] = f"[TEST] {subject}"
    return message


def parts(message: EmailMessage) -> Parts:
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    return Parts(
        sender=str(message["From"]), to=str(message["To"]), subject=str(message["Subject"]),
        text=text.get_content() if isinstance(text, EmailMessage) else "",
        html=html.get_content() if isinstance(html, EmailMessage) else None,
        unsubscribe=str(message["List-Unsubscribe"]),
    )
