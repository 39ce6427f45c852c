"""Every name a template uses, on every branch, against what the context will hold.

Rendering a sample only finds undefined names on the branches that sample takes; a
typo inside an ``{% if %}`` the sample skips would fail at send time.  This walks
the parsed template instead (Jinja's own AST), so each ``name``, ``customer.FIELD``
and ``campaign.FIELD`` is checked wherever it stands.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from difflib import get_close_matches

from jinja2 import nodes

# Names Jinja itself provides inside a template.
_JINJA_NAMES = frozenset({"loop", "self", "super", "caller", "varargs", "kwargs", "true", "false", "none",
                          "True", "False", "None"})
# Filters and tests that make a missing value fine.
_GUARDING_FILTERS = frozenset({"default", "d"})
_GUARDING_TESTS = frozenset({"defined", "undefined", "none"})


@dataclass(frozen=True)
class NameProblem:
    line: int
    message: str


def unknown_names(
    template: nodes.Template,
    *,
    context: Mapping[str, Sequence[str] | None],
    globals_: Sequence[str],
) -> list[NameProblem]:
    """Problems with the names ``template`` reads.

    ``context`` maps each top-level name to the keys it has (None: any key, not checked).
    """
    defined = set(globals_) | _JINJA_NAMES | _assigned(template)
    problems: list[NameProblem] = []
    for node in _reads(template):
        if isinstance(node, nodes.Name):
            if node.name in context or node.name in defined:
                continue
            problems.append(NameProblem(node.lineno, (
                f"undefined name {node.name!r}{_suggest(node.name, context)} — available: "
                f"{', '.join(sorted(context))}"
            )))
            continue
        owner, key = node.node, _key(node)
        # Underscore names are the sandbox's to refuse, with its own message.
        if not isinstance(owner, nodes.Name) or key is None or key.startswith("_") or owner.name in defined:
            continue
        keys = context.get(owner.name)
        if keys is None or key in keys:
            continue
        hint = get_close_matches(key, keys, n=1)
        suggestion = f" (did you mean {owner.name}.{hint[0]}?)" if hint else ""
        available = ", ".join(sorted(keys))
        problems.append(NameProblem(
            node.lineno, f"{owner.name!r} has no attribute {key!r}{suggestion} — available: {available}"
        ))
    return problems


def _suggest(name: str, context: Mapping[str, Sequence[str] | None]) -> str:
    candidates = {top: top for top in context}
    for top, keys in context.items():
        for key in keys or ():
            candidates.setdefault(key, f"{top}.{key}")
    hint = get_close_matches(name, list(candidates), n=1)
    return f" (did you mean {candidates[hint[0]]}?)" if hint else ""


def _key(node: nodes.Getattr | nodes.Getitem) -> str | None:
    if isinstance(node, nodes.Getattr):
        return node.attr
    arg = node.arg
    return arg.value if isinstance(arg, nodes.Const) and isinstance(arg.value, str) else None


def _assigned(template: nodes.Template) -> set[str]:
    """Names the template defines itself (set, for, macro arguments, with, imports)."""
    names = {n.name for n in template.find_all(nodes.Name) if n.ctx in ("store", "param")}
    names |= {m.name for m in template.find_all(nodes.Macro)}
    for imported in template.find_all(nodes.FromImport):
        names |= {name if isinstance(name, str) else name[1] for name in imported.names}
    return names


def _reads(node: nodes.Node) -> Iterator[nodes.Name | nodes.Getattr | nodes.Getitem]:
    """Loaded names and one-level lookups on them, skipping what a guard protects."""
    if isinstance(node, nodes.Test) and node.name in _GUARDING_TESTS:
        return
    if isinstance(node, nodes.Filter) and node.name in _GUARDING_FILTERS:
        for arg in node.args:
            yield from _reads(arg)
        return
    if isinstance(node, nodes.Name) and node.ctx == "load":
        yield node
        return
    if isinstance(node, nodes.Getattr | nodes.Getitem) and isinstance(node.node, nodes.Name):
        if node.node.ctx == "load":
            yield node
            yield node.node
        if isinstance(node, nodes.Getitem):
            yield from _reads(node.arg)
        return
    if isinstance(node, nodes.If):
        # `{% if x is defined %}…{% endif %}`: what the test guards is fine inside the branch.
        guarded = _guarded(node.test)
        yield from _reads(node.test)
        for child in node.body:
            yield from (read for read in _reads(child) if _describe(read) not in guarded)
        for child in (*node.elif_, *node.else_):
            yield from _reads(child)
        return
    for child in node.iter_child_nodes():
        yield from _reads(child)


def _guarded(test: nodes.Node) -> set[str]:
    found = set()
    for node in test.find_all(nodes.Test):
        if node.name == "defined":
            found.add(_describe(node.node))
    if isinstance(test, nodes.Getattr | nodes.Getitem | nodes.Name):
        found.add(_describe(test))  # `{% if customer.attributes.x %}` is a truthiness guard too
    return found - {""}


def _describe(node: nodes.Node) -> str:
    if isinstance(node, nodes.Name):
        return node.name
    if isinstance(node, nodes.Getattr | nodes.Getitem):
        key = _key(node)
        inner = _describe(node.node)
        return f"{inner}.{key}" if inner and key else ""
    return ""
