"""Ingestion: customers and events in, validated and upserted, cadence kept current.

``records`` validates (API, actors and CSV share it), ``customers`` and ``events`` store,
``bulk`` writes many rows at once, ``csv_import`` streams a CSV file through them,
``activity`` maintains each customer's last activity and cadence, ``segment`` reads the
Segment tracking API's messages.
"""

from __future__ import annotations

from campaigns.ingestion.csv_import import ImportReport, RejectSink, import_csv
from campaigns.ingestion.customers import UpsertResult, upsert_customers
from campaigns.ingestion.events import CANCEL_EVENT, EventResult, record_events
from campaigns.ingestion.fast_events import parse_events
from campaigns.ingestion.records import CustomerIn, EventIn, parse_records

__all__ = [
    "CANCEL_EVENT",
    "CustomerIn",
    "EventIn",
    "EventResult",
    "ImportReport",
    "RejectSink",
    "UpsertResult",
    "import_csv",
    "parse_events",
    "parse_records",
    "record_events",
    "upsert_customers",
]
