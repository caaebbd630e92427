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
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch

from blendrt.blend_stream import BlendStream
from blendrt.config import EngineConfig
from blendrt.engine.engine import LLMEngine
from blendrt.engine.inbox import Inboxes
from blendrt.engine.loop import EngineLoop, run_in_fresh_thread
from blendrt.engine.request import RequestOutput
from blendrt.engine.stats import engine_stats
from blendrt.models.loaded import LoadedModel, load_model
from blendrt.policy import ChoosesMember, MemberPolicy
from blendrt.prepare import DEFAULT_MAX_TOKENS, TurnPreparer, TurnSettings
from blendrt.reward import REWARD_MEMBER, RewardOptions, RewardRouter, RewardScorer
from blendrt.sampling import SamplingParams
from blendrt.tokenizer.chat_format import ChatFormat, Message
from blendrt.tokenizer.formats import get_chat_format
from blendrt.turn import (
    Member,
    PreparedTurn,
    Reply,
    ReplyMemory,
    SamplingSpec,
    TurnCollector,
    Usage,
)

__all__ = ["DEFAULT_MAX_TOKENS", "Blend", "Member", "PreparedTurn", "Reply", "Usage"]


class Blend:
    def __init__(
        self,
        members: Sequence[Member],
        *,
        policy: str | ChoosesMember = "uniform",
        seed: int | None = None,
        reward_model: str | Path | None = None,
        best_of: int = 1,
        reward_options: Mapping[str, Any] | None = None,
        config: EngineConfig | None = None,
        models: dict[str, LoadedModel] | None = None,
        generation_config: str = "auto",
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
        truncation_chunk: int | None = None,
        progress: bool | None = None,
    ) -> None:
        """`models` may pass members already loaded ({name: LoadedModel}), e.g. to build
        several blends over the same weights; they must not serve two blends at once.
        generation_config, default_max_tokens, truncation_chunk: see
        blendrt.prepare.TurnSettings. progress: loading bars on stderr (None: when stderr is
        a terminal). policy: a name (blendrt.policy.POLICIES) or an object with
        choose(conversation, members, rng). reward_model: a sequence-classification folder
        (e.g. GPT2ForSequenceClassification) loaded beside the members in the same pool;
        with it, best_of > 1 samples that many candidates per turn (one shared prefill) and
        returns the best-scored (blendrt/reward.py; reward_options: RewardOptions)."""
        if not members:
            raise ValueError("a blend needs at least one member")
        names = [m.name for m in members]
        if len(set(names)) != len(names):
            raise ValueError(f"member names must be unique, got {names}")
        if type(best_of) is not int or not 1 <= best_of <= 16:
            raise ValueError(f"best_of must be an int in [1, 16], got {best_of!r}")
        if reward_model is None and (reward_options or policy == "reward"):
            raise ValueError("reward_options and policy='reward' need a reward_model")
        self.best_of = best_of
        self.reward_options = RewardOptions.from_mapping(reward_options)
        settings = TurnSettings(generation_config, default_max_tokens, truncation_chunk)
        self.config = config or EngineConfig()
        self.members = {m.name: m for m in members}
        self.policy = MemberPolicy(names, [m.weight for m in members], policy, seed)
        given = models or {}

        def load_one(path: str | Path, quantization: str | None = None) -> LoadedModel:
            return load_model(
                path,
                device=self.config.device,
                dtype=self.config.dtype,
                max_model_len=self.config.max_model_len,
                attention_backend=self.config.attention_backend,
                progress=progress,
                quantization=quantization,
            )

        def load() -> dict[str, LoadedModel]:
            loaded = {
                m.name: given.get(m.name) or load_one(m.path, m.quantization) for m in members
            }
            if reward_model is not None:
                loaded[REWARD_MEMBER] = given.get(REWARD_MEMBER) or load_one(reward_model)
            return loaded

        models = run_in_fresh_thread(load)  # not on the caller's thread: see its NOTE
        scorer_model = models.get(REWARD_MEMBER)
        if scorer_model is not None and not scorer_model.config.num_labels:
            raise ValueError(f"reward_model {reward_model}: not a sequence classifier")
        self.formats: dict[str, ChatFormat] = {
            m.name: get_chat_format(
                models[m.name].tokenizer, m.chat_format, member=m.name, **m.chat_options
            )
            for m in members
        }
        for m in members:
            if models[m.name].config.num_labels:
                raise ValueError(f"member {m.name!r} is a classifier: pass it as reward_model")
        self.engine = run_in_fresh_thread(lambda: LLMEngine(models, self.config))
        self._loop = EngineLoop(self.engine)
        self._inboxes = Inboxes()  # {event loop: its Inbox}: outputs to async streams
        self.memory = ReplyMemory()
        self.turns = TurnPreparer(
            self.formats,
            self.policy,
            {name: self.engine.max_model_len(name) for name in names},
            {name: model.generation_defaults for name, model in models.items()},
            self.memory,
            settings,
        )
        self.scorer: RewardScorer | None = None
        if scorer_model is not None:
            config = scorer_model.config
            self.scorer = RewardScorer(
                scorer_model.tokenizer, config.num_labels, config.pad_token_id,
                lambda ids: self._loop.classify(REWARD_MEMBER, ids), self.reward_options,
            )  # fmt: skip
            self.policy.reward_router = RewardRouter(self.scorer, self._probe)

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
        `blendrt.prepare.TurnPreparer.prepare`)."""
        turn = self.turns.prepare(messages, member=member, sampling=sampling, truncation=truncation)
        params = turn.sampling
        if self.best_of > 1 and params.best_of is None:  # the blend's default best-of-N
            params = dataclasses.replace(params, best_of=max(self.best_of, params.n))
        rank = self.scorer is not None and params.num_candidates > params.n
        return dataclasses.replace(
            turn, sampling=params, rank_by_reward=rank, conversation=tuple(messages)
        )

    def rank(self, turn: PreparedTurn, reply: Reply) -> Reply:
        """The reply's candidates scored by the reward model, best first: the reply is the
        best one, `candidates` holds all of them with their scores (a no-op for a turn not
        ranked by reward)."""
        if not turn.rank_by_reward or self.scorer is None:
            return reply
        scores = self.scorer.score(turn.conversation, [c.text for c in reply.candidates])
        scored = [
            dataclasses.replace(c, score=s) for c, s in zip(reply.candidates, scores, strict=True)
        ]
        ranked = sorted(scored, key=lambda c: -c.score)
        best = ranked[0]
        return dataclasses.replace(
            reply, text=best.text, token_ids=best.token_ids, finish_reason=best.finish_reason,
            candidates=tuple(ranked),
        )  # fmt: skip

    def _probe(self, members: Sequence[str], conversation: Sequence, seed: int) -> list[str]:
        """A short reply of each member to the conversation, run together (the reward
        policy's probes)."""
        sampling = {"max_tokens": self.reward_options.probe_tokens, "seed": seed, "n": 1}
        turns = [self.turns.prepare(conversation, member=m, sampling=sampling) for m in members]
        return [reply.text for reply in self.run_many(turns)]

    def run_many(self, turns: Sequence[PreparedTurn]) -> list[Reply]:
        """Runs prepared turns together (blocking; not reward-ranked): their requests are
        queued at once, so they share engine steps. Thread-safe."""
        sinks: list[queue.SimpleQueue[RequestOutput]] = [queue.SimpleQueue() for _ in turns]
        ids = [
            self._loop.submit(t.member, t.prompt_ids, t.sampling, sink.put)
            for t, sink in zip(turns, sinks, strict=True)
        ]
        try:
            replies = []
            for turn, sink in zip(turns, sinks, strict=True):
                collector = TurnCollector(turn, self.memory)
                while collector.reply is None:
                    collector.add(sink.get())
                replies.append(collector.reply)
            return replies
        except BaseException:
            for rid in ids:
                self._loop.abort(rid)
            raise

    def prepare_prompt(
        self, member: str, prompt_ids: Sequence[int], sampling: SamplingSpec = None
    ) -> PreparedTurn:
        """A raw prompt (token ids, no chat format) for a member."""
        return self.turns.prepare_prompt(member, prompt_ids, sampling)

    def sampling_for(self, member: str, sampling: SamplingSpec = None) -> SamplingParams:
        """The sampling a turn of `member` runs with (see TurnPreparer.sampling_for)."""
        return self.turns.sampling_for(member, sampling)

    def remember(self, member: str, text: str, token_ids: Sequence[int]) -> None:
        """Records a reply's ids, so a later turn sending back its text renders these ids."""
        self.memory.remember(member, text, token_ids)

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
        return self.run(turn)

    def run(self, turn: PreparedTurn) -> Reply:
        """Runs a prepared turn to its Reply (blocking; reward-ranked when the turn is).
        Thread-safe."""
        return self.rank(turn, self.run_many([turn])[0])

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
        holds the Reply when done. Closing or cancelling it frees the request's pages. A turn
        ranked by the reward model cannot stream (its best reply is known at the end)."""
        turn = self.prepare(messages, member=member, sampling=sampling, truncation=truncation)
        if turn.rank_by_reward:
            raise ValueError("best_of with a reward model cannot stream: use chat()")
        return self.stream_turn(turn)

    def stream_turn(self, turn: PreparedTurn) -> BlendStream:
        """A prepared turn as a BlendStream (see `stream`)."""
        return BlendStream(self._loop, turn, self.memory, self._inboxes)

    # ---- introspection -------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        stats = self._loop.call(engine_stats)
        for name, fmt in self.formats.items():
            # Turns whose history the member's template rewrote (rendered whole: the prefix
            # cache missed from the rewrite on).
            stats["members"][name]["whole_renders"] = getattr(fmt, "num_whole_renders", 0)
        return stats

    def logprobs(self, member: str, token_ids: Sequence[int]) -> torch.Tensor:
        """Log-softmax [len(token_ids), vocab] of member at every position, computed by the
        engine in the shared pool."""
        return self._loop.score(member, list(token_ids))

    def tokenizer(self, member: str) -> Any:
        return self.engine.models[member].tokenizer

    def close(self) -> None:
        self._loop.shutdown()

    def __enter__(self) -> Blend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
