"""Bad input: rules.yaml broken under a running daemon, template injection, hostile HTTP
(issue 8, scenarios 15, 16, 17).  `retention check` under fuzzed rules is in
tests/test_rules.py and tests/test_check_cli.py; this is the running-daemon half."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, quote_from_bytes

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlmodel import Session, col, func, select

from campaigns.delivery.rendering import TemplateStore
from campaigns.models import Customer, Delivery, DeliveryStatus, Event, Interaction, SurveyAnswer, utcnow
from tests.chaos.support import (
    PYTHON,
    SQLITE_ONLY,
    env_for,
    free_port,
    statuses,
    wait_until,
)
from tests.conftest import ROOT
from tests.factories import add_customer
from tests.test_rules import ANY_CHARACTER, ODD_VALUES, mutated
from worker.runtime import check_files

SHIPPED = (ROOT / "rules.yaml").read_text(encoding="utf-8")
# The shipped rules, sending at any hour to everyone who matches, planning every 10 s, without
# the Tuesday-morning feature news (a test run at that hour would mail it too).
GOOD_RULES = (SHIPPED.replace('quiet_hours: "21:00-08:00"', "quiet_hours: null")
              .replace("    holdout: 10%\n", "").replace("check_every: 5m", "check_every: 10s")
              .replace('    schedule: "0 10 * * TUE"\n',
                       '    schedule: "0 10 * * TUE"\n    enabled: false\n'))
LOCATED = re.compile(r"rules\.yaml:\d+")


class Daemon:
    """`retention run` with its web on a free port."""

    def __init__(self, processes, rt) -> None:
        self.rt = rt
        self.rules: Path = rt.settings.rules
        self.port = free_port()
        self.proc = processes.retention("run", "--workers", "2", "--port", str(self.port),
                                        env=env_for(rt))
        self.proc.wait_for_line("retention daemon running")
        wait_until(lambda: self.health()[1].get("last_pass"), timeout=30, what="the first pass")

    def health(self) -> tuple[int, dict]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request("GET", "/healthz")
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        except OSError:
            return 0, {}
        finally:
            connection.close()

    def reload(self, text: str | bytes | None) -> str:
        """Replace rules.yaml (None: delete it), SIGHUP, and return the daemon's verdict line."""
        if text is None:
            self.rules.unlink()
        else:
            self.write(text)
        return self.hup()

    def write(self, text: str | bytes) -> None:
        """Replace rules.yaml at once, as editors save: a reload never reads half a file."""
        partial = self.rules.with_name(self.rules.name + ".saving")
        partial.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
        os.replace(partial, self.rules)

    def hup(self) -> str:
        seen = len(self.proc.lines)
        self.proc.popen.send_signal(signal.SIGHUP)
        verdict = self.proc.wait_for_line(
            "rules not reloaded|keeping the rules loaded at|rules reloaded from", after=seen, timeout=15)
        self._settle()
        return verdict

    def _settle(self, quiet: float = 1.0, timeout: float = 15) -> None:
        """Wait until the daemon has logged nothing for ``quiet`` seconds: the file watcher also
        reloads after each write (debounced), and a reload still running when the next example
        writes the file would report its verdict as the next one's."""
        deadline = time.monotonic() + timeout
        count, since = len(self.proc.lines), time.monotonic()
        while time.monotonic() - since < quiet and time.monotonic() < deadline:
            time.sleep(0.05)
            if len(self.proc.lines) != count:
                count, since = len(self.proc.lines), time.monotonic()


# Input handling does not depend on the database backend: these run on SQLite only.
@pytest.fixture
def daemon(make_runtime, smtp_sink, processes) -> Daemon:
    return Daemon(processes, make_runtime(smtp_sink.url, rules=GOOD_RULES))


# ---------------------------------------------------------------- scenario 15

CORRUPTIONS: dict[str, Callable[[str], str | None]] = {
    "yaml-syntax": lambda t: t.replace("campaigns:\n", "campaigns: [\n", 1),
    "misspelt-key": lambda t: t.replace("    cooldown: 60d", "    cooldwn: 60d"),
    "wrong-type": lambda t: t.replace("    priority: 10\n", "    priority: high\n"),
    "bad-duration": lambda t: t.replace("    cooldown: 30d", "    cooldown: 30 days"),
    "unknown-template": lambda t: t.replace("    template: check_in", "    template: check_inn"),
    "tab-indent": lambda t: t.replace("  sender:", "\tsender:"),
    "truncated": lambda t: t[: len(t) // 2],
    "deleted": lambda t: None,
}


@pytest.mark.chaos
@SQLITE_ONLY
def test_broken_rules_edits_never_stop_the_daemon_and_the_last_good_rules_keep_sending(
    daemon, smtp_sink
):
    status, before = daemon.health()
    assert status == 200 and before["rules"]["campaigns"] == 5
    for where, corrupt in CORRUPTIONS.items():
        text = corrupt(GOOD_RULES)
        verdict = daemon.reload(text)
        status, health = daemon.health()
        assert daemon.proc.alive, f"{where}: the daemon exited\n{daemon.proc.output}"
        assert "keeping" in verdict, (where, verdict)
        assert status == 200 and health["status"] == "degraded", (where, health)  # alive, says why
        assert health["rules"]["loaded_at"] == before["rules"]["loaded_at"], where  # the old rules
        assert health["rules"]["campaigns"] == 5, where
        if text is None:
            assert "cannot read" in health["rules"]["error"], (where, health)
        else:
            assert LOCATED.search(verdict) and LOCATED.search(health["rules"]["error"]), (where, verdict)

    # Still broken on disk, the daemon plans and sends with the rules it kept.
    daemon.rules.write_text(GOOD_RULES.replace("    cooldown: 60d", "    cooldwn: 60d"))
    with Session(daemon.rt.engine) as session:
        add_customer(session, inactive_days=45, plan="pro")
        session.commit()
    smtp_sink.wait_for(1, timeout=30)
    wait_until(lambda: statuses(daemon.rt) == {"sent": 1}, timeout=10, what="the send recorded")

    fixed = GOOD_RULES[: GOOD_RULES.index("  # A month after cancelling")] + GOOD_RULES[
        GOOD_RULES.index("surveys:"):]
    assert "rules reloaded from" in daemon.reload(fixed)
    status, health = daemon.health()
    assert (status, health["rules"]["campaigns"], health["rules"]["error"]) == (200, 4, None)
    assert daemon.proc.terminate() == 0, daemon.proc.output
    assert "Traceback" not in daemon.proc.output


@pytest.mark.parametrize("text", ["", "\n", "# nothing yet\n"], ids=["empty", "blank", "comment-only"])
def test_empty_rules_file_is_an_error_not_zero_campaigns(tmp_path, text):
    (tmp_path / "rules.yaml").write_text(text)
    rules, lines = check_files(tmp_path / "rules.yaml", TemplateStore(ROOT / "templates"))
    assert rules is None and lines and LOCATED.search(lines[0])


@SQLITE_ONLY
def test_rules_edit_that_is_not_utf8_keeps_the_daemon_running(daemon):
    # A Latin-1 é in an otherwise UTF-8 file (the shipped rules hold Chinese, so the file
    # cannot simply be re-encoded as Latin-1).
    verdict = daemon.reload(GOOD_RULES.encode("utf-8").replace(b"Acme <hello", b"Acm\xe9 <hello"))
    assert daemon.proc.alive
    assert LOCATED.search(verdict)


@SQLITE_ONLY
@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(text=mutated(ANY_CHARACTER, ODD_VALUES))
def test_fuzzed_rules_edits_are_applied_or_refused_as_check_says_and_the_daemon_stays_up(daemon, text):
    daemon.write(text)
    rules, lines = check_files(daemon.rules, TemplateStore(ROOT / "templates"))  # what `check` says
    verdict = daemon.hup()
    assert daemon.proc.alive, daemon.proc.output
    status, health = daemon.health()
    if rules is not None and not lines:
        assert "rules reloaded from" in verdict
        assert health["rules"]["error"] is None
    else:
        assert "keeping the last good ones" in verdict
        assert status == 200 and health["status"] == "degraded"
        assert health["rules"]["error"] == "; ".join(lines)
        assert all(LOCATED.search(line) or "templates/" in line for line in lines), lines


# ---------------------------------------------------------------- scenario 16

# Each is refused at `check` (with file:line) and at render time; none may reach a customer.
INJECTIONS = {
    "dunder_mro": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "attr_filter": "{{ (''|attr('__class__')|attr('__mro__'))[1] }}",
    "cycler_globals": "{{ cycler.__init__.__globals__.os }}",
    "lipsum_globals": "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "format_string": "{{ '{0.__class__.__init__.__globals__}'.format(customer) }}",
    "format_map": "{{ '{x.__class__}'.format_map({'x': customer}) }}",
    "mutate_context": "{% set _ = customer.attributes.update({'plan': 'free'}) %}",
    "template_internals": "{{ self._TemplateReference__context }}",
    "huge_range": "{% for i in range(10**9) %}x{% endfor %}",
    "endless_recursion": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
}


def injection_project(tmp_path: Path) -> tuple[Path, str]:
    """A copy of the shipped templates plus one template and one campaign per payload."""
    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", templates)
    campaigns = []
    for name, payload in INJECTIONS.items():
        folder = templates / f"evil_{name}"
        folder.mkdir()
        (folder / "subject.j2").write_text("Hello")
        (folder / "body.txt.j2").write_text(payload + "\n{{ unsubscribe_url }}\n")
        campaigns.append(f"  - id: evil-{name.replace('_', '-')}\n    template: evil_{name}\n"
                         f"    when: {{plan: evil_{name}}}\n")
    rules = GOOD_RULES.replace("surveys:\n", "".join(campaigns) + "\nsurveys:\n")
    return templates, rules


@pytest.mark.chaos
@SQLITE_ONLY
def test_template_injection_is_refused_by_check_and_at_send_time_and_other_sends_go_out(
    make_runtime, smtp_sink, processes, tmp_path
):
    templates, rules = injection_project(tmp_path)
    rt = make_runtime(smtp_sink.url, rules=rules)
    env = env_for(rt, RETENTION_TEMPLATES=str(templates))
    check = processes.retention("check", env=env)
    assert check.popen.wait(60) == 1, check.output
    for name in INJECTIONS:
        assert re.search(rf"evil_{name}/body\.txt\.j2:\d+: ", check.output), (name, check.output)

    with Session(rt.engine) as session:
        good = add_customer(session, inactive_days=45, plan="pro").email
        for name in INJECTIONS:
            add_customer(session, inactive_days=1, plan=f"evil_{name}")
        session.commit()
    once = processes.retention("run", "--once", "--workers", "4", env=env)
    # The good delivery goes out; the refused ones fail, and `run --once` says so with exit 1.
    assert once.popen.wait(120) == 1, once.output
    assert f"{len(INJECTIONS)} deliveries failed" in once.output
    assert statuses(rt) == {"sent": 1, "failed": len(INJECTIONS)}
    assert [m.rcpt_tos for m in smtp_sink.messages] == [[good]]
    with Session(rt.engine) as session:
        errors = [d.last_error or "" for d in session.exec(
            select(Delivery).where(Delivery.status == DeliveryStatus.failed))]
    for error in errors:
        assert re.search(r"evil_\w+/body\.txt\.j2", error), error
        assert "<class" not in error and "uid=" not in error and "__builtins__" not in error, error


@pytest.mark.parametrize("payload", [
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{{ 'x' * 10**7 }}",
], ids=["nested_loops", "huge_string"])
def test_runaway_template_is_refused_quickly(tmp_path, payload):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "subject.j2").write_text("s")
    (tmp_path / "t" / "body.txt.j2").write_text(payload + "{{ unsubscribe_url }}")
    script = textwrap.dedent(f"""
        from campaigns.errors import TemplateError
        from campaigns.delivery.context import build_sample_context
        from campaigns.delivery.rendering import TemplateStore
        try:
            TemplateStore({str(tmp_path)!r}).render("t", build_sample_context(template="t"))
        except TemplateError:
            raise SystemExit(3)
    """)
    try:
        result = subprocess.run([PYTHON, "-c", script], timeout=3, capture_output=True, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail("the render was still running after 3 s")
    assert result.returncode == 3, "rendered without complaint"


# ---------------------------------------------------------------- scenario 17

API_KEY = "chaos-api-key"


class Web:
    """`retention web` over a database with one sent survey email, and what it holds."""

    def __init__(self, processes, rt) -> None:
        self.rt = rt
        with Session(rt.engine) as session:
            customer = add_customer(session)
            delivery = Delivery(campaign_id="exit-survey", customer_id=customer.id or 0, episode="e",
                                status=DeliveryStatus.sent, template="exit_survey", sent_at=utcnow())
            session.add(delivery)
            session.commit()
            self.delivery_id = delivery.id or 0
        signer = rt.signer
        self.tokens = [signer.unsubscribe_token(self.delivery_id), signer.survey_token(self.delivery_id),
                       signer.click_token(self.delivery_id, "https://acme.example/")]
        self.port = free_port()
        self.proc = processes.retention("web", "--port", str(self.port),
                                        env=env_for(rt, RETENTION_API_KEY=API_KEY))
        self.proc.wait_for_line("web on http")
        wait_until(lambda: self.request("GET", "/healthz")[0] == 200, timeout=30, what="the web")
        spec = json.loads(self.request("GET", "/openapi.json")[1])
        self.endpoints = sorted((method.upper(), path) for path, methods in spec["paths"].items()
                                for method in methods)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, response.read()
        except (ConnectionError, http.client.RemoteDisconnected):
            return 0, b""  # the server hung up: not a 500, checked by the caller
        finally:
            connection.close()

    def raw(self, data: bytes) -> bytes:
        """Send bytes as they are; the status line and headers of the answer (b"" if none)."""
        chunks: list[bytes] = []
        with socket.create_connection(("127.0.0.1", self.port), timeout=20) as sock:
            try:
                sock.sendall(data)
            except OSError:
                pass  # the server answered and closed before reading it all: read the answer
            try:
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
                    if b"\r\n\r\n" in b"".join(chunks):
                        break
            except OSError:
                pass
        return b"".join(chunks)

    def written(self) -> tuple[int, ...]:
        """Everything a request could write, counted."""
        with Session(self.rt.engine) as session:
            def count(statement) -> int:
                return int(session.exec(statement).one())

            return (count(select(func.count()).select_from(Interaction)),
                    count(select(func.count()).select_from(SurveyAnswer)),
                    count(select(func.count()).select_from(Customer)),
                    count(select(func.count()).select_from(Event)),
                    count(select(func.count()).select_from(Customer)
                          .where(col(Customer.unsubscribed_at).is_not(None))))


@pytest.fixture
def web(make_runtime, processes) -> Web:
    rules = GOOD_RULES  # has the exit-survey campaign and its survey
    return Web(processes, make_runtime("console://", rules=rules))


def tokens(web: Web) -> st.SearchStrategy[str]:
    valid = st.sampled_from(web.tokens)
    return st.one_of(
        valid,
        valid,
        valid.flatmap(lambda t: st.integers(0, len(t) - 1).map(lambda i: t[:i] + ("A" if t[i] != "A" else "B")
                                                               + t[i + 1:])),  # tampered
        st.text(max_size=300).map(lambda s: quote(s, safe="")),
        st.binary(max_size=300).map(lambda b: quote_from_bytes(b, safe="")),
        st.sampled_from(["", ".", "..", "%00", "%ZZ", "%C3%28", "A" * 6000, "null", "-1", "0"]),
    )


FORM = "application/x-www-form-urlencoded"
CONTENT_TYPES = [FORM, "multipart/form-data; boundary=xyz", "multipart/form-data",
                 "application/json", "text/plain", "", "application/x-www-form-urlencoded; charset=ebcdic",
                 "multipart/mixed; boundary=\"", "\x7f;;;="]
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                           | st.text(max_size=50),
                           lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=5), max_leaves=20)
SURVEY_FORMS = st.dictionaries(
    st.sampled_from(["reason", "missing", "come_back", "List-Unsubscribe", "other"]),
    st.one_of(st.sampled_from(["price", "quality", "other", "One-Click", " "]),
              st.text(max_size=50), st.text(min_size=1000, max_size=3000)),
    max_size=4,
).map(lambda d: "&".join(f"{quote(k)}={quote(v)}" for k, v in d.items()).encode())
BODIES = st.one_of(
    st.just(b""),
    SURVEY_FORMS,
    st.dictionaries(st.text(max_size=30), st.text(max_size=200), max_size=8).map(
        lambda d: "&".join(f"{quote(k)}={quote(v)}" for k, v in d.items()).encode()),
    st.binary(max_size=2000),
    st.sampled_from([b"reason=%ZZ%C3%28", b"reason=" + b"x" * 70_000, b"=&=&&", b"\xff\xfe\x00",
                     b"--xyz\r\nContent-Disposition: form-data; name=\"reason\"\r\n\r\nprice\r\n--xyz--\r\n",
                     b"--xyz\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a.txt\"\r\n\r\n"
                     b"x\r\n--xyz--\r\n"]),
    json_values.map(lambda v: json.dumps({"customers": v, "events": v}).encode()),
)


@pytest.mark.chaos
@SQLITE_ONLY
@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_hostile_requests_to_every_endpoint_get_4xx_never_500_and_write_nothing(web, data):
    method, template = data.draw(st.sampled_from(web.endpoints), label="endpoint")
    method = data.draw(st.sampled_from([method] * 6 + ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]),
                       label="method")
    path = re.sub(r"\{[^}]+\}", lambda _: data.draw(tokens(web), label="token"), template)
    body = data.draw(BODIES, label="body")
    headers = {"Content-Type": data.draw(st.sampled_from([FORM] * 4 + CONTENT_TYPES), label="content-type")}
    if data.draw(st.booleans(), label="bearer"):
        headers["Authorization"] = data.draw(st.sampled_from(
            ["Bearer nope", "Bearer ", "Basic Zm9vOmJhcg==", "Bearer " + API_KEY[:-1], "Bearer " + API_KEY]),
            label="key")
    before = web.written()
    status, _ = web.request(method, path, body=body or None, headers=headers)
    event(f"{template} -> {status}")
    assert 0 < status < 500, (method, path, status, web.proc.output[-3000:])
    if status >= 400:
        assert web.written() == before, (method, path, status)
    assert web.proc.alive


@SQLITE_ONLY
def test_malformed_http_gets_4xx_and_the_web_keeps_serving(web):
    unsubscribe, survey, _ = web.tokens
    before = web.written()
    cases = {
        "non-ascii path": b"GET /u/\xff\xfe\x80 HTTP/1.1\r\nHost: x\r\n\r\n",
        "bad header bytes": b"POST /u/" + unsubscribe.encode() + b" HTTP/1.1\r\nHost: x\r\nX-A: \x00\x01\r\n"
                            b"Content-Length: 0\r\n\r\n",
        "negative length": b"POST /s/" + survey.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                           b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: -5\r\n\r\n",
        "non-numeric length": b"POST /s/" + survey.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                              b"Content-Length: ten\r\n\r\n",
        "huge declared length": b"POST /u/" + unsubscribe.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                                b"Content-Type: application/x-www-form-urlencoded\r\n"
                                b"Content-Length: 1000000000000\r\n\r\nList-Unsubscribe=One-Click",
        "chunked megabyte": b"POST /s/" + survey.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                            b"Content-Type: application/x-www-form-urlencoded\r\n"
                            b"Transfer-Encoding: chunked\r\n\r\n"
                            + b"".join(b"%x\r\n%s\r\n" % (65536, b"r" * 65536) for _ in range(16))
                            + b"0\r\n\r\n",
        "long url": b"GET /u/" + b"A" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    }
    for name, request in cases.items():
        answer = web.raw(request)
        status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0
        assert 400 <= status < 500 or status == 0, (name, answer[:300])
        assert web.written() == before, name
    assert web.request("GET", "/healthz")[0] == 200
    assert web.proc.alive
    assert "Traceback" not in web.proc.output, web.proc.output
