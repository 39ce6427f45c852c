"""Templates per locale (file-by-file fallback) and <style> inlining, through a real SMTP server."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import Session

from campaigns.delivery.context import build_sample_context
from campaigns.delivery.rendering import TemplateStore
from campaigns.locales import locale_chain
from tests.factories import add_customer
from worker.once import run_once

SUBJECT_EN = "We miss you, {{ customer.first_name }}\n"
TEXT_EN = "Hello {{ customer.first_name }}, come back.\nUnsubscribe: {{ unsubscribe_url }}\n"
HTML_EN = """<html><head><style>p.lead { color: #3b4cca; font-weight: bold }
@media (max-width: 600px) { p.lead { font-size: 18px } }</style></head>
<body><p class="lead">Hello {{ customer.first_name }}</p>
<a href="{{ unsubscribe_url }}">Unsubscribe</a></body></html>
"""
SUBJECT_ZH_CN = "{{ customer.first_name }}，我们想念您\n"
TEXT_ZH_CN = "{{ customer.first_name }}，您好！欢迎回来。\n退订：{{ unsubscribe_url }}\n"
SUBJECT_ZH = "（中文）我们想念您\n"


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    return write(tmp_path / "templates", {
        "we_miss_you/subject.j2": SUBJECT_EN,
        "we_miss_you/body.txt.j2": TEXT_EN,
        "we_miss_you/body.html.j2": HTML_EN,
        # zh-CN translates the subject and the text part; its HTML part falls back.
        "we_miss_you/zh-CN/subject.j2": SUBJECT_ZH_CN,
        "we_miss_you/zh-CN/body.txt.j2": TEXT_ZH_CN,
        # Plain zh only has a subject.
        "we_miss_you/zh/subject.j2": SUBJECT_ZH,
    })


@pytest.mark.parametrize(("locale", "chain"), [
    ("zh-CN", ["zh-cn", "zh"]), ("zh_TW", ["zh-tw", "zh"]), ("de", ["de"]),
    ("sr-Latn-RS", ["sr-latn-rs", "sr-latn", "sr"]), ("", []), (None, []), ("../etc", []),
], ids=["region", "underscore", "language", "script", "empty", "none", "not-a-tag"])
def test_locale_chain_goes_from_specific_to_language(locale, chain):
    assert locale_chain(locale) == chain


def test_each_customer_gets_their_language_file_by_file_over_real_smtp(make_runtime, smtp_sink, templates):
    rt = make_runtime(smtp_sink.url, templates=templates)
    with Session(rt.engine) as session:
        for external_id, name, locale in [("c-cn", "小明", "zh-CN"), ("c-tw", "小華", "zh-TW"),
                                          ("c-en", "Ada", "en"), ("c-none", "Bob", None)]:
            add_customer(session, inactive_days=45, external_id=external_id, first_name=name,
                         email=f"{external_id}@example.com", locale=locale)
        session.commit()
    summary = run_once(rt, workers=2)
    assert summary.pending == 0
    by_rcpt = {m.rcpt_tos[0]: m.parsed for m in smtp_sink.messages}
    assert len(by_rcpt) == 4

    cn = by_rcpt["c-cn@example.com"]
    assert cn["Subject"] == "小明，我们想念您"
    assert "=?utf-8?" in cn.as_bytes().decode("ascii", "replace").lower()  # RFC 2047 on the wire
    assert cn.get_body(("plain",)).get_content().startswith("小明，您好！欢迎回来。")
    # No zh-CN HTML: the default HTML part, still with the customer's name.
    assert "Hello 小明" in cn.get_body(("html",)).get_content()

    tw = by_rcpt["c-tw@example.com"]
    assert tw["Subject"] == "（中文）我们想念您"  # zh-TW → zh
    assert tw.get_body(("plain",)).get_content().startswith("Hello 小華, come back.")  # zh → default

    for rcpt in ("c-en@example.com", "c-none@example.com"):
        assert by_rcpt[rcpt]["Subject"].startswith("We miss you, ")


def test_style_blocks_are_inlined_in_the_sent_html(make_runtime, smtp_sink, templates):
    rt = make_runtime(smtp_sink.url, templates=templates)
    with Session(rt.engine) as session:
        add_customer(session, inactive_days=45, first_name="Ada", email="ada@example.com")
        session.commit()
    run_once(rt, workers=1)
    [message] = smtp_sink.messages
    html = message.parsed.get_body(("html",)).get_content()
    assert '<p class="lead" style="color: #3b4cca;font-weight: bold;">' in html
    # Media queries cannot be inlined: they stay for the clients that honour them.
    assert "@media (max-width: 600px)" in html
    assert "p.lead { color" not in html


def test_check_covers_every_locale_file(templates):
    write(templates, {
        "we_miss_you/zh-CN/body.txt.j2": "{{ customer.first_name }，您好\n",  # syntax error
        "we_miss_you/de/body.html.j2": "<p>Hallo {{ customer.frist_name }}</p>\n",
        "we_miss_you/fr/body.txt.j2": "Bonjour {{ customer.first_name }}\n",
    })
    store = TemplateStore(templates)
    errors = [e.format() for e in store.check("we_miss_you", build_sample_context(template="we_miss_you"))]
    assert any("we_miss_you/zh-CN/body.txt.j2:1" in e for e in errors), errors
    assert any("we_miss_you/de/body.html.j2:1" in e and "frist_name" in e for e in errors), errors
    # The French text part lacks the unsubscribe link that the default one has.
    assert any("we_miss_you/fr/body.txt.j2" in e and "unsubscribe_url" in e for e in errors), errors


def test_check_accepts_the_translated_templates(templates):
    store = TemplateStore(templates)
    assert store.locales("we_miss_you") == ["zh", "zh-CN"]
    assert store.check("we_miss_you", build_sample_context(template="we_miss_you")) == []


SURVEY_RULES = """
defaults:
  sender: "Acme <hello@acme.example>"
  timezone: UTC
campaigns:
  - id: exit-survey
    template: exit_survey
    trigger: {event: cancelled, after: 1h}
    survey: why_you_left
surveys:
  why_you_left:
    - id: reason
      ask: What made you cancel?
      choices: [price, quality, not_needed]
      translations:
        zh-CN: {ask: 您为什么取消？, choices: {price: 价格, quality: 质量, not_needed: 不再需要}}
        zh: {ask: （中文）您为什么取消？}
    - id: missing
      ask: Was there a feature you missed?
      type: text
"""


def exit_survey_sent(rt, locale: str | None, **fields: str):
    """An exit-survey email sent to a new customer with ``locale``."""
    from campaigns.models import Delivery, DeliveryStatus, utcnow

    with Session(rt.engine) as session:
        customer = add_customer(session, locale=locale, **fields)
        delivery = Delivery(campaign_id="exit-survey", customer_id=customer.id, episode="e1",
                            status=DeliveryStatus.sent, template="exit_survey", sent_at=utcnow())
        session.add(delivery)
        session.commit()
        session.refresh(delivery)
        return delivery


@pytest.mark.parametrize(("locale", "ask", "label"), [
    ("zh-CN", "您为什么取消？", "价格"),
    ("zh_cn", "您为什么取消？", "价格"),
    ("zh-TW", "（中文）您为什么取消？", "Price"),  # zh-TW → zh: a translated question, default labels
    ("de", "What made you cancel?", "Price"),
    (None, "What made you cancel?", "Price"),
], ids=["zh-CN", "underscore", "zh-TW-falls-back-to-zh", "untranslated", "no-locale"])
def test_survey_questions_are_asked_in_the_customers_language(make_runtime, locale, ask, label):
    from fastapi.testclient import TestClient

    from worker.web import create_app

    rt = make_runtime("console://", rules=SURVEY_RULES)
    delivery = exit_survey_sent(rt, locale)
    with TestClient(create_app(rt), base_url="http://retention.test") as client:
        page = client.get(f"/s/{rt.signer.survey_token(delivery.id)}")
        assert page.status_code == 200
        assert ask in page.text
        assert label in page.text
        assert "Was there a feature you missed?" in page.text  # untranslated questions stay as written
        # A wrong answer shows the form again, still in the customer's language.
        again = client.post(f"/s/{rt.signer.survey_token(delivery.id)}", data={"reason": "nope"})
        assert again.status_code == 422
        assert ask in again.text


def test_a_translation_of_an_unknown_choice_is_a_located_error(tmp_path):
    from campaigns.errors import RulesErrors
    from campaigns.rules import load_rules

    path = tmp_path / "rules.yaml"
    path.write_text(SURVEY_RULES.replace("not_needed: 不再需要", "too_slow: 太慢"), encoding="utf-8")
    with pytest.raises(RulesErrors) as caught:
        load_rules(path)
    [error] = caught.value.errors
    assert error.format().startswith(f"{path}:")
    assert "too_slow" in error.format() and "price, quality, not_needed" in error.format()


def test_the_shipped_templates_speak_simplified_chinese(make_runtime, smtp_sink):
    rt = make_runtime(smtp_sink.url)
    with Session(rt.engine) as session:
        add_customer(session, inactive_days=45, first_name="小明", email="cn@example.com", locale="zh-CN")
        add_customer(session, inactive_days=45, first_name="Ada", email="tw@example.com", locale="zh-TW")
        session.commit()
    run_once(rt, workers=1)
    by_rcpt = {m.rcpt_tos[0]: m.parsed for m in smtp_sink.messages}
    cn = by_rcpt["cn@example.com"]
    assert cn["Subject"] == "小明，Acme 想念您"
    assert "好久没在 Acme 见到您了" in cn.get_body(("plain",)).get_content()
    html = cn.get_body(("html",)).get_content()
    assert 'lang="zh-CN"' in html and "一键退订" in html and "Unsubscribe" not in html
    # zh-TW has no folder of its own and no plain zh one: the default English files.
    assert by_rcpt["tw@example.com"]["Subject"] == "Ada, we miss you at Acme"


@pytest.mark.parametrize(("locale", "chinese"),
                         [("zh-CN", True), ("zh_cn", True), ("zh-TW", False), ("en", False)],
                         ids=["zh-CN", "underscore", "zh-TW-has-no-pages-of-its-own", "en"])
def test_built_in_pages_speak_the_customers_language(make_runtime, locale, chinese):
    from fastapi.testclient import TestClient

    from worker.web import create_app

    rt = make_runtime("console://", rules=SURVEY_RULES)
    delivery = exit_survey_sent(rt, locale, email="mei@example.com")
    with TestClient(create_app(rt), base_url="http://retention.test") as client:
        pages = {
            "confirm": client.get(f"/u/{rt.signer.unsubscribe_token(delivery.id)}"),
            "survey": client.get(f"/s/{rt.signer.survey_token(delivery.id)}"),
            "thanks": client.post(f"/s/{rt.signer.survey_token(delivery.id)}", data={"reason": "price"}),
            "unsubscribed": client.post(f"/u/{rt.signer.unsubscribe_token(delivery.id)}",
                                        data={"List-Unsubscribe": "One-Click"}),
        }
    words = {"confirm": ("确认退订", ">Unsubscribe</button>"), "survey": ("提交回答", "Send my answers"),
             "thanks": ("感谢您的回答", "Thank you for your answers"),
             "unsubscribed": ("您已成功退订", "You are unsubscribed")}
    for name, response in pages.items():
        assert response.status_code == 200, name
        zh, en = words[name]
        assert (zh in response.text) is chinese, name
        assert (en in response.text) is not chinese, name
        assert ('lang="zh-CN"' in response.text) is chinese, name


def test_an_unusable_link_answers_in_the_browsers_language(make_runtime):
    from fastapi.testclient import TestClient

    from worker.web import accepted_languages, create_app

    assert accepted_languages("en;q=0.5, zh-CN, zh;q=0.9, *;q=0.1") == ["zh-CN", "zh", "en"]
    rt = make_runtime("console://", rules=SURVEY_RULES)
    with TestClient(create_app(rt), base_url="http://retention.test") as client:
        chinese = client.get("/u/not-a-token", headers={"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.8"})
        english = client.get("/u/not-a-token", headers={"Accept-Language": "de-DE,en;q=0.5"})
    assert chinese.status_code == english.status_code == 400
    assert "链接无法使用" in chinese.text and 'lang="zh-CN"' in chinese.text
    assert "This link does not work" in english.text and "链接" not in english.text


def test_a_non_ascii_sender_name_and_subject_reach_any_mail_client(make_runtime, smtp_sink, templates):
    from email import policy
    from email.parser import BytesParser

    rules = ('defaults:\n  sender: "Acme 客服团队 <hello@acme.example>"\n  timezone: UTC\n'
             "campaigns:\n  - id: we-miss-you\n    template: we_miss_you\n"
             "    when: {status: active, days_inactive: {at_least: 30}}\n")
    rt = make_runtime(smtp_sink.url, rules=rules, templates=templates)
    with Session(rt.engine) as session:
        add_customer(session, inactive_days=45, first_name="Zoë", email="zoe@example.com", locale="zh-CN")
        session.commit()
    run_once(rt, workers=1)
    [received] = smtp_sink.messages
    raw = received.raw
    headers = raw.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]
    assert headers.isascii()  # RFC 2047 encoded words: readable without SMTPUTF8
    parsed = BytesParser(policy=policy.default).parsebytes(raw)
    assert parsed["Subject"] == "Zoë，我们想念您"
    assert parsed["From"].addresses[0].display_name == "Acme 客服团队"
    assert parsed["From"].addresses[0].addr_spec == "hello@acme.example"
