"""The domain, stage by stage; no broker, SMTP, HTTP or worker/ imports.

- ``models``, ``errors``: the tables and the one error tree.
- ``rules``: rules.yaml → typed campaigns, conditions compiled to SQL.
- ``ingestion``: customers and events in; cadence.
- ``planning``: the pass that decides who gets what; explain; conversions.
- ``delivery``: outbox, rendering, MIME, send window, signed links.
- ``responses``: unsubscribes, survey answers, clicks; their export and pages.
- ``reports``: churn, retention, cohorts, funnels with lift, at-risk customers.
"""
