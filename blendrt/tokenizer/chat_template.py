"""A model folder's jinja chat template (Hugging Face style) as an append-only ChatFormat.

Templates come from model folders and are untrusted: they render in `template_sandbox`
(jinja2's immutable sandbox with time, loop and output limits), with ``messages``,
``add_generation_prompt``, ``bos_token``, ``eos_token``.

The segment of message k is render(messages[:k+1]) minus render(messages[:k]) as text, and the
generation opening is render(msgs, add_generation_prompt=True) minus render(msgs); a rendering
that does not extend the previous one raises ValueError (the template is not append-only); an
EOS that only ends the conversation (Phi-3 writes it without a generation prompt, drops it
once more follows) is left out of both and rendered after the last message. An
assistant segment must begin with the opening; what follows is split into content (the
message's text, or the template's trimmed text of it, behind at most whitespace) and closing.
Text at the start, or right after a special token, is tokenized as in a whole text (a
`Lead`); other text with ``encode_continuation``. No BOS is added: as apply_chat_template,
the template writes it or it is not there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from jinja2.exceptions import SecurityError, TemplateError

from blendrt.tokenizer.chat_format import ChatFormat, Lead, Message, NotAppendOnly, Part
from blendrt.tokenizer.template_sandbox import TemplateLimitError, render_limited, sandbox

if TYPE_CHECKING:
    from blendrt.tokenizer.tokenizer import Tokenizer

_PRIVATE_KEYS = ("token_ids", "member")  # blendrt's own message fields; templates don't see them


def _delta(prev: str, cur: str, what: str) -> str:
    if cur.startswith(prev):
        return cur[len(prev) :]
    at = next((i for i, (a, b) in enumerate(zip(prev, cur, strict=False)) if a != b), len(cur))
    raise NotAppendOnly(
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
        self._compiled = sandbox().from_string(template)
        self._kwargs = dict(template_kwargs or {})
        # Special token texts, longest first: after one, text tokenizes as after a split.
        names = {tokenizer.id_to_token(t) for t in tokenizer.all_special_ids}
        self._specials = sorted((n for n in names if n), key=len, reverse=True)
        self.num_whole_renders = 0  # renders of histories the template does not extend
        self._infer_stops()

    def render(
        self, messages: Sequence[Message], *, add_generation_prompt: bool = True
    ) -> list[int]:
        """The ids of the template's text, as apply_chat_template(tokenize=True) gives them.

        NOTE: a template that rewrites earlier text as the history grows (Mistral v0.3 moves
        the system prompt into the last user turn) cannot be rendered message by message:
        the whole text is tokenized instead, and the member's prefix cache misses from the
        first rewritten character on (counted in num_whole_renders)."""
        try:
            return super().render(messages, add_generation_prompt=add_generation_prompt)
        except NotAppendOnly:
            self.num_whole_renders += 1
            text = self.render_text(messages, add_generation_prompt)
            return self.tokenizer.encode(text, add_special_tokens=False)

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
            try:
                ctx.texts[key] = render_limited(self._compiled, variables)
            except (SecurityError, TemplateLimitError):
                raise
            except TemplateError as e:  # raise_exception(...): the template refuses this
                raise ValueError(f"the chat template refused the conversation: {e}") from None
            except (TypeError, LookupError, AttributeError, ArithmeticError) as e:
                raise ValueError(
                    f"the chat template failed on this conversation: {type(e).__name__}: {e}"
                ) from None
        return ctx.texts[key]

    def _body(self, ctx: _Render, messages: Sequence[Message], n: int) -> str:
        """The text of messages[:n] without the generation prompt, less a trailing EOS the
        template writes only where the conversation ends: Phi-3 ends a history with
        ``eos_token`` when add_generation_prompt is false and drops it once a message or the
        generation prompt follows. That EOS is left to `_tail`, not to the last message."""
        text = self._text(ctx, messages, n, False)
        eos = self.tokenizer.eos_token
        if not eos or not text.endswith(eos):
            return text
        try:
            gen = self._text(ctx, messages, n, True)
        except ValueError:  # the template refuses a generation prompt here: keep the EOS
            return text
        body = text[: -len(eos)]
        return body if not gen.startswith(text) and gen.startswith(body) else text

    def _follow(self, prev: str, text: str) -> Part:
        """`text` as it tokenizes after `prev` in a whole text: at the start, or after a
        special token, as a Lead (the tokenizer splits there); else as a continuation."""
        if not prev:
            return Lead(text)
        after = next((s for s in self._specials if prev.endswith(s)), "")
        return Lead(text, after=after) if after else text

    # NOTE (segment boundaries): a message's segment ends where its text's trailing
    # whitespace begins; that whitespace opens the next segment (or the generation prompt).
    # Tokenizers attach whitespace to the word after it ("? ASSISTANT" is "?", "▁ASSISTANT"),
    # so this is where a whole text's tokens split too; a render that ends a history
    # without a generation prompt ends with the leftover whitespace.

    def _opening_text(self, history: Sequence[Message], n: int, ctx: _Render) -> str:
        """The generation prompt after history[:n], with the whitespace that ends it."""
        base = self._body(ctx, history, n)
        gen = self._text(ctx, history, n, True)
        _delta(base, gen, "the generation prompt")
        return gen[len(base.rstrip()) :]

    def _opening(self, history: Sequence[Message], ctx: _Render) -> list[Part]:
        base = self._body(ctx, history, len(history)).rstrip()
        return [self._follow(base, self._opening_text(history, len(history), ctx))]

    def _tail(self, messages: Sequence[Message], ctx: _Render, add_generation_prompt: bool):
        if add_generation_prompt:
            return self._opening(messages, ctx)
        text = self._text(ctx, messages, len(messages), False)
        end = len(self._body(ctx, messages, len(messages)).rstrip())
        return [self._follow(text[:end], text[end:])] if end < len(text) else []

    def _parts(self, messages: Sequence[Message], i: int, ctx: _Render):
        # NOTE: no BOS of our own: apply_chat_template tokenizes without special tokens, so
        # BOS is there exactly when the template writes it.
        prev = self._body(ctx, messages, i)
        cur = self._body(ctx, messages, i + 1)
        _delta(prev, cur, f"message {i}")
        start, end = len(prev.rstrip()), len(cur.rstrip())
        before, segment = cur[:start], cur[start:end]
        m = messages[i]
        if m["role"] == "assistant" and i:
            opening = self._opening_text(messages, i, ctx)
            if not (segment + cur[end:]).startswith(opening):
                raise NotAppendOnly(
                    f"chat template is not append-only: assistant message {i} does not begin "
                    f"with the generation prompt {opening!r} (it begins {segment[:40]!r})"
                )
            rest = segment[len(opening) :]
            cut = _content_end(rest, m["content"]) if len(opening) <= len(segment) else None
            if cut is not None:
                content = rest[:cut]
                return (
                    [self._follow(before, opening)],
                    self._follow(before + opening, content),
                    [self._follow(before + opening + content, rest[cut:])],
                )
        return [self._follow(before, segment)], None, []

    def _infer_stops(self) -> None:
        """Stop at the text that closes a probe reply (e.g. <|im_end|>) and its special ids."""
        probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
        try:
            _, _, closing = self._parts(probe, 1, _Render())
        except (SecurityError, TemplateLimitError):
            raise
        except (TemplateError, ValueError, TypeError, LookupError):
            return  # the template refuses the probe; EOS stays the only stop
        text = "".join(
            p.text if isinstance(p, Lead) else p for p in closing if not isinstance(p, tuple)
        )
        text = text.strip()
        if text:
            self.stop_strings = [text]
            special = self.tokenizer.all_special_ids
            self.stop_token_ids |= {
                t for t in self.tokenizer.encode_continuation(text) if t in special
            }
