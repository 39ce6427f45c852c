"""What a test does when a service it needs is not there: skip locally, fail in CI."""

from __future__ import annotations

import os
import subprocess
from typing import NoReturn

import pytest


def running_in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1"}


def skip_or_fail(reason: str) -> NoReturn:
    """Skip on a developer's machine; fail in CI, where a skip would pass untested code."""
    if running_in_ci():
        pytest.fail(f"{reason} (CI=true: a missing service fails the run instead of skipping)",
                    pytrace=False)
    pytest.skip(reason)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL when ``process`` has not exited within ``timeout`` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
