"""Ingestion: customers and events in, validated and upserted, cadence kept current.

``records`` validates and upserts (API, actors and CSV share it), ``csv_import`` streams a
CSV file through it, ``activity`` maintains each customer's last activity and cadence.
"""
