"""CSV import of customers and events: streaming, batched, bad rows reported by line.

Rows go through the same records and upserts as the HTTP API and the actors
(`campaigns.ingestion.records`, `.customers`, `.events`), so a row means the same
thing whichever way it arrives.
"""

from __future__ import annotations

import csv
import gc
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any, Literal

from pydantic import ValidationError
from sqlalchemy.orm import Session

import campaigns.ingestion.bulk as bulk
from campaigns.errors import CsvFormatError
from campaigns.ingestion.customers import upsert_customer_values
from campaigns.ingestion.events import record_events
from campaigns.ingestion.fast_customers import customer_reader
from campaigns.ingestion.fast_events import event_reader
from campaigns.ingestion.pending import fold_pending_activity
from campaigns.ingestion.records import DATETIME_FIELDS, CustomerIn, EventIn, validation_message

log = logging.getLogger(__name__)

MAX_REPORTED_REJECTS = 1000
# Rows per transaction: bigger batches amortize each commit's page writes (+30 % events/s
# over 1000) while memory stays flat.
BATCH_ROWS = 10_000


# ---------------------------------------------------------------- values


ImportKind = Literal["customers", "events"]

_COLUMNS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # kind: (required columns, optional known columns)
    "customers": (
        ("id", "email"),
        ("first_name", "last_name", "plan", "status", "timezone", "locale", *DATETIME_FIELDS),
    ),
    "events": (("customer_id", "event", "occurred_at"), ("id", "properties")),
}


@dataclass
class ImportReport:
    kind: str
    rows: int = 0  # data records read (good and rejected)
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0  # known customers the file changed nothing about
    duplicates: int = 0
    rejected_count: int = 0
    # (line, message) for the first MAX_REPORTED_REJECTS bad records; line is where the
    # record starts in the file (header = line 1), which matters for multi-line quoted cells.
    rejected: list[tuple[int, str]] = field(default_factory=list)

    def reject(self, line: int, message: str) -> None:
        self.rejected_count += 1
        if len(self.rejected) < MAX_REPORTED_REJECTS:
            self.rejected.append((line, message))


# Where a rejected row goes: (the file's header, the row's cells, "line N: what is wrong").
RejectSink = Callable[[Sequence[str], Sequence[str], str], None]


def _column_names(header: list[str], kind: ImportKind, path: str, line: int) -> list[str]:
    required, optional = _COLUMNS[kind]
    known = {name: name for name in (*required, *optional)}
    names: list[str] = []
    for position, raw in enumerate(header, start=1):
        name = raw.strip()
        name = known.get(name.lower(), name)  # "Email" is email; other names keep their case
        if name and name in names:
            raise CsvFormatError(
                f"{path}:{line}: column {name!r} appears twice (columns {names.index(name) + 1} "
                f"and {position}): rename or remove one"
            )
        names.append(name)
    missing = [name for name in required if name not in names]
    if missing:
        found = ", ".join(n for n in names if n) or "none"
        what = "column" if len(missing) == 1 else "columns"
        listed = ", ".join(repr(n) for n in missing)
        raise CsvFormatError(f"{path}:{line}: missing required {what} {listed} (columns found: {found})")
    return names


def import_csv(
    session: Session,
    source: IO[str],
    kind: ImportKind,
    *,
    name: str | None = None,
    batch_size: int = BATCH_ROWS,
    non_activity_events: frozenset[str] = frozenset(),
    on_progress: Callable[[int], None] | None = None,
    on_reject: RejectSink | None = None,
) -> ImportReport:
    """Import a customers or events CSV: good rows are kept, bad rows reported by line.

    Streams the file and commits every ``batch_size`` rows, so memory stays flat and an
    interrupted import keeps what it committed (re-running it is harmless).  Empty cells are
    absent values.  ``on_progress`` receives the number of rows read so far after each batch.
    ``source`` is text opened with ``newline=""`` (``encoding="utf-8-sig"`` for files from
    spreadsheets); errors name it by ``name``, else its ``name`` attribute.  Each rejected
    row also goes to ``on_reject``.  Raises CsvFormatError when the file as a whole is unusable.
    """
    if kind not in _COLUMNS:
        raise ValueError(f"kind must be 'customers' or 'events', not {kind!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    path = name if name is not None else str(getattr(source, "name", "<csv>"))
    report = ImportReport(kind=kind)
    model: type[CustomerIn] | type[EventIn] = CustomerIn if kind == "customers" else EventIn

    with _fewer_gc_pauses():
        reader = csv.reader(source)
        header, header_line = _read_header(reader, path)
        columns = _column_names(header, kind, path, header_line)
        # Plainly valid rows skip the model (same values); the rest go through it.
        fast = customer_reader(columns) if kind == "customers" else event_reader(columns)

        def rejects(cells: list[str], message: str) -> None:
            if on_reject is not None:
                on_reject(header, cells, message)

        batch: list[tuple[int, list[str], Any]] = []
        read_since_flush = 0

        def flush() -> None:
            nonlocal batch, read_since_flush
            if batch:
                try:
                    bulk.batch_pragmas(session)
                    _write_batch(session, kind, batch, report, rejects, non_activity_events)
                    session.commit()
                except Exception:
                    session.rollback()  # earlier batches stay committed
                    raise
            if read_since_flush and on_progress is not None:
                on_progress(report.rows)
            batch, read_since_flush = [], 0

        def finish() -> None:
            flush()
            if kind == "events":  # the batches' activity, applied once per customer
                try:
                    bulk.batch_pragmas(session)
                    fold_pending_activity(session, non_activity_events=non_activity_events)
                    session.commit()
                except Exception:
                    session.rollback()  # the events stay, and the next pass folds again
                    raise

        while True:
            line = reader.line_num + 1  # where the next record starts
            try:
                cells = next(reader)
            except StopIteration:
                break
            except (csv.Error, UnicodeDecodeError) as exc:
                finish()
                raise CsvFormatError(f"{path}:{line}: {_describe_read_error(exc)}") from exc
            joined = "".join(cells)
            if not joined or joined.isspace():
                continue  # blank line
            report.rows += 1
            read_since_flush += 1
            outcome = (fast(cells) if fast is not None else None) or _parse_row(model, columns, cells)
            if isinstance(outcome, str):
                report.reject(line, outcome)
                rejects(cells, f"line {line}: {outcome}")
            else:
                batch.append((line, cells, outcome))
            if read_since_flush >= batch_size:
                flush()
        finish()
    report.rejected.sort()
    log.info(
        "imported %s from %s: %d rows, %d inserted, %d updated, %d duplicates, %d rejected",
        kind, path, report.rows, report.inserted, report.updated, report.duplicates,
        report.rejected_count,
    )
    return report


@contextmanager
def _fewer_gc_pauses() -> Iterator[None]:
    """Rarer young-generation collections while importing, restored afterwards.

    An import allocates (and frees) millions of small objects without cycles; at the
    default threshold the collector runs every 700 of them, about a tenth of the time.
    """
    thresholds = gc.get_threshold()
    gc.set_threshold(50_000, *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)


def _read_header(reader: Any, path: str) -> tuple[list[str], int]:
    try:
        for cells in reader:
            if any(cell.strip() for cell in cells):
                return cells, reader.line_num
    except (csv.Error, UnicodeDecodeError) as exc:
        raise CsvFormatError(f"{path}:1: {_describe_read_error(exc)}") from exc
    raise CsvFormatError(f"{path}:1: the file is empty: the first line must name the columns")


def _describe_read_error(exc: Exception) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text: save the file as 'CSV UTF-8' and import it again"
    return f"unreadable CSV ({exc}): check the quoting around this line"


def _parse_row(
    model: type[CustomerIn] | type[EventIn], columns: list[str], cells: list[str]
) -> CustomerIn | EventIn | str:
    if len(cells) > len(columns):
        return (
            f"has {len(cells)} cells but the header names {len(columns)} columns "
            "(a comma in a value that is not in quotes?)"
        )
    # Missing trailing cells (some spreadsheets trim them) are simply empty.
    data = {name: value for name, cell in zip(columns, cells, strict=False)
            if name and (value := cell.strip())}
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        return validation_message(exc)


def _write_batch(
    session: Session,
    kind: ImportKind,
    batch: list[tuple[int, list[str], Any]],
    report: ImportReport,
    rejects: Callable[[list[str], str], None],
    non_activity_events: frozenset[str],
) -> None:
    records = [record for _, _, record in batch]
    if kind == "customers":
        # Rows the fast reader took are (id, values) already.
        upserted = upsert_customer_values(session, [
            record if isinstance(record, tuple) else (record.external_id, record.present_values())
            for record in records
        ])
        report.inserted += upserted.inserted
        report.updated += upserted.updated
        report.unchanged += upserted.unchanged
        report.duplicates += upserted.duplicates
        return
    recorded = record_events(session, records, non_activity_events=non_activity_events,
                             defer_activity=True)
    report.inserted += recorded.inserted
    report.duplicates += recorded.duplicates
    for index, message in recorded.errors:
        line, cells, _ = batch[index]
        report.reject(line, message)
        rejects(cells, f"line {line}: {message}")
