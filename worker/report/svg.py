"""Hand-drawn inline SVG charts: no script, no external resource."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

from worker.report.formatting import (
    ACCENT,
    ACTIVE_COLOR,
)

W, H = 720, 260  # chart size in SVG user units; the SVG scales to the page width
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 14, 46


def _nice_max(value: float) -> float:
    """A round axis maximum at or above ``value`` whose quarters (the gridlines) are round too."""
    if value <= 0:
        return 1.0
    quarter = value / 4
    magnitude = 10.0 ** math.floor(math.log10(quarter))
    steps = (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10)
    return 4 * next(s * magnitude for s in steps if s * magnitude >= quarter * 0.999999)


def _fmt(value: float, unit: str) -> str:
    value = round(value, 6)
    if abs(value) >= 100 or value == int(value):
        return f"{value:,.0f}" + unit
    return f"{value:.3g}" + unit


def _frame(chart: str, title: str, top: float, unit: str, labels: Sequence[str], body: str) -> str:
    """The SVG around a chart body: y gridlines with values, x labels, an accessible title."""
    plot_h = H - TOP - BOTTOM
    parts = [
        f'<svg class="chart" data-chart="{chart}" viewBox="0 0 {W} {H}" role="img" '
        f'aria-label="{html.escape(title)}">',
        f"<title>{html.escape(title)}</title>",
    ]
    for i in range(5):
        value = top * i / 4
        y = TOP + plot_h - plot_h * i / 4
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(f'<text class="axis" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
                     f"{html.escape(_fmt(value, unit))}</text>")
    step = (W - LEFT - RIGHT) / max(len(labels), 1)
    every = max(1, len(labels) // 16)  # keep x labels readable on long ranges
    for i, label in enumerate(labels):
        if i % every == 0:
            x = LEFT + step * (i + 0.5)
            parts.append(f'<text class="axis" x="{x:.1f}" y="{H - BOTTOM + 16}" text-anchor="middle">'
                         f"{html.escape(label)}</text>")
    parts.append(body)
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(chart: str, title: str, labels: Sequence[str],
              series: Sequence[tuple[str, Sequence[float | None], str]], unit: str = "") -> str:
    """Stacked vertical bars: one ``rect.bar`` per label and series (a missing value draws 0)."""
    totals = [sum(values[i] or 0 for _, values, _ in series) for i in range(len(labels))]
    top = _nice_max(max(totals, default=0))
    plot_h = H - TOP - BOTTOM
    step = (W - LEFT - RIGHT) / max(len(labels), 1)
    width = step * 0.7
    body = []
    for i, label in enumerate(labels):
        base = float(TOP + plot_h)
        for name, values, color in series:
            value = values[i] or 0.0
            height = plot_h * value / top
            base -= height
            x = LEFT + step * i + (step - width) / 2
            body.append(
                f'<rect class="bar" data-series="{html.escape(name)}" data-label="{html.escape(label)}" '
                f'data-value="{value:g}" x="{x:.1f}" y="{base:.1f}" width="{width:.1f}" '
                f'height="{height:.1f}" fill="{color}"><title>{html.escape(label)} {html.escape(name)}: '
                f"{html.escape(_fmt(value, unit))}</title></rect>"
            )
    return _frame(chart, title, top, unit, labels, "".join(body))


def line_chart(chart: str, title: str, labels: Sequence[str], values: Sequence[float | None],
               unit: str = "", color: str = ACCENT) -> str:
    """A line through one ``circle.point`` per known value; gaps where a value is unknown."""
    top = _nice_max(max((v for v in values if v is not None), default=0))
    plot_h = H - TOP - BOTTOM
    step = (W - LEFT - RIGHT) / max(len(labels), 1)
    points = [
        (LEFT + step * (i + 0.5), TOP + plot_h - plot_h * v / top, labels[i], v)
        for i, v in enumerate(values) if v is not None
    ]
    path = " ".join(f"{'M' if n == 0 else 'L'}{x:.1f},{y:.1f}" for n, (x, y, _, _) in enumerate(points))
    body = [f'<path class="line" d="{path}" fill="none" stroke="{color}" stroke-width="2"/>']
    if not points:
        body = []
    body += [
        f'<circle class="point" data-label="{html.escape(label)}" data-value="{value:g}" cx="{x:.1f}" '
        f'cy="{y:.1f}" r="4" fill="{color}"><title>{html.escape(label)}: '
        f"{html.escape(_fmt(value, unit))}</title></circle>"
        for x, y, label, value in points
    ]
    return _frame(chart, title, top, unit, labels, "".join(body))


def interval_chart(chart: str, title: str, rows: Sequence[tuple[str, float, float, float]]) -> str:
    """Horizontal intervals (label, low, estimate, high) around a zero line: one ``circle.point`` each."""
    row_h, left, width = 30, 220, W - 220 - RIGHT
    height = TOP + row_h * len(rows) + 30
    bound = max((max(abs(lo), abs(hi)) for _, lo, _, hi in rows), default=1) or 1
    bound = _nice_max(bound)

    def x(value: float) -> float:
        return left + width * (value + bound) / (2 * bound)

    parts = [
        f'<svg class="chart" data-chart="{chart}" viewBox="0 0 {W} {height}" role="img" '
        f'aria-label="{html.escape(title)}">',
        f"<title>{html.escape(title)}</title>",
        f'<line class="zero" x1="{x(0):.1f}" x2="{x(0):.1f}" y1="{TOP - 4}" y2="{height - 24}"/>',
    ]
    for tick in (-bound, -bound / 2, 0, bound / 2, bound):
        parts.append(f'<text class="axis" x="{x(tick):.1f}" y="{height - 8}" text-anchor="middle">'
                     f"{html.escape(_fmt(tick, ' pp'))}</text>")
    for i, (label, low, estimate, high) in enumerate(rows):
        y = TOP + row_h * i + row_h / 2
        color = ACCENT if low > 0 else (ACTIVE_COLOR if high < 0 else "#777")
        parts.append(
            f'<text class="label" x="{left - 8}" y="{y + 4:.1f}" text-anchor="end">'
            f"{html.escape(label)}</text>"
            f'<line class="whisker" x1="{x(low):.1f}" x2="{x(high):.1f}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="{color}" stroke-width="2"/>'
            f'<circle class="point" data-label="{html.escape(label)}" data-value="{estimate:g}" '
            f'cx="{x(estimate):.1f}" cy="{y:.1f}" r="5" fill="{color}"><title>{html.escape(label)}: '
            f"{estimate:+.1f} pp [{low:+.1f}, {high:+.1f}]</title></circle>"
        )
    parts.append("</svg>")
    return "".join(parts)


def hbar_chart(chart: str, title: str, rows: Sequence[tuple[str, float]], unit: str = "%") -> str:
    """Horizontal bars (label, value) from 0 to the largest value: one ``rect.bar`` each."""
    row_h, left, width = 26, 180, W - 180 - RIGHT - 50
    height = TOP + row_h * len(rows) + 8
    top = max((v for _, v in rows), default=0.0) or 1.0
    parts = [
        f'<svg class="chart" data-chart="{chart}" viewBox="0 0 {W} {height}" role="img" '
        f'aria-label="{html.escape(title)}">',
        f"<title>{html.escape(title)}</title>",
    ]
    for i, (label, value) in enumerate(rows):
        y = TOP + row_h * i
        length = width * value / top
        parts.append(
            f'<text class="label" x="{left - 8}" y="{y + 15}" text-anchor="end">{html.escape(label)}</text>'
            f'<rect class="bar" data-label="{html.escape(label)}" data-value="{value:g}" x="{left}" '
            f'y="{y + 3}" width="{length:.1f}" height="{row_h - 8}" fill="{ACCENT}"><title>'
            f"{html.escape(label)}: {html.escape(_fmt(value, unit))}</title></rect>"
            f'<text class="value" x="{left + length + 6:.1f}" y="{y + 15}">'
            f"{html.escape(_fmt(round(value, 1), unit))}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


