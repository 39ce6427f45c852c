"""The links in every email, over HTTP: unsubscribe, survey, click — and what they must refuse.

Everything runs against the real FastAPI app (httpx TestClient), a migrated
database on each backend, and, end to end, real emails through aiosmtpd.
"""

from __future__ import annotations

import re
import shutil
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from sqlmodel import Session, select

from campaigns.delivery.rendering import TemplateStore
from campaigns.errors import SurveyValidationError
from campaigns.models import (
    Customer,
    Delivery,
    DeliveryStatus,
    Event,
    Interaction,
    SurveyAnswer,
    utcnow,
)
from campaigns.responses import recording as responses
from campaigns.responses.pages import Pages
from tests.factories import add_customer
from worker import runtime as runtime_module
from worker.daemon import start_roles
from worker.database import make_engine
from worker.once import run_once
from worker.passes import run_pass
from worker.settings import Settings
from worker.web import MAX_BODY_BYTES, create_app

ROOT = Path(__file__).resolve().parent.parent
SECRET = "web-test-key"
PUBLIC_URL = "http://retention.test"
RULES = """
defaults:
  sender: "Acme <hello@acme.example>"
  timezone: UTC
  survey_valid_for: 30d
campaigns:
  - id: we-miss-you
    template: we_miss_you
    when:
      status: active
      days_inactive: {at_least: 30}
  - id: downgrade-offer
    template: check_in
    trigger: {event: downgraded}
    priority: 5
  - id: exit-survey
    template: exit_survey
    trigger: {event: cancelled, after: 1h}
    survey: why_you_left
surveys:
  why_you_left:
    - id: reason
      ask: What made you cancel?
      choices: [price, quality, not_needed]
      required: true
    - id: missing
      ask: Was there a feature you missed?
      type: text
      max_length: 50
"""


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def make_runtime(tmp_path, database_url):
    built = []

    def make(mail_url: str = "console://", rules: str = RULES,
             templates: Path = ROOT / "templates") -> runtime_module.Runtime:
        rules_file = tmp_path / "rules.yaml"
        rules_file.write_text(rules)
        settings = Settings(
            database_url=database_url, mail_url=mail_url, rules=rules_file, templates=templates,
            secret_key=SECRET, public_url=PUBLIC_URL,
            retry_min_backoff_ms=20, retry_max_backoff_ms=100,
        )
        rt = runtime_module.build(settings)
        built.append(rt)
        return rt

    yield make
    for rt in built:
        rt.close()


@pytest.fixture
def rt(make_runtime):
    return make_runtime()


@pytest.fixture
def client(rt):
    with TestClient(create_app(rt), base_url=PUBLIC_URL) as test_client:
        yield test_client


def add_delivery(rt, campaign_id: str = "exit-survey", *, customer_id: int | None = None,
                 status: str = DeliveryStatus.sent, episode: str | None = None) -> Delivery:
    with Session(rt.engine) as session:
        if customer_id is None:
            customer_id = add_customer(session).id
        delivery = Delivery(campaign_id=campaign_id, customer_id=customer_id,
                            episode=episode or f"ep-{time.monotonic_ns()}", status=status,
                            template="exit_survey", sent_at=utcnow())
        session.add(delivery)
        session.commit()
        session.refresh(delivery)
        return delivery


def rows(rt, model) -> list:
    with Session(rt.engine) as session:
        return list(session.exec(select(model)).all())


def customer(rt, customer_id: int) -> Customer:
    with Session(rt.engine) as session:
        found = session.get(Customer, customer_id)
        assert found is not None
        return found


def delivery_statuses(rt, customer_id: int) -> dict[str, str]:
    with Session(rt.engine) as session:
        return {d.campaign_id: d.status
                for d in session.exec(select(Delivery).where(Delivery.customer_id == customer_id))}


def text_of(response) -> str:
    """The page's visible text, tags stripped and whitespace collapsed."""
    return " ".join(re.sub(r"<[^>]+>", " ", response.text).split())


def nothing_written(rt) -> bool:
    return (rows(rt, Interaction) == [] and rows(rt, SurveyAnswer) == []
            and all(c.unsubscribed_at is None for c in rows(rt, Customer)))


def one_click(client: TestClient, url: str, encoding: str):
    """POST the RFC 8058 body the way a mail client does, in the given encoding."""
    if encoding == "multipart":
        return client.post(url, files={"List-Unsubscribe": (None, "One-Click")},
                           follow_redirects=False)
    return client.post(url, data={"List-Unsubscribe": "One-Click"}, follow_redirects=False)


def expired_survey_token(delivery_id: int) -> str:
    """A survey token signed with the real key 31 days ago (rules: survey_valid_for 30d)."""

    class LongAgo(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time()) - 31 * 86400

    serializer = URLSafeTimedSerializer([SECRET], salt="retention.survey", signer=LongAgo)
    return serializer.dumps(delivery_id)


def break_database(rt, database_url: str) -> None:
    """Point the runtime at a database that is not there, as when the server goes down."""
    rt.signer  # noqa: B018 - keys are configured; load the signer while the database is up
    rt.engine.dispose()
    if database_url.startswith("sqlite"):
        rt.engine = make_engine("sqlite:////nonexistent-directory/retention.db")
    else:
        rt.engine = make_engine("postgresql+psycopg://nobody@127.0.0.1:1/nothing?connect_timeout=2")


# ---------------------------------------------------------------- unsubscribe


def test_unsubscribe_page_asks_for_confirmation_and_changes_nothing(rt, client):
    delivery = add_delivery(rt)
    response = client.get(f"/u/{rt.signer.unsubscribe_token(delivery.id)}")
    assert response.status_code == 200
    assert "Unsubscribe from Acme emails?" in text_of(response)
    assert customer(rt, delivery.customer_id).email in response.text
    assert re.search(r'<form method="post" action="/u/[^"]+">', response.text)
    assert nothing_written(rt)
    assert delivery_statuses(rt, delivery.customer_id) == {"exit-survey": "sent"}


def test_confirmation_button_posts_back_and_unsubscribes(rt, client):
    delivery = add_delivery(rt)
    page = client.get(f"/u/{rt.signer.unsubscribe_token(delivery.id)}")
    action = re.search(r'<form method="post" action="([^"]+)">', page.text).group(1)
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]+)">', page.text))
    response = client.post(action, data=fields, follow_redirects=False)
    assert response.status_code == 200
    assert "You are unsubscribed" in text_of(response)
    assert customer(rt, delivery.customer_id).unsubscribed_at is not None
    again = client.get(action)
    assert "You are already unsubscribed" in text_of(again)
    assert "<form" not in again.text


@pytest.mark.parametrize("encoding", ["multipart", "urlencoded"])
def test_one_click_post_unsubscribes_without_cookie_or_redirect(rt, encoding):
    delivery = add_delivery(rt)
    add_delivery(rt, "downgrade-offer", customer_id=delivery.customer_id, status=DeliveryStatus.queued)
    add_delivery(rt, "we-miss-you", customer_id=delivery.customer_id, status=DeliveryStatus.held)
    other = add_delivery(rt, "downgrade-offer", status=DeliveryStatus.queued)
    with TestClient(create_app(rt), base_url=PUBLIC_URL) as fresh:  # no cookie jar history
        response = one_click(fresh, f"/u/{rt.signer.unsubscribe_token(delivery.id)}", encoding)
        assert not fresh.cookies
    assert response.status_code == 200
    assert "set-cookie" not in response.headers
    assert "location" not in response.headers
    assert response.headers["cache-control"] == "no-store"
    assert "You are unsubscribed" in text_of(response)
    assert customer(rt, delivery.customer_id).unsubscribed_at is not None
    assert delivery_statuses(rt, delivery.customer_id) == {
        "exit-survey": "sent", "downgrade-offer": "suppressed", "we-miss-you": "suppressed"}
    assert delivery_statuses(rt, other.customer_id) == {"downgrade-offer": "queued"}  # someone else's
    [interaction] = rows(rt, Interaction)
    assert (interaction.kind, interaction.delivery_id, interaction.campaign_id) == (
        "unsubscribe", delivery.id, "exit-survey")


def test_unsubscribing_twice_changes_nothing_and_says_already(rt, client):
    delivery = add_delivery(rt)
    url = f"/u/{rt.signer.unsubscribe_token(delivery.id)}"
    assert one_click(client, url, "urlencoded").status_code == 200
    first = customer(rt, delivery.customer_id).unsubscribed_at
    second = one_click(client, url, "multipart")
    assert second.status_code == 200
    assert "was already unsubscribed" in text_of(second)
    assert customer(rt, delivery.customer_id).unsubscribed_at == first
    assert len(rows(rt, Interaction)) == 1


def test_unsubscribe_from_a_second_email_records_it_once_per_delivery(rt):
    first = add_delivery(rt)
    second = add_delivery(rt, "we-miss-you", customer_id=first.customer_id)
    with Session(rt.engine) as session:
        a = responses.unsubscribe(session, first.id, now=utcnow())
        b = responses.unsubscribe(session, second.id, now=utcnow())
        c = responses.unsubscribe(session, second.id, now=utcnow())
    assert (a.already_unsubscribed, b.already_unsubscribed, c.already_unsubscribed) == (False, True, True)
    assert sorted(i.delivery_id for i in rows(rt, Interaction)) == sorted([first.id, second.id])


def test_racing_unsubscribes_of_one_email_record_one_interaction(rt):
    delivery = add_delivery(rt)
    results, errors = [], []

    def go() -> None:
        try:
            with Session(rt.engine) as session:
                results.append(responses.unsubscribe(session, delivery.id, now=utcnow()))
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=go) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(r.already_unsubscribed for r in results) == [False] + [True] * 5
    assert len(rows(rt, Interaction)) == 1


def test_bare_post_without_body_also_unsubscribes(rt, client):
    delivery = add_delivery(rt)
    response = client.post(f"/u/{rt.signer.unsubscribe_token(delivery.id)}")
    assert response.status_code == 200
    assert customer(rt, delivery.customer_id).unsubscribed_at is not None


# ---------------------------------------------------------------- refused tokens


def _tampered(token: str) -> str:
    return token[:-2] + ("AA" if not token.endswith("AA") else "BB")


@pytest.mark.parametrize("method,path_for", [
    pytest.param("GET", "u", id="GET-u"),
    pytest.param("POST", "u", id="POST-u"),
    pytest.param("GET", "s", id="GET-s"),
    pytest.param("POST", "s", id="POST-s"),
    pytest.param("GET", "c", id="GET-c"),
])
@pytest.mark.parametrize("kind", ["tampered", "foreign", "garbage"])
def test_bad_tokens_get_a_4xx_page_write_nothing_and_the_server_keeps_serving(
    rt, client, method, path_for, kind,
):
    delivery = add_delivery(rt)
    own = {"u": rt.signer.unsubscribe_token(delivery.id), "s": rt.signer.survey_token(delivery.id),
           "c": rt.signer.click_token(delivery.id, "https://acme.example/")}[path_for]
    foreign = rt.signer.unsubscribe_token(delivery.id) if path_for != "u" else rt.signer.survey_token(
        delivery.id)
    token = {"tampered": _tampered(own), "foreign": foreign, "garbage": "x" * 40}[kind]
    body = {"List-Unsubscribe": "One-Click", "reason": "price"}
    response = client.request(method, f"/{path_for}/{token}", data=body if method == "POST" else None,
                              follow_redirects=False)
    assert response.status_code == 400
    assert "This link does not work" in text_of(response)
    assert "location" not in response.headers
    assert nothing_written(rt)
    assert client.get("/healthz").status_code == 200
    assert client.get(f"/{path_for}/{own}", follow_redirects=False).status_code in (200, 303)


def test_token_signed_with_an_unknown_key_is_refused(rt, client):
    from campaigns.delivery.tokens import Signer

    delivery = add_delivery(rt)
    forged = Signer(["someone-elses-key"]).unsubscribe_token(delivery.id)
    assert one_click(client, f"/u/{forged}", "urlencoded").status_code == 400
    assert nothing_written(rt)


def test_link_to_a_deleted_delivery_gets_404(rt, client):
    token = rt.signer.unsubscribe_token(987654)
    assert client.get(f"/u/{token}").status_code == 404
    response = one_click(client, f"/u/{token}", "urlencoded")
    assert response.status_code == 404
    assert "This link no longer works" in text_of(response)


# ---------------------------------------------------------------- survey


def test_survey_form_shows_every_question_and_choice(rt, client):
    delivery = add_delivery(rt)
    response = client.get(f"/s/{rt.signer.survey_token(delivery.id)}")
    assert response.status_code == 200
    page = text_of(response)
    assert "What made you cancel?" in page and "Was there a feature you missed?" in page
    assert re.findall(r'name="reason" value="([^"]+)"', response.text) == ["price", "quality", "not_needed"]
    assert "Not needed" in page
    assert 'name="missing" maxlength="50"' in response.text
    assert "You answered before" not in page
    assert nothing_written(rt)


def test_survey_answers_are_stored_and_thanked(rt, client):
    delivery = add_delivery(rt)
    response = client.post(f"/s/{rt.signer.survey_token(delivery.id)}",
                           data={"reason": "price", "missing": "  dark mode \r\n please "})
    assert response.status_code == 200
    assert "Thank you for your answers" in text_of(response)
    assert "replaced" not in text_of(response)
    stored = {a.question_id: a for a in rows(rt, SurveyAnswer)}
    assert {k: a.answer for k, a in stored.items()} == {"reason": "price", "missing": "dark mode \n please"}
    assert {(a.survey_id, a.customer_id, a.delivery_id, a.campaign_id) for a in stored.values()} == {
        ("why_you_left", delivery.customer_id, delivery.id, "exit-survey")}
    [interaction] = rows(rt, Interaction)
    assert (interaction.kind, interaction.delivery_id) == ("survey", delivery.id)


def test_answering_again_replaces_the_earlier_answers_and_says_so(rt, client):
    delivery = add_delivery(rt)
    url = f"/s/{rt.signer.survey_token(delivery.id)}"
    client.post(url, data={"reason": "price", "missing": "exports"})
    prefilled = client.get(url)
    assert "You answered before" in text_of(prefilled)
    assert re.search(r'value="price"\s*checked', prefilled.text)
    assert ">exports</textarea>" in prefilled.text

    response = client.post(url, data={"reason": "quality", "missing": ""})
    assert response.status_code == 200
    assert "your new answers replaced the earlier ones" in text_of(response)
    assert {a.question_id: a.answer for a in rows(rt, SurveyAnswer)} == {"reason": "quality"}
    assert len(rows(rt, Interaction)) == 1  # once per delivery


def test_the_same_customer_answering_from_two_emails_keeps_one_answer_per_question(rt, client):
    first = add_delivery(rt)
    second = add_delivery(rt, customer_id=first.customer_id)
    client.post(f"/s/{rt.signer.survey_token(first.id)}", data={"reason": "price"})
    client.post(f"/s/{rt.signer.survey_token(second.id)}", data={"reason": "not_needed"})
    [answer] = rows(rt, SurveyAnswer)
    assert (answer.answer, answer.delivery_id) == ("not_needed", second.id)
    assert sorted(i.delivery_id for i in rows(rt, Interaction)) == sorted([first.id, second.id])


@pytest.mark.parametrize("data,field,message", [
    pytest.param({"reason": "cheaper_elsewhere"}, "reason",
                 "'cheaper_elsewhere' is not one of the choices (price, quality, not_needed)",
                 id="unknown-choice"),
    pytest.param({"reason": "price", "color": "blue"}, "color",
                 "unknown question 'color' (this survey asks: reason, missing)", id="unknown-question"),
    pytest.param({"reason": "price", "missing": "x" * 51}, "missing",
                 "at most 50 characters, got 51: please shorten it", id="text-too-long"),
    pytest.param({"missing": "exports"}, "reason", "please answer “What made you cancel?”",
                 id="required-missing"),
    pytest.param({"reason": ["price", "quality"]}, "reason", "one answer only, got 2", id="two-choices"),
    pytest.param({"reason": "price", "missing": "a\x00b"}, "missing",
                 "contains control characters: please write plain text", id="nul-byte"),
])
def test_invalid_answers_get_422_with_a_clear_message_and_store_nothing(rt, client, data, field, message):
    delivery = add_delivery(rt)
    with Session(rt.engine) as session, pytest.raises(SurveyValidationError) as caught:
        responses.submit_survey(session, rt.rules, delivery.id,
                                {k: v if isinstance(v, list) else [v] for k, v in data.items()},
                                now=utcnow())
    assert caught.value.errors[field] == message
    assert str(caught.value).startswith("survey 'why_you_left': ")

    response = client.post(f"/s/{rt.signer.survey_token(delivery.id)}", data=data)
    assert response.status_code == 422
    assert ("Please check the answers marked below." in text_of(response)) == (field != "color")
    assert re.sub(r"&#3[49];", "'", response.text).count(message) == 1
    assert nothing_written(rt)


def test_empty_response_is_refused(rt, client):
    delivery = add_delivery(rt)
    response = client.post(f"/s/{rt.signer.survey_token(delivery.id)}", data={"missing": "  "},
                           headers={"content-type": "application/x-www-form-urlencoded"})
    assert response.status_code == 422
    assert "please answer" in text_of(response)
    assert nothing_written(rt)


def test_invalid_answer_keeps_what_the_customer_typed(rt, client):
    delivery = add_delivery(rt)
    response = client.post(f"/s/{rt.signer.survey_token(delivery.id)}",
                           data={"reason": "nope", "missing": "<b>keep me</b>"})
    assert "&lt;b&gt;keep me&lt;/b&gt;</textarea>" in response.text
    assert "<b>keep me</b>" not in response.text


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_expired_survey_link_gets_410_saying_it_expired(rt, client, method):
    delivery = add_delivery(rt)
    token = expired_survey_token(delivery.id)
    assert rt.signer.load("survey", token) == {"delivery_id": delivery.id}  # genuine, just old
    response = client.request(method, f"/s/{token}", data={"reason": "price"} if method == "POST" else None)
    assert response.status_code == 410
    assert "This link has expired" in text_of(response)
    assert nothing_written(rt)


def test_survey_of_a_campaign_removed_from_the_rules_is_closed(rt, client):
    delivery = add_delivery(rt, "retired-campaign")
    response = client.get(f"/s/{rt.signer.survey_token(delivery.id)}")
    assert response.status_code == 410
    assert "This survey is closed" in text_of(response)
    assert client.post(f"/s/{rt.signer.survey_token(delivery.id)}",
                       data={"reason": "price"}).status_code == 410
    assert nothing_written(rt)


# ---------------------------------------------------------------- bodies


@pytest.mark.parametrize("path", ["u", "s"])
def test_oversized_bodies_get_413_and_write_nothing(rt, client, path):
    delivery = add_delivery(rt)
    token = (rt.signer.unsubscribe_token if path == "u" else rt.signer.survey_token)(delivery.id)
    big = "x" * (MAX_BODY_BYTES + 1)
    declared = client.post(f"/{path}/{token}", data={"reason": "price", "missing": big})
    assert declared.status_code == 413
    assert "limited to 64 KiB" in text_of(declared)

    def chunks():  # no Content-Length: the limit must hold while streaming
        for _ in range(100):
            yield b"missing=" + b"x" * 4096

    streamed = client.post(f"/{path}/{token}", content=chunks(),
                           headers={"content-type": "application/x-www-form-urlencoded"})
    assert "content-length" not in streamed.request.headers
    assert streamed.status_code == 413
    assert nothing_written(rt)


@pytest.mark.parametrize("path", ["u", "s"])
@pytest.mark.parametrize("content_type,body,status", [
    pytest.param("multipart/form-data", b"--x\r\nnonsense", 400, id="multipart-without-boundary"),
    pytest.param("multipart/form-data; boundary=b", b"--b\r\nContent-Disposition: form-data; "
                 b'name="f"; filename="a.txt"\r\n\r\nfile\r\n--b--\r\n', 400, id="file-upload"),
    pytest.param("application/json", b'{"reason": "price"}', 415, id="json"),
])
def test_malformed_bodies_get_4xx_and_write_nothing(rt, client, path, content_type, body, status):
    delivery = add_delivery(rt)
    token = (rt.signer.unsubscribe_token if path == "u" else rt.signer.survey_token)(delivery.id)
    response = client.post(f"/{path}/{token}", content=body, headers={"content-type": content_type})
    assert response.status_code == status
    assert nothing_written(rt)
    assert one_click(client, f"/u/{rt.signer.unsubscribe_token(delivery.id)}", "multipart").status_code == 200


def test_non_numeric_content_length_gets_400(rt, client):
    delivery = add_delivery(rt)
    response = client.post(f"/u/{rt.signer.unsubscribe_token(delivery.id)}", content=b"a=b",
                           headers={"content-length": "abc",
                                    "content-type": "application/x-www-form-urlencoded"})
    assert response.status_code == 400
    assert nothing_written(rt)


# ---------------------------------------------------------------- clicks


def test_click_records_and_redirects_to_the_signed_target_only(rt, client):
    delivery = add_delivery(rt)
    target = "https://acme.example/reports?utm_source=email&x=1"
    token = rt.signer.click_token(delivery.id, target)
    response = client.get(f"/c/{token}?url=https://evil.example/&next=https://evil.example/",
                          follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == target
    assert response.headers["referrer-policy"] == "no-referrer"
    client.get(f"/c/{token}", follow_redirects=False)
    clicks = rows(rt, Interaction)
    assert [(c.kind, c.url, c.delivery_id) for c in clicks] == [("click", target, delivery.id)] * 2


def test_click_with_a_modified_target_is_refused(rt, client):
    delivery = add_delivery(rt)
    token = rt.signer.click_token(delivery.id, "https://acme.example/")
    _payload, rest = token.split(".", 1)
    evil = rt.signer.click_token(delivery.id, "https://evil.example/").split(".", 1)[0]
    response = client.get(f"/c/{evil}.{rest}", follow_redirects=False)
    assert response.status_code == 400
    assert "location" not in response.headers
    assert nothing_written(rt)


def test_click_target_with_non_ascii_is_percent_encoded(rt, client):
    delivery = add_delivery(rt)
    token = rt.signer.click_token(delivery.id, "https://acme.example/über?q=ä b")
    response = client.get(f"/c/{token}", follow_redirects=False)
    assert response.headers["location"] == "https://acme.example/%C3%BCber?q=%C3%A4%20b"


# ---------------------------------------------------------------- database down


def test_database_down_answers_503_and_never_a_false_success(rt, client, database_url):
    delivery = add_delivery(rt)
    unsubscribe = f"/u/{rt.signer.unsubscribe_token(delivery.id)}"
    survey = f"/s/{rt.signer.survey_token(delivery.id)}"
    click = f"/c/{rt.signer.click_token(delivery.id, 'https://acme.example/')}"
    good = rt.engine
    break_database(rt, database_url)
    for response in (one_click(client, unsubscribe, "urlencoded"),
                     client.post(survey, data={"reason": "price"}),
                     client.get(unsubscribe), client.get(survey)):
        assert response.status_code == 503
        assert response.headers["retry-after"] == "30"
        assert "Nothing was changed" in text_of(response)
    # The reader still reaches the signed target; only the count is lost.
    assert client.get(click, follow_redirects=False).headers["location"] == "https://acme.example/"
    rt.engine.dispose()
    rt.engine = good
    assert nothing_written(rt)
    assert one_click(client, unsubscribe, "urlencoded").status_code == 200


# ---------------------------------------------------------------- pages


def test_broken_page_template_still_unsubscribes_with_a_plain_page(make_runtime, tmp_path):
    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", templates)
    (templates / "pages").mkdir()
    (templates / "pages" / "unsubscribed.html.j2").write_text("{% extends 'base.html.j2' %}{{ oops }")
    rt = make_runtime(templates=templates)
    delivery = add_delivery(rt)
    with TestClient(create_app(rt), base_url=PUBLIC_URL) as client:
        response = one_click(client, f"/u/{rt.signer.unsubscribe_token(delivery.id)}", "urlencoded")
    assert response.status_code == 200
    assert "You are unsubscribed" in text_of(response)
    assert customer(rt, delivery.customer_id).unsubscribed_at is not None
    [error] = Pages(templates).check()
    assert error.format().endswith("pages/unsubscribed.html.j2:1: unexpected '}'")


def test_own_templates_without_pages_get_the_built_in_survey_form_and_unsubscribe_button(
    make_runtime, tmp_path,
):
    templates = tmp_path / "own"
    shutil.copytree(ROOT / "templates" / "exit_survey", templates / "exit_survey")
    assert not (templates / "pages").exists()
    rt = make_runtime(templates=templates)
    delivery = add_delivery(rt)
    survey = f"/s/{rt.signer.survey_token(delivery.id)}"
    unsubscribe = f"/u/{rt.signer.unsubscribe_token(delivery.id)}"
    with TestClient(create_app(rt), base_url=PUBLIC_URL) as client:
        form = client.get(survey)
        assert form.status_code == 200
        assert f'action="{survey}"' in form.text and 'name="reason" value="price"' in form.text
        assert "cannot be shown" not in text_of(form)
        assert "Thank you for your answers" in text_of(client.post(survey, data={"reason": "price"}))
        confirm = client.get(unsubscribe)
        assert f'action="{unsubscribe}"' in confirm.text and "<button" in confirm.text
        assert "You are unsubscribed" in text_of(client.post(unsubscribe))
    assert {a.answer for a in rows(rt, SurveyAnswer)} == {"price"}
    assert customer(rt, delivery.customer_id).unsubscribed_at is not None


def test_a_page_in_templates_pages_replaces_only_that_built_in_page(make_runtime, tmp_path):
    templates = tmp_path / "templates"
    (templates / "pages").mkdir(parents=True)
    (templates / "pages" / "unsubscribed.html.j2").write_text(
        "{% extends 'base.html.j2' %}{% block content %}Bye {{ email }} from Acme{% endblock %}")
    rt = make_runtime(templates=templates)
    delivery = add_delivery(rt)
    unsubscribe = f"/u/{rt.signer.unsubscribe_token(delivery.id)}"
    with TestClient(create_app(rt), base_url=PUBLIC_URL) as client:
        assert "<button" in client.get(unsubscribe).text  # still the built-in confirm page
        assert "from Acme" in text_of(client.post(unsubscribe))
    assert Pages(templates).check() == []


def test_shipped_pages_render_with_what_the_server_passes():
    assert Pages(ROOT / "templates").check() == []


def test_pages_escape_what_they_show(tmp_path):
    html = Pages(ROOT / "templates").render("error.html.j2", {
        "status": 400, "title": "<script>x</script>", "message": "a & b"})
    assert "<script>x</script>" not in html and "&lt;script&gt;" in html and "a &amp; b" in html


def test_email_template_store_ignores_the_pages_directory():
    store = TemplateStore(ROOT / "templates")
    assert "pages" not in store.names()
    assert not store.exists("pages")
    assert store.check_all() == []


# ---------------------------------------------------------------- end to end


def _unsubscribe_url(message) -> str:
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    match = re.search(r"<(https?://[^>]+/u/[^>]+)>", message["List-Unsubscribe"])
    assert match, message["List-Unsubscribe"]
    return match.group(1)


def _add_event(rt, customer_ids, name: str) -> None:
    with Session(rt.engine) as session:
        for customer_id in customer_ids:
            session.add(Event(customer_id=customer_id, name=name,
                              occurred_at=utcnow() - timedelta(minutes=1)))
        session.commit()


def test_one_click_unsubscribe_from_a_real_email_stops_every_later_email(make_runtime, smtp_sink):
    rt = make_runtime(mail_url=smtp_sink.url)
    with Session(rt.engine) as session:
        ids = [add_customer(session, inactive_days=45).id for _ in range(3)]
        session.commit()
    emails = {customer(rt, i).email: i for i in ids}
    first = run_once(rt, workers=2)
    assert sum(r.sent for r in first.rows) == 3
    received = {m.rcpt_tos[0]: m.parsed for m in smtp_sink.wait_for(3)}
    assert set(received) == set(emails)

    # A second campaign's deliveries are planned and queued before anyone unsubscribes.
    _add_event(rt, ids, "downgraded")
    roles = start_roles(rt, workers=1, consume=False)
    try:
        planned = run_pass(rt, roles.enqueue)
    finally:
        roles.stop()
    assert planned.result.plan("downgrade-offer").inserted == 3

    unsubscribing = sorted(emails)[:2]
    staying = sorted(emails)[2]
    with TestClient(create_app(rt)) as client:
        for address, encoding in zip(unsubscribing, ["multipart", "urlencoded"], strict=True):
            url = _unsubscribe_url(received[address])
            assert url.startswith(f"{PUBLIC_URL}/u/")
            response = one_click(client, url, encoding)
            assert response.status_code == 200, response.text
            assert "set-cookie" not in response.headers and "location" not in response.headers
        assert not client.cookies

    for address in unsubscribing:
        assert delivery_statuses(rt, emails[address]) == {
            "we-miss-you": "sent", "downgrade-offer": "suppressed"}
    _add_event(rt, [emails[a] for a in unsubscribing], "downgraded")  # a new episode
    run_once(rt, workers=2)
    later = smtp_sink.messages[3:]
    assert [m.rcpt_tos for m in later] == [[staying]]
    assert later[0].parsed["Subject"] != received[staying]["Subject"]  # the second campaign
    for address in unsubscribing:
        assert delivery_statuses(rt, emails[address]) == {
            "we-miss-you": "sent", "downgrade-offer": "suppressed"}
    # The staying customer's email carries click-tracked links that lead where they were signed to.
    tracked = re.findall(rf"{PUBLIC_URL}/c/\S+", later[0].parsed.get_body(("plain",)).get_content())
    assert tracked
    with TestClient(create_app(rt)) as client:
        response = client.get(tracked[0], follow_redirects=False)
    assert (response.status_code, response.headers["location"]) == (303, "https://acme.example/login")
    assert [i.kind for i in rows(rt, Interaction)] == ["unsubscribe", "unsubscribe", "click"]


def test_click_target_with_a_line_break_is_refused_not_sent_as_a_header(rt, client):
    delivery = add_delivery(rt)
    token = rt.signer.click_token(delivery.id, "https://acme.example/\r\nSet-Cookie: a=b")
    response = client.get(f"/c/{token}", follow_redirects=False)
    assert response.status_code == 400
    assert "set-cookie" not in response.headers and "location" not in response.headers


def test_logs_name_the_companys_own_customer_id_not_the_row_id(rt, client, caplog):
    with Session(rt.engine) as session:
        row_id = add_customer(session, external_id="acme-cus-4711").id
        session.commit()
    delivery = add_delivery(rt, customer_id=row_id)
    with caplog.at_level("INFO", logger="campaigns.responses.recording"):
        client.post(f"/s/{rt.signer.survey_token(delivery.id)}", data={"reason": "price"})
        one_click(client, f"/u/{rt.signer.unsubscribe_token(delivery.id)}", "urlencoded")
    messages = [r.getMessage() for r in caplog.records if r.name == "campaigns.responses.recording"]
    assert [m.split(" (")[0] for m in messages] == [
        "survey why_you_left answered by customer acme-cus-4711",
        "customer acme-cus-4711 unsubscribed"], messages
