"""The migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlmodel import SQLModel

from worker.database import alembic_config, make_engine, upgrade


def test_upgrade_matches_the_models_and_downgrade_undoes_it(database_url):
    engine = make_engine(database_url)
    try:
        upgrade(engine)
        upgrade(engine)  # every start runs it: the second time is a no-op
        with engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), SQLModel.metadata)
        assert differences == [], "models changed without a migration: add one with alembic revision"
        with engine.begin() as connection:
            config = alembic_config(engine)
            config.attributes["connection"] = connection
            command.downgrade(config, "base")
        tables = set(sa.inspect(engine).get_table_names()) - {"alembic_version"}
        assert tables == set()
    finally:
        engine.dispose()


REPO = Path(__file__).resolve().parent.parent
VERSIONS = REPO / "worker" / "migrations" / "versions"


def test_migrations_use_plain_sqlalchemy_types_never_the_models() -> None:
    # A migration must keep doing what it did when written, whatever the models become.
    for migration in [*VERSIONS.glob("*.py"), REPO / "worker" / "migrations" / "script.py.mako"]:
        text = migration.read_text(encoding="utf-8")
        assert not re.search(r"^\s*(import|from)\s+(campaigns|sqlmodel|worker)\b", text, re.M), migration


def _alembic(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETENTION_")}
    env["RETENTION_DATABASE_URL"] = database_url
    return subprocess.run(
        [str(Path(sys.executable).parent / "alembic"), *args], cwd=REPO, env=env,
        capture_output=True, text=True, timeout=120, check=False,
    )


def test_developers_alembic_uses_the_settings_database_and_finds_nothing_to_generate(tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/dev.db"
    upgraded = _alembic("upgrade", "head", database_url=url)
    assert upgraded.returncode == 0, upgraded.stderr
    assert "Running upgrade  -> 0001" in upgraded.stderr
    checked = _alembic("check", database_url=url)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "No new upgrade operations detected" in checked.stdout + checked.stderr


# Imports first, then every process upgrades at the same moment.
RACING_UPGRADE = """
import sys, time
from worker.database import make_engine, upgrade
engine = make_engine(sys.argv[1])
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
upgrade(engine)
"""


@pytest.mark.postgres
def test_processes_starting_together_upgrade_one_after_another(postgres_url) -> None:
    start_at = time.time() + 8
    processes = [
        subprocess.Popen([sys.executable, "-c", RACING_UPGRADE, postgres_url, str(start_at)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(6)
    ]
    outputs = [(p.wait(timeout=120), p.communicate()[0]) for p in processes]
    assert [code for code, _ in outputs] == [0] * 6, "\n".join(out for _, out in outputs)
    engine = make_engine(postgres_url)
    try:
        with engine.connect() as connection:
            head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
            assert connection.scalar(sa.text("SELECT version_num FROM alembic_version")) == head
            differences = compare_metadata(MigrationContext.configure(connection), SQLModel.metadata)
        assert differences == []
    finally:
        engine.dispose()
