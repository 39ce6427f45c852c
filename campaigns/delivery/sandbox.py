"""The Jinja sandbox templates render in: plain data only, a work budget, and undefined
names reported with what was available (``'customer' has no attribute 'frist_name'``)."""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

import jinja2
from jinja2.exceptions import SecurityError
from jinja2.runtime import StrictUndefined, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment, safe_range
from jinja2.utils import missing


class Record(dict[str, Any]):
    """A dict that knows its path in the context ("customer.attributes").

    Only the error message uses the label; templates see an ordinary dict and
    the sandbox hides underscore attributes from them.
    """

    __slots__ = ("_label",)

    def __init__(self, data: Mapping[str, Any], label: str) -> None:
        super().__init__(
            (key, Record(value, f"{label}.{key}") if isinstance(value, dict) else value)
            for key, value in data.items()
        )
        self._label = label


class LocatingUndefined(StrictUndefined):
    """StrictUndefined whose message names the variable and what was available."""

    __slots__ = ()

    def __init__(
        self,
        hint: str | None = None,
        obj: Any = missing,
        name: str | None = None,
        exc: type[jinja2.TemplateRuntimeError] = jinja2.UndefinedError,
    ) -> None:
        if isinstance(obj, Undefined):
            # Something looked up on an undefined (``(x|attr('__class__')).__mro__``):
            # report the first failure, e.g. the sandbox refusal, not a
            # confusing "'Undefined object' has no attribute".
            hint, name, exc = obj._undefined_hint, obj._undefined_name, obj._undefined_exception
            obj = obj._undefined_obj
        super().__init__(hint, obj, name, exc)

    @property
    def _undefined_message(self) -> str:
        if self._undefined_hint:
            return self._undefined_hint
        obj, name = self._undefined_obj, self._undefined_name
        if obj is missing:
            return f"undefined name {name!r}"
        if isinstance(obj, Record):
            available = ", ".join(sorted(map(str, obj))) or "nothing (it is empty)"
            message = f"{obj._label!r} has no attribute {name!r} — available: {available}"
            if obj._label.endswith("attributes"):
                message += (
                    f"; for a value only some customers have, write "
                    f"`{{% if {obj._label}.{name} is defined %}}`"
                )
            return message
        return str(super()._undefined_message)


# What one render may build: loop steps over range() and the size of what `*` repeats.
# Real emails need a few hundred; a runaway edit must fail fast, not hang a worker.
RENDER_BUDGET = 100_000
render_budget: ContextVar[list[int] | None] = ContextVar("render_budget", default=None)


def _spend(amount: int) -> None:
    budget = render_budget.get()
    if budget is None:
        return
    budget[0] -= amount
    if budget[0] < 0:
        raise SecurityError(f"the template does too much work (over {RENDER_BUDGET} loop steps in one "
                            "render): loop over the data you need, not over large ranges")


def _budgeted_range(*args: int) -> range:
    steps = safe_range(*args)
    _spend(len(steps))
    return steps


class Sandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.globals["range"] = _budgeted_range

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int | float) and abs(right) > 100:
            raise SecurityError(f"exponent {right!r} is too large for a template")
        if operator == "*":
            for sequence, times in ((left, right), (right, left)):
                if isinstance(sequence, str | list | tuple) and isinstance(times, int):
                    if len(sequence) * times > RENDER_BUDGET:
                        raise SecurityError(f"`*` would build {len(sequence) * times} items: at most "
                                            f"{RENDER_BUDGET} in a template")
                    _spend(max(0, len(sequence) * times))
        return super().call_binop(context, operator, left, right)

    def unsafe_undefined(self, obj: Any, attribute: str) -> Undefined:
        owner = obj._label if isinstance(obj, Record) else f"a {type(obj).__name__} value"
        return self.undefined(
            f"{attribute!r} of {owner} is off limits: templates may read data, "
            "not change it or reach Python internals",
            name=attribute,
            obj=obj,
            exc=SecurityError,
        )


def finalize(value: Any) -> Any:
    # A missing first name should print as nothing, not as "None".
    return "" if value is None else value


def prepare(context: Mapping[str, Any]) -> dict[str, Any]:
    return {key: Record(value, key) if isinstance(value, dict) else value for key, value in context.items()}
