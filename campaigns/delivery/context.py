"""What a template sees: the context of one delivery, and the sample `check` and `preview` use.

The ``customer`` dict of a real send and of the sample have exactly the same
keys (``CUSTOMER_FIELDS``), so `retention check` catches a misspelling that a
real send would hit.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from campaigns.models import Customer
from campaigns.sql import inactive_since_of

CUSTOMER_FIELDS = (
    "id",
    "email",
    "first_name",
    "last_name",
    "plan",
    "status",
    "locale",
    "timezone",
    "signed_up_at",
    "cancelled_at",
    "last_active_at",
    "days_inactive",
    "activity_count",
    "cadence_days",
    "attributes",
)


def build_context(
    *,
    customer: dict[str, Any],
    campaign: dict[str, Any],
    unsubscribe_url: str,
    survey_url: str | None,
    track: Callable[[str], str],
) -> dict[str, Any]:
    """The variables a template sees.  ``survey_url`` only exists for survey
    campaigns, so a survey template attached to another campaign fails loudly."""
    context: dict[str, Any] = {
        "customer": customer,
        "campaign": campaign,
        "unsubscribe_url": unsubscribe_url,
        "track": track,
    }
    if survey_url is not None:
        context["survey_url"] = survey_url
    return context


def customer_context(customer: Customer, *, now: datetime) -> dict[str, Any]:
    """A customer row as template data (the external id is ``id``)."""
    since = inactive_since_of(customer)
    return {
        "id": customer.external_id,
        "email": customer.email,
        "first_name": customer.first_name,
        "last_name": customer.last_name,
        "plan": customer.plan,
        "status": customer.status,
        "locale": customer.locale,
        "timezone": customer.timezone,
        "signed_up_at": customer.signed_up_at,
        "cancelled_at": customer.cancelled_at,
        "last_active_at": customer.last_active_at,
        # Whole days since the moment the planner counts from (never active: since signup).
        "days_inactive": (now - since).days if since is not None else None,
        "activity_count": customer.activity_count,
        "cadence_days": customer.cadence_days,
        "attributes": dict(customer.attributes or {}),
    }


def sample_customer(**overrides: Any) -> dict[str, Any]:
    """A plausible customer for `retention check` and previews."""
    customer: dict[str, Any] = {
        "id": "cus_1042",
        "email": "ada@example.com",
        "first_name": "Ada",
        "last_name": "Lovelace",
        "plan": "pro",
        "status": "active",
        "locale": "en",
        "timezone": "Europe/Berlin",
        "signed_up_at": datetime(2023, 3, 14, 9, 30, tzinfo=UTC),
        "cancelled_at": None,
        "last_active_at": datetime(2024, 5, 2, 16, 5, tzinfo=UTC),
        "days_inactive": 34,
        "activity_count": 57,
        "cadence_days": 6.5,
        "attributes": {},
    }
    unknown = set(overrides) - set(CUSTOMER_FIELDS)
    if unknown:
        raise ValueError(
            f"unknown customer field(s) {', '.join(sorted(unknown))}: "
            f"use one of {', '.join(CUSTOMER_FIELDS)} (extra columns go in attributes)"
        )
    customer.update(overrides)
    return customer


def build_sample_context(
    *,
    template: str,
    customer: dict[str, Any] | None = None,
    campaign: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The context `check` and `preview` render with; ``survey_url`` is always present."""
    return build_context(
        customer=customer if customer is not None else sample_customer(),
        campaign=campaign
        if campaign is not None
        else {"id": "preview", "template": template, "survey": None},
        unsubscribe_url="https://retention.invalid/u/sample-token",
        survey_url="https://retention.invalid/s/sample-token",
        track=lambda url: url,
    )
