"""YAML loading that remembers where every value came from.

ruamel.yaml's round-trip loader keeps line/column for each key and item; we
flatten them into a map from a path (("campaigns", 0, "when")) to a position,
so any validation error can point at ``rules.yaml:LINE:COL``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError
from ruamel.yaml.reader import ReaderError
from ruamel.yaml.tokens import (
    BlockEndToken,
    BlockMappingStartToken,
    BlockSequenceStartToken,
    FlowMappingEndToken,
    FlowMappingStartToken,
    FlowSequenceEndToken,
    FlowSequenceStartToken,
)

Path = tuple[str | int, ...]


@dataclass
class Located:
    data: Any
    positions: dict[Path, tuple[int, int]] = field(default_factory=dict)

    def position(self, path: Path) -> tuple[int, int] | None:
        """1-based (line, column) of the deepest known node on the path."""
        for end in range(len(path), -1, -1):
            found = self.positions.get(tuple(path[:end]))
            if found:
                return found
        return None


class YAMLSyntaxError(ValueError):
    def __init__(self, message: str, line: int | None, column: int | None) -> None:
        self.line = line
        self.column = column
        super().__init__(message)


# ruamel.yaml composes recursively; a few hundred levels exhaust Python's stack without a line.
MAX_DEPTH = 64
_OPENING = (BlockMappingStartToken, BlockSequenceStartToken, FlowMappingStartToken,
            FlowSequenceStartToken)
_CLOSING = (BlockEndToken, FlowMappingEndToken, FlowSequenceEndToken)


def _refuse_deep_nesting(yaml: YAML, text: str) -> None:
    """Raise a located error where the nesting passes MAX_DEPTH (the scanner does not recurse)."""
    depth = 0
    try:
        for token in yaml.scan(text):
            if isinstance(token, _OPENING):
                depth += 1
                if depth > MAX_DEPTH:
                    _raise_syntax(f"nested more than {MAX_DEPTH} levels deep; rules.yaml needs only a "
                                  "few (is an indentation or a bracket off?)", token.start_mark)
            elif isinstance(token, _CLOSING):
                depth -= 1
    except YAMLSyntaxError:
        raise
    except Exception:
        return


def load_located(text: str) -> Located:
    yaml = YAML(typ="rt")
    _refuse_deep_nesting(YAML(typ="rt"), text)
    try:
        node = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        return _raise_syntax(_explain(problem, exc.context, text, mark), mark)
    except ReaderError as exc:  # a control character: no mark, only an offset
        before = text[: exc.position]
        line, column = before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1
        raise YAMLSyntaxError(
            f"YAML syntax: {exc.reason} (character #x{exc.character:04x})"
            if isinstance(exc.character, int)
            else f"YAML syntax: {exc.reason}",
            line,
            column,
        ) from None
    except Exception as exc:  # ruamel raises several unrelated types for duplicate keys etc.
        mark = getattr(exc, "problem_mark", None)
        return _raise_syntax(str(exc).splitlines()[0] if str(exc) else "invalid YAML", mark)
    located = Located(data=None)
    located.data = _plain(node, (), located.positions)
    located.positions.setdefault((), (1, 1))
    return located


_INDENTATION = (
    "the indentation does not line up: keys of one mapping start in the same column, and "
    "YAML counts spaces exactly (compare with the lines above)"
)


def _explain(problem: str, context: str | None, text: str, mark: Any) -> str:
    """What a person editing the file should change, then the parser's own words."""
    hint = _hint(problem, context, text, mark)
    return f"{hint} (parser: {problem})" if hint else problem


def _hint(problem: str, context: str | None, text: str, mark: Any) -> str | None:
    lines = text.splitlines()
    line = lines[mark.line] if mark is not None and mark.line < len(lines) else ""
    if "\t" in problem or "\t" in line[: len(line) - len(line.lstrip())]:
        return "a tab character: YAML indents with spaces only; replace the tab with spaces"
    if problem == "mapping values are not allowed here":
        before = line[: mark.column] if mark is not None else ""
        if ":" in before.split("#")[0]:
            return 'a value containing ": " must be quoted, e.g. `subject: "Offer: 20% off"`'
        return _INDENTATION
    if problem.startswith(("expected <block end>", "did not find expected key")):
        return _INDENTATION
    if problem == "could not find expected ':'":
        return "write `key: value` (a space after the colon), or quote a value that goes on the next line"
    if problem == "found unexpected end of stream" and context and "quoted" in context:
        return "a quote opened earlier is never closed; close it on the same line"
    if problem.startswith(("expected ',' or ']'", "expected ',' or '}'")):
        return "brackets do not match: each [ needs a ] and each { a }"
    return None


def _raise_syntax(problem: str, mark: Any) -> Located:
    line = mark.line + 1 if mark is not None else None
    column = mark.column + 1 if mark is not None else None
    raise YAMLSyntaxError(f"YAML syntax: {problem}", line, column)


def _plain(node: Any, path: Path, positions: dict[Path, tuple[int, int]]) -> Any:
    if isinstance(node, CommentedMap):
        result: dict[str, Any] = {}
        for key, value in node.items():
            child = (*path, str(key))
            # Point at the key: that is where the user reads "this entry".
            _remember(positions, child, _safe(node.lc.key, key), path)
            result[str(key)] = _plain(value, child, positions)
        return result
    if isinstance(node, CommentedSeq):
        items = []
        for index, value in enumerate(node):
            _remember(positions, (*path, index), _safe(node.lc.item, index), path)
            items.append(_plain(value, (*path, index), positions))
        return items
    return _scalar(node)


def _safe(lookup: Any, key: Any) -> Any:
    # Merged keys (<<) and tagged collections come without positions in ruamel.
    try:
        return lookup(key)
    except (KeyError, IndexError, TypeError):
        return None


def _remember(positions: dict[Path, tuple[int, int]], path: Path, found: Any, parent: Path) -> None:
    if isinstance(found, tuple | list) and len(found) >= 2 and all(isinstance(v, int) for v in found[:2]):
        positions[path] = (found[0] + 1, found[1] + 1)
    elif parent in positions:
        positions[path] = positions[parent]


def _scalar(node: Any) -> Any:
    # ruamel wraps scalars in subclasses that keep formatting; pydantic wants plain types.
    if type(node).__name__ == "ScalarBoolean":
        return bool(node)
    for plain in (bool, int, float, str):
        if isinstance(node, plain):
            return plain(node)
    return node
