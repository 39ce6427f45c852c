"""What every command shares: settings, the runtime, errors turned into one line, times."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console

from campaigns.errors import ConfigurationError, RetentionError, RulesErrors
from campaigns.models import utcnow
from worker import runtime as runtime_module
from worker.runtime import Runtime
from worker.settings import Settings, load_settings

log = logging.getLogger(__name__)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

T = TypeVar("T")


def fail(message: str) -> NoReturn:
    for line in message.splitlines() or [message]:  # several problems: one line each
        err.print(f"error: {line}", markup=False, soft_wrap=True)
    raise typer.Exit(1)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can fix into one line and exit 1."""
    try:
        yield
    except RulesErrors as exc:
        for error in exc.errors:
            err.print(error.format(), markup=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except (RetentionError, ConfigurationError) as exc:
        fail(str(exc))


def exit_now() -> NoReturn:
    """End a long-running role at once once it has stopped cleanly.

    Everything worth doing at exit is done by then (sends settled, connections closed,
    the heartbeat removed); the interpreter's own teardown of a big heap can take
    over a second on a busy machine, and SIGTERM must end the process within its
    grace period.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


def settings() -> Settings:
    with user_errors():
        return load_settings()


def build_runtime(cfg: Settings | None = None, **kwargs: Any) -> Runtime:
    with user_errors():
        rt = runtime_module.build(cfg or settings(), **kwargs)
    runtime_module.install(rt)
    return rt


def parse_moment(value: str | None, option: str = "--at") -> datetime:
    if value is None:
        return utcnow()
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        fail(f"{option} {value!r} is not an ISO 8601 time (e.g. 2026-11-25T10:00:00+01:00)")
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)




def _moment(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        try:
            moment = datetime.combine(date.fromisoformat(value), datetime.min.time())
        except ValueError:
            fail(f"{option} {value!r} is not an ISO 8601 date (e.g. 2026-01-31 or 2026-01)")
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _month_or_moment(value: str | None, option: str) -> datetime | None:
    # `--from 2026-01` reads naturally for a monthly report; ISO 8601 has no such date.
    if value is not None and len(value) == 7 and value[4] == "-":
        value += "-01"
    return _moment(value, option)


def write_file(path: Path, text: str, *, option: str) -> None:
    """Write what a command produces, or one line saying why not and what to do."""
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        if not path.parent.is_dir():
            fail(f"cannot write {path}: the folder {path.parent} does not exist "
                 f"(create it, or choose another {option} path)")
        fail(f"cannot write {path}: {exc.strerror} (choose another {option} path)")


def _write(text: str, output: Path | None) -> None:
    if output is None:
        sys.stdout.write(text)
        return
    write_file(output, text, option="-o")
    out.print(f"report written to {output}", markup=False)


