"""The sandbox untrusted chat templates render in: jinja2's ImmutableSandboxedEnvironment
(no attribute starting with "_", no mutation of passed-in objects) with the globals and
filters transformers gives templates (``raise_exception``, ``strftime_now``, ``namespace``,
``dict``, ``tojson``, the ``{% generation %}`` tag), and limits, so that a template can
neither hang the server nor exhaust its memory:

* time: a render stops after MAX_RENDER_SECONDS (checked at calls, outputs and every
  {% for %}, whose iterable is wrapped in a guard when the template is parsed);
* loops: ``range`` hands out at most MAX_RANGE_ITEMS items per render, in all;
* size: repetition (``'x' * n``), padding (``ljust``, ``center``, ``%10000s``, ...) and
  ``replace`` are refused before they build a string over MAX_CHARS, and a render's output
  stops at MAX_CHARS.

Exceeding a limit raises TemplateLimitError (a ValueError).
"""

from __future__ import annotations

import contextvars
import json
import re
import time
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

from jinja2 import Template, nodes
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

MAX_RENDER_SECONDS = 2.0
MAX_RANGE_ITEMS = 100_000
MAX_CHARS = 1 << 24  # 16 Mi characters: any one string, and a render's output
_WIDE = re.compile(r"\d{7,}")  # a field width of a million or more in a format string


class TemplateLimitError(ValueError):
    """A chat template went past a time, loop or size limit."""


class _Budget:
    """One render's allowance."""

    def __init__(self) -> None:
        self.deadline = time.monotonic() + MAX_RENDER_SECONDS
        self.range_items = MAX_RANGE_ITEMS
        self.chars = MAX_CHARS

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise TemplateLimitError(
                f"the chat template ran past its {MAX_RENDER_SECONDS} s time limit"
            )

    def output(self, text: str) -> None:
        self.chars -= len(text)
        if self.chars < 0:
            raise TemplateLimitError(f"the chat template's output passed {MAX_CHARS} characters")
        self.tick()


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("budget", default=None)


def _budget() -> _Budget:
    budget = _BUDGET.get()
    if budget is None:  # rendered outside render_limited: give it its own allowance
        budget = _Budget()
        _BUDGET.set(budget)
    return budget


def render_limited(template: Template, variables: Mapping[str, Any]) -> str:
    """template.render(variables) within one fresh budget."""
    token = _BUDGET.set(_Budget())
    try:
        return template.render(variables)
    except RecursionError:
        raise TemplateLimitError("the chat template recursed too deeply") from None
    except MemoryError:
        raise TemplateLimitError("the chat template ran out of memory") from None
    finally:
        _BUDGET.reset(token)


def _check_size(n: int, what: str) -> None:
    if n > MAX_CHARS:
        raise TemplateLimitError(f"the chat template tried to build {what} of {n} items")


def _limited_range(*args: int) -> Iterator[int]:
    budget = _budget()
    for i, item in enumerate(range(*args)):
        budget.range_items -= 1
        if budget.range_items < 0:
            raise TemplateLimitError(
                f"the chat template's loops passed {MAX_RANGE_ITEMS} range items"
            )
        if i % 1024 == 0:
            budget.tick()
        yield item


_PADDING = {"ljust", "rjust", "center", "zfill", "expandtabs"}


_LOOP_GUARD = "blendrt_loop_guard"  # a global wrapped around every {% for %}'s iterable


def _loop_guard(items: Any) -> Iterator[Any]:
    budget = _budget()
    for i, item in enumerate(items):
        if i % 256 == 0:
            budget.tick()
        yield item


class _LimitedEnvironment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "%"})

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        # NOTE: loops are where a template spends unbounded time (nested loops over the
        # messages); each {% for %} iterates through a guard that checks the clock.
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Call(nodes.Name(_LOOP_GUARD, "load"), [loop.iter], [], None, None)
        return tree

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _budget().tick()
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(n, int):
                    _check_size(len(seq) * n, "a sequence")
        elif operator == "**" and isinstance(right, int) and abs(right) > 256:
            raise TemplateLimitError(f"the chat template raised a number to the power {right}")
        elif operator == "%" and isinstance(left, str) and _WIDE.search(left):
            raise TemplateLimitError("the chat template used a huge field width")
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _budget().tick()
        owner, name = getattr(__obj, "__self__", None), getattr(__obj, "__name__", "")
        if isinstance(owner, str):
            if name in _PADDING and any(isinstance(a, int) and a > MAX_CHARS for a in args):
                raise TemplateLimitError(f"the chat template padded a string past {MAX_CHARS}")
            if name == "replace" and len(args) >= 2 and isinstance(args[1], str):
                _check_size((len(owner) + 1) * max(1, len(args[1])), "a string")
            if name == "format" and _WIDE.search(owner):
                raise TemplateLimitError("the chat template used a huge field width")
        result = super().call(__context, __obj, *args, **kwargs)
        if isinstance(result, str | list):
            _check_size(len(result), "a result")
        return result


def _finalize(value: Any) -> Any:
    """Every {{ expression }}'s value on its way out: counted against the output limit."""
    _budget().output(value if isinstance(value, str) else str(value))
    return value


def _wrap_filter(name: str, func: Any) -> Any:
    def limited(*args: Any, **kwargs: Any) -> Any:
        if any(isinstance(a, int) and not isinstance(a, bool) and a > MAX_CHARS for a in args):
            raise TemplateLimitError(f"the chat template gave the {name} filter a huge size")
        _budget().tick()
        result = func(*args, **kwargs)
        if isinstance(result, str):
            _check_size(len(result), "a string")
        return result

    for attr in ("jinja_pass_arg",):  # keep jinja's context/environment passing mark
        if hasattr(func, attr):
            setattr(limited, attr, getattr(func, attr))
    return limited


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _tojson(
    x: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys=False
) -> str:
    # jinja's own tojson escapes HTML characters; templates expect json.dumps.
    return json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _check_name(name: object) -> None:
    if isinstance(name, str) and name.startswith("_"):
        raise SecurityError(f"chat templates cannot set underscore attributes ({name!r})")


class _Namespace(Namespace):
    """jinja's namespace(), refusing underscore names (as transformers does)."""

    def __init__(*args: Any, **kwargs: Any) -> None:
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _check_name(name)
        Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _check_name(name)
        Namespace.__setitem__(self, name, value)


class _Dict:
    """The ``dict`` global without the type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


class _GenerationTag(Extension):
    """``{% generation %}...{% endgeneration %}`` (transformers' assistant mask): its body."""

    tags = {"generation"}  # noqa: RUF012 (jinja's Extension API)

    def parse(self, parser: Any) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return caller()


def sandbox() -> ImmutableSandboxedEnvironment:
    """A fresh environment: the sandbox, transformers' template globals, the limits."""
    env = _LimitedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationTag, loopcontrols],
        finalize=_finalize,
    )
    for name in ("center", "indent", "wordwrap", "truncate", "format", "replace", "join"):
        env.filters[name] = _wrap_filter(name, env.filters[name])
    env.filters["tojson"] = _tojson
    env.globals["range"] = _limited_range
    env.globals[_LOOP_GUARD] = _loop_guard
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.globals["namespace"] = _Namespace
    env.globals["dict"] = _Dict()
    return env
