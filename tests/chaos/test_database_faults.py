"""The database misbehaves: PostgreSQL unreachable during sends and during unsubscribe and
survey posts, and SQLite under many concurrent writers (issue 8, scenarios 12, 13, 14).

PostgreSQL goes "down" for a process by cutting the TCP proxy it connects through; the
test itself keeps a direct connection to look at what was (not) written.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa
from sqlmodel import Session, col, select

from campaigns.models import Customer, Delivery, DeliveryStatus, Event, Interaction, SurveyAnswer, utcnow
from tests.chaos.support import (
    POSTGRES_ONLY,
    SQLITE_ONLY,
    Proc,
    TcpProxy,
    add_inactive,
    deliveries,
    env_for,
    free_port,
    producer,
    settle_dead_workers,
    statuses,
    sweep,
    through_proxy,
    wait_until,
)
from tests.conftest import DEFAULT_RULES
from tests.factories import add_customer
from worker.passes import run_pass

RULES = DEFAULT_RULES + """
  - id: exit-survey
    template: exit_survey
    trigger: {event: cancelled, after: 1h}
    survey: why_you_left
surveys:
  why_you_left:
    - id: reason
      ask: What made you cancel?
      choices: [price, quality, not_needed]
"""


@pytest.fixture
def pg_proxy(database_url) -> Iterator[TcpProxy]:
    url = sa.engine.make_url(database_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    try:
        yield proxy
    finally:
        proxy.close()


# ---------------------------------------------------------------- scenario 12


@POSTGRES_ONLY
def test_database_down_during_sends_sends_nothing_unclaimed_and_delivers_after_recovery(
    make_runtime, database_url, redis_url, chaos_sink, processes, pg_proxy
):
    rt = make_runtime(chaos_sink.url, redis_url)
    add_inactive(rt, 5)
    worker = processes.worker(env_for(rt, RETENTION_DATABASE_URL=through_proxy(database_url, pg_proxy)))
    pg_proxy.down()
    with producer(rt) as roles:
        run_pass(rt, roles.enqueue)  # the planner still reaches the database; the worker does not
        # Every message is tried, retried and finally dropped by the broker: the claim
        # (the first write) fails each time, so no message is ever sent; the only SMTP
        # connection is the worker's start-up check that the server takes its login.
        wait_until(lambda: worker.count("Retries exceeded") >= 5, timeout=60,
                   what=lambda: f"the broker giving up on all five messages\n{worker.output}")
        assert worker.count("OperationalError") > 0
        assert chaos_sink.connections <= 1 and chaos_sink.messages == []
        assert [(r.status, r.attempts) for r in deliveries(rt)] == [("queued", 0)] * 5
        pg_proxy.up()
        assert len(sweep(rt, roles.enqueue)) == 5  # the outbox outlives the broker's retries
        wait_until(lambda: statuses(rt) == {"sent": 5}, timeout=30, what=lambda: f"the sends: {statuses(rt)}")
        time.sleep(0.3)
    assert len(chaos_sink.messages) == 5 == len({m.rcpt_tos[0] for m in chaos_sink.messages})
    assert worker.alive and worker.terminate() == 0, worker.output


@POSTGRES_ONLY
def test_database_lost_after_the_server_accepted_is_held_as_unknown_not_resent(
    make_runtime, database_url, redis_url, chaos_sink, processes, pg_proxy
):
    rt = make_runtime(chaos_sink.url, redis_url)
    add_inactive(rt, 1)
    chaos_sink.hold("accepted")
    worker = processes.worker(env_for(rt, RETENTION_DATABASE_URL=through_proxy(database_url, pg_proxy)))
    with producer(rt) as roles:
        run_pass(rt, roles.enqueue)
        assert chaos_sink.reached.wait(30), worker.output
        pg_proxy.down()  # the mail is out; recording `sent` will fail
        chaos_sink.resume()
        wait_until(lambda: worker.count("Retries exceeded") >= 1, timeout=60,
                   what=lambda: f"the broker giving up\n{worker.output}")
        pg_proxy.up()
        [row] = deliveries(rt)
        assert row.status == DeliveryStatus.sending and row.message_id == chaos_sink.received_ids()[0]
        assert settle_dead_workers(rt) == [row.id]  # after the sending timeout: ambiguous, counted
        assert sweep(rt, roles.enqueue) == []
        time.sleep(0.3)
    assert statuses(rt) == {"unknown": 1}
    assert len(chaos_sink.messages) == 1


# ---------------------------------------------------------------- scenario 13


def http(method: str, url: str, form: dict[str, str] | None = None) -> tuple[int, str]:
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # our own server
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def click(url: str) -> int:
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(url, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def sent_survey_delivery(rt, **customer_fields) -> Delivery:
    with Session(rt.engine) as session:
        customer = add_customer(session, **customer_fields)
        delivery = Delivery(campaign_id="exit-survey", customer_id=customer.id or 0, episode="e1",
                            status=DeliveryStatus.sent, template="exit_survey", sent_at=utcnow())
        session.add(delivery)
        session.commit()
        session.refresh(delivery)
        return delivery


def start_web(processes, env: dict[str, str]) -> tuple[str, Proc]:
    port = free_port()
    web = processes.retention("web", "--port", str(port), env=env)
    base = f"http://127.0.0.1:{port}"
    web.wait_for_line("web on http")
    wait_until(lambda: _answers(f"{base}/healthz"), timeout=30, what="the web process")
    return base, web


def _answers(url: str) -> bool:
    try:
        return http("GET", url)[0] in (200, 503)
    except OSError:
        return False


@POSTGRES_ONLY
def test_database_down_during_unsubscribe_and_survey_posts_answers_503_never_a_false_200(
    make_runtime, database_url, processes, pg_proxy
):
    rt = make_runtime("console://", rules=RULES)
    delivery = sent_survey_delivery(rt)
    unsubscribe = f"/u/{rt.signer.unsubscribe_token(delivery.id or 0)}"
    survey = f"/s/{rt.signer.survey_token(delivery.id or 0)}"
    env = env_for(rt, RETENTION_DATABASE_URL=through_proxy(database_url, pg_proxy))
    base, web = start_web(processes, env)
    assert http("GET", f"{base}{unsubscribe}")[0] == 200  # the pool holds a live connection now

    pg_proxy.down()
    for method, path, form in (("POST", unsubscribe, {"List-Unsubscribe": "One-Click"}),
                               ("POST", survey, {"reason": "price"}),
                               ("GET", survey, None)):
        status, body = http(method, f"{base}{path}", form)
        assert status == 503, (method, path, status, body)
        assert "Nothing was changed" in body
    assert http("GET", f"{base}/readyz")[0] == 503  # not ready: links need the database
    assert http("GET", f"{base}/healthz")[0] == 200  # but alive: a restart would not help
    with Session(rt.engine) as session:
        customer = session.get(Customer, delivery.customer_id)
        assert customer is not None and customer.unsubscribed_at is None
        assert session.exec(select(Interaction)).all() == []
        assert session.exec(select(SurveyAnswer)).all() == []

    pg_proxy.up()
    assert http("POST", f"{base}{unsubscribe}", {"List-Unsubscribe": "One-Click"})[0] == 200
    assert http("POST", f"{base}{survey}", {"reason": "price"})[0] == 200
    with Session(rt.engine) as session:
        customer = session.get(Customer, delivery.customer_id)
        assert customer is not None and customer.unsubscribed_at is not None
        assert [a.answer for a in session.exec(select(SurveyAnswer))] == ["price"]
    assert web.terminate() == 0, web.output


# ---------------------------------------------------------------- scenario 14


@pytest.mark.chaos
@SQLITE_ONLY
def test_sqlite_under_concurrent_planner_workers_web_and_import_loses_no_write(
    make_runtime, redis_url, smtp_sink, processes, tmp_path
):
    rt = make_runtime(smtp_sink.url, redis_url, rules=RULES.replace("timezone: UTC",
                                                                    "timezone: UTC\n  check_every: 10s"))
    planned = add_inactive(rt, 250)
    targets = [sent_survey_delivery(rt, inactive_days=1) for _ in range(40)]
    events = tmp_path / "events.csv"
    with Session(rt.engine) as session:  # the responders' activity, not the planned customers'
        external = [c.external_id for d in targets if (c := session.get(Customer, d.customer_id))]
    events.write_text("customer_id,event,occurred_at,id\n" + "".join(
        f"{external[i % len(external)]},page_view,2026-11-20T10:{i % 60:02d}:00Z,ev-{i}\n"
        for i in range(2000)))

    env = env_for(rt)
    base, web = start_web(processes, env)
    # Everything at once on one SQLite file: a planner, two workers, the web answering
    # clicks, survey answers and unsubscribes, and a bulk import.
    writers = [processes.retention("scheduler", env=env),
               processes.retention("worker", "--threads", "4", env=env),
               processes.retention("worker", "--threads", "4", env=env)]
    for worker in writers[1:]:
        worker.wait_for_line("retention daemon running")
    importer = processes.retention("import", "events", str(events), env=env)
    done = threading.Event()

    def respond(share: list[Delivery]) -> Counter[tuple[str, int]]:
        answered: Counter[tuple[str, int]] = Counter()
        for d in share:
            if (d.id or 0) % 2:
                answered["unsubscribe", http("POST", f"{base}/u/{rt.signer.unsubscribe_token(d.id or 0)}",
                                             {"List-Unsubscribe": "One-Click"})[0]] += 1
        while not done.is_set():
            for d in share:
                i = d.id or 0
                answered["click", click(f"{base}/c/{rt.signer.click_token(i, 'https://acme.example/')}")] += 1
                answered["survey", http("POST", f"{base}/s/{rt.signer.survey_token(i)}",
                                        {"reason": "quality"})[0]] += 1
        return answered

    with ThreadPoolExecutor(max_workers=8) as pool:
        answering = [pool.submit(respond, targets[n::8]) for n in range(8)]
        try:
            assert importer.popen.wait(60) == 0, importer.output
            wait_until(lambda: _sent_to(rt, planned) == 250, timeout=60,
                       what=lambda: f"the campaign sent: {statuses(rt)}")
        finally:
            done.set()
        answered = sum((f.result() for f in answering), Counter())
    # Every request answered, none refused for a locked database.
    assert {code for (_, code) in answered} <= {200, 303}, answered
    clicks = sum(n for (kind, _), n in answered.items() if kind == "click")
    assert clicks > 100  # a real load ran alongside the writers

    time.sleep(0.5)
    outputs = {" ".join(p.args[1:3]): (p.terminate(), p.output) for p in [web, *writers]}
    for name, (code, output) in outputs.items():
        assert code == 0, f"{name}:\n{output}"
        assert "database is locked" not in output, f"{name}:\n{output}"
    with Session(rt.engine) as session:  # no lost write
        kinds = Counter(i.kind for i in session.exec(select(Interaction)))
        assert kinds == {"click": clicks, "survey": 40, "unsubscribe": 20}
        assert len(session.exec(select(SurveyAnswer)).all()) == 40
        assert len(session.exec(select(Event).where(Event.name == "page_view")).all()) == 2000
        unsubscribed = session.exec(select(Customer).where(col(Customer.unsubscribed_at).is_not(None)))
        assert len(unsubscribed.all()) == 20
    assert len(smtp_sink.messages) == 250 == len({m.rcpt_tos[0] for m in smtp_sink.messages})
    print(f"\nsqlite: 5 writer processes; {sum(answered.values())} web requests ({clicks} clicks), "
          f"250 sends, 2000 events imported: 0 lost writes, 0 'database is locked'")


def _sent_to(rt, customer_ids: list[int]) -> int:
    wanted = set(customer_ids)
    return sum(1 for r in deliveries(rt) if r.customer_id in wanted and r.status == DeliveryStatus.sent)
