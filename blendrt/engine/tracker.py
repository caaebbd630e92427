"""RequestTracker: the engine's unfinished requests, grouped by request (its candidates),
with their output texts. Appending a sampled token detokenizes it and checks the stops;
finishing a candidate frees its pages (through the scheduler) and builds its last output."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from blendrt.engine.output import OutputText
from blendrt.engine.request import Request, RequestOutput, TokenLogprob
from blendrt.engine.sampler import stop_token_ids
from blendrt.engine.scheduler import Scheduler
from blendrt.tokenizer.tokenizer import Tokenizer


@dataclass
class EngineCounters:
    prompt_tokens_received: int = 0  # prompt tokens of admitted requests
    prompt_tokens_computed: int = 0  # tokens prefilled (cache misses and recomputation)
    generated_tokens: int = 0
    steps: int = 0
    busy_seconds: float = 0.0
    peak_pages_in_use: int = 0  # most pages referenced by running requests in a step
    peak_running: int = 0  # most requests running at once
    finished: dict[str, int] = field(default_factory=dict)  # {finish reason: requests}


class RequestTracker:
    def __init__(self, scheduler: Scheduler, counters: EngineCounters) -> None:
        self.scheduler = scheduler
        self.counters = counters
        self.requests: dict[int, Request] = {}  # {request_id: unfinished candidate}
        self.groups: dict[int, list[Request]] = {}  # {request (group) id: its candidates}
        self._texts: dict[int, OutputText] = {}  # {request_id: its output text}

    def add(self, group: list[Request], tokenizer: Tokenizer) -> None:
        """A request's candidates (the first one is scheduled; the others wait to fork)."""
        self.groups[group[0].request_id] = group
        for request in group:
            stops = request.sampling.all_stop_strings
            self._texts[request.request_id] = OutputText(tokenizer, stops)
            self.requests[request.request_id] = request

    def abort(self, group_id: int, error: str | None = None) -> list[RequestOutput]:
        """Ends every unfinished candidate of a request; their last outputs."""
        group = self.groups.get(group_id, ())
        return [self.finish(r, "abort", error=error) for r in group if not r.is_finished]

    def append(
        self, request: Request, pick: TokenLogprob, eos_ids: Sequence[int], window: int
    ) -> RequestOutput:
        """Accounts for the token the scheduler just appended; stops the reply if it ends."""
        token = pick.token_id
        request.cumulative_logprob += pick.logprob
        if request.first_token_time is None:
            request.first_token_time = time.perf_counter()
        self.counters.generated_tokens += 1
        text = self._texts[request.request_id]
        params = request.sampling
        text.add(token, check_stops=request.num_output_tokens >= params.min_tokens)
        logprobs = (pick,) if params.logprobs is not None else ()
        stop = token in stop_token_ids(request, eos_ids)
        if stop or text.stopped:
            return self.finish(request, "stop", new=token, stop_token=stop, logprobs=logprobs)
        if (
            params.max_tokens is not None and request.num_output_tokens >= params.max_tokens
        ) or request.num_tokens >= window:
            return self.finish(request, "length", new=token, logprobs=logprobs)
        return self._output(request, (token,), text.take_delta(final=False), None, logprobs)

    def finish(
        self,
        request: Request,
        reason: str,
        *,
        new: int | None = None,
        stop_token: bool = False,
        logprobs: tuple[TokenLogprob, ...] = (),
        error: str | None = None,
        prompt_logprobs: torch.Tensor | None = None,
        scores: torch.Tensor | None = None,
    ) -> RequestOutput:
        request.finish_reason = reason
        self.scheduler.finish(request)
        del self.requests[request.request_id]
        text = self._texts.pop(request.request_id)
        text.finish()
        num_reply = text.num_reply_tokens()
        if stop_token:
            num_reply = min(num_reply, request.num_output_tokens - 1)
        self.counters.finished[reason] = self.counters.finished.get(reason, 0) + 1
        group = self.groups[request.group_id]
        done = all(r.is_finished for r in group)
        if done:
            del self.groups[request.group_id]
        return self._output(
            request,
            () if new is None else (new,),
            text.take_delta(final=True),
            reason,
            logprobs,
            reply_ids=tuple(request.output_token_ids[:num_reply]),
            done=done,
            error=error,
            prompt_logprobs=prompt_logprobs,
            scores=scores,
        )

    @staticmethod
    def _output(
        request: Request,
        new: tuple[int, ...],
        delta: str,
        reason: str | None,
        logprobs: tuple[TokenLogprob, ...] = (),
        *,
        reply_ids: tuple[int, ...] | None = None,
        done: bool = False,
        error: str | None = None,
        prompt_logprobs: torch.Tensor | None = None,
        scores: torch.Tensor | None = None,
    ) -> RequestOutput:
        return RequestOutput(
            request_id=request.group_id,
            new_token_ids=new,
            delta_text=delta,
            finish_reason=reason,
            num_prompt_tokens=request.num_prompt_tokens,
            num_cached_tokens=request.num_cached_tokens,
            num_output_tokens=request.num_output_tokens,
            reply_token_ids=reply_ids,
            error=error,
            index=request.index,
            done=done,
            logprobs=logprobs,
            cumulative_logprob=request.cumulative_logprob,
            prompt_logprobs=prompt_logprobs,
            scores=scores,
        )
