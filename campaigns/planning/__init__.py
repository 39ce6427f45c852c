"""Planning: who gets which campaign now, as Delivery rows written in one SQL pass.

``planner`` runs the pass: ``verdicts`` builds the SQL that says, per customer, why they
would or would not get a campaign (conditions, guardrails, holdouts), ``splits`` hashes
customers into holdout and A/B groups, ``schedule`` answers cron schedules, ``state`` keeps
what a campaign carries across passes (blast guard, policy pause, approve).  ``explain``
gives the verdict for one customer, ``conversions`` credits goals after each pass.
"""

from __future__ import annotations

from campaigns.planning.conversions import credit_conversions
from campaigns.planning.explain import PastDelivery, Verdict, explain, past_deliveries
from campaigns.planning.guards import IN_FLIGHT
from campaigns.planning.planner import CampaignPlan, PassResult, Planner
from campaigns.planning.state import approve

__all__ = [
    "IN_FLIGHT",
    "CampaignPlan",
    "PassResult",
    "PastDelivery",
    "Planner",
    "Verdict",
    "approve",
    "credit_conversions",
    "explain",
    "past_deliveries",
]
