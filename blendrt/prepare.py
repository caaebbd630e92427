"""Preparing a blend's turn: which member answers, the prompt in its chat format fitted to
its window, and the sampling it runs with (its folder's defaults under the request's)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from blendrt.policy import MemberPolicy
from blendrt.sampling import SamplingParams
from blendrt.tokenizer.chat_format import ChatFormat, Message, validate_messages
from blendrt.truncation import TRUNCATION_MODES, ContextLengthError, fit_history
from blendrt.turn import PreparedTurn, ReplyMemory, SamplingSpec

DEFAULT_MAX_TOKENS = 512  # the longest reply of a turn that sets no max_tokens


@dataclass(frozen=True)
class TurnSettings:
    """generation_config: "auto" applies each member folder's generation_config.json
    sampling defaults where a turn's `sampling` leaves a field unset; "none" ignores them.
    default_max_tokens: the longest reply of a turn that sets no max_tokens (it gets what the
    member's window leaves, at most this). truncation_chunk: tokens per truncation step (see
    blendrt.truncation; None: half the room, 1: drop as few messages as possible)."""

    generation_config: str = "auto"
    default_max_tokens: int = DEFAULT_MAX_TOKENS
    truncation_chunk: int | None = None

    def __post_init__(self) -> None:
        if self.generation_config not in ("auto", "none"):
            raise ValueError(
                f"generation_config must be 'auto' or 'none', got {self.generation_config!r}"
            )
        if type(self.default_max_tokens) is not int or self.default_max_tokens < 1:
            raise ValueError(
                f"default_max_tokens must be a positive int, got {self.default_max_tokens!r}"
            )
        chunk = self.truncation_chunk
        if chunk is not None and (type(chunk) is not int or chunk < 1):
            raise ValueError(f"truncation_chunk must be a positive int, got {chunk!r}")


class TurnPreparer:
    """Thread-safe: the policy locks its draws, the reply memory its map."""

    def __init__(
        self,
        formats: Mapping[str, ChatFormat],
        policy: MemberPolicy,
        windows: Mapping[str, int],
        generation_defaults: Mapping[str, Mapping[str, Any]],
        memory: ReplyMemory,
        settings: TurnSettings,
    ) -> None:
        self.formats = formats  # {member: its chat format}
        self.members = list(formats)
        self.policy = policy
        self.windows = windows  # {member: context window in tokens}
        self.generation_defaults = generation_defaults  # {member: {field: value}}
        self.memory = memory
        self.settings = settings

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
        window can hold the turn. `member` pins the turn."""
        validate_messages(messages)
        if truncation not in TRUNCATION_MODES:
            raise ValueError(f"truncation must be one of {TRUNCATION_MODES}, got {truncation!r}")
        if member is not None:
            if member not in self.members:
                raise ValueError(f"unknown member {member!r}; members: {', '.join(self.members)}")
            return self._prepare_for(member, messages, sampling, truncation)
        chosen = self.policy.choose(conversation=messages)
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
            windows = ", ".join(f"{n} {self.windows[n]}" for n in self.members)
            raise ContextLengthError(
                f"{refused} (no member's window fits this turn; windows: {windows})",
                param=refused.param,
            )
        return fitting[self.policy.choose(fitting, conversation=messages)]

    def _prepare_for(
        self, member: str, messages: Sequence[Message], sampling: SamplingSpec, truncation: str
    ) -> PreparedTurn:
        fmt = self.formats[member]
        window = self.windows[member]
        params = self.sampling_for(member, sampling)
        if params.max_tokens is not None:
            reserve = params.max_tokens
        elif truncation == "auto":  # keep room for a reply of some length
            reserve = max(1, min(self.settings.default_max_tokens, window // 4))
        else:
            reserve = 1
        try:
            fitted = fit_history(
                fmt,
                self._with_own_ids(member, messages),
                window=window,
                reserve=reserve,
                truncation=truncation,
                chunk=self.settings.truncation_chunk,
            )
        except ContextLengthError as e:
            raise ContextLengthError(f"member {member!r}: {e}", param=e.param) from None
        max_tokens = params.max_tokens or min(
            self.settings.default_max_tokens, window - len(fitted.prompt_ids)
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
        window = self.windows[member]
        params = self.sampling_for(member, sampling)
        room = window - len(prompt_ids)
        max_tokens = params.max_tokens or min(self.settings.default_max_tokens, room)
        if max_tokens > room:
            raise ContextLengthError(
                f"member {member!r}: the prompt takes {len(prompt_ids)} tokens, and with "
                f"max_tokens {max_tokens} exceeds the window of {window} tokens",
                param="max_tokens" if len(prompt_ids) < window else "prompt",
            )
        params = dataclasses.replace(params, max_tokens=max_tokens)
        return PreparedTurn(member, list(prompt_ids), params, chat=False)

    def sampling_for(self, member: str, sampling: SamplingSpec = None) -> SamplingParams:
        """Explicit SamplingParams as given; otherwise the given fields over the member's
        generation_config.json defaults (unless generation_config="none") over
        SamplingParams' own, with max_tokens None (what the window leaves) unless set."""
        if isinstance(sampling, SamplingParams):
            return sampling
        fields: dict[str, Any] = {"max_tokens": None}
        if self.settings.generation_config == "auto":
            fields |= self.generation_defaults[member]
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
        for m in messages:
            # NOTE: an untagged assistant message (a plain OpenAI client) counts as the
            # member's own when it wrote exactly that text; it then renders from its ids.
            if m.get("role") == "assistant" and m.get("member") in (member, None):
                ids = None if "token_ids" in m else self.memory.recall(member, m["content"])
                if ids is not None:
                    m = {**m, "member": member, "token_ids": list(ids)}
            out.append(m)
        return out
