"""When each customer joined and when (and how) they were lost, as SQL expressions.

A customer is **lost** at one moment, by one of two kinds of churn:

* **active** — ``status`` is ``cancelled``; the moment is ``cancelled_at`` (or, when
  a cancelled customer came without a date, their last activity, else signup);
* **passive** — no activity for ``passive_churn_after``; the moment is the *lapse*,
  ``last activity (else signup) + passive_churn_after``, and only once it has passed.

A cancelled customer who had already lapsed before cancelling was lost at the lapse
(passive): they stopped coming first.  A customer who lapsed and came back has a
recent ``last_active_at`` again and so is not lost: reports describe what is known now,
and a returning customer is a customer kept, not a loss plus a new signup.

The lapse moment is ``reference + P`` for a constant P, so "the lapse falls in
[a, b)" is written as "the reference falls in [a − P, b − P)": plain comparisons
on a column, no date arithmetic in SQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import col

from campaigns.models import Customer, CustomerStatus
from campaigns.reports.periods import bucket
from campaigns.sql import cancel_moment, days_since, inactive_since, signup_moment

ACTIVE = "active"
PASSIVE = "passive"


@dataclass(frozen=True)
class Losses:
    """The loss expressions for one report: one `now` and one passive_churn_after."""

    now: datetime
    passive_after: timedelta

    @property
    def passive_days(self) -> float:
        return self.passive_after.total_seconds() / 86400

    def buckets(
        self, bounds: Sequence[datetime], *extra: sa.ColumnElement[Any], tenure_edges: Sequence[int] = ()
    ) -> sa.Subquery:
        """One row per customer: signup bucket ``sb``, loss bucket ``lb`` (NULL: not lost),
        loss ``kind``, ``tenure`` in days, its bucket ``tb`` among ``tenure_edges`` (days),
        and any ``extra`` labelled columns (computed from the customer table).

        A loss dated before signup (inconsistent data) counts in the signup bucket, so
        every customer is acquired before being lost.

        Each layer is fenced with OFFSET 0: SQLite and PostgreSQL then compute a layer's
        columns once per row instead of inlining (and re-evaluating) them everywhere the
        next layer mentions them; over a million customers that halves the time.
        """
        moments = (
            sa.select(
                signup_moment().label("signup"),
                inactive_since().label("ref"),
                cancel_moment().label("cancel"),
                (col(Customer.status) == CustomerStatus.cancelled.value).label("cancelled"),
                *extra,
            )
            .select_from(Customer)
            .offset(0)
            .subquery("moments")
        )
        m = moments.c
        cancelled_first = sa.and_(m.cancelled, days_since(m.ref, m.cancel) <= self.passive_days)
        kinds = sa.select(
            *m,
            sa.case(
                (cancelled_first, sa.literal(ACTIVE)),
                (m.ref <= self.now - self.passive_after, sa.literal(PASSIVE)),
                else_=sa.null(),
            ).label("kind"),
        ).offset(0).subquery("kinds")
        k = kinds.c
        shifted = [b - self.passive_after for b in bounds]
        placed = sa.select(
            *(k[e.name] for e in extra),
            k.kind,
            bucket(k.signup, bounds).label("sb"),
            sa.case(
                (k.kind == ACTIVE, bucket(k.cancel, bounds)),
                (k.kind == PASSIVE, bucket(k.ref, shifted)),
                else_=sa.null(),
            ).label("lb"),
            sa.case(
                (k.kind == ACTIVE, days_since(k.signup, k.cancel)),
                (k.kind == PASSIVE, days_since(k.signup, k.ref) + self.passive_days),
                else_=sa.null(),
            ).label("tenure"),
        ).offset(0).subquery("placed")
        p = placed.c
        tenure_bucket = sa.case(
            (p.tenure.is_(None), sa.null()),
            *((p.tenure < edge, i) for i, edge in enumerate(tenure_edges)),
            else_=len(tenure_edges),
        )
        return (
            sa.select(
                *(p[e.name] for e in extra),
                p.kind,
                p.sb,
                sa.case((p.lb < p.sb, p.sb), else_=p.lb).label("lb"),
                # A loss dated before signup (bad data) counts as lost at signup, like its bucket.
                sa.case((p.tenure < 0, 0.0), else_=p.tenure).label("tenure"),
                tenure_bucket.label("tb"),
            )
            .subquery("per_customer")
        )
