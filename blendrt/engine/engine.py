"""LLMEngine: members, the shared pool, the scheduler, and one step of work.

    step():  schedule -> one forward per member with work -> sample, detokenize, stop

It is single-threaded: blendrt/engine/loop.py drives it from one thread and is the only
caller. Everything it runs on is passed explicitly; no module state.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, field

import torch

from blendrt.cache.manager import KVCacheManager
from blendrt.cache.pool import PagePool, page_bytes_for
from blendrt.config import EngineConfig
from blendrt.engine.memory import activation_reserve_bytes, cuda_kv_cache_bytes
from blendrt.engine.output import OutputText
from blendrt.engine.request import Request, RequestOutput, TokenLogprob
from blendrt.engine.scheduler import ScheduledBatch, Scheduler
from blendrt.models.loaded import LoadedModel
from blendrt.models.runner import ModelRunner
from blendrt.sampling import SamplingParams, SamplingRow, sample, token_logprobs

CPU_DEFAULT_POOL_BYTES = 256 << 20
logger = logging.getLogger("blendrt.engine")


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


class LLMEngine:
    def __init__(self, models: dict[str, LoadedModel], config: EngineConfig) -> None:
        if not models:
            raise ValueError("an engine needs at least one member")
        self.config = config
        self.models = models
        self.counters = EngineCounters()
        self._ids = itertools.count()
        geometries = [m.geometry for m in models.values()]
        page_bytes = config.page_bytes or page_bytes_for(geometries, config.min_tokens_per_page)
        total_pages = self._num_pages(page_bytes)
        self.pools: dict[str, PagePool] = {}  # {member: pool} (one shared pool, or one each)
        self.managers: dict[str, KVCacheManager] = {}  # {member: its cache manager}
        self.runners: dict[str, ModelRunner] = {}
        if config.pool_partition == "shared":
            shared = PagePool(page_bytes, num_pages=total_pages, device=config.torch_device)
            manager = self._manager(total_pages)
            parts = {name: (shared, manager) for name in models}
        else:
            per_member = total_pages // len(models)
            parts = {
                name: (
                    PagePool(page_bytes, num_pages=per_member, device=config.torch_device),
                    self._manager(per_member),
                )
                for name in models
            }
        for name, model in models.items():
            pool, manager = parts[name]
            kv = pool.register_member(name, model.geometry)
            manager.register_member(name, kv.tokens_per_page)
            self.pools[name], self.managers[name] = pool, manager
            self.runners[name] = ModelRunner(model.model, kv, model.backend)
        self.scheduler = Scheduler(
            self.managers,
            max_num_batched_tokens=config.max_num_batched_tokens,
            max_num_seqs=config.max_num_seqs,
        )
        self.requests: dict[int, Request] = {}  # {request_id: unfinished candidate}
        self.groups: dict[int, list[Request]] = {}  # {request (group) id: its candidates}
        self._texts: dict[int, OutputText] = {}  # {request_id: output text state}

    def _manager(self, num_pages: int) -> KVCacheManager:
        return KVCacheManager(num_pages, enable_prefix_caching=self.config.enable_prefix_caching)

    def _num_pages(self, page_bytes: int) -> int:
        c = self.config
        if c.num_pages is not None:
            return c.num_pages
        if c.kv_cache_bytes is not None:
            return max(1, c.kv_cache_bytes // page_bytes)
        if c.torch_device.type == "cuda":
            reserve = activation_reserve_bytes(
                self.models.values(), c.max_num_batched_tokens, c.max_num_seqs
            )
            utilization = c.gpu_memory_utilization or 0.9
            pool_bytes = cuda_kv_cache_bytes(c.torch_device, utilization, reserve)
            return max(1, pool_bytes // page_bytes)
        return max(1, CPU_DEFAULT_POOL_BYTES // page_bytes)

    # ---- requests ------------------------------------------------------------------------

    def max_model_len(self, member: str) -> int:
        limit = self.models[member].config.max_position_embeddings
        return min(limit, self.config.max_model_len or limit)

    def add_request(
        self, member: str, prompt_token_ids: list[int], sampling: SamplingParams
    ) -> Request:
        """Validates and queues a request (with its candidates when n or best_of > 1);
        raises ValueError if it could never run. Returns its first candidate, whose id is
        the request's."""
        if member not in self.models:
            raise ValueError(f"unknown member {member!r}; members: {', '.join(self.models)}")
        model = self.models[member]
        window = self.max_model_len(member)
        total = len(prompt_token_ids) + (sampling.max_tokens or 1)
        if total > window:
            raise ValueError(
                f"prompt of {len(prompt_token_ids)} tokens + max_tokens {sampling.max_tokens} "
                f"exceeds member {member!r}'s context of {window} tokens"
            )
        if sampling.max_tokens is None:  # until the window is full
            total = window
        ids = [int(t) for t in model.check_token_ids(prompt_token_ids)]
        vocab = model.config.vocab_size
        named = [*sampling.stop_token_ids, *(t for t, _ in sampling.logit_bias)]
        if any(t >= vocab for t in named):
            raise ValueError(
                f"stop_token_ids and logit_bias must name token ids below member {member!r}'s "
                f"vocabulary size {vocab}"
            )
        manager = self.managers[member]
        pages = -(-total // manager.tokens_per_page(member))
        if pages > manager.num_pages:
            raise ValueError(
                f"prompt + max_tokens needs {pages} pages; the pool of member "
                f"{member!r} has {manager.num_pages}"
            )
        first = Request(next(self._ids), member, ids, sampling)
        group = [first] + [
            Request(next(self._ids), member, ids, sampling, index=i, group_id=first.request_id)
            for i in range(1, sampling.num_candidates)
        ]
        first.pending_forks = group[1:]
        self.groups[first.request_id] = group
        for request in group:
            self._texts[request.request_id] = OutputText(model.tokenizer, sampling.all_stop_strings)
            self.requests[request.request_id] = request
        self.scheduler.add(first)
        self.counters.prompt_tokens_received += len(ids)
        return first

    def abort_request(self, request_id: int, error: str | None = None) -> list[RequestOutput]:
        """Stops a request (every candidate) at once and frees its pages; the final outputs,
        [] if it had already finished. `error` marks them as failed with that message."""
        group = self.groups.get(request_id, ())
        return [self._finish(r, "abort", error=error) for r in group if not r.is_finished]

    def prompt_logprobs(self, member: str, token_ids: list[int]) -> torch.Tensor:
        """Float32 log-softmax [N, V] at every position, computed in the shared pool between
        steps (every token is computed: cached pages hold no logits)."""
        if member not in self.models:
            raise ValueError(f"unknown member {member!r}; members: {', '.join(self.models)}")
        ids = self.models[member].check_token_ids(token_ids)
        manager, runner = self.managers[member], self.runners[member]
        seq_id = next(self._ids)
        manager.add_sequence(seq_id, member, ids, use_prefix_cache=False)
        rows = []
        try:
            while (done := sum(r.shape[0] for r in rows)) < ids.size:
                n = min(ids.size - done, self.config.max_num_batched_tokens)
                if not manager.allocate(seq_id, n):
                    raise RuntimeError(
                        f"the pool has no room to score {ids.size} tokens now "
                        "(running requests hold it); retry later"
                    )
                batch = manager.build_batch([seq_id], [n])
                rows.append(runner.forward(batch, all_logits=True))
                manager.commit(seq_id, n)
        finally:
            manager.free(seq_id)
        return torch.log_softmax(torch.cat(rows), dim=-1)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    # ---- one step ------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """schedule -> one forward per member -> sample, detokenize, stop.

        NOTE (fault isolation): a member's forward or its sampling that raises fails only
        the requests of that member's batch (with the error in their outputs); the other
        members' batches, and everything that finished in the step, are delivered."""
        start = time.perf_counter()
        plan = self.scheduler.schedule()
        self._note_peaks()
        results: list[torch.Tensor | Exception] = []
        for b in plan.batches:  # launch every forward before the first sampling sync
            try:
                results.append(self.runners[b.member].forward(b.batch))
            except Exception as e:
                logger.exception("forward of member %r failed", b.member)
                results.append(e)
        outputs = []
        for batch, result in zip(plan.batches, results, strict=True):
            if isinstance(result, Exception):
                outputs += self._fail(batch.requests, f"member {batch.member!r} failed", result)
            else:
                outputs += self._postprocess_batch(batch, result)
        self.counters.steps += 1
        self.counters.busy_seconds += time.perf_counter() - start
        return outputs

    def _note_peaks(self) -> None:
        # Pages in use peak now: scheduled requests hold theirs, none is finished yet.
        in_use = sum(m.num_pages_in_use for m in set(self.managers.values()))
        self.counters.peak_pages_in_use = max(self.counters.peak_pages_in_use, in_use)
        running = len(self.scheduler.running)
        self.counters.peak_running = max(self.counters.peak_running, running)

    def _fail(self, requests: list[Request], what: str, e: Exception) -> list[RequestOutput]:
        message = f"{what}: {type(e).__name__}: {e}"
        groups = dict.fromkeys(r.group_id for r in requests)
        return [out for gid in groups for out in self.abort_request(gid, error=message)]

    def _postprocess_batch(
        self, batch: ScheduledBatch, logits: torch.Tensor
    ) -> list[RequestOutput]:
        manager = self.managers[batch.member]
        manager.commit_batch([r.request_id for r in batch.requests], batch.num_new_tokens)
        targets: list[tuple[Request, int]] = []  # (candidate, its row of logits)
        for i, (request, n) in enumerate(zip(batch.requests, batch.num_new_tokens, strict=True)):
            before = request.num_computed_tokens
            request.num_computed_tokens += n
            prompt_end = min(request.num_computed_tokens, request.num_prompt_tokens)
            self.counters.prompt_tokens_computed += max(0, prompt_end - before)
            if request.num_computed_tokens == request.num_tokens:  # logits for a new token
                targets.append((request, i))
                # The prompt is computed: the other candidates share it from here on, and
                # draw their first tokens from the same logits.
                children, copies = self.scheduler.fork(request)
                for src, dst in copies:  # copy on write of the shared partial page
                    self.pools[batch.member].copy_page(src, dst)
                targets += [(child, i) for child in children]
        if not targets:
            return []
        try:
            picks = self._sample(logits, targets)
        except Exception:
            logger.exception("sampling a batch of member %r failed; sampling row by row")
            picks = []
            for target in targets:
                try:
                    picks += self._sample(logits, [target])
                except Exception as e:
                    picks.append((target[0], e))
        outputs = []
        failed = [(r, e) for r, e in picks if isinstance(e, Exception)]
        for request, e in failed:
            outputs += self._fail([request], "sampling failed", e)
        sampled = [(r, pick) for r, pick in picks if not isinstance(pick, Exception)]
        live = [(r, pick) for r, pick in sampled if not r.is_finished]
        manager.append_token_batch(
            [r.request_id for r, _ in live], [pick.token_id for _, pick in live]
        )
        outputs += [self._append(r, pick) for r, pick in live]
        return outputs

    def _sample(
        self, logits: torch.Tensor, targets: list[tuple[Request, int]]
    ) -> list[tuple[Request, TokenLogprob]]:
        rows = [i for _, i in targets]
        rows_logits = logits[rows]
        requests = [r for r, _ in targets]
        token_ids = sample(rows_logits, [self._sampling_row(r) for r in requests])
        num_top = max((r.sampling.logprobs or 0) for r in requests)
        if not any(r.sampling.logprobs is not None or r.sampling.best_of for r in requests):
            return [
                (r, TokenLogprob(t, 0.0)) for r, t in zip(requests, token_ids.tolist(), strict=True)
            ]
        chosen, top_ids, top_lps = token_logprobs(rows_logits, token_ids, num_top)
        picks = []
        for j, r in enumerate(requests):
            k = r.sampling.logprobs or 0
            top = tuple(zip(top_ids[j, :k].tolist(), top_lps[j, :k].tolist(), strict=True))
            picks.append((r, TokenLogprob(int(token_ids[j]), float(chosen[j]), top)))
        return picks

    def _sampling_row(self, request: Request) -> SamplingRow:
        params = request.sampling
        banned: set[int] = set()
        if params.ignore_eos:  # EOS can neither end the reply nor appear in it
            banned |= set(self.models[request.member].config.eos_token_ids)
        if request.num_output_tokens < params.min_tokens:
            banned |= self._stop_ids(request)
        return SamplingRow(
            params,
            request.prompt_token_ids,
            request.output_token_ids,
            request.generator,
            tuple(sorted(banned)),
        )

    def _stop_ids(self, request: Request) -> set[int]:
        params = request.sampling
        eos = () if params.ignore_eos else self.models[request.member].config.eos_token_ids
        return set(params.stop_token_ids) | set(eos)

    def _append(self, request: Request, pick: TokenLogprob) -> RequestOutput:
        token = pick.token_id
        request.output_token_ids.append(token)
        request.cumulative_logprob += pick.logprob
        if request.first_token_time is None:
            request.first_token_time = time.perf_counter()
        self.counters.generated_tokens += 1
        text = self._texts[request.request_id]
        params = request.sampling
        text.add(token, check_stops=request.num_output_tokens >= params.min_tokens)
        logprobs = (pick,) if params.logprobs is not None else ()
        stop_ids = self._stop_ids(request)
        if token in stop_ids or text.stopped:
            return self._finish(
                request, "stop", new=pick, stop_token=token in stop_ids, logprobs=logprobs
            )
        if (
            params.max_tokens is not None and request.num_output_tokens >= params.max_tokens
        ) or request.num_tokens >= self.max_model_len(request.member):
            return self._finish(request, "length", new=pick, logprobs=logprobs)
        return self._output(request, (token,), text.take_delta(final=False), None, logprobs)

    def _finish(
        self,
        request: Request,
        reason: str,
        *,
        new: TokenLogprob | None = None,
        stop_token: bool = False,
        logprobs: tuple[TokenLogprob, ...] = (),
        error: str | None = None,
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
            () if new is None else (new.token_id,),
            text.take_delta(final=True),
            reason,
            logprobs,
            reply_ids=tuple(request.output_token_ids[:num_reply]),
            done=done,
            error=error,
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
        )
