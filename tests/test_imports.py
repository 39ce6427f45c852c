"""The layering the README promises: no import cycle, and the domain never imports the runtime."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_ONLY = ("dramatiq", "apscheduler", "smtplib", "fastapi", "starlette", "uvicorn", "worker")
# Past this a module has, every time so far, been holding a second concept.
MAX_LINES = 420
# Still over, each being split by its owner's issue; this list is meant to end empty.
OVERSIZE: set[str] = set()


def _modules() -> dict[str, Path]:
    found = {}
    for path in [*ROOT.glob("campaigns/**/*.py"), *ROOT.glob("worker/**/*.py")]:
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _module_level_imports(path: Path) -> list[str]:
    """What importing the module imports: its top-level statements (not TYPE_CHECKING blocks,
    not imports deferred into functions); ``from a import b`` counts as a and as a.b."""
    names = []
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    return names


def test_no_module_imports_itself_through_others() -> None:
    modules = _modules()
    graph = {
        name: {t for t in _module_level_imports(path) if t in modules and t != name}
        for name, path in modules.items()
    }
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target):], target])
            elif target not in state:
                visit(target, [*path, target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_the_domain_imports_no_broker_scheduler_smtp_http_or_worker() -> None:
    offending = [
        f"{name}: {target}"
        for name, path in _modules().items() if name.startswith("campaigns")
        for target in _module_level_imports(path)
        if target.split(".")[0] in RUNTIME_ONLY
    ]
    assert offending == []


def test_no_module_outgrows_one_concept() -> None:
    sizes = {
        str(path.relative_to(ROOT)): len(path.read_text(encoding="utf-8").splitlines())
        for path in _modules().values()
        if "migrations" not in path.parts
    }
    over = {name: lines for name, lines in sizes.items() if lines > MAX_LINES and name not in OVERSIZE}
    assert over == {}
