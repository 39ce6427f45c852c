"""Number and date formatting shared by every report output."""

from __future__ import annotations

from datetime import datetime

REPORT_VERSION = 1
AT_RISK_VERSION = 1
ACTIVE_COLOR, PASSIVE_COLOR, ACCENT = "#D55E00", "#56B4E9", "#0072B2"


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}%"


