"""Email assembly: headers, RFC 8058 one-click unsubscribe, parts, encodings."""

from __future__ import annotations

import email.parser
import email.policy
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import cast

import pytest

from campaigns.delivery.context import build_sample_context
from campaigns.delivery.emails import (
    WIRE_POLICY,
    build_email,
    build_outgoing,
    outgoing,
    parse_address,
    sender_domain,
)
from campaigns.delivery.rendering import RenderedMessage, TemplateStore
from campaigns.errors import PermanentDeliveryError

LONG_UNSUBSCRIBE = "https://mail.acme.example/u/" + "eyJkIjo0Mn0.ZmFrZS10b2tlbi1zaWduYXR1cmU" * 3


def parse(raw: bytes) -> EmailMessage:
    return cast(EmailMessage, email.parser.BytesParser(policy=email.policy.default).parsebytes(raw))


def make(rendered: RenderedMessage, **overrides: object) -> EmailMessage:
    arguments: dict[str, object] = {
        "rendered": rendered,
        "sender": "Acme <hello@acme.example>",
        "to": "ada@example.com",
        "message_id": "<we-miss-you.0123abcd@acme.example>",
        "unsubscribe_url": LONG_UNSUBSCRIBE,
        "date": datetime(2024, 6, 4, 10, 30, tzinfo=UTC),
    }
    arguments.update(overrides)
    return build_email(**arguments)  # type: ignore[arg-type]


TEXT_ONLY = RenderedMessage(subject="We miss you", text="Hi Ada\n", html=None)
WITH_HTML = RenderedMessage(subject="We miss you", text="Hi Ada\n", html="<p>Hi Ada</p>")


def test_email_carries_one_click_unsubscribe_headers_intact_on_the_wire() -> None:
    received = parse(bytes(make(TEXT_ONLY)))
    assert received["List-Unsubscribe"] == f"<{LONG_UNSUBSCRIBE}>"
    assert received["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    wire = make(TEXT_ONLY).as_bytes(policy=WIRE_POLICY)
    assert f"List-Unsubscribe: <{LONG_UNSUBSCRIBE}>\r\n".encode() in wire


def test_email_has_the_addressing_headers() -> None:
    received = parse(bytes(make(TEXT_ONLY)))
    assert received["From"] == "Acme <hello@acme.example>"
    assert received["To"] == "ada@example.com"
    assert received["Subject"] == "We miss you"
    assert received["Date"] == "Tue, 04 Jun 2024 10:30:00 +0000"
    assert received["Message-ID"] == "<we-miss-you.0123abcd@acme.example>"


def test_text_only_message_is_a_single_text_part() -> None:
    received = parse(bytes(make(TEXT_ONLY)))
    assert received.get_content_type() == "text/plain"
    assert received.get_content() == "Hi Ada\n"


def test_html_becomes_an_alternative_after_the_text_part() -> None:
    received = parse(bytes(make(WITH_HTML)))
    assert received.get_content_type() == "multipart/alternative"
    parts = list(received.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert cast(EmailMessage, parts[0]).get_content() == "Hi Ada\n"
    assert cast(EmailMessage, parts[1]).get_content() == "<p>Hi Ada</p>\n"


def test_non_ascii_names_subject_and_bodies_survive_encoding() -> None:
    rendered = RenderedMessage(
        subject="Wir vermissen dich, Jürgen 👋", text="Grüße\n", html="<p>Grüße</p>",
    )
    message = make(rendered, sender="Ächme GmbH <hallo@acme.example>", to="Jürgen Müller <j@example.com>")
    assert message.as_bytes(policy=WIRE_POLICY).isascii()  # no 8BITMIME/SMTPUTF8 needed
    received = parse(bytes(message))
    assert received["Subject"] == "Wir vermissen dich, Jürgen 👋"
    assert received["From"].addresses[0].display_name == "Ächme GmbH"
    assert received["To"].addresses[0].display_name == "Jürgen Müller"
    text, html = received.iter_parts()
    assert cast(EmailMessage, text).get_content() == "Grüße\n"
    assert cast(EmailMessage, text)["Content-Transfer-Encoding"] == "quoted-printable"
    assert cast(EmailMessage, html).get_content() == "<p>Grüße</p>\n"


def test_message_id_without_brackets_gets_them() -> None:
    assert parse(bytes(make(TEXT_ONLY, message_id="x.1@acme.example")))["Message-ID"] == "<x.1@acme.example>"


def test_extra_headers_are_added_but_cannot_override_owned_ones() -> None:
    received = parse(bytes(make(TEXT_ONLY, headers={"X-Retention-Campaign": "we-miss-you"})))
    assert received["X-Retention-Campaign"] == "we-miss-you"
    with pytest.raises(ValueError, match="'list-unsubscribe' is set by build_email"):
        make(TEXT_ONLY, headers={"list-unsubscribe": "<https://evil.example>"})


@pytest.mark.parametrize(
    "to", ["not-an-address", "ada@example.com\r\nBcc: x@example.com", "a b@example.com", ""],
    ids=["no_at", "header_injection", "space", "empty"],
)
def test_malformed_recipient_is_a_permanent_recipient_failure(to: str) -> None:
    with pytest.raises(PermanentDeliveryError, match="invalid email address") as caught:
        make(TEXT_ONLY, to=to)
    assert caught.value.is_recipient_failure


def test_malformed_sender_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="invalid email address 'Acme'"):
        make(TEXT_ONLY, sender="Acme")


def test_relative_unsubscribe_url_is_refused() -> None:
    with pytest.raises(ValueError, match="must be absolute http"):
        make(TEXT_ONLY, unsubscribe_url="/u/token")


def test_sender_domain_is_the_lowercased_address_domain() -> None:
    assert sender_domain("Acme <Hello@Acme.Example>") == "acme.example"
    assert sender_domain("hello@mail.acme.example") == "mail.acme.example"


def test_a_quoted_display_name_keeps_its_special_characters() -> None:
    address = parse_address('"Acme, Inc." <h@acme.example>')
    assert (address.display_name, address.addr_spec) == ("Acme, Inc.", "h@acme.example")
    assert str(address) == '"Acme, Inc." <h@acme.example>'


def test_shipped_template_becomes_a_complete_email() -> None:
    store = TemplateStore(Path(__file__).resolve().parent.parent / "templates")
    rendered = store.render("we_miss_you", build_sample_context(template="we_miss_you"))
    received = parse(make(rendered).as_bytes(policy=WIRE_POLICY))
    assert received["Subject"] == "Ada, we miss you at Acme"
    text, html = (cast(EmailMessage, p) for p in received.iter_parts())
    assert "https://retention.invalid/u/sample-token" in text.get_content()
    assert "https://retention.invalid/u/sample-token" in html.get_content()


NON_ASCII = RenderedMessage(subject="Wir vermissen dich, Zoë — ein Angebot",
                            text="Grüße, Zoë\n" + "x" * 1200 + "\n", html="<p>Grüße</p>")


MIXED_LINE_ENDS = RenderedMessage(subject="Lines", text="one\r\ntwo\rthree\nfour\x0cstill four\n",
                                  html="<p>a</p>\r\n<p>b</p>\r<p>c</p>")


@pytest.mark.parametrize("rendered", [TEXT_ONLY, WITH_HTML, NON_ASCII, MIXED_LINE_ENDS],
                         ids=["text", "html", "non-ascii", "mixed-line-ends"])
def test_the_send_paths_wire_bytes_are_the_same_email(rendered: RenderedMessage) -> None:
    arguments: dict[str, object] = {
        "rendered": rendered, "sender": "Zoë Acme <hello@acme.example>", "to": "ada@example.com",
        "message_id": "<we-miss-you.0123abcd@acme.example>", "unsubscribe_url": LONG_UNSUBSCRIBE,
        "date": datetime(2024, 6, 4, 10, 30, tzinfo=UTC),
        "headers": {"X-Retention-Campaign": "we-miss-you", "Return-Path": "bounces+42@acme.example"},
    }
    out = build_outgoing(**arguments)  # type: ignore[arg-type]
    wire = parse(out.data)
    reference = parse(outgoing(build_email(**arguments)).data)  # type: ignore[arg-type]
    assert (out.sender, out.recipients) == ("bounces+42@acme.example", ("ada@example.com",))
    assert out.message_id == "<we-miss-you.0123abcd@acme.example>"
    assert wire.defects == [] and all(part.defects == [] for part in wire.walk())
    assert wire["Return-Path"] is None  # the envelope carries it (RFC 5321 4.4)
    for header in ("From", "To", "Subject", "Date", "Message-ID", "List-Unsubscribe",
                   "List-Unsubscribe-Post", "X-Retention-Campaign"):
        assert wire[header] == reference[header], header
    assert f"List-Unsubscribe: <{LONG_UNSUBSCRIBE}>\r\n".encode() in out.data
    assert out.data.isascii() and all(len(line) <= 998 for line in out.data.split(b"\r\n"))
    for subtype in ("plain", "html"):
        ours, theirs = wire.get_body((subtype,)), reference.get_body((subtype,))
        assert (ours is None) == (theirs is None)
        if ours is not None and theirs is not None:
            assert ours.get_content() == theirs.get_content()
