"""Fixtures shared by many test modules; service fixtures live in tests/support/."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker import runtime as runtime_module
from worker.settings import Settings

pytest_plugins = [
    "tests.support.redis", "tests.support.database", "tests.support.smtp", "tests.support.dovecot",
]

ROOT = Path(__file__).resolve().parent.parent
# Tests mail every customer they create on purpose: the blast guard's share rule (a first
# pass reaching most of the base is held) is tested in tests/test_safety_net.py.
DEFAULT_RULES = """
defaults:
  sender: "Acme <hello@acme.example>"
  timezone: UTC
  blast_guard: {share: 100%}
campaigns:
  - id: we-miss-you
    template: we_miss_you
    when:
      status: active
      days_inactive: {at_least: 30}
"""


@pytest.fixture
def make_runtime(tmp_path, database_url):
    built = []

    def make(mail_url: str, broker_url: str = "", rules: str = DEFAULT_RULES,
             templates: Path | None = None) -> runtime_module.Runtime:
        rules_file = tmp_path / "rules.yaml"
        rules_file.write_text(rules)
        settings = Settings(
            database_url=database_url, broker_url=broker_url, mail_url=mail_url,
            rules=rules_file, templates=templates or ROOT / "templates", secret_key="test-key",
            retry_min_backoff_ms=20, retry_max_backoff_ms=100,
        )
        rt = runtime_module.build(settings)
        runtime_module.install(rt)
        built.append(rt)
        return rt

    yield make
    for rt in built:
        rt.close()
