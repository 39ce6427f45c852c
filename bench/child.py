"""Run one measured function in a fresh process, so its time and peak RSS are its own.

``python -m bench.child MODULE:FUNCTION JSON-KWARGS`` prints one line
``BENCH-RESULT {...}``: what the function returned plus ``peak_rss_mb`` (the
process's high-water mark, imports included) and ``rss_before_mb`` (after
imports, before the function ran).
"""

from __future__ import annotations

import gc
import importlib
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MARK = "BENCH-RESULT "


class ChildError(RuntimeError):
    pass


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def current_rss_mb() -> float:
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    # VmHWM belongs to this process image; getrusage's ru_maxrss survives exec and
    # would report the forking parent's peak when that was higher.
    return _status_mb("VmHWM")


def run(target: str, *, profile: Path | None = None, timeout: float = 3600, **kwargs: Any) -> dict[str, Any]:
    """Call ``target`` (``module:function``) with ``kwargs`` in a new interpreter."""
    command = [sys.executable, "-m", "bench.child", target, json.dumps(kwargs, default=str)]
    if profile is not None:
        py_spy = Path(sys.executable).parent / "py-spy"
        command = [str(py_spy), "record", "--rate", "250", "--format", "raw", "--subprocesses",
                   "--nonblocking", "--output", str(profile), "--", *command]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(MARK):
            result: dict[str, Any] = json.loads(line[len(MARK):])
            return result
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    sys.stderr.write(done.stderr[-6000:])
    raise ChildError(f"{target} failed (exit {done.returncode}): {lines[-1] if lines else 'no output'}")


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    module_name, function_name = argv[0].split(":")
    function = getattr(importlib.import_module(module_name), function_name)
    kwargs = json.loads(argv[1])
    # A full collection over the imports' objects would otherwise land in whichever measured
    # call crosses the threshold first (30 ms in a 30 ms P1 reference): not the call's own cost.
    gc.collect()
    gc.freeze()
    before = current_rss_mb()
    result = function(**kwargs)
    result["rss_before_mb"] = round(before, 1)
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    sys.stdout.write(MARK + json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
