"""The bounce mailbox, read by the planning pass: a real Dovecot over IMAP, and a Maildir.

A real DSN (Postfix's format, RFC 3464) and a real abuse report (the RFC 5965
sample) are appended to the mailbox, a pass runs, and then: the bounced address
is suppressed and its delivery `bounced`, the complainer unsubscribed, both
messages marked so no pass reads them again, and a message that is neither is
left in place and counted.
"""

from __future__ import annotations

import mailbox
from datetime import timedelta
from pathlib import Path

import pytest
from imapclient import IMAPClient
from sqlmodel import Session, func, select

from campaigns.models import (
    Bounce,
    Customer,
    Delivery,
    DeliveryStatus,
    Interaction,
    InteractionKind,
    Suppression,
    utcnow,
)
from tests.factories import add_customer, add_sent_delivery
from worker import runtime as runtime_module
from worker.bounce_mailbox import PROCESSED, UNREADABLE, read_bounce_mailbox
from worker.passes import run_pass
from worker.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "tests" / "data" / "bounces"
RULES = """
defaults:
  sender: "Acme <hello@acme.example>"
  timezone: UTC
campaigns:
  - id: we-miss-you
    template: we_miss_you
    when:
      days_inactive: {at_least: 30}
"""


def sample(name: str, **values: object) -> bytes:
    text = (SAMPLES / name).read_text()
    for key, value in values.items():
        text = text.replace("{" + key + "}", str(value))
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode()


def make_runtime(tmp_path, database_url, mailbox_url: str) -> runtime_module.Runtime:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    return runtime_module.build(Settings(
        database_url=database_url, mail_url="console://", rules=rules, templates=ROOT / "templates",
        secret_key="mailbox-test-key", bounce_mailbox=mailbox_url, verp_address="bounces@acme.example",
    ))


def sent(rt, email: str) -> Delivery:
    with Session(rt.engine) as session:
        return add_sent_delivery(session, email=email, sent_at=utcnow())


def outcome(rt, bounced: Delivery, complained: Delivery) -> dict[str, object]:
    with Session(rt.engine) as session:
        return {
            "bounced_status": session.get(Delivery, bounced.id).status,
            "suppressed": sorted(session.scalars(select(Suppression.email))),
            "unsubscribed": session.get(Customer, complained.customer_id).unsubscribed_at is not None,
            "complaints": session.scalar(select(func.count()).select_from(Interaction).where(
                Interaction.kind == InteractionKind.complaint)),
            "bounce_rows": session.scalar(select(func.count()).select_from(Bounce)),
        }


EXPECTED = {"bounced_status": DeliveryStatus.bounced,
            "suppressed": ["nobody@example.com", "user@example.com"],
            "unsubscribed": True, "complaints": 1, "bounce_rows": 2}


def test_a_pass_reads_dsn_and_arf_from_imap_once(tmp_path, database_url, dovecot):
    rt = make_runtime(tmp_path, database_url, dovecot.url)
    try:
        bounced, complained = sent(rt, "nobody@example.com"), sent(rt, "user@example.com")
        with IMAPClient("127.0.0.1", port=dovecot.port, ssl=False) as client:
            client.login(dovecot.user, dovecot.password)
            for raw in (sample("dsn_postfix.eml", email="nobody@example.com", delivery_id=bounced.id,
                               message_id=bounced.message_id),
                        sample("arf_abuse.eml", email="user@example.com", message_id=complained.message_id),
                        sample("not_a_bounce.eml")):
                client.append("INBOX", raw)

        run_pass(rt, lambda ids: len(ids))
        assert outcome(rt, bounced, complained) == EXPECTED
        with Session(rt.engine) as session:
            reasons = dict(session.execute(select(Suppression.email, Suppression.reason)).all())
        assert reasons["nobody@example.com"].startswith("hard bounce (mailbox): 5.1.1 smtp; 550 5.1.1")

        with IMAPClient("127.0.0.1", port=dovecot.port, ssl=False) as client:
            client.login(dovecot.user, dovecot.password)
            client.select_folder("INBOX")
            flags = {uid: set(f) for uid, f in client.get_flags(client.search(["ALL"])).items()}
            assert [PROCESSED.encode() in f and b"\\Seen" in f for f in flags.values()] == [True, True, False]
            left = list(flags.values())[2]
            assert UNREADABLE.encode() in left and b"\\Seen" not in left

            second = read_bounce_mailbox(rt, now=utcnow())
            assert (second.read, second.error) == (0, None)  # nothing read twice
            assert outcome(rt, bounced, complained) == EXPECTED

            # A pass that died after writing but before marking reads the DSN again: it counts once.
            dsn_uid = min(flags)
            client.remove_flags([dsn_uid], [PROCESSED])
            third = read_bounce_mailbox(rt, now=utcnow())
            assert (third.read, third.duplicates, third.applied) == (1, 1, 0)
            assert outcome(rt, bounced, complained) == EXPECTED
    finally:
        rt.close()


def test_unreachable_mailbox_is_reported_not_raised(tmp_path, database_url):
    from tests.support.redis import free_port

    rt = make_runtime(tmp_path, database_url, f"imap://u:secret@127.0.0.1:{free_port()}/INBOX")
    try:
        result = read_bounce_mailbox(rt, now=utcnow())
        assert result.error and "ConnectionRefusedError" in result.error
        from worker.observability import health

        _healthy, checks = health(rt)
        assert checks["bounce_mailbox"]["url"].startswith("imap://u:***@")
        assert "ConnectionRefusedError" in checks["bounce_mailbox"]["last_read"]["error"]
    finally:
        rt.close()


def test_maildir_bounce_mailbox(tmp_path, database_url):
    folder = tmp_path / "bounces"
    box = mailbox.Maildir(folder, create=True)
    rt = make_runtime(tmp_path, database_url, f"maildir://{folder}")
    try:
        bounced, complained = sent(rt, "nobody@example.com"), sent(rt, "user@example.com")
        box.add(sample("dsn_postfix.eml", email="nobody@example.com", delivery_id=bounced.id,
                       message_id="<unknown@elsewhere>"))  # matched by its VERP address alone
        box.add(sample("arf_abuse.eml", email="user@example.com", message_id=complained.message_id))
        box.add(sample("not_a_bounce.eml"))
        first = read_bounce_mailbox(rt, now=utcnow())
        assert (first.read, first.applied, first.unreadable) == (3, 2, 1)
        assert outcome(rt, bounced, complained) == EXPECTED
        flags = sorted(m.get_flags() for m in mailbox.Maildir(folder, create=False))
        assert flags == ["F", "S", "S"]
        assert read_bounce_mailbox(rt, now=utcnow()).read == 0
    finally:
        rt.close()


@pytest.mark.parametrize("url", ["pop3://host/x", "maildir:///nonexistent/box"], ids=["scheme", "path"])
def test_bad_mailbox_settings_are_configuration_errors(tmp_path, database_url, url):
    from pydantic import ValidationError

    from campaigns.errors import ConfigurationError

    if url.startswith("pop3"):
        with pytest.raises(ValidationError, match="imaps://user:pass@host/FOLDER"):
            Settings(bounce_mailbox=url)
        return
    rt = make_runtime(tmp_path, database_url, url)
    try:
        with pytest.raises(ConfigurationError, match="is not a Maildir"):
            read_bounce_mailbox(rt, now=utcnow())
    finally:
        rt.close()


def test_the_loop_closes_send_with_verp_bounce_back_never_mailed_again(tmp_path, database_url, smtp_sink):
    """Real SMTP out with a VERP Return-Path, the relay's DSN back into the mailbox, then silence."""
    from worker.once import run_once

    folder = tmp_path / "bounces"
    box = mailbox.Maildir(folder, create=True)
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    rt = runtime_module.build(Settings(
        database_url=database_url, mail_url=smtp_sink.url, rules=rules, templates=ROOT / "templates",
        secret_key="mailbox-test-key", bounce_mailbox=f"maildir://{folder}",
        verp_address="bounces@acme.example",
    ))
    try:
        with Session(rt.engine) as session:
            gone = add_customer(session, inactive_days=45, email="gone@example.com", timezone="UTC").id
            session.commit()
        run_once(rt, workers=2)
        [received] = smtp_sink.wait_for(1)
        with Session(rt.engine) as session:
            delivery = session.scalars(select(Delivery).where(Delivery.customer_id == gone)).one()
        assert received.mail_from == f"bounces+{delivery.id}@acme.example"
        assert received.parsed["Return-Path"] is None  # RFC 5321 4.4: the envelope carries it
        box.add(sample("dsn_postfix.eml", email="gone@example.com", delivery_id=delivery.id,
                       message_id=received.parsed["Message-ID"]))

        run_once(rt, workers=2)
        with Session(rt.engine) as session:
            assert session.get(Delivery, delivery.id).status == DeliveryStatus.bounced
            assert session.scalar(select(Suppression.reason).where(Suppression.email == "gone@example.com"))
        assert [m.get_flags() for m in mailbox.Maildir(folder, create=False)] == ["S"]

        # Back, then gone again: a new absence is a new episode, and the suppressed address gets nothing.
        with Session(rt.engine) as session:
            session.get(Customer, gone).last_active_at = utcnow() - timedelta(days=40)
            session.commit()
        run_once(rt, workers=2)
        assert len(smtp_sink.messages) == 1
    finally:
        rt.close()
