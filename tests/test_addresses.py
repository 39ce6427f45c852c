"""One email address validator: rules.yaml senders, ingested customers and composing agree."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from sqlmodel import Session, select

from campaigns.delivery.emails import build_email
from campaigns.delivery.rendering import RenderedMessage
from campaigns.errors import PermanentDeliveryError, RulesErrors
from campaigns.ingestion.records import CustomerIn
from campaigns.models import Delivery, DeliveryStatus
from tests.factories import rules
from tests.test_check_cli import one_located_error
from tests.test_check_cli import project as project  # the fixture
from tests.test_delivery import add_inactive, wait_for_status
from worker.daemon import run_once

ADDRESSES = [
    pytest.param("hello@acme.example", True, id="plain"),
    pytest.param("first.last+tag@mail.acme.example", True, id="dots-and-plus"),
    pytest.param("a b@acme.example", False, id="space"),
    pytest.param("two@@acme.example", False, id="two-ats"),
    pytest.param("no-at.acme.example", False, id="no-at"),
    pytest.param("a..b@acme.example", False, id="double-dot"),
    pytest.param("hello@localhost", False, id="no-dot-in-domain"),
    pytest.param("hello@acme.example\r\nBcc: x@acme.example", False, id="header-injection"),
]


def _rules_accept(sender: str) -> bool:
    try:
        rules(f'defaults: {{sender: "Acme <{sender}>"}}'.replace("\r\n", "\\r\\n"))
    except RulesErrors:
        return False
    return True


def _ingestion_accepts(address: str) -> bool:
    try:
        CustomerIn.model_validate({"id": "c1", "email": address})
    except ValidationError:
        return False
    return True


def _composing_accepts(address: str) -> bool:
    try:
        build_email(
            rendered=RenderedMessage(subject="s", text="t", html=None), sender="Acme <hello@acme.example>",
            to=address, message_id="m@acme.example", unsubscribe_url="https://acme.example/u/x",
        )
    except PermanentDeliveryError:
        return False
    return True


@pytest.mark.parametrize(("address", "valid"), ADDRESSES)
def test_rules_ingestion_and_composing_judge_an_address_alike(address: str, valid: bool) -> None:
    assert (_rules_accept(address), _ingestion_accepts(address), _composing_accepts(address)) == (
        valid, valid, valid,
    )


def test_check_refuses_a_sender_with_a_space_at_its_line(project) -> None:
    line = project.edit(
        "rules.yaml", 'sender: "Acme <hello@acme.example>"', 'sender: "Acme <a b@acme.example>"'
    )
    file, reported_line, _, text = one_located_error(project.check())
    assert (file, reported_line) == (str(project.rules), line)
    assert "defaults.sender: invalid email address 'Acme <a b@acme.example>'" in text
    assert "SPACE" in text


def test_a_campaign_sender_is_checked_like_the_default() -> None:
    with pytest.raises(RulesErrors, match=r"campaigns\[0\]\.sender: invalid email address"):
        rules("""
            campaigns:
              - id: c
                template: t
                sender: "Acme <a b@acme.example>"
        """)


def test_a_sender_that_cannot_be_composed_fails_once_with_its_location(make_runtime, tmp_path) -> None:
    rt = make_runtime(f"maildir://{tmp_path}/out")
    # Rules built without validation (loaded ones cannot hold such a sender any more).
    broken = rt.rules.defaults.model_copy(update={"sender": "Acme <a b@acme.example>"})
    rt.state.rules = rt.rules.model_copy(update={"defaults": broken})
    ids = add_inactive(rt, 1)
    run_once(rt, workers=1)
    [row] = wait_for_status(rt, ids, {DeliveryStatus.failed})
    assert row.attempts == 1  # a permanent error: not retried
    assert (row.last_error or "").startswith(f"{tmp_path}/rules.yaml:3:")
    assert "defaults.sender: invalid email address 'Acme <a b@acme.example>'" in (row.last_error or "")
    with Session(rt.engine) as session:
        assert [d.status for d in session.exec(select(Delivery))] == [DeliveryStatus.failed]
