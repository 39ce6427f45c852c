"""The rejects CSV of `retention import`: the rejected rows' original cells plus ``error``."""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

log = logging.getLogger(__name__)


class RejectsFile:
    """A sink for csv_import's rejected rows, opened at the first one.

    A clean import leaves no rejects file behind, and removes one an earlier import left at
    the same path, so the file never describes the wrong run.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._handle: IO[str] | None = None
        self._writer: Any = None

    def __call__(self, header: Sequence[str], cells: Sequence[str], message: str) -> None:
        if self.path is None:
            return
        if self._handle is None:
            self._handle = self.path.open("w", newline="", encoding="utf-8")
            self._writer = csv.writer(self._handle)
            self._writer.writerow([*header, "error"])
        padded = [*cells, *[""] * (len(header) - len(cells))]
        self._writer.writerow([*padded, message])

    def __enter__(self) -> RejectsFile:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._handle is not None:
            self._handle.close()
        elif self.path is not None and self.path.exists():
            log.info("no rows rejected: removing %s from an earlier import", self.path)
            self.path.unlink()
