"""Blend: several chat models answering one conversation turn by turn.

Per turn one member is chosen (uniformly at random, as in "Blending Is All You Need", or by
weight, round-robin, or pinned), the whole history is rendered in that member's chat format
and tokenizer, and the reply is generated. The engine's per-member prefix cache means the
member prefills only what it has not cached; a member's own earlier replies are rendered from
the exact ids it generated so that its cache stays valid even for stateless callers.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
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

_MAX_REMEMBERED_REPLIES = 65536


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
    sampling: SamplingParams


class Blend:
    def __init__(
        self,
        members: Sequence[Member],
        *,
        policy: str = "uniform",
        seed: int | None = None,
        config: EngineConfig | None = None,
        models: dict[str, LoadedModel] | None = None,
    ) -> None:
        """`models` may pass members already loaded ({name: LoadedModel}), e.g. to build
        several blends over the same weights; they must not serve two blends at once."""
        if not members:
            raise ValueError("a blend needs at least one member")
        names = [m.name for m in members]
        if len(set(names)) != len(names):
            raise ValueError(f"member names must be unique, got {names}")
        self.config = config or EngineConfig()
        self.members = {m.name: m for m in members}
        self.policy = MemberPolicy(names, [m.weight for m in members], policy, seed)
        given = models or {}
        models = {
            m.name: given.get(m.name)
            or load_model(
                m.path,
                device=self.config.device,
                dtype=self.config.dtype,
                max_model_len=self.config.max_model_len,
                attention_backend=self.config.attention_backend,
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
        sampling: SamplingParams | None = None,
    ) -> PreparedTurn:
        """Chooses the member and renders the prompt; raises ValueError on bad input."""
        validate_messages(messages)
        if member is None:
            member = self.policy.choose()
        elif member not in self.members:
            raise ValueError(f"unknown member {member!r}; members: {', '.join(self.members)}")
        fmt = self.formats[member]
        prompt_ids = fmt.render(self._with_own_ids(member, messages))
        sampling = sampling or SamplingParams()
        if not sampling.ignore_eos:  # the format's own stops (EOS, "\nYou:", ...)
            sampling = dataclasses.replace(
                sampling,
                extra_stop=tuple(fmt.stop_strings),
                stop_token_ids=tuple(sorted(set(sampling.stop_token_ids) | fmt.stop_token_ids)),
            )
        return PreparedTurn(member, prompt_ids, sampling)

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
            usage=Usage(last.num_prompt_tokens, last.num_cached_tokens, last.num_output_tokens),
            time_to_first_token=(first_token or end) - start,
            total_time=end - start,
        )

    def chat(
        self,
        messages: Sequence[Message],
        *,
        member: str | None = None,
        sampling: SamplingParams | None = None,
    ) -> Reply:
        """The next assistant turn (blocking). Thread-safe."""
        turn = self.prepare(messages, member=member, sampling=sampling)
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
        sampling: SamplingParams | None = None,
    ) -> BlendStream:
        """An async iterator of text deltas; `.member` names the writer at once and `.reply`
        holds the Reply when done. Closing or cancelling it frees the request's pages."""
        return BlendStream(self, self.prepare(messages, member=member, sampling=sampling))

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
