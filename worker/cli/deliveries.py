"""Commands on recorded deliveries: list them, and send failed ones again after a fix."""

from __future__ import annotations

from typing import Annotated, Literal

import sqlalchemy as sa
import typer
from sqlmodel import Session, col

from campaigns.delivery.retry import retry as retry_deliveries
from campaigns.models import Customer, Delivery, DeliveryStatus, utcnow
from worker.cli.app import app
from worker.cli.common import build_runtime, out, user_errors
from worker.report.layout import FittedTable
from worker.wording import plural

RetryStatus = Literal["failed", "unknown"]


@app.command()
def deliveries(
    campaign: Annotated[str | None, typer.Option(help="Only this campaign's deliveries.")] = None,
    status: Annotated[DeliveryStatus | None, typer.Option(help="Only deliveries in this status.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="How many to list, newest first.")] = 50,
) -> None:
    """List deliveries, newest first: who, which campaign, status, when, and the last error."""
    rt = build_runtime()
    if campaign is not None:
        with user_errors():
            rt.rules.campaign(campaign)
    filters = []
    if campaign is not None:
        filters.append(col(Delivery.campaign_id) == campaign)
    if status is not None:
        filters.append(col(Delivery.status) == status)
    query = (
        sa.select(Delivery, col(Customer.external_id), col(Customer.email))
        .join(Customer, col(Customer.id) == col(Delivery.customer_id))
        .where(*filters)
    )
    count = sa.select(sa.func.count()).select_from(Delivery).where(*filters)
    with Session(rt.engine) as session:
        total = int(session.execute(count).scalar_one())
        rows = session.execute(query.order_by(col(Delivery.id).desc()).limit(limit)).all()
    table = FittedTable(
        f"Deliveries: {len(rows)} of {total}" + (f", campaign {campaign}" if campaign else "")
        + (f", status {status}" if status else ""),
        ["id", "campaign", "customer", "email", "status", "template", "planned", "sent", "attempts", "error"],
        justify=["right", "left", "left", "left", "left", "left", "left", "left", "right", "left"],
    )
    for delivery, external_id, email in rows:
        table.add_row(
            str(delivery.id), delivery.campaign_id, external_id, email, delivery.status,
            delivery.template + (f" ({delivery.variant})" if delivery.variant else ""),
            f"{delivery.created_at:%Y-%m-%d %H:%M}",
            f"{delivery.sent_at:%Y-%m-%d %H:%M}" if delivery.sent_at else "",
            str(delivery.attempts), delivery.last_error or "",
        )
    out.print(table)
    if not rows:
        out.print("no deliveries match" + ("" if total else " (none planned yet: `retention plan` shows "
                                                              "what a pass would do)"), markup=False)


@app.command()
def retry(
    campaign: Annotated[str, typer.Argument(help="Campaign whose deliveries to send again.")],
    status: Annotated[RetryStatus, typer.Option(
        help="failed: after fixing a template or the transport. unknown: a worker died mid-send, so "
             "these may have arrived; retry only when you know they did not.")] = "failed",
) -> None:
    """Send a campaign's failed deliveries again (suppression and frequency caps checked again)."""
    rt = build_runtime()
    with Session(rt.engine) as session, user_errors():
        result = retry_deliveries(session, rt.rules, campaign, status=DeliveryStatus(status), now=utcnow())
        session.commit()
    if not result.considered:
        out.print(f"{campaign}: no {status} deliveries to retry", markup=False)
        return
    parts = [f"{plural(len(result.requeued), 'delivery')} queued again; `retention run --once` or the "
             "running daemon sends them"]
    if result.suppressed:
        parts.append(f"{result.suppressed} not retried: unsubscribed or suppressed since")
    if result.capped:
        parts.append(f"{result.capped} not retried: the customer reached a frequency cap since "
                     f"(left {status}; retry later)")
    out.print(f"{campaign}: " + "; ".join(parts), markup=False, soft_wrap=True)
