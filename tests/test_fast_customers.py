"""The customers CSV fast reader gives exactly what CustomerIn gives, or leaves the row to it."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine
from sqlmodel import Session

import campaigns.ingestion.csv_import as csv_import
from campaigns.ingestion.csv_import import _column_names, _parse_row, import_csv
from campaigns.ingestion.fast_customers import customer_reader
from campaigns.ingestion.records import CustomerIn
from campaigns.models import Customer
from tests.test_ingest import engine  # noqa: F401  (the fixture: SQLite and PostgreSQL)

HEADERS = [
    ["id", "email", "first_name", "plan", "status", "timezone", "signed_up_at", "last_active_at",
     "company"],
    ["ID", "Email", "last_name", "locale", "cancelled_at", "status", "", "Tier", "score"],
    ["email", "id", "cancelled_at", "timezone"],
]
# Cells that are fine, borderline or wrong for some column.
VALUES = [
    "", " ", "csv1", "  csv2 ", "a" * 255, "a" * 256, "b" * 100, "b" * 101, "c" * 35, "c" * 36,
    "bob@example.com", " Bob@Example.COM ", "bob@", "bob@@example.com", "bob@localhost",
    "x" * 310 + "@example.com", "bob@exa_mple.com", "\"quoted\"@example.com", "bob@bücher.de",
    "active", " Active ", "CANCELLED", "canceled", "paused",
    "UTC", "utc", "Europe/Berlin", "America/New_York", "Mars/Olympus", "../etc/passwd", "z" * 65,
    "2024-03-01", "2024-03-01T14:30", "2024-03-01T14:30:00+01:00", "2024-03-01T14:30:00Z",
    " 2024-03-01 14:30:00.123456 ", "2024-13-01", "20240301", "yesterday", "2024-03-01T25:00",
    "pro", "free", "de-DE", "Ünïcödé", "a,b", "line\nbreak", "0", "null",
]


def _same(fast: tuple[str, dict[str, Any]], record: CustomerIn) -> None:
    external_id, values = fast
    expected = record.present_values()
    assert external_id == record.external_id
    assert values == expected
    for name, value in values.items():  # equal instants are not enough: the same wall time too
        assert type(value) is type(expected[name])
        if hasattr(value, "utcoffset"):
            assert (value.isoformat(), value.utcoffset()) == (expected[name].isoformat(),
                                                              expected[name].utcoffset())


def _check(header: Sequence[str], cells: list[str]) -> bool:
    """Whether the fast reader took the row; asserts it agrees with the model."""
    columns = _column_names(list(header), "customers", "test.csv", 1)
    reader = customer_reader(columns)
    assert reader is not None
    fast = reader(cells)
    slow = _parse_row(CustomerIn, columns, cells)
    if fast is not None:
        assert isinstance(slow, CustomerIn), slow
        _same(fast, slow)
    return fast is not None


def test_corpus_agrees_cell_by_cell() -> None:
    taken = 0
    for header in HEADERS:
        base = {"id": "csv1", "email": "bob@example.com"}
        for position in range(len(header)):
            for value in VALUES:
                cells = [base.get(name.lower(), "") for name in header]
                cells[position] = value
                taken += _check(header, cells)
    assert taken > 200  # the fast path is actually used


def test_short_and_long_rows() -> None:
    header = HEADERS[0]
    assert _check(header, ["csv1", "bob@example.com"])  # trailing cells trimmed
    assert not _check(header, ["csv1", "bob@example.com", *[""] * 8])  # one cell too many
    assert not _check(header, [""] * 9)


def test_headers_the_model_reads_itself() -> None:
    for header in (["id", "email", "attributes"], ["id", "external_id", "email"]):
        columns = _column_names(header, "customers", "test.csv", 1)
        assert customer_reader(columns) is None


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_row_agrees(data: st.DataObject) -> None:
    header = data.draw(st.sampled_from(HEADERS))
    cell = st.one_of(st.sampled_from(VALUES), st.text(max_size=12))
    cells = data.draw(st.lists(cell, min_size=0, max_size=len(header) + 1))
    _check(header, cells)


def _corpus_file() -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    header = HEADERS[1]
    writer.writerow(header)
    for n, value in enumerate(VALUES):
        for position in range(len(header)):
            cells = [f"c{n}-{position}", f"c{n}@example.com", "", "", "", "", "", "", ""]
            cells[position] = value
            writer.writerow(cells)
    writer.writerow(["c1-1", "again@example.com", "", "", "", "active", "", "gold", "7"])  # a repeat
    return out.getvalue()


def _import(db: Engine, text: str) -> tuple[Any, list[str], list[tuple[Any, ...]]]:
    messages: list[str] = []
    with Session(db) as session:
        report = import_csv(session, io.StringIO(text), "customers", batch_size=50,
                            on_reject=lambda header, cells, message: messages.append(message))
        table = Customer.__table__  # type: ignore[attr-defined]
        columns = [c for c in table.c if c.name not in ("id", "created_at", "updated_at")]
        rows = session.execute(sa.select(*columns).order_by(table.c.external_id)).all()
        session.execute(sa.delete(table))
        session.commit()
    return report, messages, [tuple(row) for row in rows]


def test_stored_rows_and_rejects_match_the_model_path(
    engine: Engine, monkeypatch: pytest.MonkeyPatch  # noqa: F811  (the imported fixture)
) -> None:
    text = _corpus_file()
    fast = _import(engine, text)
    monkeypatch.setattr(csv_import, "customer_reader", lambda columns: None)
    slow = _import(engine, text)
    assert fast[0] == slow[0]  # counts and (line, message) rejects
    assert fast[1] == slow[1]
    assert fast[2] == slow[2]
    assert fast[0].rejected_count > 20 and fast[0].inserted > 200
