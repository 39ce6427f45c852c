"""The ``retention`` Typer application; the commands register on it from their modules."""

from __future__ import annotations

from typing import Annotated

import typer

from worker.cli.common import settings
from worker.logs import configure_logging

app = typer.Typer(
    name="retention",
    help="Retention campaign worker: rules.yaml + templates/ → emails that keep customers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
import_app = typer.Typer(
    help="Import customers or events from CSV (idempotent upserts).", no_args_is_help=True
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(import_app, name="import")
app.add_typer(db_app, name="db")

@app.callback()
def main_callback(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug details.")] = False,
) -> None:
    cfg = settings()
    configure_logging("DEBUG" if verbose else cfg.log_level, cfg.log_format)


