"""Planning: who gets which campaign now, as Delivery rows written in one SQL pass.

``planner`` runs the pass (conditions, guardrails, holdouts, blast guard), ``explain`` gives
its verdict for one customer, ``conversions`` credits goals after each pass.
"""

from __future__ import annotations

from campaigns.planning.conversions import credit_conversions
from campaigns.planning.explain import PastDelivery, Verdict, explain, past_deliveries
from campaigns.planning.planner import CampaignPlan, PassResult, Planner, approve

__all__ = [
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
