"""Scheduler: continuous batching across members under one per-step token budget.

Each step, running requests go first (decodes and the rest of chunked prefills, oldest
first); then waiting requests are admitted in arrival order, each consulting the prefix
cache so only its uncached tokens are prefilled. When the pool is short, the cache manager
first reuses LRU cached pages; if still short, the most recently admitted running request is
preempted (its pages freed, to be recomputed later, usually from its own cached pages).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from blendrt.cache.manager import BatchMetadata, KVCacheManager
from blendrt.engine.request import Request


@dataclass(frozen=True)
class ScheduledBatch:
    """One member's share of a step: one forward pass."""

    member: str
    requests: list[Request]
    num_new_tokens: list[int]
    batch: BatchMetadata


@dataclass(frozen=True)
class SchedulerOutput:
    batches: list[ScheduledBatch]
    num_preempted: int

    @property
    def num_tokens(self) -> int:
        return sum(sum(b.num_new_tokens) for b in self.batches)


class Scheduler:
    def __init__(
        self,
        managers: dict[str, KVCacheManager],
        *,
        max_num_batched_tokens: int,
        max_num_seqs: int,
    ) -> None:
        # {member: cache manager}; one shared manager for all members unless the pool is
        # partitioned (a benchmark baseline).
        self.managers = managers
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_num_seqs = max_num_seqs
        self.waiting: deque[Request] = deque()  # arrival order; preempted ones go first
        self.running: list[Request] = []  # admission order
        self.num_preemptions = 0

    def add(self, request: Request) -> None:
        self.waiting.append(request)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def finish(self, request: Request) -> None:
        """Drops a request from the queues and releases its pages (cached ones stay cached)."""
        if request in self.running:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        manager = self.managers[request.member]
        if manager.has_sequence(request.request_id):
            manager.free(request.request_id)

    def fork(self, request: Request) -> tuple[list[Request], list[tuple[int, int]]]:
        """Forks the request's pending candidates now that its prompt is computed: each
        shares its pages and starts running. Returns the forked candidates and the page
        copies (src, dst) the caller must make on the device first. A candidate for whose
        copy no page is free waits instead, to be prefilled from the prefix cache."""
        forked, copies = [], []
        manager = self.managers[request.member]
        for child in request.pending_forks:
            copy = manager.fork(request.request_id, child.request_id)
            if copy is None:
                self.waiting.append(child)
                continue
            if copy[0] >= 0:
                copies.append(copy)
            child.num_computed_tokens = request.num_computed_tokens
            child.num_cached_tokens = request.num_cached_tokens
            self.running.append(child)
            forked.append(child)
        request.pending_forks = []
        return forked, copies

    def _preempt(self, request: Request) -> None:
        self.running.remove(request)
        self.managers[request.member].free(request.request_id)
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(request)

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
                manager.add_sequence(rid, request.member, request.all_token_ids)
            num_cached = manager.num_cached_tokens(rid)
            n = min(request.num_tokens - num_cached, budget)
            if not manager.allocate(rid, n):
                break  # first come, first served: wait for pages to free up
            self.waiting.popleft()
            if request.num_preemptions == 0:
                request.num_cached_tokens = num_cached
            request.num_computed_tokens = num_cached
            self.running.append(request)
            scheduled[rid] = n
            budget -= n
        return budget

    def schedule(self) -> SchedulerOutput:
        scheduled: dict[int, int] = {}  # {request_id: num_new_tokens}
        budget, num_preempted = self._schedule_running(self.max_num_batched_tokens, scheduled)
        if num_preempted == 0:
            self._admit_waiting(budget, scheduled)
        by_member: dict[str, list[Request]] = {}
        for request in self.running:
            if request.request_id in scheduled:
                by_member.setdefault(request.member, []).append(request)
        batches = []
        for member, requests in by_member.items():
            ids = [r.request_id for r in requests]
            num_new = [scheduled[rid] for rid in ids]
            batch = self.managers[member].build_batch(ids, num_new)
            batches.append(ScheduledBatch(member, requests, num_new, batch))
        return SchedulerOutput(batches, num_preempted)
