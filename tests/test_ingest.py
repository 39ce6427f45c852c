"""Customers and events in: CSV import, upserts, activity and cadence."""

from __future__ import annotations

import csv
import itertools
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, select

from campaigns.errors import CsvFormatError
from campaigns.ingestion import CustomerIn, EventIn, parse_records, record_events, upsert_customers
from campaigns.ingestion.activity import median_gap_days, recent_active_days
from campaigns.ingestion.csv_import import ImportReport, import_csv
from campaigns.ingestion.records import parse_datetime
from campaigns.models import Customer, Event
from worker.cli.rejects import RejectsFile

NO_SKIPS: frozenset[str] = frozenset()


def import_file(session: Session, path: Path, kind: Any, *, rejects_path: Path | None = None,
                **options: Any) -> ImportReport:
    """As `retention import` reads a file: text with the spreadsheet BOM, rejects beside it."""
    with path.open(newline="", encoding="utf-8-sig") as source, RejectsFile(rejects_path) as sink:
        return import_csv(session, source, kind, on_reject=sink, **options)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = sa.create_engine(database_url)
    SQLModel.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with Session(engine) as session:
        yield session


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def customer(session: Session, external_id: str) -> Customer:
    session.expire_all()
    return session.exec(select(Customer).where(Customer.external_id == external_id)).one()


def events_of(session: Session, external_id: str) -> list[Event]:
    found = customer(session, external_id)
    return list(session.exec(select(Event).where(Event.customer_id == found.id)))


def add_customers(session: Session, *rows: dict[str, str]) -> None:
    records, errors = parse_records(CustomerIn, rows)
    assert errors == []
    upsert_customers(session, records)
    session.commit()


def add_events(session: Session, *rows: dict[str, str], skip: frozenset[str] = NO_SKIPS) -> None:
    records, errors = parse_records(EventIn, rows)
    assert errors == []
    result = record_events(session, records, non_activity_events=skip)
    assert result.errors == []
    session.commit()


def utc(year: int, month: int, day: int, hour: int = 0) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)


# ---------------------------------------------------------------- customers CSV

CUSTOMERS_WITH_PROBLEMS = """\
id,email,plan,timezone,notes
c1,ann@example.com,pro,Europe/Berlin,"likes
long
notes"
c2,not-an-email,free,,
c3,cy@example.org,team,Europe/Berln,
c4,dee@example.net,,,vip
"""


def test_bad_rows_are_reported_by_the_line_they_start_on_and_good_rows_are_kept(
    session: Session, tmp_path: Path
) -> None:
    # The quoted note spans lines 2-4, so c2 starts on physical line 5, not record 3.
    source = write(tmp_path / "customers.csv", CUSTOMERS_WITH_PROBLEMS)
    rejects = tmp_path / "rejects.csv"

    report = import_file(session, source, "customers", rejects_path=rejects)

    assert report.rows == 4
    assert (report.inserted, report.updated) == (2, 0)
    assert report.rejected == [
        (5, "email: not an email address ('not-an-email')"),
        (6, "timezone: unknown time zone 'Europe/Berln' (use an IANA name such as 'Europe/Berlin')"),
    ]
    assert customer(session, "c1").attributes == {"notes": "likes\nlong\nnotes"}
    assert customer(session, "c4").plan is None
    with rejects.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["id", "email", "plan", "timezone", "notes", "error"]
    assert rows[1][:3] == ["c2", "not-an-email", "free"]
    assert rows[1][-1] == "line 5: email: not an email address ('not-an-email')"
    assert rows[2][0] == "c3"
    assert len(rows) == 3


def test_a_clean_import_leaves_no_rejects_file_behind(session: Session, tmp_path: Path) -> None:
    rejects = write(tmp_path / "rejects.csv", "id,email,error\nold,row,line 2: from last time\n")

    report = import_file(session, write(tmp_path / "c.csv", "id,email\nc1,a@example.com\n"),
                        "customers", rejects_path=rejects)

    assert report.rejected == []
    assert not rejects.exists()


def test_extra_columns_become_attributes_without_the_empty_cells(
    session: Session, tmp_path: Path
) -> None:
    source = write(tmp_path / "c.csv", "ID,Email,company,seats\nc1,a@example.com,Acme,\n")

    import_file(session, source, "customers")

    stored = customer(session, "c1")
    assert stored.email == "a@example.com"
    assert stored.attributes == {"company": "Acme"}


def test_importing_the_same_customers_twice_changes_nothing(
    session: Session, tmp_path: Path
) -> None:
    source = write(tmp_path / "c.csv", CUSTOMERS_WITH_PROBLEMS)
    import_file(session, source, "customers")
    before = [c.model_dump(exclude={"updated_at"}) for c in session.exec(select(Customer))]

    again = import_file(session, source, "customers")

    session.expire_all()
    after = [c.model_dump(exclude={"updated_at"}) for c in session.exec(select(Customer))]
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 2)
    assert after == before


def test_a_file_without_a_column_keeps_what_is_stored_for_it(
    session: Session, tmp_path: Path
) -> None:
    import_file(session, write(tmp_path / "a.csv", "id,email,plan,team\nc1,a@example.com,pro,red\n"),
               "customers")

    import_file(session, write(tmp_path / "b.csv", "id,email,first_name,seats\n"
                                                  "c1,new@example.com,Zoë,5\n"), "customers")

    stored = customer(session, "c1")
    assert (stored.email, stored.first_name, stored.plan) == ("new@example.com", "Zoë", "pro")
    assert stored.attributes == {"team": "red", "seats": "5"}


def test_naive_signup_time_is_read_in_the_rows_own_time_zone(
    session: Session, tmp_path: Path
) -> None:
    source = write(
        tmp_path / "c.csv",
        "id,email,timezone,signed_up_at\n"
        "berlin,b@example.com,Europe/Berlin,2024-01-15T10:00:00\n"
        "nozone,n@example.com,,2024-01-15T10:00:00\n"
        "offset,o@example.com,Europe/Berlin,2024-01-15T10:00:00-05:00\n",
    )

    import_file(session, source, "customers")

    assert customer(session, "berlin").signed_up_at == utc(2024, 1, 15, 9)  # winter: UTC+1
    assert customer(session, "nozone").signed_up_at == utc(2024, 1, 15, 10)
    assert customer(session, "offset").signed_up_at == utc(2024, 1, 15, 15)


def test_a_cancellation_date_without_a_status_column_cancels(
    session: Session, tmp_path: Path
) -> None:
    source = write(tmp_path / "c.csv", "id,email,cancelled_at\nc1,a@example.com,2024-05-01\n"
                                       "c2,b@example.com,\n")

    import_file(session, source, "customers")

    assert customer(session, "c1").status == "cancelled"
    assert customer(session, "c1").cancelled_at == utc(2024, 5, 1)
    assert customer(session, "c2").status == "active"


@pytest.mark.parametrize(
    ("header", "message"),
    [
        pytest.param("id,name,plan", "missing required column 'email' (columns found: id, name, plan)",
                     id="email"),
        pytest.param("mail", "missing required columns 'id', 'email' (columns found: mail)",
                     id="both"),
        pytest.param("id,email,plan,Plan", "column 'plan' appears twice (columns 3 and 4)",
                     id="twice"),
    ],
)
def test_a_file_without_the_required_columns_is_refused_before_anything_is_stored(
    session: Session, tmp_path: Path, header: str, message: str
) -> None:
    source = write(tmp_path / "c.csv", f"{header}\nc1,a@example.com,pro,pro\n")

    with pytest.raises(CsvFormatError) as caught:
        import_file(session, source, "customers")

    assert str(caught.value).startswith(f"{source}:1: {message}")
    assert session.exec(select(Customer)).all() == []


def test_a_file_that_is_not_utf8_is_refused_with_how_to_fix_it(
    session: Session, tmp_path: Path
) -> None:
    source = tmp_path / "latin1.csv"
    source.write_bytes("id,email,first_name\nc1,a@example.com,Zoë\n".encode("latin-1"))

    with pytest.raises(CsvFormatError, match="not UTF-8 text: save the file as 'CSV UTF-8'"):
        import_file(session, source, "customers")


def test_a_row_with_more_cells_than_columns_is_rejected(session: Session, tmp_path: Path) -> None:
    source = write(tmp_path / "c.csv", "id,email\nc1,a@example.com,extra\nc2,b@example.com\n")

    report = import_file(session, source, "customers")

    assert report.rejected == [(2, "has 3 cells but the header names 2 columns "
                                   "(a comma in a value that is not in quotes?)")]
    assert report.inserted == 1


def test_progress_is_reported_after_every_committed_batch(
    session: Session, tmp_path: Path
) -> None:
    lines = "".join(f"c{n},c{n}@example.com\n" for n in range(7))
    seen: list[int] = []

    report = import_file(session, write(tmp_path / "c.csv", "id,email\n" + lines), "customers",
                        batch_size=3, on_progress=seen.append)

    assert seen == [3, 6, 7]
    assert report.inserted == 7


# ---------------------------------------------------------------- validation messages


@pytest.mark.parametrize(
    ("item", "message"),
    [
        pytest.param({"id": "c1"}, "email: is required", id="missing-email"),
        pytest.param({"id": "c1", "email": "a@example.com", "status": "paused"},
                     "status: must be 'active' or 'cancelled', not 'paused'", id="status"),
        pytest.param({"id": "c1", "email": "a@example.com", "signed_up_at": "yesterday"},
                     "signed_up_at: not an ISO 8601 date/time: 'yesterday' (write e.g. 2024-03-01, "
                     "2024-03-01T14:30 or 2024-03-01T14:30:00+01:00)", id="date"),
    ],
)
def test_invalid_customers_are_explained_field_by_field(item: dict[str, str], message: str) -> None:
    assert parse_records(CustomerIn, [item]) == ([], [(0, message)])


@pytest.mark.parametrize(
    ("properties", "message"),
    [
        pytest.param("[1, 2]", 'properties: must be a JSON object, e.g. {"plan": "pro"}', id="list"),
        pytest.param("{plan: pro}", "properties: not valid JSON (Expecting property name enclosed "
                     "in double quotes at character 2)", id="broken"),
    ],
)
def test_event_properties_must_be_a_json_object(properties: str, message: str) -> None:
    item = {"customer_id": "c1", "event": "login", "occurred_at": "2024-01-01",
            "properties": properties}
    assert parse_records(EventIn, [item]) == ([], [(0, message)])


def test_customer_and_event_ids_may_be_sent_as_numbers() -> None:
    records, errors = parse_records(EventIn, [{"customer_id": 42, "event": "login",
                                               "occurred_at": "2024-01-01", "id": 7}])
    assert errors == []
    assert (records[0].customer_id, records[0].client_id) == ("42", "7")


# ---------------------------------------------------------------- events


EVENTS_HEADER = "customer_id,event,occurred_at,id,properties\n"


def test_event_rows_are_stored_and_unknown_customers_rejected_by_line(
    session: Session, tmp_path: Path
) -> None:
    add_customers(session, {"id": "c1", "email": "a@example.com"})
    source = write(tmp_path / "e.csv", EVENTS_HEADER
                   + 'c1,login,2024-03-01T10:00:00Z,e1,"{""device"": ""ios""}"\n'
                   + "ghost,login,2024-03-01T10:00:00Z,e2,\n"
                   + "c1,export,2024-03-02T10:00:00Z,,\n")
    rejects = tmp_path / "rejects.csv"

    report = import_file(session, source, "events", rejects_path=rejects)

    assert report.inserted == 2
    assert report.rejected == [
        (3, "customer_id: no customer with id 'ghost' (import the customer before their events)")
    ]
    assert "line 3: customer_id: no customer" in rejects.read_text(encoding="utf-8")
    stored = {e.name: e for e in events_of(session, "c1")}
    assert stored["login"].properties == {"device": "ios"}
    assert stored["login"].client_id == "e1"


def test_an_event_sent_twice_with_the_same_id_is_stored_and_counted_once(session: Session) -> None:
    add_customers(session, {"id": "c1", "email": "a@example.com"})
    event = {"customer_id": "c1", "event": "login", "occurred_at": "2024-03-01T10:00Z", "id": "x"}
    records, _ = parse_records(EventIn, [event, event])

    first = record_events(session, records, non_activity_events=NO_SKIPS)
    second = record_events(session, records[:1], non_activity_events=NO_SKIPS)
    session.commit()

    assert (first.inserted, first.duplicates) == (1, 1)
    assert (second.inserted, second.duplicates) == (0, 1)
    assert len(events_of(session, "c1")) == 1
    assert customer(session, "c1").activity_count == 1


def test_an_event_file_without_ids_imported_twice_is_stored_once(
    session: Session, tmp_path: Path
) -> None:
    add_customers(session, {"id": "c1", "email": "a@example.com"})
    source = write(tmp_path / "e.csv", "customer_id,event,occurred_at\n"
                   "c1,login,2024-03-01T10:00:00Z\nc1,login,2024-03-02T10:00:00Z\n")

    import_file(session, source, "events")
    again = import_file(session, source, "events")

    assert (again.inserted, again.duplicates) == (0, 2)
    assert customer(session, "c1").activity_count == 2


def test_naive_event_time_is_read_in_the_customers_stored_time_zone(session: Session) -> None:
    add_customers(session, {"id": "berlin", "email": "b@example.com", "timezone": "Europe/Berlin"},
                  {"id": "plain", "email": "p@example.com"})

    add_events(session, {"customer_id": "berlin", "event": "login", "occurred_at": "2024-01-15 10:00"},
               {"customer_id": "plain", "event": "login", "occurred_at": "2024-01-15 10:00"})

    assert customer(session, "berlin").last_active_at == utc(2024, 1, 15, 9)
    assert customer(session, "plain").last_active_at == utc(2024, 1, 15, 10)


def test_an_imported_batch_with_one_naive_time_reads_that_customers_zone(
    session: Session, tmp_path: Path
) -> None:
    # The import looks its customers up without their zones unless a row needs one.
    add_customers(session, {"id": "berlin", "email": "b@example.com", "timezone": "Europe/Berlin"},
                  {"id": "plain", "email": "p@example.com"})
    path = write(tmp_path / "events.csv", "customer_id,event,occurred_at\n"
                 "plain,login,2024-01-14T10:00:00+00:00\n"
                 "berlin,login,2024-01-15 10:00\n")

    assert import_file(session, path, "events").rejected == []

    assert customer(session, "berlin").last_active_at == utc(2024, 1, 15, 9)
    assert customer(session, "plain").last_active_at == utc(2024, 1, 14, 10)


def test_an_old_event_arriving_late_does_not_move_last_activity_back(session: Session) -> None:
    add_customers(session, {"id": "c1", "email": "a@example.com"})
    add_events(session, {"customer_id": "c1", "event": "login", "occurred_at": "2024-03-10T10:00Z"})

    add_events(session, {"customer_id": "c1", "event": "login", "occurred_at": "2024-01-01T10:00Z"})

    stored = customer(session, "c1")
    assert stored.last_active_at == utc(2024, 3, 10, 10)
    assert stored.activity_count == 2


def test_an_imported_last_active_at_only_moves_forward(session: Session) -> None:
    add_customers(session, {"id": "c1", "email": "a@example.com"})
    add_events(session, {"customer_id": "c1", "event": "login", "occurred_at": "2024-03-10T10:00Z"})

    add_customers(session, {"id": "c1", "email": "a@example.com", "last_active_at": "2024-02-01"})
    assert customer(session, "c1").last_active_at == utc(2024, 3, 10, 10)
    add_customers(session, {"id": "c1", "email": "a@example.com", "last_active_at": "2024-04-01"})
    assert customer(session, "c1").last_active_at == utc(2024, 4, 1)


def test_a_non_activity_event_is_stored_but_not_counted_as_activity(session: Session) -> None:
    add_customers(session, {"id": "c1", "email": "a@example.com"})

    add_events(session, {"customer_id": "c1", "event": "email_opened", "occurred_at": "2024-03-01"},
               skip=frozenset({"email_opened"}))

    stored = customer(session, "c1")
    assert [e.name for e in events_of(session, "c1")] == ["email_opened"]
    assert (stored.last_active_at, stored.activity_count) == (None, 0)


def test_a_cancelled_event_cancels_the_customer_at_its_time(session: Session) -> None:
    add_customers(session, {"id": "c1", "email": "a@example.com"})

    add_events(session, {"customer_id": "c1", "event": "cancelled",
                         "occurred_at": "2024-03-01T12:00Z", "properties": '{"reason": "price"}'})

    stored = customer(session, "c1")
    assert (stored.status, stored.cancelled_at) == ("cancelled", utc(2024, 3, 1, 12))


# ---------------------------------------------------------------- cadence


def logins(external_id: str, start: datetime, every: timedelta, count: int) -> list[dict[str, str]]:
    return [{"customer_id": external_id, "event": "login",
             "occurred_at": (start + every * n).isoformat()} for n in range(count)]


def test_a_customer_active_every_15_days_has_a_cadence_of_15(session: Session) -> None:
    add_customers(session, {"id": "c1", "email": "a@example.com"})

    add_events(session, *logins("c1", utc(2024, 1, 1, 9), timedelta(days=15), 6))

    assert customer(session, "c1").cadence_days == 15


def test_cadence_is_unknown_with_fewer_than_three_active_days(session: Session) -> None:
    add_customers(session, {"id": "c1", "email": "a@example.com"})

    # Many events, but on two distinct days only.
    add_events(session, *logins("c1", utc(2024, 1, 1, 9), timedelta(hours=1), 5),
               *logins("c1", utc(2024, 1, 9, 9), timedelta(hours=1), 5))

    assert customer(session, "c1").cadence_days is None


def test_cadence_builds_up_as_events_arrive_one_at_a_time(session: Session) -> None:
    add_customers(session, {"id": "c1", "email": "a@example.com"})

    for event in logins("c1", utc(2024, 1, 1, 9), timedelta(days=4), 4):
        add_events(session, event)

    assert customer(session, "c1").cadence_days == 4


def test_cadence_follows_recent_habits_not_the_whole_history(session: Session) -> None:
    add_customers(session, {"id": "c1", "email": "a@example.com"})
    add_events(session, *logins("c1", utc(2023, 1, 1, 9), timedelta(days=30), 10))

    add_events(session, *logins("c1", utc(2024, 1, 1, 9), timedelta(days=2), 25))

    assert customer(session, "c1").cadence_days == 2


def test_a_very_busy_customer_still_gets_a_cadence(session: Session) -> None:
    # 300 events a day is more than one page of the recent-days query.
    add_customers(session, {"id": "c1", "email": "a@example.com"})
    for day in range(4):
        add_events(session, *logins("c1", utc(2024, 1, 1 + 3 * day), timedelta(seconds=60), 300))

    stored = customer(session, "c1")
    assert stored.cadence_days == 3
    assert recent_active_days(session, stored.id or 0, non_activity_events=NO_SKIPS) == [
        date(2024, 1, 10), date(2024, 1, 7), date(2024, 1, 4), date(2024, 1, 1)
    ]


def test_non_activity_events_do_not_shape_the_cadence(session: Session) -> None:
    add_customers(session, {"id": "c1", "email": "a@example.com"})
    skip = frozenset({"email_opened"})
    add_events(session, *logins("c1", utc(2024, 1, 1, 9), timedelta(days=10), 4), skip=skip)

    add_events(session, *[{"customer_id": "c1", "event": "email_opened",
                           "occurred_at": f"2024-01-{d:02d}T12:00Z"} for d in (3, 5, 7, 9)],
               skip=skip)

    assert customer(session, "c1").cadence_days == 10


@given(
    start=st.dates(min_value=date(2000, 1, 1), max_value=date(2030, 1, 1)),
    gap=st.integers(min_value=1, max_value=60),
    count=st.integers(min_value=3, max_value=30),
)
def test_evenly_spaced_active_days_have_that_gap_as_cadence(start: date, gap: int, count: int) -> None:
    days = [start + timedelta(days=gap * n) for n in range(count)]
    assert median_gap_days(reversed(days)) == gap


@given(st.lists(st.dates(min_value=date(2000, 1, 1), max_value=date(2030, 1, 1)), max_size=40))
def test_cadence_lies_between_the_shortest_and_longest_gap(days: list[date]) -> None:
    distinct = sorted(set(days))
    cadence = median_gap_days(days + days)  # repeats of a day change nothing
    if len(distinct) < 3:
        assert cadence is None
        return
    gaps = [(b - a).days for a, b in itertools.pairwise(distinct)]
    assert cadence is not None
    assert min(gaps) <= cadence <= max(gaps)


@given(st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2100, 1, 1),
                    timezones=st.sampled_from([UTC, None])))
def test_iso_8601_text_parses_back_to_the_same_time(moment: datetime) -> None:
    assert parse_datetime(moment.isoformat()) == moment
    assert parse_datetime(moment.isoformat(sep=" ")) == moment


def test_an_import_report_keeps_a_bounded_number_of_messages() -> None:
    report = ImportReport(kind="customers")
    for line in range(5000):
        report.reject(line, "bad")
    assert report.rejected_count == 5000
    assert len(report.rejected) == 1000
