"""HTTP endpoints (FastAPI): health, and the links in every email.

- ``GET /u/{token}`` asks for confirmation and changes nothing (mail scanners
  prefetch links); ``POST /u/{token}`` unsubscribes: RFC 8058 one-click from a
  mail client, or the confirmation page's button.  No cookie, no redirect.
- ``GET /s/{token}`` shows the survey, ``POST /s/{token}`` stores the answers.
- ``GET /c/{token}`` records a click and redirects to the URL inside the
  signed token, never to anything the request says.

The domain work is ``campaigns.responses.recording``; this module verifies tokens, reads
bounded form bodies, maps outcomes to status codes and renders
``templates/pages/``.  A bad token or body writes nothing; a database that is
down answers 503, never a 200 without a durable write.
"""

from __future__ import annotations

import logging
import string
from collections.abc import Callable
from datetime import timedelta
from html import escape
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlmodel import Session
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from campaigns.delivery.tokens import TEST_DELIVERY_ID, Purpose
from campaigns.errors import (
    InvalidToken,
    SurveyUnavailable,
    SurveyValidationError,
    TemplateError,
    UnknownDelivery,
)
from campaigns.models import utcnow
from campaigns.responses import pages
from campaigns.responses import recording as responses
from campaigns.responses.pages import Pages
from worker import http_io
from worker.api import api_router
from worker.runtime import Runtime
from worker.segment import segment_router
from worker.serving import ops_router
from worker.webhooks import webhooks_router

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
MAX_FORM_FIELDS = 100
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")

# Pages carry tokens in their URL: keep them out of caches, referrers and frames.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Robots-Tag": "noindex, nofollow",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
}

T = TypeVar("T")


class Problem(Exception):
    """A request this server refuses; rendered as the error page with ``status``."""

    def __init__(self, status: int, title: str, message: str) -> None:
        self.status = status
        self.title = title
        self.message = message
        super().__init__(f"{status} {title}: {message}")


_TOKEN_PROBLEMS = {
    "expired": (410, "This link has expired",
                "Links to our surveys work for a limited time, and this one is too old. "
                "Thank you for wanting to answer all the same."),
    "wrong_purpose": (400, "This link does not work",
                      "This link is meant for something else. Please use the link from the email as it is."),
}
# Paths where clients are programs (JSON errors); everything else is a page a person sees.
_MACHINE_PATHS = ("/api/", "/v1/", "/webhooks/", "/healthz", "/readyz", "/metrics")
_HTTP_PROBLEMS = {
    400: ("Bad request", "This request could not be understood. Please use the link from the email as is."),
    404: ("Page not found", "There is nothing at this address. Please use the link from the email as it is, "
                            "or copy the whole address into your browser."),
    405: ("This page cannot do that", "This address does not take that kind of request. Please use the link "
                                      "from the email as it is."),
}
_TEST_LINKS = {
    Purpose.unsubscribe: ("This was a test email", "This unsubscribe link came from a test email (a preview "
                          "or `retention send-test`), so nothing was changed. In a real email it "
                          "unsubscribes the customer."),
    Purpose.survey: ("This was a test email", "This survey link came from a test email (a preview or "
                     "`retention send-test`), so no answers are recorded. In a real email it opens the "
                     "survey."),
}
_BAD_LINK = (400, "This link does not work",
             "The link seems to be incomplete or changed. Please open it again from the email, "
             "or copy the whole address into your browser.")


def create_app(rt: Runtime, role: str = "web") -> FastAPI:
    app = FastAPI(title="retention worker", docs_url=None, redoc_url=None)
    app.include_router(api_router(rt))
    app.include_router(webhooks_router(rt))
    app.include_router(segment_router(rt))
    page_store = Pages(rt.settings.templates)

    def render(name: str, context: dict[str, Any], *, status: int = 200,
               fallback: tuple[str, str], headers: dict[str, str] | None = None,
               locale: str | list[str | None] | None = None) -> HTMLResponse:
        try:
            body = page_store.render(name, context, locale)
        except TemplateError as exc:
            # A broken restyle must not break unsubscribing: the work is done, say so plainly.
            log.error("page template failed, serving a plain page instead: %s", exc.format())
            body = _plain_page(*fallback)
        return HTMLResponse(body, status_code=status, headers={**PAGE_HEADERS, **(headers or {})})

    def error_page(problem: Problem, request: Request | None = None) -> HTMLResponse:
        context = {"status": problem.status, "title": problem.title, "message": problem.message}
        headers = {"Retry-After": "30"} if problem.status == 503 else None
        # A broken or foreign link says nothing about its customer: the browser's languages.
        languages = accepted_languages(request.headers.get("accept-language", "")) if request else []
        return render(pages.ERROR, context, status=problem.status,
                      fallback=(problem.title, problem.message), headers=headers, locale=list(languages))

    @app.exception_handler(Problem)
    async def on_problem(request: Request, problem: Problem) -> Response:
        return error_page(problem, request)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # Machines calling the APIs get FastAPI's JSON; people following a link get a page.
        if request.url.path.startswith(_MACHINE_PATHS):
            return await http_exception_handler(request, exc)
        title, message = _HTTP_PROBLEMS.get(exc.status_code, _HTTP_PROBLEMS[400])
        page = error_page(Problem(exc.status_code, title, message))
        for name, value in (exc.headers or {}).items():  # e.g. Allow on a 405
            page.headers[name] = value
        return page

    def verify(purpose: Purpose, token: str, max_age: timedelta | None = None) -> int:
        try:
            payload = rt.signer.load(purpose, token, max_age=max_age)
        except InvalidToken as exc:
            log.info("refused a %s link: %s", purpose, exc)
            raise Problem(*_TOKEN_PROBLEMS.get(exc.reason, _BAD_LINK)) from None
        delivery_id = int(payload["delivery_id"])
        if delivery_id == TEST_DELIVERY_ID:
            raise Problem(200, *_TEST_LINKS[purpose])
        return delivery_id

    async def in_session(work: Callable[[Session], T]) -> T:
        try:
            return await http_io.in_session(rt.engine, work)
        except UnknownDelivery as exc:
            log.info("link to a deleted delivery: %s", exc)
            raise Problem(404, "This link no longer works",
                          "We could not find what this link points to. It may have been removed.") from None
        except http_io.DatabaseUnavailable:
            raise Problem(503, "Please try again in a minute",
                          "We could not save or look this up just now. Nothing was changed; "
                          "please try again shortly.") from None

    app.include_router(ops_router(rt, role))  # /healthz, /readyz, /metrics

    # ------------------------------------------------------------ unsubscribe

    @app.get("/u/{token}")
    async def unsubscribe_page(token: str, request: Request) -> Response:
        delivery_id = verify(Purpose.unsubscribe, token)
        email, already = await in_session(lambda s: responses.is_unsubscribed(s, delivery_id))
        locale = await in_session(lambda s: responses.customer_locale(s, delivery_id))
        return render(pages.UNSUBSCRIBE_CONFIRM,
                      {"email": email, "already": already, "action": request.url.path},
                      fallback=("Unsubscribe", "Use the unsubscribe link in the email again."), locale=locale)

    @app.post("/u/{token}")
    async def unsubscribe(token: str, request: Request) -> Response:
        delivery_id = verify(Purpose.unsubscribe, token)
        # The body (RFC 8058: List-Unsubscribe=One-Click) only has to be a sane form;
        # the signed token alone says who unsubscribes.
        await read_form(request)
        now = utcnow()
        result = await in_session(lambda s: responses.unsubscribe(s, delivery_id, now=now))
        locale = await in_session(lambda s: responses.customer_locale(s, delivery_id))
        return render(pages.UNSUBSCRIBED, {"email": result.email, "already": result.already_unsubscribed},
                      fallback=("You are unsubscribed", "You will not get any more emails from us."),
                      locale=locale)

    # ------------------------------------------------------------ survey

    def survey_token(token: str) -> int:
        return verify(Purpose.survey, token, max_age=rt.rules.defaults.survey_valid_for)

    @app.get("/s/{token}")
    async def survey_page(token: str, request: Request) -> Response:
        delivery_id = survey_token(token)
        rules = rt.rules
        form = await in_session(lambda s: _open_survey(lambda: responses.survey_form(s, rules, delivery_id)))
        questions = [_question(q, q.previous or "") for q in form.questions]
        return render(pages.SURVEY, {"action": request.url.path, "questions": questions,
                                     "answered_before": form.answered_before, "errors": {}},
                      fallback=("Survey", "The survey cannot be shown right now. Please try again later."),
                      locale=form.locale)

    @app.post("/s/{token}")
    async def survey_answers(token: str, request: Request) -> Response:
        delivery_id = survey_token(token)
        form = await read_form(request)
        answers: dict[str, list[str]] = {}
        for key, value in form.multi_items():
            if not isinstance(value, str):  # pragma: no cover - max_files=0 refuses files first
                raise Problem(400, "Files are not accepted", "Please answer in the form.")
            answers.setdefault(key, []).append(value)
        rules, now = rt.rules, utcnow()
        try:
            result = await in_session(lambda s: _open_survey(
                lambda: responses.submit_survey(s, rules, delivery_id, answers, now=now)))
        except SurveyValidationError as exc:
            again = await in_session(lambda s: responses.survey_form(s, rules, delivery_id))
            shown = [_question(q, (answers.get(q.id) or [""])[0]) for q in again.questions]
            return render(pages.SURVEY, {"action": request.url.path, "questions": shown,
                                         "answered_before": False, "errors": exc.errors},
                          status=422, fallback=("Please check your answers", str(exc)), locale=again.locale)
        locale = await in_session(lambda s: responses.customer_locale(s, delivery_id))
        return render(pages.SURVEY_THANKS, {"replaced": result.replaced},
                      fallback=("Thank you", "Your answers are saved."), locale=locale)

    # ------------------------------------------------------------ clicks

    @app.get("/c/{token}")
    async def click(token: str) -> Response:
        try:
            payload = rt.signer.load(Purpose.click, token)
        except InvalidToken as exc:
            log.info("refused a click link: %s", exc)
            raise Problem(*_BAD_LINK) from None
        target = _redirect_target(payload["url"])
        delivery_id, now = int(payload["delivery_id"]), utcnow()
        if delivery_id == TEST_DELIVERY_ID:  # a test email: the reader gets there, nothing is counted
            return RedirectResponse(target, status_code=303, headers=PAGE_HEADERS)
        try:
            await in_session(lambda s: responses.record_click(s, delivery_id, target, now=now))
        except Problem as problem:
            # The reader still gets where the signed link promised; only the count is lost.
            log.warning("click on delivery %s not recorded (%s); redirecting anyway",
                        delivery_id, problem.title)
        return RedirectResponse(target, status_code=303, headers=PAGE_HEADERS)

    return app


async def read_form(request: Request) -> FormData:
    """The request's form, refusing bodies over MAX_BODY_BYTES without reading them whole."""
    try:
        body = await http_io.read_body(request, MAX_BODY_BYTES)
    except http_io.BadContentLength:
        raise Problem(400, "Bad request", "The request's Content-Length is not a number.") from None
    except http_io.BodyTooLarge:
        raise _too_large() from None
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not body and content_type not in FORM_TYPES:
        return FormData()  # a bare POST: nothing to parse
    if content_type not in FORM_TYPES:
        raise Problem(415, "Unsupported form", "Please send the form as the page does "
                      "(application/x-www-form-urlencoded or multipart/form-data).")
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        return await Request(request.scope, replay).form(
            max_files=0, max_fields=MAX_FORM_FIELDS, max_part_size=MAX_BODY_BYTES)
    except (StarletteHTTPException, MultiPartException) as exc:
        detail = exc.detail if isinstance(exc, StarletteHTTPException) else exc.message
        raise Problem(400, "The form could not be read", f"The form data is malformed: {detail}") from None


def _too_large() -> Problem:
    return Problem(413, "Too much data",
                   f"Answers are limited to {MAX_BODY_BYTES // 1024} KiB. Please shorten them.")


def _open_survey(call: Callable[[], T]) -> T:
    try:
        return call()
    except SurveyUnavailable as exc:
        raise Problem(410, "This survey is closed",
                      "Thank you for wanting to answer; this survey no longer takes responses.") from exc


def _question(question: responses.FormQuestion, value: str) -> dict[str, Any]:
    return {"id": question.id, "ask": question.ask, "kind": question.kind,
            "choices": list(question.choices or ()), "required": question.required,
            "max_length": question.max_length, "value": value, "labels": question.labels}


def accepted_languages(header: str) -> list[str]:
    """The tags of an Accept-Language header, most preferred first (RFC 9110 §12.5.4)."""
    weighted = []
    for position, item in enumerate(header.split(",")[:20]):
        tag, _, params = item.strip().partition(";")
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if tag and tag != "*" and quality > 0:
            weighted.append((-quality, position, tag))
    return [tag for _, _, tag in sorted(weighted)]


_URL_SAFE = string.ascii_letters + string.digits + "-._~:/?#[]@!$&'()*+,;=%"


def _redirect_target(url: str) -> str:
    """The signed target as a header-safe absolute http(s) URL, or a 400."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise Problem(*_BAD_LINK)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in url):  # CR/LF would split the header
        raise Problem(*_BAD_LINK)
    return quote(url, safe=_URL_SAFE)  # spaces and non-ASCII → %XX; the rest as signed


def _plain_page(title: str, message: str) -> str:
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{escape(title)}"
            f"</title></head><body><h1>{escape(title)}</h1><p>{escape(message)}</p></body></html>")
