"""Scheduler: continuous batching across members under one per-step token budget, and the
one owner of KV bookkeeping.

Each step, running requests go first (decodes and the rest of chunked prefills, oldest
first); then waiting requests are admitted in arrival order, each consulting the prefix
cache so only its uncached tokens are prefilled. When the pool is short, the cache manager
first reuses LRU cached pages; if still short, the most recently admitted running request is
preempted (its pages freed, to be recomputed later, usually from its own cached pages).

    schedule()             -> SchedulerOutput: what each member computes this step
    update(batch, sampled) after the member's forward: commit the computed tokens, fork the
                           candidates of a request whose prompt is done, append the sampled
    finish(request)        free its pages (cached ones stay cached)

NOTE (one owner): nothing else allocates, commits, forks or frees pages; the engine runs the
forwards and decides what was sampled and when a request is done.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from blendrt.cache.manager import BatchMetadata
from blendrt.engine.kv_layout import KVLayout
from blendrt.engine.request import Request


@dataclass(frozen=True)
class ScheduledBatch:
    """One member's share of a step: one forward pass."""

    member: str
    requests: list[Request]
    num_new_tokens: list[int]
    batch: BatchMetadata
    all_logits: bool = False  # a scoring request: logits at every new token

    def needs_token(self, i: int) -> bool:
        """Whether requests[i] reaches its last known token this step (and is sampled)."""
        request = self.requests[i]
        done = request.num_computed_tokens + self.num_new_tokens[i] == request.num_tokens
        return done and not request.score and not request.classify


@dataclass(frozen=True)
class SchedulerOutput:
    batches: list[ScheduledBatch]
    num_preempted: int

    @property
    def num_tokens(self) -> int:
        return sum(sum(b.num_new_tokens) for b in self.batches)


class Scheduler:
    def __init__(self, kv: KVLayout, *, max_num_batched_tokens: int, max_num_seqs: int) -> None:
        self.kv = kv
        # {member: cache manager}; one shared manager for all members unless the pool is
        # partitioned (a benchmark baseline, see kv_layout).
        self.managers = kv.managers
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_num_seqs = max_num_seqs
        self.waiting: deque[Request] = deque()  # arrival order; preempted ones go first
        self.running: list[Request] = []  # admission order
        self.num_preemptions = 0

    def add(self, request: Request) -> None:
        self.waiting.append(request)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # ---- planning a step -----------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        scheduled: dict[int, int] = {}  # {request_id: num_new_tokens}
        budget, num_preempted = self._schedule_running(self.max_num_batched_tokens, scheduled)
        if num_preempted == 0:
            self._admit_waiting(budget, scheduled)
        by_member: dict[str, list[Request]] = {}
        batches = []
        for request in self.running:
            if request.request_id not in scheduled:
                continue
            if request.score:  # its own forward: logits at every token
                batches.append(self._batch(request.member, [request], scheduled, True))
            else:
                by_member.setdefault(request.member, []).append(request)
        batches += [self._batch(m, rs, scheduled, False) for m, rs in by_member.items()]
        return SchedulerOutput(batches, num_preempted)

    def _batch(
        self, member: str, requests: list[Request], scheduled: dict[int, int], all_logits: bool
    ) -> ScheduledBatch:
        ids = [r.request_id for r in requests]
        num_new = [scheduled[rid] for rid in ids]
        batch = self.managers[member].build_batch(ids, num_new)
        return ScheduledBatch(member, requests, num_new, batch, all_logits)

    def _schedule_running(self, budget: int, scheduled: dict[int, int]) -> tuple[int, int]:
        num_preempted = 0
        i = 0
        while i < len(self.running) and budget > 0:
            request = self.running[i]
            n = min(request.num_tokens - request.num_computed_tokens, budget)
            manager = self.managers[request.member]
            while not manager.allocate(request.request_id, n):
                # NOTE: the victim is the most recently admitted request, possibly this one.
                victim = self.running[-1]  # never one scheduled already: those come before i
                self._preempt(victim)
                num_preempted += 1
                if victim is request:
                    break
            else:
                scheduled[request.request_id] = n
                budget -= n
                i += 1
        return budget, num_preempted

    def _admit_waiting(self, budget: int, scheduled: dict[int, int]) -> int:
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            request = self.waiting[0]
            rid, manager = request.request_id, self.managers[request.member]
            if not manager.has_sequence(rid):
                # NOTE: a scoring request computes every token: cached pages hold no logits.
                manager.add_sequence(
                    rid, request.member, request.all_token_ids, use_prefix_cache=not request.score
                )
            num_cached = manager.num_cached_tokens(rid)
            n = min(request.num_tokens - num_cached, budget)
            if not manager.allocate(rid, n):
                break  # first come, first served: wait for pages to free up
            for src, dst in manager.take_copies():  # a partial prefix hit, copied on write
                self.kv.pools[request.member].copy_page(src, dst)
            self.waiting.popleft()
            if request.num_preemptions == 0:
                request.num_cached_tokens = num_cached
            request.num_computed_tokens = num_cached
            self.running.append(request)
            scheduled[rid] = n
            budget -= n
        return budget

    def _preempt(self, request: Request) -> None:
        self.running.remove(request)
        self.managers[request.member].free(request.request_id)
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(request)

    # ---- after a forward -----------------------------------------------------------------

    def update(
        self, batch: ScheduledBatch, sampled: Mapping[int, Sequence[int]]
    ) -> dict[int, list[Request | None]]:
        """Commits the batch's computed tokens and appends what was sampled
        ({request_id: tokens}: one per request, or one per candidate of a request whose
        prompt just completed: the first is its own, the others its forked candidates').
        Returns {request_id: [candidate, ...]} for those forks, aligned with tokens[1:]
        (None: no page was free to fork it; it waits, to be prefilled from the cache).

        NOTE (one token list): a request's tokens live in the Request (what sampling
        penalties, detokenization and recomputation after preemption read) and in the
        core's sequence (what page keys and input ids are built from). They are appended
        here and only here, so they cannot diverge."""
        manager = self.managers[batch.member]
        manager.commit_batch([r.request_id for r in batch.requests], batch.num_new_tokens)
        for request, n in zip(batch.requests, batch.num_new_tokens, strict=True):
            request.num_computed_tokens += n
        forks: dict[int, list[Request | None]] = {}
        appended: list[tuple[Request, int]] = []
        for request in batch.requests:
            tokens = sampled.get(request.request_id)
            if not tokens:
                continue
            appended.append((request, tokens[0]))
            if len(tokens) > 1:
                forks[request.request_id] = children = self._fork(request)
                appended += [(c, t) for c, t in zip(children, tokens[1:], strict=True) if c]
        manager.append_token_batch([r.request_id for r, _ in appended], [t for _, t in appended])
        for request, token in appended:
            request.output_token_ids.append(token)
        return forks

    def _fork(self, request: Request) -> list[Request | None]:
        """Forks the request's pending candidates now that its prompt is computed: each
        shares its pages (a partly filled last page is copied on write) and runs."""
        manager, pool = self.managers[request.member], self.kv.pools[request.member]
        children: list[Request | None] = []
        for child in request.pending_forks:
            copy = manager.fork(request.request_id, child.request_id)
            if copy is None:
                self.waiting.append(child)
                children.append(None)
                continue
            if copy[0] >= 0:
                pool.copy_page(*copy)
            child.num_computed_tokens = request.num_computed_tokens
            child.num_cached_tokens = request.num_cached_tokens
            self.running.append(child)
            children.append(child)
        request.pending_forks = []
        return children

    def finish(self, request: Request) -> None:
        """Drops a request from the queues and releases its pages (cached ones stay cached)."""
        if request in self.running:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        manager = self.managers[request.member]
        if manager.has_sequence(request.request_id):
            manager.free(request.request_id)
