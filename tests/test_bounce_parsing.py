"""Bounce emails and provider payloads → reports: the formats, the edge cases, and no surprises."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaigns.delivery.verp import verp_address, verp_delivery_id
from campaigns.models import BounceKind
from campaigns.responses import provider_reports as providers
from campaigns.responses.bounce_messages import classify_status, parse_bounce_message
from campaigns.responses.bounces import normalize_message_id

SAMPLES = Path(__file__).resolve().parent / "data" / "bounces"


def message(name: str, **values: object) -> email.message.Message:
    text = (SAMPLES / name).read_text()
    for key, value in values.items():
        text = text.replace("{" + key + "}", str(value))
    return email.message_from_string(text, policy=email.policy.compat32)


@pytest.mark.parametrize(("status", "kind"), [
    ("5.1.1", BounceKind.hard), ("5.1.10", BounceKind.hard), ("5.0.0", BounceKind.hard),
    ("5.2.2", BounceKind.soft), ("5.7.1", BounceKind.soft), ("4.4.1", BounceKind.soft),
], ids=["bad-mailbox", "null-mx", "other-permanent", "mailbox-full", "policy", "temporary"])
def test_dsn_status_codes_classify_as_hard_or_soft(status, kind):
    assert classify_status(status) == kind


def test_a_postfix_dsn_names_recipient_status_original_message_and_verp_delivery():
    [report] = parse_bounce_message(message("dsn_postfix.eml", email="Ann@Example.com", delivery_id=42,
                                            message_id="<x.1@acme.example>"),
                                    report_id="<dsn-1@mx>", verp="bounces@acme.example")
    assert (report.kind, report.email.lower(), report.delivery_id) == (BounceKind.hard, "ann@example.com", 42)
    assert report.message_id == "<x.1@acme.example>" and report.campaign_id == "we-miss-you"
    assert report.reason.startswith("5.1.1 smtp; 550 5.1.1")


def test_a_delayed_dsn_is_a_soft_bounce():
    text = (SAMPLES / "dsn_postfix.eml").read_text().replace("Action: failed", "Action: delayed") \
        .replace("Status: 5.1.1", "Status: 4.4.1")
    msg = email.message_from_string(text.replace("{email}", "slow@example.com"), policy=email.policy.compat32)
    [report] = parse_bounce_message(msg, report_id="r")
    assert (report.kind, report.reason[:5]) == (BounceKind.soft, "4.4.1")


def test_an_old_style_bounce_without_a_delivery_status_part_is_read_by_flufl_bounce():
    # qmail's format, one of the non-RFC formats flufl.bounce recognises.
    msg = email.message_from_string(
        "From: MAILER-DAEMON@mx.example.net\nTo: bounces@acme.example\nSubject: failure notice\n\n"
        "Hi. This is the qmail-send program at mx.example.net.\n"
        "I'm afraid I wasn't able to deliver your message to the following addresses.\n"
        "This is a permanent error; I've given up. Sorry it didn't work out.\n\n"
        "<gone@example.net>:\nSorry, no mailbox here by that name. (#5.1.1)\n\n"
        "--- Below this line is a copy of the message.\n", policy=email.policy.compat32)
    [report] = parse_bounce_message(msg, report_id="q")
    assert (report.kind, report.email) == (BounceKind.hard, "gone@example.net")


def test_abuse_reports_name_the_complainer_or_are_matched_by_message_id_when_redacted():
    [report] = parse_bounce_message(message("arf_abuse.eml", email="user@example.com", message_id="<m@a>"),
                                    report_id="arf")
    assert (report.kind, report.email) == (BounceKind.complaint, "user@example.com")
    assert report.message_id == "<m@a>"
    redacted = (SAMPLES / "arf_abuse.eml").read_text().replace("Original-Rcpt-To: <{email}>\n", "") \
        .replace("Removal-Recipient: {email}\n", "").replace("To: <{email}>", "To: <redacted@example.com>") \
        .replace("{message_id}", "<m@a>")
    [report] = parse_bounce_message(email.message_from_string(redacted, policy=email.policy.compat32),
                                    report_id="arf2")
    assert (report.email, report.message_id) == ("redacted@example.com", "<m@a>")
    not_spam = redacted.replace("Feedback-Type: abuse", "Feedback-Type: not-spam")
    assert parse_bounce_message(email.message_from_string(not_spam, policy=email.policy.compat32),
                                report_id="arf3") == []


def test_a_plain_reply_is_no_bounce():
    assert parse_bounce_message(message("not_a_bounce.eml"), report_id="r") is None


def test_verp_addresses_round_trip_and_ignore_other_tags():
    address = verp_address("bounces@acme.example", 1234)
    assert address == "bounces+1234@acme.example"
    assert verp_delivery_id("bounces@acme.example", ["x@y", address.upper()]) == 1234
    others = ["bounces+abc@acme.example", "other+1@acme.example"]
    assert verp_delivery_id("bounces@acme.example", others) is None


@given(st.text(min_size=1, max_size=40).filter(lambda s: s.strip().strip("<>").strip()))
def test_message_ids_normalize_whatever_the_brackets(value):
    once = normalize_message_id(value)
    assert once.startswith("<") and once.endswith(">")
    assert normalize_message_id(once) == once == normalize_message_id(f"  <{value.strip()}> ")


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["event", "email", "type", "RecordType", "Type", "ID", "Email", "event-data",
                         "recipient", "id", "severity", "notificationType", "bounce", "complaint", "mail",
                         "bouncedRecipients", "complainedRecipients", "emailAddress", "message",
                         "headers", "message_id", "sg_event_id", "smtp-id", "timestamp"])
        | st.text(max_size=8),
        children, max_size=6),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(JSON)
def test_any_json_is_reports_or_a_payload_error_never_a_crash(payload):
    # A crash would answer 500, and a provider retries a 500 for days.
    for parse in (providers.ses_reports, providers.sendgrid_reports, providers.postmark_reports,
                  providers.mailgun_reports, lambda p: [providers.generic_report(p)]):
        try:
            reports = parse(payload)
        except providers.PayloadError:
            continue
        assert all(r.kind in tuple(BounceKind) and r.key for r in reports)
