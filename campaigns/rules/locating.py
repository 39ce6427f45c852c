"""Error reporting: a path into the YAML → file:line:col, pydantic's errors → plain advice."""

from __future__ import annotations

from difflib import get_close_matches
from typing import Any

from pydantic import BaseModel, ValidationError

from campaigns.errors import RulesError
from campaigns.rules.yamlsource import Located


def located_error(located: Located, name: str, path: tuple[str | int, ...], message: str) -> RulesError:
    position = located.position(path)
    line, column = position if position else (None, None)
    return RulesError(message, file=name, line=line, column=column, where=_where(path))


def _where(path: tuple[str | int, ...]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "rules"


def validation_errors(
    exc: ValidationError, root: type[BaseModel], located: Located, name: str
) -> list[RulesError]:
    """pydantic's errors for ``root`` validated from ``located``, as located RulesErrors."""
    errors = []
    for error in exc.errors():
        path = _data_path(error["loc"], located.data, extra=error["type"] == "extra_forbidden")
        message = _humane(error, root, path)
        errors.append(located_error(located, name, path, message))
    return errors


def _data_path(loc: tuple[Any, ...], data: Any, *, extra: bool) -> tuple[str | int, ...]:
    """The part of pydantic's error location that exists in the YAML (drops validator tags)."""
    path: list[str | int] = []
    for index, part in enumerate(loc):
        if isinstance(data, dict) and part in data:
            path.append(part)
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            path.append(part)
            data = data[part]
        elif extra and index == len(loc) - 1:
            path.append(part)
    return tuple(path)


def _humane(error: Any, root: type[BaseModel], path: tuple[str | int, ...]) -> str:
    kind = error["type"]
    if not path:
        return str(error["msg"]).removeprefix("Value error, ")
    if kind == "extra_forbidden":
        key = str(path[-1])
        known = _known_keys(root, path[:-1])
        hint = get_close_matches(key, known, n=1)
        suggestion = f" (did you mean `{hint[0]}`?)" if hint else ""
        return f"unknown key `{key}`{suggestion}; allowed here: {', '.join(known)}"
    if kind == "missing":
        return f"`{path[-1]}` is required here"
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    if "input" in error and kind not in ("value_error",) and not isinstance(error["input"], dict):
        message += f" (got {error['input']!r})"
    return message


def _known_keys(root: type[BaseModel], path: tuple[str | int, ...]) -> list[str]:
    model: Any = root
    for part in path:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is None:
            return []
        model = _model_in(field.annotation)
    return list(model.model_fields) if model is not None and hasattr(model, "model_fields") else []


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    origin = getattr(annotation, "__origin__", None)
    return _model_in(origin) if origin not in (None, annotation) and origin is not type else None
