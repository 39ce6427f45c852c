"""One email address validator: rules.yaml senders, ingested customers and composing agree."""

from __future__ import annotations

import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from sqlmodel import Session, select

from campaigns.addresses import check_mailbox
from campaigns.delivery.emails import build_email
from campaigns.delivery.rendering import RenderedMessage
from campaigns.errors import InvalidAddress, PermanentDeliveryError, RulesErrors
from campaigns.ingestion.records import CustomerIn
from campaigns.models import Delivery, DeliveryStatus
from tests.factories import rules
from tests.test_check_cli import one_located_error
from tests.test_check_cli import project as project  # the fixture
from tests.test_delivery import add_inactive, wait_for_status
from worker.once import run_once

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


# Addresses near every rule email-validator applies: the shortcut that judges a domain once
# must give the full validator's verdict (and its wording) on each of them.
TRICKY = [
    "hello@acme.example", "A.B@EXAMPLE.COM", "postmaster@acme.example", "first.last+tag@mail.acme.example",
    "x@acme.com", "x@acme.co.uk", "x@123.com", "x@a-b.com", "x@1.2.3.4", "x@acme.c0m", "x@acme.com.",
    "x@.acme.com", "x@acme..com", "x@-acme.com", "x@acme-.com", "x@ab--cd.com", "x@xn--bcher-kva.de",
    "x@xn--abc.de", "x@XN--BCHER-KVA.DE", "x@bücher.de", "x@localhost", "x@test", "x@acme.test",
    "x@acme.invalid", "x@acme.local", "x@acme.onion", "x@acme.arpa", "x@[1.2.3.4]", "x@[IPv6:::1]",
    "x@acme_corp.com", "x@acme,com", "x@acme com", "x@", "@acme.com", "x", "", "x@@acme.com",
    "x@acme@acme.com", '"x"@acme.com', '"x y"@acme.com', '"x@y"@acme.com', "x.@acme.com", ".x@acme.com",
    "x..y@acme.com", "x y@acme.com", " x@acme.com", "x@acme.com ", "x@acme.com\n", "Acme <x@acme.com>",
    "<x@acme.com>", "x<y@acme.com", "x>y@acme.com", "x(c)@acme.com", "x\\y@acme.com", "é@acme.com",
    "x\u0301@acme.com", "x@acme.com\u0301", "x@\u0338acme.com", "\uff58@acme.com", "x\uff20acme.com",
    "x\ufe6bacme.com", "!#$%&'*+-/=?^_`{|}~@acme.com", "x@acme.com\x00", "x\t@acme.com",
    "a" * 64 + "@acme.com", "a" * 65 + "@acme.com", "a" * 64 + "@" + "b" * 63 + ".com",
    "x@" + "b" * 63 + ".com", "x@" + "b" * 64 + ".com",
    *("a" * (n - 248) + "@" + ".".join(["b" * 60] * 4) + ".com" for n in (253, 254, 255)),  # lengths
    *("a" * (n - 248) + "@" + ".".join(["b" * 60] * 4) + ".COM" for n in (254, 255)),
    "x@" + ".".join(["b" * 62] * 4),  # a 251-character domain
    "x@" + ".".join(["b" * 62] * 4) + "bb",  # 253
    "a" * 50 + "@xn--bcher-kva." + ".".join(["b" * 60] * 3) + ".com",
]


def _full_verdict(address: str) -> str | None:
    """What email-validator alone says: None when valid, else its message."""
    try:
        validate_email(address, check_deliverability=False)
    except EmailNotValidError as exc:
        return str(exc)
    return None


def _our_verdict(address: str) -> str | None:
    try:
        check_mailbox(address)
    except InvalidAddress as exc:
        return str(exc)
    return None


def _expected(address: str) -> str | None:
    full = _full_verdict(address)
    return None if full is None else f"invalid email address {address!r}: {full}"


@pytest.mark.parametrize("address", TRICKY, ids=range(len(TRICKY)))
def test_the_domain_shortcut_keeps_email_validators_verdict(address: str) -> None:
    assert _our_verdict(address) == _expected(address)
    assert _our_verdict(address) == _expected(address)  # again, from the remembered domain


_LOCAL = st.text(alphabet="aZ9.+-_!~\"@ <>()\\é\u0301", min_size=0, max_size=12)
_DOMAIN = st.text(alphabet="aZ9.-_@[]:é\u0338", min_size=0, max_size=12)
_TLD = st.sampled_from(["", ".com", ".COM", ".test", ".local", ".c0m", ".", ".xn--p1ai", ".xn--zz"])


@settings(max_examples=400, deadline=None)
@given(local=_LOCAL, domain=_DOMAIN, tld=_TLD, length=st.sampled_from([0, 50, 200, 240]))
def test_any_address_gets_email_validators_verdict(local: str, domain: str, tld: str, length: int) -> None:
    address = "x" * length + local + "@" + domain + tld
    assert _our_verdict(address) == _expected(address)


@pytest.mark.parametrize("text", ["hello@acme.example", "Acme <hello@acme.example>",
                                  '"Acme, Inc." <first.last+tag@mail.acme.example>',
                                  "Zoë <zoe@acme.example>", "o'brien@acme.example",
                                  "x@xn--caf-dma.example"])
def test_parsed_address_is_the_email_packages_own(text: str) -> None:
    """parse_address skips the email package's parser for a dot-atom: the result is the same."""
    from email.headerregistry import Address
    from email.utils import parseaddr

    from campaigns.addresses import parse_address

    name, mailbox = parseaddr(text)
    assert parse_address(text) == Address(display_name=name, addr_spec=mailbox)
    assert str(parse_address(text)) == str(Address(display_name=name, addr_spec=mailbox))
