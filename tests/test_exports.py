"""`retention responses`: answers, clicks and unsubscribes as table, CSV and JSON."""

from __future__ import annotations

import csv
import io
import json
import shutil
from datetime import timedelta

from sqlmodel import Session

from campaigns.models import Delivery, Interaction, SurveyAnswer
from campaigns.responses.export import responses
from tests.factories import NOW, add_customer, migrated_engine
from tests.test_cli import ROOT, retention


def seed(engine):
    with Session(engine) as session:
        customer = add_customer(session, external_id="c-9", email="zoe@example.com", status="cancelled")
        delivery = Delivery(
            campaign_id="exit-survey",
            customer_id=customer.id,
            episode="event:1",
            template="exit_survey",
            status="sent",
        )
        session.add(delivery)
        session.flush()
        session.add(
            SurveyAnswer(
                customer_id=customer.id,
                delivery_id=delivery.id,
                campaign_id="exit-survey",
                survey_id="why_you_left",
                question_id="reason",
                answer="price",
                created_at=NOW,
                updated_at=NOW,
            )
        )
        session.add(
            Interaction(
                kind="click",
                delivery_id=delivery.id,
                customer_id=customer.id,
                campaign_id="exit-survey",
                url="https://acme.example/pricing",
                created_at=NOW - timedelta(days=2),
            )
        )
        session.add(
            Interaction(
                kind="unsubscribe",
                delivery_id=delivery.id,
                customer_id=customer.id,
                campaign_id="exit-survey",
                created_at=NOW,
            )
        )
        session.commit()


def test_export_lists_answers_then_clicks_and_unsubscribes(database_url):
    engine = migrated_engine(database_url)
    seed(engine)
    with Session(engine) as session:
        rows = list(responses(session))
        assert [(r.kind, r.answer or r.url) for r in rows] == [
            ("answer", "price"),
            ("click", "https://acme.example/pricing"),
            ("unsubscribe", None),
        ]
        assert [r.kind for r in responses(session, survey="why_you_left")] == ["answer"]
        assert [r.kind for r in responses(session, since=NOW - timedelta(days=1))] == [
            "answer",
            "unsubscribe",
        ]
    engine.dispose()


def test_responses_command_exports_csv_and_json(tmp_path):
    shutil.copy(ROOT / "rules.yaml", tmp_path / "rules.yaml")
    shutil.copytree(ROOT / "templates", tmp_path / "templates")
    engine = migrated_engine(f"sqlite:///{tmp_path / 'retention.db'}")
    seed(engine)
    engine.dispose()
    as_csv = retention(tmp_path, "responses", "--format", "csv").stdout
    rows = list(csv.DictReader(io.StringIO(as_csv)))
    assert rows[0]["answer"] == "price" and rows[0]["customer_id"] == "c-9"
    as_json = json.loads(
        retention(tmp_path, "responses", "--format", "json", "--survey", "why_you_left").stdout
    )
    assert [(r["question"], r["answer"]) for r in as_json] == [("reason", "price")]
    table = retention(tmp_path, "responses").stdout
    assert "zoe@example.com" in table
    unknown = retention(tmp_path, "responses", "--survey", "nope", check=False)
    assert unknown.returncode == 1 and "no survey 'nope'" in unknown.stderr
