"""The one results table: console output, Markdown, and the machine it ran on."""

from __future__ import annotations

import os
import platform
import re
import sqlite3
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

BEGIN = "<!-- bench:begin (written by `python -m bench`; edit outside these markers) -->"
END = "<!-- bench:end -->"


@dataclass
class Row:
    workload: str
    ours: str
    reference: str
    ratio: str
    goal: str
    met: bool | None  # None: no goal, or not measurable
    note: str = ""

    @property
    def verdict(self) -> str:
        return {True: "yes", False: "**no**", None: "—"}[self.met]


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    profiles: dict[str, str] = field(default_factory=dict)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        print(f"  {row.workload}: {row.ours} vs {row.reference} -> {row.ratio} (goal {row.goal}: "
              f"{row.verdict}) {row.note}", flush=True)


def fmt_rate(value: float, unit: str) -> str:
    return f"{value:,.0f} {unit}/s"


def fmt_seconds(value: float) -> str:
    return f"{value:.2f} s" if value < 100 else f"{value:.0f} s"


def size_label(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


def parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*", text)
    if not match:
        raise ValueError(f"not a size: {text!r} (write e.g. 10000, 10k or 1M)")
    factor = {"": 1, "k": 1000, "m": 1_000_000}[match[2].lower()]
    return int(float(match[1]) * factor)


def machine(postgres_version: str, redis_version: str) -> list[tuple[str, str]]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram_kb = 0
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                ram_kb = int(line.split()[1])
    postfix = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "postfix"], capture_output=True,
                             text=True).stdout or "not installed"
    return [
        ("date", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("machine", f"{os.cpu_count()} CPUs ({cpu}), {ram_kb / 1024 / 1024:.1f} GiB RAM, "
                    f"{platform.system()} {platform.release()}"),
        ("load average (1/5/15 min) at the end", " / ".join(f"{x:.1f}" for x in os.getloadavg())),
        ("Python", platform.python_version()),
        ("SQLite", sqlite3.sqlite_version),
        ("PostgreSQL", postgres_version),
        ("Redis", redis_version),
        ("Dramatiq / SQLAlchemy", f"{metadata.version('dramatiq')} / {metadata.version('sqlalchemy')}"),
        ("smtp-sink", f"Postfix {postfix}"),
    ]


def markdown(results: Results, environment: list[tuple[str, str]], command: str) -> str:
    lines = [f"Command: `{command}`", ""]
    lines += [f"- **{name}**: {value}" for name, value in environment]
    lines += ["", "| workload | ours | reference (same run) | ratio | goal | met? |",
              "|---|---|---|---|---|---|"]
    for row in results.rows:
        workload = row.workload + (f" <br><sub>{row.note}</sub>" if row.note else "")
        lines.append(f"| {workload} | {row.ours} | {row.reference} | {row.ratio} | {row.goal} | "
                     f"{row.verdict} |")
    if results.notes:
        lines += ["", *[f"- {note}" for note in results.notes]]
    for title, text in results.profiles.items():
        lines += ["", f"<details><summary>py-spy: {title}</summary>", "", "```", text, "```", "",
                  "</details>"]
    return "\n".join(lines)


def write_doc(path: Path, generated: str) -> None:
    """Replace the generated part of ``path``, keeping whatever was written around it."""
    block = f"{BEGIN}\n{generated}\n{END}"
    if path.exists():
        text = path.read_text()
        if BEGIN in text and END in text:
            head, _, rest = text.partition(BEGIN)
            _, _, tail = rest.partition(END)
            path.write_text(head + block + tail)
            return
        path.write_text(text.rstrip() + "\n\n" + block + "\n")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# Benchmarks\n\n## Latest run\n\n" + block + "\n")


def console(results: Results) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="retention-worker benchmarks", show_lines=False)
    for column in ("workload", "ours", "reference", "ratio", "goal", "met?"):
        table.add_column(column, overflow="fold")
    for row in results.rows:
        table.add_row(row.workload, row.ours, row.reference, row.ratio, row.goal,
                      row.verdict.replace("**", ""))
    Console(width=200).print(table)
