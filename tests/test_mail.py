"""Mail transports against a real SMTP server (aiosmtpd in this process) and a real Maildir."""

from __future__ import annotations

import mailbox
import smtplib
import threading
import time
from email.message import EmailMessage
from pathlib import Path

import pytest

from campaigns.errors import (
    ConfigurationError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from tests.support.smtp import Certificate, SilentServer, SMTPSink
from worker.mail import SMTPTransport, mask_url, transport_from_url
from worker.mail.smtp import dot_stuffed


def make_message(to: str = "ada@example.com", subject: str = "We miss you, Ada") -> EmailMessage:
    message = EmailMessage()
    message["From"] = "Acme <hello@acme.example>"
    message["To"] = f"Ada Lovelace <{to}>"
    message["Subject"] = subject
    message["Message-ID"] = "<d-42@acme.example>"
    message["List-Unsubscribe"] = "<https://acme.example/u/tok>"
    message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message.set_content("Hello Ada,\n.\nA line that is just a dot must survive.\n")
    message.add_alternative("<p>Hello Ada</p>", subtype="html")
    return message


@pytest.fixture(params=[False, True], ids=["in-turn", "pipelining"])
def smtp_sink(request: pytest.FixtureRequest):
    """Every SMTP case here against a server that offers PIPELINING and one that does not:
    the replies mean the same either way."""
    with SMTPSink(pipelining=request.param) as sink:
        yield sink


@pytest.fixture
def smtp(smtp_sink: SMTPSink):
    transport = transport_from_url(smtp_sink.url + "?timeout=5")
    yield transport
    transport.close()


# -- SMTP: the happy path ------------------------------------------------------


def test_message_arrives_with_envelope_and_headers_intact(smtp, smtp_sink):
    message = make_message(subject="Wir vermissen dich, Ada — ein Angebot")
    message["Bcc"] = "audit@acme.example"

    reply = smtp.send(message)

    assert reply.startswith("250 2.0.0 Ok: queued as SINK1")
    [received] = smtp_sink.wait_for(1)
    assert received.mail_from == "hello@acme.example"
    assert received.rcpt_tos == ["ada@example.com"]
    parsed = received.parsed
    assert parsed["Subject"] == "Wir vermissen dich, Ada — ein Angebot"
    assert parsed["From"] == "Acme <hello@acme.example>"
    assert parsed["Message-ID"] == "<d-42@acme.example>"
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert parsed["Bcc"] is None
    text = parsed.get_body(("plain",))
    assert text is not None
    body = text.get_content().replace("\r\n", "\n")  # raw is the wire form, CRLF
    assert body == "Hello Ada,\n.\nA line that is just a dot must survive.\n"


def test_return_path_is_the_envelope_sender_when_set(smtp, smtp_sink):
    message = make_message()
    message["Return-Path"] = "<bounces+d-42@acme.example>"

    smtp.send(message)

    assert smtp_sink.wait_for(1)[0].mail_from == "bounces+d-42@acme.example"


def test_one_thread_reuses_its_connection_across_sends(smtp, smtp_sink):
    smtp.send(make_message())
    smtp.send(make_message(to="grace@example.com"))

    assert len(smtp_sink.wait_for(2)) == 2
    assert smtp_sink.connections == 1


def test_each_thread_has_its_own_connection_and_close_ends_them_all(smtp, smtp_sink):
    def send_two() -> None:
        smtp.send(make_message())
        smtp.send(make_message())

    threads = [threading.Thread(target=send_two) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    smtp_sink.wait_for(6)
    assert smtp_sink.connections == 3

    smtp.close()

    assert smtp_sink.quits == 3
    smtp.send(make_message())  # a closed transport reconnects on demand
    assert smtp_sink.connections == 4


def test_connection_dropped_by_the_server_is_replaced_and_the_send_retried(smtp, smtp_sink):
    smtp.send(make_message())
    smtp_sink.disconnect_all()

    reply = smtp.send(make_message())

    assert reply.startswith("250")
    assert len(smtp_sink.wait_for(2)) == 2
    assert smtp_sink.attempts == 2
    assert smtp_sink.connections == 2


# -- SMTP: failures ------------------------------------------------------------


def test_451_is_transient_and_the_next_send_on_the_same_transport_succeeds(smtp, smtp_sink):
    smtp_sink.fail_next(1, "451 4.3.0 Try again later")

    with pytest.raises(TransientDeliveryError, match=r"451 4\.3\.0 Try again later") as caught:
        smtp.send(make_message())
    assert caught.value.code == 451
    assert caught.value.enhanced == "4.3.0"

    assert smtp.send(make_message()).startswith("250")
    assert smtp_sink.attempts == 2
    assert len(smtp_sink.messages) == 1
    assert smtp_sink.connections == 1  # RSET, not a reconnect


def test_unknown_recipient_is_a_permanent_recipient_failure(smtp, smtp_sink):
    smtp_sink.reject_recipient("gone@example.com", "550 5.1.1 User unknown")

    refusal = r"refused recipient <gone@example.com>: 550 5.1.1 User unknown"
    with pytest.raises(PermanentDeliveryError, match=refusal) as caught:
        smtp.send(make_message(to="gone@example.com"))
    assert caught.value.code == 550
    assert caught.value.enhanced == "5.1.1"
    assert caught.value.is_recipient_failure
    assert smtp_sink.attempts == 0

    smtp.send(make_message(to="ada@example.com"))
    assert smtp_sink.wait_for(1)[0].rcpt_tos == ["ada@example.com"]
    assert smtp_sink.connections == 1


def test_temporary_recipient_refusal_is_transient(smtp, smtp_sink):
    smtp_sink.reject_recipient("busy@example.com", "450 4.2.1 Mailbox busy")

    with pytest.raises(TransientDeliveryError, match=r"450 4\.2\.1 Mailbox busy") as caught:
        smtp.send(make_message(to="busy@example.com"))
    assert (caught.value.code, caught.value.enhanced) == (450, "4.2.1")


def test_message_rejected_after_data_is_permanent_but_not_a_recipient_failure(smtp, smtp_sink):
    smtp_sink.fail_next(1, "554 5.7.1 Message refused as spam")

    with pytest.raises(PermanentDeliveryError, match="refused the message: 554") as caught:
        smtp.send(make_message())
    assert caught.value.enhanced == "5.7.1"
    assert not caught.value.is_recipient_failure


def test_reply_without_enhanced_code_leaves_it_empty(smtp, smtp_sink):
    smtp_sink.fail_next(1, "452 Too much mail")

    with pytest.raises(TransientDeliveryError) as caught:
        smtp.send(make_message())
    assert (caught.value.code, caught.value.enhanced) == (452, None)


def test_stopped_server_is_transient_connection_refused_and_fails_fast():
    sink = SMTPSink().start()
    url = sink.url
    sink.stop()
    transport = transport_from_url(url)

    started = time.monotonic()
    with pytest.raises(TransientDeliveryError, match="connection refused"):
        transport.send(make_message())
    assert time.monotonic() - started < 2


def test_silent_server_is_transient_within_the_url_timeout(silent_smtp_server: SilentServer):
    transport = transport_from_url(silent_smtp_server.url + "?timeout=1")

    started = time.monotonic()
    with pytest.raises(TransientDeliveryError, match=r"no answer within 1s \(timeout\)"):
        transport.send(make_message())
    assert 0.9 < time.monotonic() - started < 3


def test_message_without_from_is_refused_before_connecting(smtp, smtp_sink):
    message = make_message()
    del message["From"]

    with pytest.raises(PermanentDeliveryError, match=r"no From address; set defaults\.sender"):
        smtp.send(message)
    assert smtp_sink.connections == 0


def _count_writes(monkeypatch) -> list[bytes]:
    writes: list[bytes] = []
    send = smtplib.SMTP.send

    def counting(self: smtplib.SMTP, data: bytes | str) -> None:
        writes.append(data if isinstance(data, bytes) else data.encode())
        send(self, data)

    monkeypatch.setattr(smtplib.SMTP, "send", counting)
    return writes


def test_pipelining_sends_the_envelope_and_data_in_one_write_per_message(smtp, smtp_sink, monkeypatch):
    writes = _count_writes(monkeypatch)
    for _ in range(3):
        smtp.send(make_message())
    assert len(smtp_sink.wait_for(3)) == 3
    writes = [w for w in writes if not w.lower().startswith(b"ehlo")]
    envelopes = [w for w in writes if w.lower().startswith(b"mail from:")]
    if smtp_sink.pipelining:
        assert len(writes) == 2 * 3  # MAIL + RCPT + DATA together, then the content
        assert all(w.endswith(b"RCPT TO:<ada@example.com>\r\nDATA\r\n") for w in envelopes)
    else:
        assert len(writes) == 4 * 3  # MAIL, RCPT, DATA and the content, each waiting for its reply
    assert smtp_sink.connections == 1  # one connection, reused


def test_the_next_envelope_goes_out_behind_the_content_one_write_per_message(smtp, smtp_sink,
                                                                            monkeypatch):
    writes = _count_writes(monkeypatch)
    messages = [make_message(to=f"reader{i}@example.com") for i in range(4)]
    for message, then in zip(messages, [*messages[1:], None], strict=True):
        assert smtp.send(message, then=then).startswith("250")
    received = smtp_sink.wait_for(4)
    assert [m.rcpt_tos for m in received] == [[f"reader{i}@example.com"] for i in range(4)]
    writes = [w for w in writes if not w.lower().startswith(b"ehlo")]
    if smtp_sink.pipelining:
        # The first envelope, then each content with the next envelope behind it.
        assert len(writes) == 1 + 4
        for write, then in zip(writes[1:4], messages[1:], strict=True):
            assert b"\r\n.\r\nMAIL FROM:<hello@acme.example>" in write
            assert write.endswith(f"RCPT TO:<{then['To'].addresses[0].addr_spec}>\r\nDATA\r\n".encode())
        assert writes[4].endswith(b"\r\n.\r\n")
    else:
        assert len(writes) == 4 * 4  # `then` means nothing without PIPELINING
    assert [m.parsed.get_body(("plain",)).get_content().replace("\r\n", "\n") for m in received] \
        == ["Hello Ada,\n.\nA line that is just a dot must survive.\n"] * 4
    assert smtp_sink.connections == 1


def test_another_message_sent_than_the_one_announced_goes_out_and_the_announced_one_does_not(
        smtp, smtp_sink):
    announced, instead = make_message(to="announced@example.com"), make_message(to="instead@example.com")
    smtp.send(make_message(to="first@example.com"), then=announced)
    smtp.send(instead)
    assert [m.rcpt_tos for m in smtp_sink.wait_for(2)] == [["first@example.com"], ["instead@example.com"]]
    time.sleep(0.2)
    assert len(smtp_sink.messages) == 2
    # The server was waiting for the announced content: that connection could only be dropped.
    assert smtp_sink.connections == (2 if smtp_sink.pipelining else 1)


def test_content_refused_with_the_next_envelope_behind_it_fails_alone(smtp, smtp_sink):
    smtp_sink.fail_next(1, "554 5.7.1 Message refused as spam")
    refused, then = make_message(to="spammy@example.com"), make_message(to="next@example.com")
    with pytest.raises(PermanentDeliveryError, match="refused the message: 554"):
        smtp.send(refused, then=then)
    assert smtp.send(then).startswith("250")
    assert [m.rcpt_tos for m in smtp_sink.wait_for(1)] == [["next@example.com"]]
    time.sleep(0.2)
    assert len(smtp_sink.messages) == 1


def test_close_with_an_envelope_sent_ahead_makes_no_message_of_it(smtp, smtp_sink):
    smtp.send(make_message(to="first@example.com"), then=make_message(to="never@example.com"))
    started = time.monotonic()
    smtp.close()
    assert time.monotonic() - started < 0.4  # cut, not a QUIT waited for inside DATA
    smtp.send(make_message(to="later@example.com"))
    assert [m.rcpt_tos for m in smtp_sink.wait_for(2)] == [["first@example.com"], ["later@example.com"]]
    time.sleep(0.2)
    assert len(smtp_sink.messages) == 2


# -- SMTP over TLS ---------------------------------------------------------------


@pytest.mark.parametrize("tls", ["implicit", "starttls"])
def test_tls_with_verification_off_delivers(tls, tls_certificate: Certificate):
    with SMTPSink(tls=tls, certificate=tls_certificate) as sink:
        separator = "&" if "?" in sink.url else "?"
        transport = transport_from_url(f"{sink.url}{separator}verify=false&timeout=5")
        try:
            transport.send(make_message())
        finally:
            transport.close()
        assert sink.wait_for(1)[0].parsed["Subject"] == "We miss you, Ada"
        assert sink.connections == 1


def test_untrusted_certificate_is_a_configuration_error(tls_certificate: Certificate):
    with SMTPSink(tls="implicit", certificate=tls_certificate) as sink:
        transport = transport_from_url(sink.url + "?timeout=5")
        with pytest.raises(ConfigurationError, match=r"not trusted .* add \?verify=false"):
            transport.send(make_message())


# -- Maildir and console ---------------------------------------------------------


def test_maildir_delivery_is_readable_by_mailbox(tmp_path: Path):
    transport = transport_from_url(f"maildir://{tmp_path}/outbox")

    reply = transport.send(make_message())

    box = mailbox.Maildir(tmp_path / "outbox", create=False)
    [key] = box.keys()
    assert reply == f"maildir:{key}"
    assert box[key]["Subject"] == "We miss you, Ada"
    assert box[key]["To"] == "Ada Lovelace <ada@example.com>"


def test_relative_maildir_is_resolved_against_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    transport = transport_from_url("maildir://./outbox")
    monkeypatch.chdir("/")

    transport.send(make_message())

    assert len(mailbox.Maildir(tmp_path / "outbox", create=False)) == 1


def test_maildir_takes_concurrent_sends_from_many_threads(tmp_path: Path):
    transport = transport_from_url(f"maildir://{tmp_path}/outbox")

    def send_many() -> None:
        for _ in range(25):
            transport.send(make_message())

    threads = [threading.Thread(target=send_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(mailbox.Maildir(tmp_path / "outbox", create=False)) == 100


def test_console_prints_the_message_to_stdout(capsys):
    transport = transport_from_url("console://")

    assert transport.send(make_message()) == "console"

    out = capsys.readouterr().out
    assert "Subject: We miss you, Ada" in out
    assert "To: Ada Lovelace <ada@example.com>" in out


# -- URLs --------------------------------------------------------------------------


def smtp_settings(url: str):
    transport = transport_from_url(url)
    assert isinstance(transport, SMTPTransport)
    return transport.settings


def test_smtp_url_defaults():
    settings = smtp_settings("smtp://mail.example.com")
    assert (settings.host, settings.port, settings.security) == ("mail.example.com", 25, "plain")
    assert (settings.username, settings.password, settings.timeout, settings.verify) == (
        None, None, 30.0, True,
    )
    assert settings.data_timeout == 600.0  # RFC 5321 4.5.3.2.6, apart from the command timeout


def test_starttls_defaults_to_the_submission_port_and_credentials_are_url_decoded():
    settings = smtp_settings("smtp://me%40acme.example:p%40ss%3Aw0rd@mail.example.com"
                             "?starttls=true&timeout=2.5")
    assert (settings.port, settings.security, settings.timeout) == (587, "starttls", 2.5)
    assert (settings.username, settings.password) == ("me@acme.example", "p@ss:w0rd")
    assert "p@ss" not in repr(settings)


def test_smtps_defaults_to_port_465():
    settings = smtp_settings("smtps://u:pw@mail.example.com?verify=false")
    assert (settings.port, settings.security, settings.verify) == (465, "tls", False)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://user:s3cret@mail.example.com", "unknown scheme 'ftp'"),
        ("mail.example.com:25", "it has no scheme"),
        ("smtp://user:s3cret@mail.example.com:notaport", "bad host or port"),
        ("smtp://user:s3cret@:25", "the host is missing"),
        ("smtp://user:s3cret@mail.example.com?tls=yes", "unknown option(s) tls"),
        ("smtp://user:s3cret@mail.example.com?timeout=soon", "timeout must be seconds"),
        ("smtp://user:s3cret@mail.example.com?timeout=0", "timeout must be a positive"),
        ("smtp://user:s3cret@mail.example.com?data_timeout=-1", "data_timeout must be a positive"),
        ("smtp://user:s3cret@mail.example.com?starttls=maybe", "starttls must be true or false"),
        ("smtps://user:s3cret@mail.example.com?starttls=true", "smtps:// is already TLS"),
        ("smtp://user:s3cret@mail.example.com/inbox", "takes no path"),
        ("maildir://", "the maildir path is empty"),
        ("console://somewhere", "takes no host or path"),
    ],
    ids=["unknown-scheme", "no-scheme", "bad-port", "no-host", "unknown-option", "bad-timeout",
         "zero-timeout", "negative-data-timeout", "bad-bool", "smtps-with-starttls", "path", "empty-maildir",
         "console-with-host"],
)
def test_bad_url_is_a_configuration_error_that_masks_the_password(url, reason):
    with pytest.raises(ConfigurationError) as caught:
        transport_from_url(url)

    message = str(caught.value)
    assert reason in message
    assert f"Invalid mail URL {mask_url(url)!r}" in message
    assert "Supported forms: maildir://PATH" in message
    assert "s3cret" not in message


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("smtp://user:s3cret@host:587", "smtp://user:***@host:587"),
        ("smtp://user:p@ss/w?rd@host?starttls=true", "smtp://user:***@host?starttls=true"),
        ("smtp://user@host", "smtp://user@host"),
        ("smtp://host:25", "smtp://host:25"),
        ("maildir://./outbox", "maildir://./outbox"),
    ],
    ids=["password", "raw-special-characters", "user-only", "no-credentials", "maildir"],
)
def test_mask_url_hides_only_the_password(url, masked):
    assert mask_url(url) == masked


@pytest.mark.parametrize(("content", "stuffed"), [
    (b"Hello\r\n", b"Hello\r\n"),
    (b".\r\n", b"..\r\n"),
    (b"a\r\n.\r\nb\r\n", b"a\r\n..\r\nb\r\n"),
    (b"a\r\n..x\r\n", b"a\r\n...x\r\n"),
    (b"a\n.bare LF\n", b"a\n..bare LF\n"),
    (b"no.dot.at.a.line.start\r\n", b"no.dot.at.a.line.start\r\n"),
    (b"", b""),
])
def test_dot_stuffing_adds_a_period_to_every_line_that_starts_with_one(content, stuffed):
    assert dot_stuffed(content) == stuffed
