"""The verdicts' per-customer guards, as fixed SQL around their compiled arguments.

Each guard is a correlated subquery whose shape never changes, only its arguments (the
customer's columns, the campaign id, a moment).  Written once as SQL rather than built
from Core elements, they cost a pass one ``format`` each instead of building and compiling
a tree of selects per campaign: most of what a freshly started pass spent before its first
query (bench P1).  The statuses are the enum's own values, never user input; everything
else arrives as an argument, so bound or compiled by SQLAlchemy.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.sql.functions import FunctionElement

from campaigns.models import DeliveryStatus
from campaigns.sql import fixed_sql

# Deliveries that are, or will be, real messages: they count against frequency caps.
IN_FLIGHT = (DeliveryStatus.queued, DeliveryStatus.sending, DeliveryStatus.sent, DeliveryStatus.held)
# Held-out rows start a cooldown too, so both groups are paced alike.
COOLING = (*IN_FLIGHT, DeliveryStatus.held_out)


def _sql_list(statuses: Sequence[DeliveryStatus]) -> str:
    return "(" + ", ".join(f"'{status.value}'" for status in statuses) + ")"


_RECENT = "coalesce(delivery.sent_at, delivery.created_at) > {since}"


@fixed_sql(
    "EXISTS (SELECT 1 FROM delivery WHERE delivery.customer_id = {0} AND delivery.campaign_id = {1} "
    "AND delivery.episode = ({2}))"
)
class sent_this_episode(FunctionElement[bool]):  # lower-case: reads like the SQL it stands for
    """(customer id, campaign id, episode): the campaign already has a delivery for this episode."""

    type = sa.Boolean()


@fixed_sql(
    "EXISTS (SELECT 1 FROM delivery WHERE delivery.customer_id = {0} AND delivery.campaign_id = {1} AND "
    + _RECENT.format(since="{2}")
    + f" AND delivery.status IN {_sql_list(COOLING)})"
)
class cooling_down(FunctionElement[bool]):
    """(customer id, campaign id, since): the campaign reached the customer after ``since``."""

    type = sa.Boolean()


@fixed_sql("({0} IS NOT NULL OR EXISTS (SELECT 1 FROM suppression WHERE suppression.email = lower({1})))")
class suppressed(FunctionElement[bool]):
    """(unsubscribed_at, email): unsubscribed, or the address is on the suppression list."""

    type = sa.Boolean()


@fixed_sql(
    "EXISTS (SELECT 1 FROM delivery WHERE delivery.customer_id = {0} AND delivery.created_at >= {1} "
    f"AND delivery.status IN {_sql_list(IN_FLIGHT)})"
)
class taken_this_pass(FunctionElement[bool]):
    """(customer id, the pass's moment): a campaign planned earlier in this pass took them."""

    type = sa.Boolean()


_CAP_COUNT = (
    "(SELECT count(*) FROM delivery WHERE delivery.customer_id = {0} "
    f"AND delivery.status IN {_sql_list(IN_FLIGHT)} AND " + _RECENT.format(since="{1}")
)


@fixed_sql(_CAP_COUNT + ") >= {2}")
class over_cap(FunctionElement[bool]):
    """(customer id, since, max): at least ``max`` messages in flight since ``since``."""

    type = sa.Boolean()


@fixed_sql(_CAP_COUNT + " AND delivery.campaign_id = {3}) >= {2}")
class over_campaign_cap(FunctionElement[bool]):
    """(customer id, since, max, campaign id): the same, counting one campaign's messages."""

    type = sa.Boolean()
