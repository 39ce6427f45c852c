"""The example rules.yaml and templates/ a new user starts from, shipped inside the package.

They live in the runtime, not in ``campaigns/``: they are files for ``retention init`` to copy
and for ``retention demo`` to fall back on, not domain code. The repository's top-level
``rules.yaml`` and ``templates`` are links to these, so a clone and an install see the same files.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

RULES = "rules.yaml"
TEMPLATES = "templates"


def root() -> Path:
    # A wheel installs as plain files, so the package directory is a real path.
    return Path(str(resources.files(__name__)))


def rules_file() -> Path:
    return root() / RULES


def templates_dir() -> Path:
    return root() / TEMPLATES


def existing_in(directory: Path) -> list[Path]:
    """What `write_into` would overwrite in ``directory``."""
    return [path for path in (directory / RULES, directory / TEMPLATES) if path.exists()]


def write_into(directory: Path) -> None:
    """Copy the example rules.yaml and templates/ into ``directory``."""
    write_into_place(rules=directory / RULES, templates=directory / TEMPLATES)


def write_into_place(*, rules: Path, templates: Path) -> None:
    rules.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(rules_file(), rules)
    shutil.copytree(templates_dir(), templates, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
