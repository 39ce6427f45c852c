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

def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            number = version("retention-worker")
        except PackageNotFoundError:  # run from a checkout that was never installed
            number = "unknown (not installed)"
        typer.echo(f"retention {number}")
        raise typer.Exit()


@app.callback()
def main_callback(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug details.")] = False,
    _version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                           help="Print the version and exit.")] = False,
) -> None:
    cfg = settings()
    configure_logging("DEBUG" if verbose else cfg.log_level, cfg.log_format)


