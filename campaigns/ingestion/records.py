"""Customers and events as the company sends them: the records and their validation.

The CSV importer, the HTTP API, the Segment API and the ``track`` actor share
``CustomerIn`` / ``EventIn`` (and ``customers.upsert_customers`` /
``events.record_events`` to store them), so a record means the same thing whichever
way it arrives.

Times without an offset are read in the customer's time zone when it is known
(the record's own ``timezone``, else the stored one), else as UTC.  That is why
the models may hold naive datetimes: the zone is only known once the customer
has been looked up, inside the upsert.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, date, datetime, time
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from campaigns.addresses import is_mailbox
from campaigns.models import CustomerStatus
from campaigns.timezones import check_timezone


def parse_datetime(value: object) -> datetime:
    """ISO 8601 text (or a date/datetime) to a datetime; naive when the text has no offset."""
    if isinstance(value, str):  # the usual case first: a million of them in an import
        try:
            return datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(
                f"not an ISO 8601 date/time: {value!r} "
                "(write e.g. 2024-03-01, 2024-03-01T14:30 or 2024-03-01T14:30:00+01:00)"
            ) from None
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime.combine(value, time())
    raise ValueError(f"not a date/time: {value!r}")


def to_utc(value: datetime, zone: str | None) -> datetime:
    """Aware UTC; a naive value is read as wall-clock time in ``zone`` (UTC when None)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=ZoneInfo(zone) if zone else UTC)
    return value.astimezone(UTC)


def validation_message(exc: ValidationError) -> str:
    """One line a marketer can act on: ``email: not an email address ('bob@')``."""
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(p) for p in error["loc"]) or "record"
        if error["type"] == "missing":
            message = "is required"
        else:
            message = str(error["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


DATETIME_FIELDS = ("signed_up_at", "cancelled_at", "last_active_at")


class CustomerIn(BaseModel):
    """One customer as the company sends it.  Fields not sent are left alone on update."""

    model_config = ConfigDict(
        validate_by_name=True, validate_by_alias=True, str_strip_whitespace=True, extra="forbid"
    )

    external_id: str = Field(alias="id", min_length=1, max_length=255)
    email: str = Field(max_length=320)
    first_name: str | None = Field(default=None, max_length=255)
    last_name: str | None = Field(default=None, max_length=255)
    plan: str | None = Field(default=None, max_length=100)
    status: CustomerStatus | None = None
    timezone: str | None = Field(default=None, max_length=64)
    locale: str | None = Field(default=None, max_length=35)
    signed_up_at: datetime | None = None
    cancelled_at: datetime | None = None
    last_active_at: datetime | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _extra_fields_are_attributes(cls, data: Any) -> Any:
        return _fold_extra(data, _CUSTOMER_KEYS, "attributes")

    @field_validator("external_id", mode="before")
    @classmethod
    def _id_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        if not is_mailbox(value):
            raise ValueError(f"not an email address ({value!r})")
        return value

    @field_validator("status", mode="before")
    @classmethod
    def _status(cls, value: Any) -> Any:
        if isinstance(value, str):
            normalized = value.strip().lower()
            if normalized not in CustomerStatus.__members__:
                raise ValueError(f"must be 'active' or 'cancelled', not {value!r}")
            return normalized
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str | None) -> str | None:
        return None if value is None else check_timezone(value)

    @field_validator(*DATETIME_FIELDS, mode="before")
    @classmethod
    def _datetime(cls, value: Any) -> Any:
        return None if value is None else parse_datetime(value)

    @field_validator("attributes")
    @classmethod
    def _attributes(cls, value: dict[str, Any]) -> dict[str, Any]:
        # null means "nothing to say": merging it would differ between SQLite and PostgreSQL.
        return {str(k): v for k, v in value.items() if v is not None}

    @model_validator(mode="after")
    def _settle(self) -> CustomerIn:
        # Times stay as written: the upsert reads them in the record's zone, else the stored one.
        # A cancellation date without a status column means the customer cancelled.
        if self.cancelled_at is not None and "status" not in self.model_fields_set:
            self.status = CustomerStatus.cancelled
        return self

    def present_values(self) -> dict[str, Any]:
        """Column values for the fields this record actually carries."""
        values = {name: getattr(self, name) for name in self.model_fields_set}
        values.pop("status", None)  # an explicit null status means "unchanged"
        if self.status is not None:  # may have been inferred after validation
            values["status"] = self.status.value
        return values


class EventIn(BaseModel):
    """One event.  ``customer_id`` is the company's id (Customer.external_id)."""

    model_config = ConfigDict(
        validate_by_name=True, validate_by_alias=True, str_strip_whitespace=True, extra="forbid"
    )

    customer_id: str = Field(min_length=1, max_length=255)
    event: str = Field(min_length=1, max_length=100)
    occurred_at: datetime
    client_id: str | None = Field(default=None, alias="id", min_length=1, max_length=255)
    properties: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _extra_fields_are_properties(cls, data: Any) -> Any:
        return _fold_extra(data, _EVENT_KEYS, "properties", parse=_json_object)

    @field_validator("customer_id", "client_id", mode="before")
    @classmethod
    def _id_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("occurred_at", mode="before")
    @classmethod
    def _datetime(cls, value: Any) -> Any:
        return parse_datetime(value)

    @field_validator("properties", mode="before")
    @classmethod
    def _properties(cls, value: Any) -> Any:
        return _json_object(value) if isinstance(value, str) else value


# Keys a record may carry by name or alias; anything else is an attribute / a property.
def _fold_extra(
    data: Any, known: frozenset[str], into: str, parse: Callable[[str], Any] | None = None
) -> Any:
    """A record whose unknown keys went into its ``into`` mapping (attributes, properties);
    ``parse`` reads that mapping when it came as text (a CSV cell)."""
    if not isinstance(data, Mapping) or known.issuperset(data):
        return data
    extra = {k: v for k, v in data.items() if k not in known}
    cleaned = {k: v for k, v in data.items() if k in known}
    inner = cleaned.get(into)
    if parse is not None and isinstance(inner, str):
        inner = parse(inner)
    cleaned[into] = {**inner, **extra} if isinstance(inner, Mapping) else extra
    return cleaned


_CUSTOMER_KEYS = frozenset({"id", *CustomerIn.model_fields})
_EVENT_KEYS = frozenset({"id", *EventIn.model_fields})


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at character {exc.pos + 1})") from None
    if not isinstance(value, dict):
        raise ValueError('must be a JSON object, e.g. {"plan": "pro"}')
    return value


Record = TypeVar("Record", CustomerIn, EventIn)


def parse_records(
    model: type[Record], items: Iterable[Mapping[str, Any]]
) -> tuple[list[Record], list[tuple[int, str]]]:
    """Validate raw items (e.g. an API body): the good records and (index, message) for the rest."""
    good: list[Record] = []
    bad: list[tuple[int, str]] = []
    for index, item in enumerate(items):
        try:
            good.append(model.model_validate(item))
        except ValidationError as exc:
            bad.append((index, validation_message(exc)))
    return good, bad
