"""`retention init`: a new user's starting point, the example rules.yaml and templates."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from worker import examples
from worker.cli.app import app
from worker.cli.common import fail, out


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Where to write them (created if missing).")] = Path("."),
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite an existing rules.yaml and templates.")
    ] = False,
) -> None:
    """Write the example rules.yaml and templates/ to edit into DIRECTORY."""
    existing = examples.existing_in(directory)
    if existing and not force:
        fail(f"{', '.join(p.as_posix() for p in existing)} already exist: nothing was written "
             "(--force overwrites them)")
    try:
        examples.write_into(directory)
    except OSError as exc:
        fail(f"cannot write into {directory}: {exc.strerror or exc} (choose another directory)")
    where = directory.as_posix()
    out.print(f"wrote {where}/rules.yaml and {where}/templates/ (the example campaigns)", markup=False)
    step = "" if directory == Path(".") else f"cd {where} && "
    out.print(f"next: edit them, then `{step}retention check`; `retention demo` tries them on "
              "synthetic customers", markup=False)
