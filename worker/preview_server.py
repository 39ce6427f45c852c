"""`retention preview --serve`: every campaign rendered live beside the files being edited.

The page asks ``/api/state`` for every campaign × variant × locale rendered for one
customer (through the same ``Sender.compose`` as a real send) together with what
`retention check` says; ``/events`` (server-sent events) tells it when rules.yaml or a
template was saved, so it re-asks within about a second, without a manual reload.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Any

import watchfiles
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from sqlmodel import Session, col, select

from campaigns.errors import RetentionError, RulesErrors, SourceError
from campaigns.models import Customer, utcnow
from campaigns.rules import Rules, load_rules
from worker import previews
from worker.runtime import Runtime, check_files

log = logging.getLogger(__name__)

# How often an open page's event stream looks at the change counter, and how often it
# sends a comment so proxies and browsers keep an idle stream open.
POLL_SECONDS = 0.2
KEEPALIVE_SECONDS = 15.0


class FileWatch:
    """Counts saved edits to rules.yaml and the templates folder, from a watchfiles thread."""

    def __init__(self, rules: Path, templates: Path, *, on_change: Callable[[], None] = lambda: None) -> None:
        self.rules = rules.resolve()
        self.templates = templates.resolve()
        self.on_change = on_change  # runs before the pages hear of the edit
        self.version = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="preview-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _relevant(self, _change: watchfiles.Change, path: str) -> bool:
        resolved = Path(path).resolve()
        return resolved == self.rules or resolved.is_relative_to(self.templates)

    def _run(self) -> None:
        # The rules file's folder, not the file: editors save by writing a new file and
        # renaming it over the old one, which a watch on the old file never sees.
        paths = {self.rules.parent, self.templates}
        for _changes in watchfiles.watch(*paths, watch_filter=self._relevant, stop_event=self._stop,
                                         debounce=150, step=50, raise_interrupt=False):
            self.on_change()
            self.version += 1
            log.info("preview: files changed, refreshing open pages")


class Preview:
    """Builds the state the page shows; keeps the last rules.yaml that loaded."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.rules: Rules = rt.rules

    def check(self) -> list[str]:
        try:
            self.rules = load_rules(self.rt.settings.rules)
        except RulesErrors:
            pass  # check_files reports it; keep previewing the last rules that loaded
        except (OSError, UnicodeDecodeError) as exc:
            return [f"{self.rt.settings.rules}: {exc}"]
        _rules, lines = check_files(self.rt.settings.rules, self.rt.templates)
        return lines

    def customer(self, session: Session, external_id: str | None) -> Customer:
        if external_id:
            return previews.find_customer(session, external_id)
        first = session.exec(select(Customer).order_by(col(Customer.id)).limit(1)).first()
        return first if first is not None else previews.sample()

    def state(self, customer_id: str | None) -> dict[str, Any]:
        errors = self.check()
        now = utcnow()
        sender = self.rt.sender()
        sender.rules = self.rules
        with Session(self.rt.engine) as session:
            customer = self.customer(session, customer_id)
            campaigns = []
            for campaign in self.rules.campaigns:
                variants = []
                for label, template in _variants(campaign):
                    locales = []
                    for locale in ["", *self.rt.templates.locales(template)]:
                        entry: dict[str, Any] = {"locale": locale or "default"}
                        try:
                            message = previews.compose(sender, campaign, customer, template=template,
                                                       now=now, locale=locale or None)
                            entry["message"] = asdict(previews.parts(message))
                        except SourceError as exc:
                            entry["error"] = exc.format()
                        except (RetentionError, ValueError) as exc:
                            entry["error"] = str(exc)
                        locales.append(entry)
                    variants.append({"name": label, "template": template, "locales": locales})
                campaigns.append({"id": campaign.id, "enabled": campaign.enabled, "variants": variants})
        return {
            "customer": {"id": customer.external_id, "email": customer.email, "locale": customer.locale,
                         "sample": customer.id == 0},
            "errors": errors,
            "campaigns": campaigns,
        }

    def send_test(self, campaign_id: str, to: str, customer_id: str | None, variant: str | None,
                  locale: str | None) -> str:
        campaign = self.rules.campaign(campaign_id)
        sender = self.rt.sender()
        sender.rules = self.rules
        with Session(self.rt.engine) as session:
            customer = self.customer(session, customer_id)
            message = previews.compose(sender, campaign, customer,
                                       template=previews.variant_template(campaign, variant),
                                       now=utcnow(), locale=locale)
        return self.rt.transport.send(previews.as_test(message, to))


def _variants(campaign: Any) -> list[tuple[str | None, str]]:
    if campaign.variants:
        return [(v.label, v.template) for v in campaign.variants]
    return [(None, campaign.templates[0])]


def create_preview_app(rt: Runtime, watch: FileWatch) -> FastAPI:
    preview = Preview(rt)
    page = resources.files("worker").joinpath("static/preview.html").read_text(encoding="utf-8")
    app = FastAPI(title="retention preview", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/api/state")
    def state(customer: str | None = None) -> JSONResponse:
        try:
            return JSONResponse(preview.state(customer))
        except RetentionError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)

    @app.get("/api/customers")
    def customers(q: str = "") -> JSONResponse:
        with Session(rt.engine) as session:
            found = previews.search_customers(session, q)
        rows = [{"id": c.external_id, "email": c.email, "locale": c.locale,
                 "name": " ".join(filter(None, [c.first_name, c.last_name]))} for c in found]
        return JSONResponse({"customers": rows, "sample": previews.SAMPLE_ID})

    @app.post("/api/send-test")
    async def send_test(request: Request) -> JSONResponse:
        body = await request.json()
        to = str(body.get("to") or "").strip()
        if not to:
            return JSONResponse({"error": "enter the address that should receive the test"}, status_code=422)
        try:
            reply = await asyncio.to_thread(
                preview.send_test, str(body.get("campaign")), to, body.get("customer") or None,
                body.get("variant") or None, body.get("locale") or None)
        except (RetentionError, ValueError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)
        return JSONResponse({"sent": f"sent a test to {to}: {reply}"})

    @app.get("/events")
    async def events(request: Request) -> StreamingResponse:
        async def stream() -> AsyncIterator[str]:
            seen = watch.version
            idle = 0.0
            yield f"event: hello\ndata: {seen}\n\n"
            while not await request.is_disconnected():
                await asyncio.sleep(POLL_SECONDS)
                idle += POLL_SECONDS
                if watch.version != seen:
                    seen = watch.version
                    idle = 0.0
                    yield f"event: change\ndata: {seen}\n\n"
                elif idle >= KEEPALIVE_SECONDS:
                    idle = 0.0
                    yield ": keep-alive\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    return app
