"""Planning: who gets which campaign now, as Delivery rows written in one SQL pass.

``planner`` runs the pass (conditions, guardrails, holdouts, blast guard), ``explain`` gives
its verdict for one customer, ``conversions`` credits goals after each pass.
"""
