"""LLMEngine: members, their pool, the scheduler, and one step of work.

    step():  schedule -> one forward per member with work -> sample -> scheduler.update
             -> detokenize, stop

It is single-threaded: blendrt/engine/loop.py drives it from one thread and is the only
caller. Everything it runs on is passed explicitly; no module state.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time

import torch

from blendrt.cache.pool import page_bytes_for
from blendrt.config import EngineConfig
from blendrt.engine.kv_layout import build_kv_layout
from blendrt.engine.memory import pool_pages
from blendrt.engine.request import Request, RequestOutput, TokenLogprob
from blendrt.engine.sampler import Target, sample_isolated
from blendrt.engine.scheduler import ScheduledBatch, Scheduler
from blendrt.engine.tracker import EngineCounters, RequestTracker
from blendrt.models.config import serving_window
from blendrt.models.loaded import LoadedModel
from blendrt.models.runner import ModelRunner
from blendrt.sampling import SamplingParams

logger = logging.getLogger("blendrt.engine")


class LLMEngine:
    def __init__(self, models: dict[str, LoadedModel], config: EngineConfig) -> None:
        if not models:
            raise ValueError("an engine needs at least one member")
        self.config = config
        self.models = models
        self.counters = EngineCounters()
        self._ids = itertools.count()
        # NOTE: pages are sized for the model dtype, so a quantized cache (one byte per
        # element) fits about twice the tokens in each page rather than halving the page.
        page_bytes = config.page_bytes or page_bytes_for(
            [m.geometry for m in models.values()], config.min_tokens_per_page
        )
        geometries = {
            name: dataclasses.replace(m.geometry, cache_dtype=config.kv_cache_dtype)
            for name, m in models.items()
        }
        self.kv = build_kv_layout(
            geometries,
            page_bytes=page_bytes,
            num_pages=pool_pages(config, page_bytes, models.values()),
            partition=config.pool_partition,
            device=config.device,
            enable_prefix_caching=config.enable_prefix_caching,
            windows={name: m.config.release_window for name, m in models.items()},
        )
        self.runners = {
            name: ModelRunner(m.model, self.kv.views[name], m.backend) for name, m in models.items()
        }
        self.scheduler = Scheduler(
            self.kv,
            max_num_batched_tokens=config.max_num_batched_tokens,
            max_num_seqs=config.max_num_seqs,
        )
        self.tracker = RequestTracker(self.scheduler, self.counters)

    @property
    def managers(self):
        return self.kv.managers

    @property
    def pools(self):
        return self.kv.pools

    @property
    def requests(self) -> dict[int, Request]:
        return self.tracker.requests

    @property
    def groups(self) -> dict[int, list[Request]]:
        return self.tracker.groups

    # ---- requests ------------------------------------------------------------------------

    def max_model_len(self, member: str) -> int:
        declared = self.models[member].config.max_position_embeddings
        return serving_window(declared, self.config.max_model_len)

    def _check(self, member: str, prompt_token_ids: list[int], max_tokens: int | None) -> list[int]:
        """The prompt as ints, if it can ever run: `max_tokens` more tokens (None: until the
        window is full; 0: none, a scoring request) fit the member's window and pool."""
        if member not in self.models:
            raise ValueError(f"unknown member {member!r}; members: {', '.join(self.models)}")
        ids = [int(t) for t in self.models[member].check_token_ids(prompt_token_ids)]
        window = self.max_model_len(member)
        reply = 1 if max_tokens is None else max_tokens
        if len(ids) + reply > window:
            raise ValueError(
                f"prompt of {len(ids)} tokens + max_tokens {max_tokens} "
                f"exceeds member {member!r}'s context of {window} tokens"
            )
        manager = self.kv.managers[member]
        tokens = window if max_tokens is None else len(ids) + max_tokens
        pages = -(-tokens // manager.tokens_per_page(member))
        if pages > manager.num_pages:
            raise ValueError(
                f"prompt + max_tokens needs {pages} pages; the pool of member "
                f"{member!r} has {manager.num_pages}"
            )
        return ids

    def add_request(
        self, member: str, prompt_token_ids: list[int], sampling: SamplingParams
    ) -> Request:
        """Validates and queues a request (with its candidates when n or best_of > 1);
        raises ValueError if it could never run. Returns its first candidate, whose id is
        the request's."""
        ids = self._check(member, prompt_token_ids, sampling.max_tokens)
        if self.models[member].config.num_labels:
            raise ValueError(f"member {member!r} is a classifier: it scores, it does not reply")
        vocab = self.models[member].config.vocab_size
        named = [*sampling.stop_token_ids, *(t for t, _ in sampling.logit_bias)]
        if any(t >= vocab for t in named):
            raise ValueError(
                f"stop_token_ids and logit_bias must name token ids below member {member!r}'s "
                f"vocabulary size {vocab}"
            )
        first = Request(next(self._ids), member, ids, sampling)
        group = [first] + [
            Request(next(self._ids), member, ids, sampling, index=i, group_id=first.request_id)
            for i in range(1, sampling.num_candidates)
        ]
        first.pending_forks = group[1:]
        self.tracker.add(group, self.models[member].tokenizer)
        self.scheduler.add(first)
        self.counters.prompt_tokens_received += len(ids)
        return first

    def add_score_request(self, member: str, token_ids: list[int]) -> Request:
        """Queues a request that scores its tokens: its last output carries the float32
        log-softmax [N, V] at every position (row i: the distribution after token i)."""
        ids = self._check(member, token_ids, 0)
        request = Request(next(self._ids), member, ids, SamplingParams(max_tokens=1), score=True)
        self.tracker.add([request], self.models[member].tokenizer)
        self.scheduler.add(request)
        return request

    def add_classify_request(self, member: str, token_ids: list[int]) -> Request:
        """Queues a classifier member's scoring of token_ids: its output carries the float32
        scores [num_labels] at the last token (the caller drops trailing pads first). The
        prompt's pages are cached like any request's, so a repeated prefix is reused."""
        ids = self._check(member, token_ids, 0)
        if not self.models[member].config.num_labels:
            raise ValueError(f"member {member!r} is not a classifier (no score head)")
        request = Request(next(self._ids), member, ids, SamplingParams(max_tokens=1))
        request.classify = True
        self.tracker.add([request], self.models[member].tokenizer)
        self.scheduler.add(request)
        self.counters.prompt_tokens_received += len(ids)
        return request

    def abort_request(self, request_id: int, error: str | None = None) -> list[RequestOutput]:
        """Stops a request (every candidate) at once and frees its pages; the final outputs,
        [] if it had already finished. `error` marks them as failed with that message."""
        return self.tracker.abort(request_id, error)

    def has_unfinished_requests(self) -> bool:
        return bool(self.tracker.requests)

    # ---- one step ------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """schedule -> one forward per member -> sample -> update -> detokenize, stop.

        NOTE (fault isolation): a member's forward or its sampling that raises fails only
        the requests of that member's batch (with the error in their outputs); the other
        members' batches, and everything that finished in the step, are delivered."""
        start = time.perf_counter()
        plan = self.scheduler.schedule()
        self._note_peaks()
        results: list[torch.Tensor | Exception] = []
        for b in plan.batches:  # launch every forward before the first sampling sync
            try:
                results.append(self.runners[b.member].forward(b.batch, all_logits=b.all_logits))
            except Exception as e:
                logger.exception("forward of member %r failed", b.member)
                results.append(e)
        outputs = []
        for batch, result in zip(plan.batches, results, strict=True):
            if isinstance(result, Exception):
                outputs += self._fail(batch.requests, f"member {batch.member!r} failed", result)
            elif batch.all_logits:
                outputs += self._score(batch, result)
            else:
                outputs += self._postprocess(batch, result)
        self.counters.steps += 1
        self.counters.busy_seconds += time.perf_counter() - start
        return outputs

    def _note_peaks(self) -> None:
        # Pages in use peak now: scheduled requests hold theirs, none is finished yet.
        in_use = sum(
            m.num_pages_in_use for m in {id(m): m for m in self.managers.values()}.values()
        )
        self.counters.peak_pages_in_use = max(self.counters.peak_pages_in_use, in_use)
        running = len(self.scheduler.running)
        self.counters.peak_running = max(self.counters.peak_running, running)

    def _fail(self, requests: list[Request], what: str, e: Exception) -> list[RequestOutput]:
        message = f"{what}: {type(e).__name__}: {e}"
        groups = dict.fromkeys(r.group_id for r in requests)
        return [out for gid in groups for out in self.tracker.abort(gid, error=message)]

    def _score(self, batch: ScheduledBatch, logits: torch.Tensor) -> list[RequestOutput]:
        (request,) = batch.requests
        request.score_rows[request.num_computed_tokens] = torch.log_softmax(logits, dim=-1)
        self.scheduler.update(batch, {})
        if request.num_computed_tokens < request.num_prompt_tokens:
            return []
        rows = torch.cat([request.score_rows[k] for k in sorted(request.score_rows)])
        return [self.tracker.finish(request, "stop", prompt_logprobs=rows)]

    def _postprocess(self, batch: ScheduledBatch, logits: torch.Tensor) -> list[RequestOutput]:
        for request, n in zip(batch.requests, batch.num_new_tokens, strict=True):
            end = min(request.num_computed_tokens + n, request.num_prompt_tokens)
            self.counters.prompt_tokens_computed += max(0, end - request.num_computed_tokens)
        # A request whose prompt completes samples one token per candidate from its row.
        targets: list[Target] = [
            (r, i)
            for i, r in enumerate(batch.requests)
            if batch.needs_token(i)
            for r in [r, *r.pending_forks]
        ]
        picks = sample_isolated(logits, targets, self.models[batch.member].config.eos_token_ids)
        failed: dict[int, Exception] = {}  # {group id: what its sampling raised}
        sampled: dict[int, list[TokenLogprob]] = {}  # {request_id: a pick per candidate}
        for (request, i), pick in zip(targets, picks, strict=True):
            if isinstance(pick, Exception):
                failed.setdefault(request.group_id, pick)
            else:  # forks sample from their first candidate's row: its pick list
                sampled.setdefault(batch.requests[i].request_id, []).append(pick)
        sampled = {
            rid: ps for rid, ps in sampled.items() if self.requests[rid].group_id not in failed
        }
        tokens = {rid: [p.token_id for p in ps] for rid, ps in sampled.items()}
        classified = [
            (r, logits[i])
            for i, (r, n) in enumerate(zip(batch.requests, batch.num_new_tokens, strict=True))
            if r.classify and r.num_computed_tokens + n == r.num_tokens
        ]
        forks = self.scheduler.update(batch, tokens)
        outputs = [self.tracker.finish(r, "stop", scores=row) for r, row in classified]
        for group_id, e in failed.items():
            outputs += self.tracker.abort(group_id, f"sampling failed: {type(e).__name__}: {e}")
        member = batch.member
        eos, window = self.models[member].config.eos_token_ids, self.max_model_len(member)
        for rid, ps in sampled.items():
            candidates = [self.tracker.requests[rid], *forks.get(rid, [])]
            for request, pick in zip(candidates, ps, strict=True):
                if request is not None:
                    outputs.append(self.tracker.append(request, pick, eos, window))
        return outputs
