"""Chat formats: a conversation rendered for one member, append-only in token space.

Each member keeps a prefix cache of its own KV pages, so the ids a member is shown may only
grow: the ids of the first k messages are a prefix of the ids of the first k + 1, and the ids
of a generation prompt (history + the assistant opening) are a prefix of the ids of that
history with the reply appended. Tokenizing a whole rendered text cannot promise that (merges
cross message boundaries), so a format renders the text each message adds (its segment),
tokenizes every segment alone and concatenates the ids.

An assistant segment is opening (exactly the generation prompt) + content + closing
(`reply_suffix_ids`). When the message carries ``token_ids`` and its ``member`` is the member
this format renders for, those ids stand for the content verbatim, so
``render(history + [reply], add_generation_prompt=False) == render(history) + token_ids +
reply_suffix_ids(history + [reply])``. ``token_ids`` are the generated ids less the stop token.

How a segment's text is tokenized: text that starts the conversation (or opens a turn after a
BOS/EOS id, see `Lead`) with ``encode(add_special_tokens=False)``, so sentencepiece adds its
dummy-prefix space as in a whole text; text that begins with a special token likewise (the
chunk after it tokenizes as in a whole text, legacy or not); any other text with
``encode_continuation``. A format instance caches text -> ids, so re-rendering a conversation
tokenizes only its new messages.

The four built-in formats (pygmalion, vicuna, llama-2-chat, chatml) live in
`builtin_formats`, a folder's jinja template in `chat_template`, and `formats` picks one by
name (`get_chat_format`): each subclasses this module's `ChatFormat`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from blendrt.tokenizer.tokenizer import Tokenizer

#: One message: {"role": "system" | "user" | "assistant", "content": str}; an assistant
#: message may add "member": str and "token_ids": list[int].
Message = Mapping[str, Any]
ROLES = ("system", "user", "assistant")
_CACHE_ENTRIES = 4096  # per format instance: segment text -> ids
_CACHE_MAX_CHARS = 16384


@dataclass(frozen=True)
class Lead:
    """Text that opens a chunk: the start of the conversation (``after`` empty) or the text
    right after the special token whose text is ``after``. Tokenized as the tokenizer does
    inside a whole text: ``encode(after + text)`` less the special token's ids."""

    text: str
    after: str = ""


#: A piece of a segment: literal ids, a Lead, or text following other text.
Part = tuple[int, ...] | Lead | str


@dataclass(frozen=True)
class Segment:
    """The ids one message adds. A split assistant message has opening (the generation
    prompt), content and closing; any other message has all its ids in ``content``."""

    opening: tuple[int, ...]
    content: tuple[int, ...]
    closing: tuple[int, ...]

    @property
    def ids(self) -> tuple[int, ...]:
        return self.opening + self.content + self.closing


class NotAppendOnly(ValueError):
    """A format whose rendering of a longer history rewrites what it rendered before."""


def validate_messages(messages: Sequence[Message]) -> None:
    """Raise ValueError naming the first bad message and its problem."""
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence):
        raise ValueError(f"messages must be a list of dicts, got {type(messages).__name__}")
    if not messages:
        raise ValueError("messages is empty: a conversation needs at least one message")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise ValueError(f"message {i}: expected a dict, got {type(m).__name__}")
        role = m.get("role")
        if role not in ROLES:
            raise ValueError(f"message {i}: unknown role {role!r} (expected one of {ROLES})")
        if not isinstance(m.get("content"), str):
            kind = type(m.get("content")).__name__
            raise ValueError(f"message {i}: content must be a str, got {kind}")
        if role == "system" and i:
            raise ValueError(f"message {i}: a system message may only be the first message")
        if m.get("member") is not None and not isinstance(m["member"], str):
            raise ValueError(f"message {i}: member must be a str")
        if "token_ids" in m:
            ids = m["token_ids"]
            if role != "assistant":
                raise ValueError(f"message {i}: only assistant messages may carry token_ids")
            if not isinstance(ids, list | tuple) or not all(
                isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in ids
            ):
                raise ValueError(f"message {i}: token_ids must be a list of non-negative ints")


class ChatFormat(ABC):
    """Renders conversations for one member's tokenizer; ``member`` names that member (its
    assistant messages' ``token_ids`` are used verbatim). Subclasses define `_parts`."""

    name = ""

    def __init__(self, tokenizer: Tokenizer, *, member: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.member = member
        eos = {tokenizer.eos_token_id, *getattr(tokenizer, "eos_token_ids", ())}  # e.g. <|eot_id|>
        self.stop_token_ids: set[int] = {t for t in eos if t is not None}
        self.stop_strings: list[str] = []
        self._ids: dict[tuple[str, str, bool], tuple[int, ...]] = {}

    @abstractmethod
    def _parts(
        self, messages: Sequence[Message], i: int, ctx: Any
    ) -> tuple[list[Part], Part | None, list[Part]]:
        """Message i's segment, given messages[: i + 1], as (opening, content, closing); for
        anything but a split assistant message, content is None and opening holds it all."""

    @abstractmethod
    def _opening(self, history: Sequence[Message], ctx: Any) -> list[Part]:
        """The generation prompt that follows history (possibly empty)."""

    def _context(self) -> Any:
        """State shared by the renderings of one public call (a template's clock)."""
        return None

    def segments(self, messages: Sequence[Message]) -> list[Segment]:
        """The ids each message adds; render(messages, False) is their concatenation."""
        validate_messages(messages)
        ctx = self._context()
        return [self._segment(messages, i, ctx) for i in range(len(messages))]

    def render(
        self, messages: Sequence[Message], *, add_generation_prompt: bool = True
    ) -> list[int]:
        """BOS (where the format or tokenizer has one), each message's segment, then the
        assistant opening if add_generation_prompt."""
        validate_messages(messages)
        ctx = self._context()
        ids = [t for i in range(len(messages)) for t in self._segment(messages, i, ctx).ids]
        return ids + list(self._encode(self._tail(messages, ctx, add_generation_prompt)))

    def _tail(
        self, messages: Sequence[Message], ctx: Any, add_generation_prompt: bool
    ) -> list[Part]:
        """What follows the segments: the generation prompt, if asked for."""
        return self._opening(messages, ctx) if add_generation_prompt else []

    def generation_prompt_ids(self, history: Sequence[Message]) -> list[int]:
        """What render(history) appends to render(history, add_generation_prompt=False)."""
        validate_messages(history)
        return list(self._encode(self._opening(history, self._context())))

    def reply_suffix_ids(self, messages: Sequence[Message]) -> list[int]:
        """The ids that close the reply messages[-1], an assistant message."""
        validate_messages(messages)
        if messages[-1]["role"] != "assistant":
            raise ValueError(f"message {len(messages) - 1}: the reply must be an assistant message")
        return list(self._segment(messages, len(messages) - 1, self._context()).closing)

    def _segment(self, messages: Sequence[Message], i: int, ctx: Any) -> Segment:
        opening, content, closing = self._parts(messages, i, ctx)
        if content is None:
            return Segment((), self._encode(opening), ())
        m = messages[i]
        if "token_ids" in m and m.get("member") == self.member:
            content_ids = tuple(m["token_ids"])
        else:
            content_ids = self._encode([content])
        return Segment(self._encode(opening), content_ids, self._encode(closing))

    def _start(self, text: str, *, bos: bool | None = None) -> list[Part]:
        """The conversation's first parts: BOS (if bos, default: if the tokenizer adds one)."""
        tok = self.tokenizer
        bos = tok.add_bos_token if bos is None else bos
        head: list[Part] = [(tok.bos_token_id,)] if bos and tok.bos_token_id is not None else []
        return [*head, Lead(text)]

    def _encode(self, parts: Sequence[Part]) -> tuple[int, ...]:
        out: list[int] = []
        for part in parts:
            if isinstance(part, tuple):
                out.extend(part)
                continue
            text, after = (part.text, part.after) if isinstance(part, Lead) else (part, "")
            if not text:
                continue
            key = (after, text, isinstance(part, Lead))
            ids = self._ids.get(key)
            if ids is None:
                ids = tuple(self._encode_text(text, after, isinstance(part, Lead)))
                if len(text) <= _CACHE_MAX_CHARS:
                    if len(self._ids) >= _CACHE_ENTRIES:
                        self._ids.clear()
                    self._ids[key] = ids
            out.extend(ids)
        return tuple(out)

    def _encode_text(self, text: str, after: str, lead: bool) -> list[int]:
        tok = self.tokenizer
        if not lead:
            ids = tok.encode_continuation(text)
            if ids and ids[0] in tok.all_special_ids:  # begins at a special token: as in a whole
                return tok.encode(text, add_special_tokens=False)  # text (legacy "▁" after it)
            return ids
        if not after:
            return tok.encode(text, add_special_tokens=False)
        head = tok.encode(after, add_special_tokens=False)
        ids = tok.encode(after + text, add_special_tokens=False)
        return ids[len(head) :] if ids[: len(head)] == head else tok.encode_continuation(text)
