"""A model folder's jinja chat template (Hugging Face style) as an append-only ChatFormat.

Templates come from model folders and are untrusted: they are rendered in jinja2's
ImmutableSandboxedEnvironment (no attribute starting with "_", no mutation of passed-in
objects), with the globals and filters transformers gives them (``raise_exception``,
``strftime_now``, ``namespace``, ``dict``, ``tojson``, the ``{% generation %}`` tag), and
``messages``, ``add_generation_prompt``, ``bos_token``, ``eos_token``.

The segment of message k is render(messages[:k+1]) minus render(messages[:k]) as text, and the
generation opening is render(msgs, add_generation_prompt=True) minus render(msgs); a rendering
that does not extend the previous one raises ValueError (the template is not append-only). An
assistant segment must begin with the opening; what follows is split into content (the
message's text, or the template's trimmed text of it, behind at most whitespace) and closing.
Only the first segment is tokenized as a whole text (BOS added if the tokenizer adds one and
the template did not write it); the others with ``encode_continuation``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from jinja2 import nodes
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

from blendrt.tokenizer.chat_format import ChatFormat, Message, Part

if TYPE_CHECKING:
    from blendrt.tokenizer.tokenizer import Tokenizer

_PRIVATE_KEYS = ("token_ids", "member")  # blendrt's own message fields; templates don't see them


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


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.globals["namespace"] = _Namespace
    env.globals["dict"] = _Dict()
    return env


def _delta(prev: str, cur: str, what: str) -> str:
    if cur.startswith(prev):
        return cur[len(prev) :]
    at = next((i for i, (a, b) in enumerate(zip(prev, cur, strict=False)) if a != b), len(cur))
    raise ValueError(
        f"chat template is not append-only: {what} rewrites text rendered before it, at char {at}"
        f": {prev[at : at + 40]!r} became {cur[at : at + 40]!r}"
    )


def _content_end(rest: str, content: str) -> int | None:
    """Where the content ends in ``rest`` (an assistant delta after its opening), if found."""
    if rest.startswith(content):
        return len(content)
    body = content.strip()
    if not body:  # whitespace the template trimmed away: the content is empty
        return 0
    gap = len(rest) - len(rest.lstrip())
    return gap + len(body) if rest.startswith(body, gap) else None


class _Render:
    """One public call's renderings: one clock, and texts memoized by (prefix length, gen)."""

    def __init__(self) -> None:
        self.now = datetime.now()
        self.texts: dict[tuple[int, bool], str] = {}


class TemplateChatFormat(ChatFormat):
    """A ChatFormat from a jinja chat template (default: the tokenizer folder's)."""

    name = "template"

    def __init__(
        self,
        tokenizer: Tokenizer,
        template: str | None = None,
        *,
        member: str | None = None,
        template_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(tokenizer, member=member)
        template = tokenizer.chat_template if template is None else template
        if not template:
            raise ValueError(f"tokenizer {tokenizer.path!r} has no chat_template")
        self.template = template
        self._compiled = _environment().from_string(template)
        self._kwargs = dict(template_kwargs or {})
        self._infer_stops()

    def _context(self) -> _Render:
        return _Render()

    def render_text(self, messages: Sequence[Message], add_generation_prompt: bool) -> str:
        """The template's text for messages, as transformers' apply_chat_template renders it."""
        return self._text(_Render(), messages, len(messages), add_generation_prompt)

    def _text(self, ctx: _Render, messages: Sequence[Message], n: int, gen: bool) -> str:
        if n == 0 and not gen:
            return ""
        key = (n, gen)
        if key not in ctx.texts:
            tok = self.tokenizer
            specials = {"bos_token": tok.bos_token, "eos_token": tok.eos_token}
            plain = [{k: v for k, v in m.items() if k not in _PRIVATE_KEYS} for m in messages[:n]]
            variables = {k: v for k, v in specials.items() if v is not None}
            variables |= {"tools": None, "documents": None, **self._kwargs}
            variables |= {"messages": plain, "add_generation_prompt": gen}
            variables["strftime_now"] = ctx.now.strftime  # one clock per call: append-only
            ctx.texts[key] = self._compiled.render(variables)
        return ctx.texts[key]

    def _opening_text(self, history: Sequence[Message], n: int, ctx: _Render) -> str:
        base = self._text(ctx, history, n, False)
        return _delta(base, self._text(ctx, history, n, True), "the generation prompt")

    def _opening(self, history: Sequence[Message], ctx: _Render) -> list[Part]:
        return [self._opening_text(history, len(history), ctx)]

    def _parts(self, messages: Sequence[Message], i: int, ctx: _Render):
        prev = self._text(ctx, messages, i, False)
        delta = _delta(prev, self._text(ctx, messages, i + 1, False), f"message {i}")
        if i == 0:
            tok = self.tokenizer
            bos = tok.add_bos_token and not (tok.bos_token and delta.startswith(tok.bos_token))
            return self._start(delta, bos=bos), None, []
        m = messages[i]
        if m["role"] == "assistant":
            opening = self._opening_text(messages, i, ctx)
            if not delta.startswith(opening):
                raise ValueError(
                    f"chat template is not append-only: assistant message {i} does not begin "
                    f"with the generation prompt {opening!r} (it begins {delta[:40]!r})"
                )
            rest = delta[len(opening) :]
            cut = _content_end(rest, m["content"])
            if cut is not None:
                return [opening], rest[:cut], [rest[cut:]]
        return [delta], None, []

    def _infer_stops(self) -> None:
        """Stop at the text that closes a probe reply (e.g. <|im_end|>) and its special ids."""
        probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
        try:
            _, _, closing = self._parts(probe, 1, _Render())
        except SecurityError:
            raise
        except (TemplateError, ValueError, TypeError, LookupError):
            return  # the template refuses the probe; EOS stays the only stop
        text = "".join(p for p in closing if isinstance(p, str)).strip()
        if text:
            self.stop_strings = [text]
            special = self.tokenizer.all_special_ids
            self.stop_token_ids |= {
                t for t in self.tokenizer.encode_continuation(text) if t in special
            }
