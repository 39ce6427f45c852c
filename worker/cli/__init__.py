"""The `retention` command line: ``app`` with every command registered, ``main`` the entry point."""

from __future__ import annotations

import sys

from worker.cli import authoring, data, project, roles, webhooks
from worker.cli.app import app

__all__ = ["app", "authoring", "data", "main", "project", "roles", "webhooks"]


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
