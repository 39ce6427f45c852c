"""A real install, as a new user gets it: build the wheel, install it into a fresh virtual
environment (not editable, no repository on sys.path) and run the CLI in an empty directory.

The fresh environment reaches the dependencies already installed next to the test run through
a ``.pth`` line (a plain path: the editable install's own ``.pth`` hook there stays inactive),
so the test needs no network and takes seconds. The wheel itself goes in with ``--no-deps``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "campaigns", "worker")


def _run(args: list[str], *, cwd: Path, env: dict[str, str] | None = None,
         timeout: float = 300) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, cwd=cwd, env=env, text=True, capture_output=True, timeout=timeout)
    assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the sources (building in place would litter the checkout)."""
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, symlinks=False,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("dist")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out),
          str(source)], cwd=source, env=env)
    [built] = out.glob("retention_worker-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh virtual environment holding the wheel; the dependencies come from this one's."""
    home = tmp_path_factory.mktemp("venv") / "env"
    _run([sys.executable, "-m", "venv", "--without-pip", str(home)], cwd=home.parent)
    python = home / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
          "--no-index", str(wheel)], cwd=home.parent, env=env)
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=home.parent, env=env).stdout.strip())
    (site / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return home


def installed(venv: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETENTION_") and k != "PYTHONPATH"}
    env["COLUMNS"] = "200"
    result = subprocess.run([str(venv / "bin" / "retention"), *args], cwd=cwd, env=env, text=True,
                            capture_output=True, timeout=300)
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    assert result.returncode == 0, f"retention {' '.join(args)}: {result.stdout}\n{result.stderr}"
    return result


def test_the_wheel_carries_examples_pages_and_migrations_inside_the_project_packages(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"campaigns", "worker"}
    for expected in ("campaigns/reports/at_risk.py", "worker/migrations/env.py",
                     "worker/migrations/script.py.mako", "worker/examples/rules.yaml",
                     "worker/examples/templates/layout.html.j2",
                     "worker/examples/templates/we_miss_you/body.txt.j2",
                     "campaigns/responses/builtin_pages/unsubscribe_confirm.html.j2",
                     "campaigns/responses/builtin_pages/survey.html.j2",
                     "campaigns/responses/builtin_pages/zh-CN/survey.html.j2",
                     "worker/examples/templates/we_miss_you/zh-CN/subject.j2",
                     "worker/static/preview.html"):
        assert expected in names, expected
    assert any(n.startswith("worker/migrations/versions/") and n.endswith(".py") for n in names)


@pytest.mark.timeout(600)
def test_a_fresh_install_runs_the_documented_first_steps_in_an_empty_directory(venv, tmp_path):
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import worker; print(worker.__file__)"],
                           cwd=tmp_path, text=True, capture_output=True,
                           env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout + where.stderr

    version = installed(venv, tmp_path, "--version")
    assert version.stdout.strip() == "retention 0.1.0"

    project = tmp_path / "project"
    init = installed(venv, tmp_path, "init", "project")
    assert (project / "rules.yaml").read_text() == (ROOT / "worker/examples/rules.yaml").read_text()
    assert (project / "templates/we_miss_you/body.txt.j2").is_file()
    assert "retention check" in init.stdout
    installed(venv, project, "check")

    empty = tmp_path / "empty"
    empty.mkdir()
    # --quick: the one-pass demo; the simulated quarter runs the same code from the same files.
    demo = installed(venv, empty, "demo", "--quick", "--customers", "300")
    assert "emails are in outbox/" in demo.stdout
    assert (empty / "retention.db").is_file()
    assert (empty / "rules.yaml").is_file() and (empty / "templates").is_dir()
    report = installed(venv, empty, "report")
    assert "churn" in report.stdout.lower()
    at_risk = installed(venv, empty, "customers", "--at-risk", "--limit", "5")
    assert "demo-" in at_risk.stdout
