"""The events fast paths (CSV rows, API items) give exactly what EventIn gives, or leave it to it."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel

import campaigns.ingestion.csv_import as csv_import
from campaigns.ingestion import CustomerIn, upsert_customers
from campaigns.ingestion.csv_import import _column_names, _parse_row, import_csv
from campaigns.ingestion.fast_events import EventValues, event_reader, parse_events
from campaigns.ingestion.records import EventIn, parse_records
from campaigns.models import Customer, Event
from tests.test_ingest import engine  # noqa: F401  (the fixture: SQLite and PostgreSQL)
from worker.database import SQLITE_CHECKPOINT_PAGES, make_engine

HEADERS = [
    ["id", "customer_id", "event", "occurred_at", "properties"],
    ["Customer_ID", "Event", "occurred_at", "device", "", "properties"],
    ["event", "occurred_at", "customer_id"],
]
VALUES = [
    "", " ", "c1", "  c2 ", "a" * 255, "a" * 256, "b" * 100, "b" * 101, "login", " Login ",
    "2024-03-01", "2024-03-01T14:30", "2024-03-01T14:30:00+01:00", "2024-03-01T14:30:00Z",
    " 2024-03-01 14:30:00.123456 ", "2024-13-01", "20240301", "yesterday", "2024-03-01T25:00",
    "2099-01-01T00:00:00+00:00",
    '{"source": "web"}', ' {"n": 1, "ok": true} ', "{}", "[]", '"text"', "{bad json}", "null",
    '{"device": "from the cell"}', "Ünïcödé", "a,b", "line\nbreak", "0",
]


def _same(fast: EventValues, record: EventIn) -> None:
    assert fast.customer_id == record.customer_id
    assert fast.event == record.event
    assert fast.client_id == record.client_id
    assert fast.properties == record.properties
    # Equal instants are not enough: the same wall time and offset too.
    assert (fast.occurred_at.isoformat(), fast.occurred_at.utcoffset()) == (
        record.occurred_at.isoformat(), record.occurred_at.utcoffset())


def _check(header: Sequence[str], cells: list[str]) -> bool:
    """Whether the fast reader took the row; asserts it agrees with the model."""
    columns = _column_names(list(header), "events", "test.csv", 1)
    reader = event_reader(columns)
    assert reader is not None
    fast = reader(cells)
    slow = _parse_row(EventIn, columns, cells)
    if fast is not None:
        assert isinstance(slow, EventIn), slow
        _same(fast, slow)
    return fast is not None


def test_corpus_agrees_cell_by_cell() -> None:
    taken = 0
    for header in HEADERS:
        base = {"customer_id": "c1", "event": "login", "occurred_at": "2024-03-01T10:00:00+00:00"}
        for position in range(len(header)):
            for value in VALUES:
                cells = [base.get(name.lower(), "") for name in header]
                cells[position] = value
                taken += _check(header, cells)
    assert taken > 100  # the fast path is actually used


def test_short_and_long_rows() -> None:
    header = HEADERS[0]
    assert _check(header, ["e1", "c1", "login", "2024-03-01"])  # trailing cell trimmed
    assert not _check(header, ["e1", "c1", "login"])
    assert not _check(header, ["e1", "c1", "login", "2024-03-01", "", ""])  # one cell too many


def test_headers_the_model_reads_itself() -> None:
    columns = _column_names(["customer_id", "event", "occurred_at", "client_id"], "events", "t.csv", 1)
    assert event_reader(columns) is None


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_row_agrees(data: st.DataObject) -> None:
    header = data.draw(st.sampled_from(HEADERS))
    cell = st.one_of(st.sampled_from(VALUES), st.text(max_size=12))
    cells = data.draw(st.lists(cell, min_size=0, max_size=len(header) + 1))
    _check(header, cells)


# ---------------------------------------------------------------- the API's JSON items

ITEM_KEYS = ["customer_id", "event", "occurred_at", "id", "properties", "client_id", "device"]
ITEM_VALUES: list[Any] = [
    *VALUES, None, 0, 17, True, 1.5, [], ["a"], {}, {"source": "web"}, {" key ": 1}, {"n": {" x ": 1}},
]


def _check_items(items: list[Any]) -> int:
    """How many items the fast path took; asserts parse_events agrees with the model."""
    good, bad = parse_events(items)
    model_good, model_bad = parse_records(EventIn, items)
    assert bad == model_bad
    assert len(good) == len(model_good)
    for fast, record in zip(good, model_good, strict=True):
        if isinstance(fast, EventValues):
            _same(fast, record)
        else:
            assert fast == record
    return sum(isinstance(fast, EventValues) for fast in good)


def test_api_items_agree_key_by_key() -> None:
    base = {"customer_id": "c1", "event": "login", "occurred_at": "2024-03-01T10:00:00+00:00"}
    items = [{**base, key: value} for key in ITEM_KEYS for value in ITEM_VALUES]
    items += [{k: v for k, v in base.items() if k != key} for key in base]  # a field missing
    items += [None, "text", [base], base]
    assert _check_items(items) > 30  # the fast path is actually used


@settings(max_examples=300, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(ITEM_KEYS), st.sampled_from(ITEM_VALUES), max_size=6),
                max_size=5))
def test_any_api_items_agree(items: list[dict[str, Any]]) -> None:
    _check_items([{"customer_id": "c1", "event": "e", "occurred_at": "2024-03-01", **item} for item in items])
    _check_items(list(items))


def _corpus_file() -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    header = HEADERS[1]
    writer.writerow(header)
    for n, value in enumerate(VALUES):
        for position in range(len(header)):
            cells = [f"c{n % 3}", "login", f"2024-03-{n % 28 + 1:02d}T10:00:00", "", "", ""]
            cells[position] = value
            writer.writerow(cells)
    writer.writerow(["c1", "login", "2024-03-05T10:00:00", "", "", ""])  # the same event again
    writer.writerow(["ghost", "login", "2024-03-05T10:00:00", "", "", ""])
    return out.getvalue()


def _without_clock(message: str) -> str:
    # A refused future event's message names the current time, which moves between imports.
    return re.sub(r"\(now [^)]*\)", "(now …)", message)


def _import(db: Engine, text: str) -> tuple[Any, list[str], list[tuple[Any, ...]]]:
    messages: list[str] = []
    with Session(db) as session:
        upsert_customers(session, [
            CustomerIn.model_validate({"id": f"c{n}", "email": f"c{n}@example.com", "timezone": zone})
            for n, zone in enumerate(["UTC", "Europe/Berlin", "America/New_York"])
        ])
        session.commit()
        report = import_csv(session, io.StringIO(text), "events", batch_size=50,
                            non_activity_events=frozenset({"email_opened"}),
                            on_reject=lambda header, cells, message: messages.append(message))
        report.rejected = [(line, _without_clock(message)) for line, message in report.rejected]
        messages = [_without_clock(message) for message in messages]
        event, customer = Event.__table__, Customer.__table__  # type: ignore[attr-defined]
        stored = sa.select(
            event.c.client_id, customer.c.external_id, event.c.name, event.c.occurred_at,
            event.c.properties,
        ).join(customer).order_by(event.c.client_id)
        rows = [tuple(row) for row in session.execute(stored)]
        rows += [tuple(row) for row in session.execute(sa.select(
            customer.c.external_id, customer.c.last_active_at, customer.c.activity_count,
            customer.c.cadence_days).order_by(customer.c.external_id))]
        session.execute(sa.delete(event))
        session.execute(sa.delete(customer))
        session.commit()
    return report, messages, rows


def test_stored_rows_and_rejects_match_the_model_path(
    engine: Engine, monkeypatch: pytest.MonkeyPatch  # noqa: F811  (the imported fixture)
) -> None:
    text = _corpus_file()
    fast = _import(engine, text)
    monkeypatch.setattr(csv_import, "event_reader", lambda columns: None)
    slow = _import(engine, text)
    assert fast[0] == slow[0]  # counts and (line, message) rejects
    assert fast[1] == slow[1]
    assert fast[2] == slow[2]
    assert fast[0].rejected_count > 20 and fast[0].inserted > 50


def test_batches_get_a_larger_sqlite_cache_and_the_pool_gets_its_settings_back(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = make_engine(f"sqlite:///{tmp_path / 'settings.db'}")
    SQLModel.metadata.create_all(made)
    names = ("cache_size", "wal_autocheckpoint")

    def settings_of(connection: Any) -> list[Any]:
        return [connection.exec_driver_sql(f"PRAGMA {name}").scalar_one() for name in names]

    during: list[list[Any]] = []
    write_batch = csv_import._write_batch

    def observed(session: Session, *args: Any) -> None:
        during.append(settings_of(session.connection()))
        write_batch(session, *args)

    monkeypatch.setattr(csv_import, "_write_batch", observed)
    try:
        with Session(made) as session:
            upsert_customers(session, [CustomerIn.model_validate({"id": "c0", "email": "c0@example.com"})])
            session.commit()
            text = "customer_id,event,occurred_at\n" + "c0,login,2024-03-01T10:00:00Z\n" * 3
            import_csv(session, io.StringIO(text), "events", batch_size=1)
        with made.connect() as connection:
            after = settings_of(connection)
    finally:
        made.dispose()
    assert during == [[-65_536, SQLITE_CHECKPOINT_PAGES]] * 3
    assert after == [-2000, SQLITE_CHECKPOINT_PAGES]  # SQLite's default cache, our checkpoint
