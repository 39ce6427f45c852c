"""Read py-spy's raw (collapsed stack) output and say where the time went."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<function>.+?) \((?P<file>[^:()]+)(?::\d+)?\)$")


def _frames(stack: str) -> list[str]:
    out = []
    for frame in stack.split(";"):
        match = _FRAME.match(frame.strip())
        if match:
            file = match["file"]
            # Keep the interesting part of the path: package/module.py.
            short = "/".join(Path(file).parts[-2:])
            out.append(f"{match['function']} ({short})")
        else:
            out.append(frame.strip())
    return out


def summarize(path: Path, *, top: int = 25, own_top: int = 15) -> str:
    """Inclusive time of the busiest functions and self time of the hottest leaves, as text."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = _frames(stack)
        total += count
        for frame in set(frames):
            inclusive[frame] += count
        if frames:
            own[frames[-1]] += count
    if total == 0:
        return "(no samples)"
    lines = [f"{total} samples (all threads, idle excluded)", "", "inclusive:"]
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in inclusive.most_common(top)]
    lines += ["", "self:"]
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in own.most_common(own_top)]
    return "\n".join(lines)
