"""Ingestion: customers and events in, validated and upserted, cadence kept current.

``records`` validates and upserts (API, actors and CSV share it), ``csv_import`` streams a
CSV file through it, ``activity`` maintains each customer's last activity and cadence.
"""

from __future__ import annotations

from campaigns.ingestion.csv_import import ImportReport, RejectSink, import_csv
from campaigns.ingestion.records import (
    CustomerIn,
    EventIn,
    EventResult,
    UpsertResult,
    parse_records,
    record_events,
    upsert_customers,
)

__all__ = [
    "CustomerIn",
    "EventIn",
    "EventResult",
    "ImportReport",
    "RejectSink",
    "UpsertResult",
    "import_csv",
    "parse_records",
    "record_events",
    "upsert_customers",
]
