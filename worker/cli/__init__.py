"""The `retention` command line: ``app`` with every command registered, ``main`` the entry point."""

from __future__ import annotations

import sys
from typing import Any

from worker.cli import authoring, data, deliveries, project, roles, webhooks
from worker.cli.app import app

__all__ = ["app", "authoring", "data", "deliveries", "main", "project", "roles", "webhooks"]


def main() -> None:
    import sqlalchemy as sa

    from worker.database import unreachable

    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        # The database went away after the start (each start checks it): one line, not a traceback.
        sys.stderr.write(f"error: {unreachable(_database_url(), exc)}\n")
        sys.exit(1)


def _database_url() -> Any:
    import sqlalchemy as sa

    from worker.settings import load_settings

    return sa.engine.make_url(load_settings().database_url)
