"""Fitting a history into the chosen member's window: which of the oldest messages to drop.

A turn's prompt is the whole history rendered for the chosen member. When the prompt and the
room kept for the reply exceed that member's window, ``truncation="auto"`` drops the oldest
messages, never the system (persona) message and never the latest user message or what
follows it; ``truncation="disabled"`` raises `ContextLengthError` instead.

NOTE (the rule, chosen for the prefix cache): dropping the fewest messages that make the
prompt fit moves the start of the kept history by a message or two every turn once a chat is
long, so every turn re-prefills its whole prompt: one cache miss per turn. Instead, history
may be cut only at *checkpoints*: the first turn (a user message) that starts at or after
each multiple of ``chunk`` tokens of history, counted in the member's own tokens from the
first message after the system message. The cut is the earliest checkpoint whose kept
history fits. A checkpoint depends only on the messages before it, which never change while
a chat grows by appending, so the cut stays where it is turn after turn, then jumps ahead by
about ``chunk`` tokens at once: the member re-prefills its prompt once per ``chunk`` tokens
of conversation instead of once per turn. ``chunk`` defaults to half the room the history
has (the window less the reply's room and the system message), so the kept history stays
between about half that room and all of it. The rule is stateless, the same history always
gives the same cut, so callers who send the whole history every turn keep a stable prefix.
``chunk=1`` makes every turn a checkpoint: the fewest messages dropped (the baseline it is
measured against in ``benchmarks/bench_truncation.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from blendrt.tokenizer.chat_format import ChatFormat, Message, NotAppendOnly

TRUNCATION_MODES = ("auto", "disabled")
_ESTIMATE_SLACK = 16  # tokens


class ContextLengthError(ValueError):
    """The prompt and the reply's room do not fit a member's window (OpenAI's error code
    ``context_length_exceeded``); `param` names the request field to change."""

    code = "context_length_exceeded"

    def __init__(self, message: str, *, param: str = "messages") -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class FittedPrompt:
    prompt_ids: list[int]
    num_truncated_messages: int  # oldest messages dropped
    num_truncated_tokens: int  # prompt tokens the history lost (in the member's tokens)


def cut_points(
    lengths: Sequence[int], turn_starts: Sequence[bool], first: int, last: int, chunk: int
) -> list[int]:
    """Where the kept history may begin, in order: `first` (nothing dropped), each
    checkpoint (see the module's NOTE), and `last` (only the latest turn kept).

    lengths[i]: tokens message i adds; turn_starts[i]: message i opens a turn (a user
    message); messages[first:] may be dropped, messages[last:] never."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1 token, got {chunk}")
    points, total, mark = [first], 0, chunk
    for i in range(first + 1, last + 1):
        total += lengths[i - 1]
        if total >= mark and turn_starts[i]:
            points.append(i)
            mark = (total // chunk + 1) * chunk  # one checkpoint per mark passed, at most
    if points[-1] != last:
        points.append(last)
    return points


def fit_history(
    fmt: ChatFormat,
    messages: Sequence[Message],
    *,
    window: int,
    reserve: int,
    truncation: str = "auto",
    chunk: int | None = None,
) -> FittedPrompt:
    """The prompt ids of `messages` for `fmt`'s member, truncated so that they plus
    `reserve` tokens (the reply's room) fit `window`. Raises ContextLengthError."""
    if truncation not in TRUNCATION_MODES:
        raise ValueError(f"truncation must be one of {TRUNCATION_MODES}, got {truncation!r}")
    if reserve >= window:
        raise ContextLengthError(
            f"max_tokens {reserve} can never fit: the member's window is {window} tokens "
            "in all, prompt included",
            param="max_tokens",
        )
    try:
        segments = fmt.segments(messages)
        lengths = [len(s.ids) for s in segments]
        ids = [t for s in segments for t in s.ids] + fmt.generation_prompt_ids(messages)
    except NotAppendOnly:  # rendered whole: message lengths are estimates, cuts are checked
        ids = fmt.render(messages)
        lengths = [
            _ESTIMATE_SLACK + len(fmt.tokenizer.encode_continuation(m["content"])) for m in messages
        ]
    if len(ids) + reserve <= window:
        return FittedPrompt(ids, 0, 0)
    if truncation == "disabled":
        raise ContextLengthError(
            f"the member's window is {window} tokens, but the messages take {len(ids)} and "
            f"the reply's room (max_tokens) {reserve}; shorten the history or use truncation "
            "'auto'"
        )
    first = 1 if messages[0]["role"] == "system" else 0
    users = [i for i in range(first, len(messages)) if messages[i]["role"] == "user"]
    last = users[-1] if users else len(messages) - 1
    head = list(messages[:first])
    if chunk is None:
        room = window - reserve - sum(lengths[:first])
        chunk = max(1, room // 2)
    kept, dropped, prev = ids, 0, first  # dropped: tokens of messages[first:prev]
    for cut in cut_points(lengths, [m["role"] == "user" for m in messages], first, last, chunk)[1:]:
        dropped, prev = dropped + sum(lengths[prev:cut]), cut
        # The kept history renders a little differently at its new start (a BOS, a lead-in),
        # so the estimate only skips cuts that are clearly too early.
        if cut != last and len(ids) - dropped + reserve > window + _ESTIMATE_SLACK:
            continue
        kept = fmt.render([*head, *messages[cut:]])
        if len(kept) + reserve <= window:
            return FittedPrompt(kept, cut - first, max(0, len(ids) - len(kept)))
    what = f"message {last} ({messages[last]['role']})" + (" with the system message" * first)
    raise ContextLengthError(
        f"{what} alone takes {len(kept)} tokens, which with the reply's room (max_tokens) "
        f"{reserve} exceeds the member's window of {window} tokens; shorten it or lower "
        "max_tokens"
    )
