"""What a test does when a service it needs is not there: skip locally, fail in CI."""

from __future__ import annotations

import os
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
