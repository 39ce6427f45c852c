"""Definitions that several stages use have one home; these tests fail when a second copy drifts.

(The inactivity reference and the address validator have their own files:
test_inactivity_reference.py and test_addresses.py.)
"""

from __future__ import annotations

import inspect
import re
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import Session, col

from campaigns.delivery.context import build_sample_context
from campaigns.delivery.rendering import TemplateStore
from campaigns.delivery.sendwindow import next_send_time
from campaigns.delivery.transport import Transport
from campaigns.errors import RulesErrors, TemplateError
from campaigns.ingestion.records import CustomerIn
from campaigns.models import CampaignState
from campaigns.responses.pages import ERROR, SAMPLE_CONTEXTS, Pages
from campaigns.rules import WEEKDAYS
from campaigns.sql import ID_CHUNK, chunks, dialect_insert
from campaigns.timezones import customer_zone
from tests.factories import migrated_engine, rules
from worker import mail, settings
from worker.actors import declare

ROOT = Path(__file__).resolve().parent.parent


def test_weekday_names_follow_pythons_weekday_numbers() -> None:
    # Every name send_days accepts allows exactly the days Python gives that name.
    monday = datetime(2026, 11, 23, 12, 0)  # a Monday, noon UTC
    for offset, name in enumerate(WEEKDAYS):
        moment = monday + timedelta(days=offset)
        assert moment.strftime("%a").lower() == name
        campaign = rules(f"campaigns: [{{id: c, template: t, once: true, send_days: [{name}]}}]").campaigns[0]
        zone = customer_zone("UTC", "UTC")
        assert next_send_time(moment.replace(tzinfo=zone), zone, None, campaign.send_days) is None
        other = moment + timedelta(days=1)
        assert next_send_time(other.replace(tzinfo=zone), zone, None, campaign.send_days) is not None


@pytest.mark.parametrize("zone", ["Europe/Berlin", "America/Argentina/Buenos_Aires", "Europe/Berln", "UTC+1"])
def test_rules_and_ingestion_accept_the_same_time_zones(zone: str) -> None:
    try:
        rules(f"defaults: {{timezone: {zone}}}")
        in_rules = True
    except RulesErrors:
        in_rules = False
    try:
        CustomerIn.model_validate({"id": "c1", "email": "a@acme.example", "timezone": zone})
        in_ingestion = True
    except ValueError:
        in_ingestion = False
    assert in_rules == in_ingestion
    # Sending falls back to the default exactly for the zones both refuse.
    assert (customer_zone(zone, "Asia/Tokyo").key == zone) == in_rules


def test_every_transport_is_the_senders_transport(tmp_path: Path) -> None:
    assert mail.Transport is Transport
    wanted = inspect.signature(Transport.send)
    for url in (f"maildir://{tmp_path}/out", "console://", "smtp://127.0.0.1:1"):
        transport = mail.transport_from_url(url)
        assert isinstance(transport, Transport), url
        assert inspect.signature(type(transport).send).parameters.keys() == wanted.parameters.keys(), url


def test_retry_backoff_defaults_are_the_settings_defaults() -> None:
    defaults = inspect.signature(declare).parameters
    fields = settings.Settings.model_fields
    assert defaults["min_backoff_ms"].default == fields["retry_min_backoff_ms"].default
    assert defaults["max_backoff_ms"].default == fields["retry_max_backoff_ms"].default


def test_id_chunks_cover_every_id_once_within_the_bound_variable_limit() -> None:
    ids = list(range(2 * ID_CHUNK + 7))
    parts = list(chunks(ids))
    assert [i for part in parts for i in part] == ids
    assert max(len(p) for p in parts) <= ID_CHUNK < 999  # SQLite's old limit


def test_dialect_insert_upserts_on_both_databases(database_url: str) -> None:
    engine = migrated_engine(database_url)
    try:
        with Session(engine) as session:
            for _ in range(2):
                session.execute(dialect_insert(session, CampaignState).values(campaign_id="c")
                                .on_conflict_do_nothing())
            count = session.scalar(sa.select(sa.func.count()).where(col(CampaignState.campaign_id) == "c"))
            assert count == 1
    finally:
        engine.dispose()


def test_email_and_page_templates_locate_a_failure_the_same_way(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", templates)
    broken = "line one\n{{ 1 // 0 }}\n"
    (templates / "we_miss_you" / "body.txt.j2").write_text(broken)
    (templates / "pages").mkdir(exist_ok=True)  # a page overriding the built-in one
    (templates / "pages" / ERROR).write_text(broken)

    with pytest.raises(TemplateError) as in_email:
        TemplateStore(templates).render("we_miss_you", build_sample_context(template="we_miss_you"))
    with pytest.raises(TemplateError) as in_page:
        Pages(templates).render(ERROR, SAMPLE_CONTEXTS[ERROR])
    assert in_email.value.file.endswith("we_miss_you/body.txt.j2")
    assert in_page.value.file.endswith(f"pages/{ERROR}")
    assert in_email.value.line == in_page.value.line == 2


def test_the_campaigns_map_names_each_stage_entry_point_from_its_home() -> None:
    import importlib

    import campaigns

    assert campaigns.__all__ == list(campaigns._HOMES)
    for name, home in campaigns._HOMES.items():
        assert getattr(campaigns, name) is getattr(importlib.import_module(home), name), name


def test_the_dialect_insert_switch_is_written_only_in_campaigns_sql() -> None:
    # New upserts keep appearing; each must ask campaigns.sql.dialect_insert, not pick a dialect.
    switch = re.compile(r"\b(postgresql|sqlite)\.insert\b")
    copies = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in [*ROOT.glob("campaigns/**/*.py"), *ROOT.glob("worker/**/*.py")]
        if path != ROOT / "campaigns" / "sql.py"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if switch.search(line)
    ]
    assert copies == []
