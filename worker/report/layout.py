"""Tables that stay readable at any width: a grid when it fits, one record per row when not.

Rich shrinks a table that is too wide by cutting cells (``mat… │ bef…``), which is
what people read in an 80-column terminal, a CI log or ``> file``.  ``FittedTable``
measures first: when every column fits at least its longest word (headers
included), it prints the boxed grid, wrapping only between words; failing that the
same grid without lines (two spaces between columns); otherwise each row as a
block of ``header: value`` lines.  Nothing is ever cut.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.measure import Measurement
from rich.rule import Rule
from rich.table import Table
from rich.text import Text


@dataclass
class FittedTable:
    """``columns`` with ``justify`` per column ("left"/"right"); ``rows`` are plain strings."""

    title: str
    columns: Sequence[str]
    rows: list[Sequence[str]] = field(default_factory=list)
    caption: str = ""
    justify: Sequence[str] = ()

    def __init__(self, title: str, columns: Sequence[str], rows: Iterable[Sequence[str]] = (), *,
                 caption: str = "", justify: Sequence[str] = ()) -> None:
        self.title = title
        self.columns = list(columns)
        self.rows = [list(row) for row in rows]
        self.caption = caption
        self.justify = list(justify) or ["left"] * len(self.columns)

    def add_row(self, *cells: str) -> None:
        self.rows.append(list(cells))

    def grid(self, widths: Sequence[int], *, boxed: bool = True) -> Table:
        """The grid with these column widths (wrapping happens between words only)."""
        options: dict[str, Any] = {} if boxed else {"box": None, "pad_edge": False,
                                                   "header_style": "bold underline"}
        table = Table(title=self.title or None, caption=self.caption or None, title_justify="left",
                      caption_justify="left", **options)
        for name, justify, width in zip(self.columns, self.justify, widths, strict=True):
            table.add_column(name, justify=justify, overflow="fold", width=width)  # type: ignore[arg-type]
        for row in self.rows:
            table.add_row(*(Text(cell) for cell in row))
        return table

    def records(self) -> Group:
        """Each row as ``header: value`` lines under a rule; the value wraps, never cut."""
        parts: list[Text | Rule | Table] = []
        if self.title:
            parts.append(Text(self.title, style="italic"))
        width = max((len(c) for c in self.columns), default=0)
        for row in self.rows:
            parts.append(Rule(style="dim"))
            block = Table.grid(padding=(0, 1))
            block.add_column(width=width + 1, no_wrap=True, style="bold")
            block.add_column(overflow="fold")
            for name, cell in zip(self.columns, row, strict=True):
                block.add_row(f"{name}:", Text(cell))
            parts.append(block)
        if not self.rows:
            parts.append(Text("(none)"))
        if self.caption:
            parts.append(Text(self.caption, style="dim"))
        return Group(*parts)

    def _words(self) -> list[int]:
        """Per column, its longest word: the narrowest it can be without cutting."""
        return [
            max((cell_len(word) for cell in self._column(i) for word in cell.split()), default=1)
            for i in range(len(self.columns))
        ]

    def _column(self, index: int) -> list[str]:
        return [self.columns[index], *(row[index] for row in self.rows)]

    def _widths(self, budget: int) -> list[int] | None:
        """Column widths summing to at most ``budget``: natural widths, the widest wrapped first
        (never below a column's longest word); None when even that does not fit."""
        floor = self._words()
        if sum(floor) > budget:
            return None
        widths = [max((cell_len(c) for c in self._column(i)), default=1) for i in range(len(self.columns))]
        while sum(widths) > budget:
            slack = [(w, i) for i, w in enumerate(widths) if w > floor[i]]
            _, widest = max(slack)
            widths[widest] -= 1
        return widths

    def _layout(self, width: int) -> Table | Group:
        columns = len(self.columns)
        widths = self._widths(width - 3 * columns - 1)  # a space each side of a cell, a line between
        if widths is not None:
            return self.grid(widths)
        widths = self._widths(width - 2 * (columns - 1))  # no lines: two spaces between columns
        if widths is not None:
            return self.grid(widths, boxed=False)
        return self.records()

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self._layout(options.max_width)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement.get(console, options, self._layout(options.max_width))
