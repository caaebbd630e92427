"""Blend: several chat models answering one conversation turn by turn.

Per turn one member is chosen (uniformly at random, as in "Blending Is All You Need", or by
weight, round-robin, or pinned), the whole history is rendered in that member's chat format
and tokenizer, and the reply is generated. The engine's per-member prefix cache means the
member prefills only what it has not cached; a member's own earlier replies are rendered from
the exact ids it generated so that its cache stays valid even for stateless callers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from blendrt.blend_stream import BlendStream
from blendrt.config import EngineConfig
from blendrt.engine.engine import LLMEngine
from blendrt.engine.loop import EngineLoop
from blendrt.engine.request import RequestOutput
from blendrt.engine.stats import engine_stats
from blendrt.models.loaded import LoadedModel, load_model
from blendrt.policy import MemberPolicy
from blendrt.sampling import SamplingParams
from blendrt.tokenizer.chat_format import ChatFormat, Message, get_chat_format, validate_messages
from blendrt.truncation import TRUNCATION_MODES, ContextLengthError, fit_history

_MAX_REMEMBERED_REPLIES = 65536
DEFAULT_MAX_TOKENS = 512  # the longest reply of a turn that sets no max_tokens


@dataclass(frozen=True)
class Member:
    name: str
    path: str | Path
    weight: float = 1.0
    chat_format: str | None = None  # a built-in name; None: the folder's chat_template
    chat_options: dict[str, Any] = field(default_factory=dict)  # e.g. {"bot_name": "Ann"}

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or self.name == "blend":
            raise ValueError(
                f"member name must be a non-empty string other than 'blend', got {self.name!r}"
            )
        if self.weight < 0:
            raise ValueError(f"member {self.name!r}: weight must be >= 0, got {self.weight}")


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    cached_prompt_tokens: int
    completion_tokens: int
    truncated_messages: int = 0  # oldest messages dropped to fit the member's window
    truncated_tokens: int = 0  # prompt tokens the history lost by it


@dataclass(frozen=True)
class Reply:
    text: str
    member: str
    token_ids: list[int]  # the reply's ids (no stop token): pass back in the message to reuse
    finish_reason: str
    usage: Usage
    time_to_first_token: float  # seconds
    total_time: float  # seconds


@dataclass(frozen=True)
class PreparedTurn:
    member: str
    prompt_ids: list[int]
    sampling: SamplingParams  # max_tokens resolved
    num_truncated_messages: int = 0
    num_truncated_tokens: int = 0


#: What `sampling=` may be: explicit parameters, {field: value} over the member's defaults,
#: or None (the member's defaults).
SamplingSpec = SamplingParams | Mapping[str, Any] | None


class Blend:
    def __init__(
        self,
        members: Sequence[Member],
        *,
        policy: str = "uniform",
        seed: int | None = None,
        config: EngineConfig | None = None,
        models: dict[str, LoadedModel] | None = None,
        generation_config: str = "auto",
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
        truncation_chunk: int | None = None,
        progress: bool | None = None,
    ) -> None:
        """`models` may pass members already loaded ({name: LoadedModel}), e.g. to build
        several blends over the same weights; they must not serve two blends at once.

        generation_config: "auto" applies each member folder's generation_config.json
        sampling defaults where a turn's `sampling` leaves a field unset; "none" ignores them.
        default_max_tokens: the longest reply of a turn that sets no max_tokens (it gets what
        the member's window leaves, at most this). truncation_chunk: tokens per truncation
        step (see blendrt.truncation; None: half the room, 1: drop as few messages as
        possible). progress: loading bars on stderr (None: when stderr is a terminal)."""
        if not members:
            raise ValueError("a blend needs at least one member")
        names = [m.name for m in members]
        if len(set(names)) != len(names):
            raise ValueError(f"member names must be unique, got {names}")
        if generation_config not in ("auto", "none"):
            raise ValueError(
                f"generation_config must be 'auto' or 'none', got {generation_config!r}"
            )
        if not isinstance(default_max_tokens, int) or default_max_tokens < 1:
            raise ValueError(f"default_max_tokens must be a positive int, got {default_max_tokens}")
        if truncation_chunk is not None and (
            not isinstance(truncation_chunk, int) or truncation_chunk < 1
        ):
            raise ValueError(f"truncation_chunk must be a positive int, got {truncation_chunk}")
        self.config = config or EngineConfig()
        self.members = {m.name: m for m in members}
        self.policy = MemberPolicy(names, [m.weight for m in members], policy, seed)
        self.generation_config = generation_config
        self.default_max_tokens = default_max_tokens
        self.truncation_chunk = truncation_chunk
        given = models or {}
        models = {
            m.name: given.get(m.name)
            or load_model(
                m.path,
                device=self.config.device,
                dtype=self.config.dtype,
                max_model_len=self.config.max_model_len,
                attention_backend=self.config.attention_backend,
                progress=progress,
            )
            for m in members
        }
        self.formats: dict[str, ChatFormat] = {
            m.name: get_chat_format(
                models[m.name].tokenizer, m.chat_format, member=m.name, **m.chat_options
            )
            for m in members
        }
        self.engine = LLMEngine(models, self.config)
        self._loop = EngineLoop(self.engine)
        # {(member, reply text): the ids it generated}: lets stateless callers, who send
        # back only text, hit the member's cache on its own replies.
        self._replies: OrderedDict[tuple[str, str], tuple[int, ...]] = OrderedDict()
        self._replies_lock = threading.Lock()

    # ---- turns ---------------------------------------------------------------------------

    def prepare(
        self,
        messages: Sequence[Message],
        *,
        member: str | None = None,
        sampling: SamplingSpec = None,
        truncation: str = "auto",
    ) -> PreparedTurn:
        """Chooses the member and renders the prompt, fitted to its window (see
        blendrt.truncation); raises ValueError on bad input, ContextLengthError (a
        ValueError) when it cannot fit. Unpinned, the policy chooses among the members whose
        window can hold the turn."""
        validate_messages(messages)
        if truncation not in TRUNCATION_MODES:
            raise ValueError(f"truncation must be one of {TRUNCATION_MODES}, got {truncation!r}")
        if member is not None:
            if member not in self.members:
                raise ValueError(f"unknown member {member!r}; members: {', '.join(self.members)}")
            return self._prepare_for(member, messages, sampling, truncation)
        chosen = self.policy.choose()
        try:
            return self._prepare_for(chosen, messages, sampling, truncation)
        except ContextLengthError as e:
            refused = e
        fitting = {}
        for name in self.members:
            if name != chosen:
                with contextlib.suppress(ContextLengthError):
                    fitting[name] = self._prepare_for(name, messages, sampling, truncation)
        if not fitting:
            windows = ", ".join(f"{n} {self.engine.max_model_len(n)}" for n in self.members)
            raise ContextLengthError(
                f"{refused} (no member's window fits this turn; windows: {windows})",
                param=refused.param,
            )
        return fitting[self.policy.choose(fitting)]

    def _prepare_for(
        self, member: str, messages: Sequence[Message], sampling: SamplingSpec, truncation: str
    ) -> PreparedTurn:
        fmt = self.formats[member]
        window = self.engine.max_model_len(member)
        params = self.sampling_for(member, sampling)
        if params.max_tokens is not None:
            reserve = params.max_tokens
        elif truncation == "auto":  # keep room for a reply of some length
            reserve = max(1, min(self.default_max_tokens, window // 4))
        else:
            reserve = 1
        try:
            fitted = fit_history(
                fmt,
                self._with_own_ids(member, messages),
                window=window,
                reserve=reserve,
                truncation=truncation,
                chunk=self.truncation_chunk,
            )
        except ContextLengthError as e:
            raise ContextLengthError(f"member {member!r}: {e}", param=e.param) from None
        max_tokens = params.max_tokens or min(
            self.default_max_tokens, window - len(fitted.prompt_ids)
        )
        return PreparedTurn(
            member,
            fitted.prompt_ids,
            self._with_format_stops(member, dataclasses.replace(params, max_tokens=max_tokens)),
            fitted.num_truncated_messages,
            fitted.num_truncated_tokens,
        )

    def prepare_prompt(
        self, member: str, prompt_ids: Sequence[int], sampling: SamplingSpec = None
    ) -> PreparedTurn:
        """A raw prompt (token ids, no chat format) for a member: the sampling resolved as
        for a chat turn; ContextLengthError if it and max_tokens do not fit the window."""
        if member not in self.members:
            raise ValueError(f"unknown member {member!r}; members: {', '.join(self.members)}")
        window = self.engine.max_model_len(member)
        params = self.sampling_for(member, sampling)
        room = window - len(prompt_ids)
        max_tokens = params.max_tokens or min(self.default_max_tokens, room)
        if max_tokens > room:
            raise ContextLengthError(
                f"member {member!r}: the prompt takes {len(prompt_ids)} tokens, and with "
                f"max_tokens {max_tokens} exceeds the window of {window} tokens",
                param="max_tokens" if len(prompt_ids) < window else "prompt",
            )
        params = dataclasses.replace(params, max_tokens=max_tokens)
        return PreparedTurn(member, list(prompt_ids), params)

    def sampling_for(self, member: str, sampling: SamplingSpec = None) -> SamplingParams:
        """Explicit SamplingParams as given; otherwise the given fields over the member's
        generation_config.json defaults (unless generation_config="none") over
        SamplingParams' own, with max_tokens None (what the window leaves) unless set."""
        if isinstance(sampling, SamplingParams):
            return sampling
        fields: dict[str, Any] = {"max_tokens": None}
        if self.generation_config == "auto":
            fields |= self.engine.models[member].generation_defaults
        fields |= dict(sampling or {})
        unknown = set(fields) - {f.name for f in dataclasses.fields(SamplingParams)}
        if unknown:
            raise ValueError(f"unknown sampling fields: {', '.join(sorted(unknown))}")
        return SamplingParams(**fields)

    def _with_format_stops(self, member: str, sampling: SamplingParams) -> SamplingParams:
        """The format's own stops (EOS, "\nYou:", ...) unless EOS is ignored."""
        if sampling.ignore_eos:
            return sampling
        fmt = self.formats[member]
        return dataclasses.replace(
            sampling,
            extra_stop=tuple(fmt.stop_strings),
            stop_token_ids=tuple(sorted(set(sampling.stop_token_ids) | fmt.stop_token_ids)),
        )

    def _with_own_ids(self, member: str, messages: Sequence[Message]) -> list[Message]:
        out = []
        with self._replies_lock:
            for m in messages:
                # NOTE: an untagged assistant message (a plain OpenAI client) counts as the
                # member's own when it wrote exactly that text; it then renders from its ids.
                if (
                    m.get("role") == "assistant"
                    and m.get("member") in (member, None)
                    and "token_ids" not in m
                ):
                    ids = self._replies.get((member, m["content"]))
                    if ids is not None:
                        m = {**m, "member": member, "token_ids": list(ids)}
                out.append(m)
        return out

    def remember(self, member: str, text: str, token_ids: Sequence[int]) -> None:
        with self._replies_lock:
            self._replies[(member, text)] = tuple(token_ids)
            self._replies.move_to_end((member, text))
            while len(self._replies) > _MAX_REMEMBERED_REPLIES:
                self._replies.popitem(last=False)

    def finish_reply(
        self,
        turn: PreparedTurn,
        text: str,
        last: RequestOutput,
        start: float,
        first_token: float | None,
    ) -> Reply:
        text = text.lstrip(" ")  # leading spaces belong to the format ("Bob: Hi")
        reply_ids = list(last.reply_token_ids or ())
        self.remember(turn.member, text, reply_ids)
        end = time.perf_counter()
        return Reply(
            text=text,
            member=turn.member,
            token_ids=reply_ids,
            finish_reason=last.finish_reason or "abort",
            usage=Usage(
                last.num_prompt_tokens,
                last.num_cached_tokens,
                last.num_output_tokens,
                turn.num_truncated_messages,
                turn.num_truncated_tokens,
            ),
            time_to_first_token=(first_token or end) - start,
            total_time=end - start,
        )

    def chat(
        self,
        messages: Sequence[Message],
        *,
        member: str | None = None,
        sampling: SamplingSpec = None,
        truncation: str = "auto",
    ) -> Reply:
        """The next assistant turn (blocking). Thread-safe."""
        turn = self.prepare(messages, member=member, sampling=sampling, truncation=truncation)
        outputs: queue.SimpleQueue[RequestOutput] = queue.SimpleQueue()
        start, first_token, parts = time.perf_counter(), None, []
        request_id = self._loop.submit(turn.member, turn.prompt_ids, turn.sampling, outputs.put)
        try:
            while True:
                out = outputs.get()
                if out.error:
                    raise RuntimeError(out.error)
                if first_token is None and out.new_token_ids:
                    first_token = time.perf_counter()
                parts.append(out.delta_text)
                if out.finished:
                    return self.finish_reply(turn, "".join(parts), out, start, first_token)
        except BaseException:
            self._loop.abort(request_id)
            raise

    def submit(self, turn: PreparedTurn, sink: Callable[[RequestOutput], None]) -> Future:
        """Low-level: queues a prepared turn; `sink` gets every RequestOutput on the engine
        thread (it must not block). The future holds the request id, for abort()."""
        return self._loop.submit_soon(turn.member, turn.prompt_ids, turn.sampling, sink)

    def abort(self, request_id: int) -> None:
        """Cancels a submitted request; its pages are freed before this returns."""
        self._loop.abort(request_id)

    def stream(
        self,
        messages: Sequence[Message],
        *,
        member: str | None = None,
        sampling: SamplingSpec = None,
        truncation: str = "auto",
    ) -> BlendStream:
        """An async iterator of text deltas; `.member` names the writer at once and `.reply`
        holds the Reply when done. Closing or cancelling it frees the request's pages."""
        turn = self.prepare(messages, member=member, sampling=sampling, truncation=truncation)
        return BlendStream(self, turn)

    # ---- introspection -------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return self._loop.call(engine_stats)

    def logprobs(self, member: str, token_ids: Sequence[int]) -> torch.Tensor:
        """Log-softmax [len(token_ids), vocab] of member at every position, computed by the
        engine in the shared pool."""
        return self._loop.call(lambda engine: engine.prompt_logprobs(member, list(token_ids)))

    def tokenizer(self, member: str) -> Any:
        return self.engine.models[member].tokenizer

    def close(self) -> None:
        self._loop.shutdown()

    def __enter__(self) -> Blend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
