"""CPU cost per engine step of KV-cache bookkeeping: the C++ core against plain Python.

Steady-state decode of --seqs sequences over three members (16, 20 and 48 tokens per page).
Each step appends one sampled token per sequence, allocates one slot each (allocate_batch),
builds each member's batch metadata (build_batch) and commits (commit_batch). Every
--churn-every steps a sequence finishes and is replaced, alternately, by its follow-up turn
(history + new message) or by a new conversation (persona + question), prefilled in that step
from the prefix cache: free(), the LRU queue and prefix hits run too. Prompts (two in three
share their member's persona prefix) are prefilled before timing. The baseline, PyCache, hands
out pages FIFO from page 0 like the core, so a short run on a pool small enough to force
evictions is first checked to give identical metadata, page ids included, in every batch.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import statistics
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import blendrt._core as _core
import numpy as np

from blendrt.cache.manager import BatchMetadata, KVCacheManager

MEMBERS = (("alpha", 16), ("beta", 20), ("gamma", 48))  # (name, tokens_per_page)
VOCAB, PERSONA_TOKENS, FOLLOW_UP_TOKENS = 32000, 160, 32


@dataclass
class PySeq:
    member: str
    tokens: list[int]
    block_table: list[int] = field(default_factory=list)
    keys: list[int] = field(default_factory=list)  # chained keys of full pages, memoised
    num_computed: int = 0
    num_registered: int = 0  # block_table[:n] were offered to the prefix index
    has_allocated: bool = False


class PyCache:
    """The core's bookkeeping as a straightforward Python engine would write it."""

    MAX_CHILDREN_SCANNED = 256  # most recent first, as the core

    def __init__(self, num_pages: int) -> None:
        self.free_pages = deque(range(num_pages))  # taken from the front, returned to the back
        self.refcount = [0] * num_pages
        self.lru: OrderedDict[int, None] = OrderedDict()  # cached unreferenced, oldest first
        self.index: dict[int, int] = {}  # {page key: full page id}
        self.key_of_page: dict[int, int] = {}  # {page id: page key} of the full cached pages
        self.parent_of: dict[int, int] = {}  # {page id: parent key} of every cached page
        self.tokens_of: dict[int, list[int]] = {}  # {page id: the tokens it holds}
        self.children: dict[int, list[int]] = {}  # {parent key: cached pages, oldest first}
        self.copies: list[tuple[int, int]] = []  # (src, dst) of partial hits since last taken
        self.tpp: dict[str, int] = {}  # {member: tokens per page}
        self.seqs: dict[int, PySeq] = {}

    def register_member(self, name: str, tokens_per_page: int) -> None:
        self.tpp[name] = tokens_per_page

    def add_sequence(self, request_id: int, member: str, token_ids: np.ndarray) -> None:
        self.seqs[request_id] = PySeq(member, token_ids.tolist())

    def append_token_batch(self, request_ids: np.ndarray, token_ids: np.ndarray) -> None:
        for sid, tok in zip(request_ids.tolist(), token_ids.tolist(), strict=True):
            self.seqs[sid].tokens.append(tok)

    def _key(self, s: PySeq, i: int) -> int:
        tpp = self.tpp[s.member]
        while len(s.keys) <= i:
            j = len(s.keys)
            s.keys.append(hash((self._parent(s, j), tuple(s.tokens[j * tpp : (j + 1) * tpp]))))
        return s.keys[i]

    def _parent(self, s: PySeq, i: int) -> int:
        return self._key(s, i - 1) if i else hash(s.member)  # root: the member

    def _register(self, page: int, parent: int, tokens: list[int]) -> None:
        self.parent_of[page], self.tokens_of[page] = parent, tokens
        self.children.setdefault(parent, []).append(page)

    def _unregister(self, page: int) -> None:
        if page in self.key_of_page:
            del self.index[self.key_of_page.pop(page)]
        parent = self.parent_of.pop(page)
        self.children[parent].remove(page)
        if not self.children[parent]:
            del self.children[parent]
        del self.tokens_of[page]

    def _longest_child(self, parent: int, tokens: list[int]) -> tuple[int, int]:
        best = (-1, 0)
        for page in reversed(self.children.get(parent, [])[-self.MAX_CHILDREN_SCANNED :]):
            held, k = self.tokens_of[page], 0
            while k < min(len(tokens), len(held)) and held[k] == tokens[k]:
                k += 1
            if k > best[1]:
                best = (page, k)
            if best[1] == len(tokens):
                break
        return best

    def _lookup(self, s: PySeq) -> tuple[list[int], int, int]:
        """(full-page hits, the page a partial hit copies, its number of tokens)."""
        tpp, reusable = self.tpp[s.member], len(s.tokens) - 1  # leave a token to compute
        hits = []
        for i in range(reusable // tpp):
            page = self.index.get(self._key(s, i))
            if page is None:
                break
            hits.append(page)
        start = len(hits) * tpp
        room = min(tpp, reusable - start)
        if room <= 0:
            return hits, -1, 0
        page, length = self._longest_child(self._parent(s, len(hits)), s.tokens[start:][:room])
        return hits, page, length

    def num_cached_tokens(self, request_id: int) -> int:
        s = self.seqs[request_id]
        if s.has_allocated:
            return 0
        hits, _, partial = self._lookup(s)
        return len(hits) * self.tpp[s.member] + partial

    def _ref(self, page: int) -> None:
        if self.refcount[page] == 0:
            del self.lru[page]
        self.refcount[page] += 1

    def _unref(self, page: int) -> None:
        self.refcount[page] -= 1
        if self.refcount[page] == 0:
            if page in self.parent_of:
                self.lru[page] = None
            else:
                self.free_pages.append(page)

    def _take(self) -> int:
        if self.free_pages:
            page = self.free_pages.popleft()
        else:  # evict the oldest cached unreferenced page
            page, _ = self.lru.popitem(last=False)
            self._unregister(page)
        self.refcount[page] = 1
        return page

    def allocate(self, request_id: int, num_new_tokens: int) -> bool:
        s = self.seqs[request_id]
        tpp = self.tpp[s.member]
        hits, src, partial = ([], -1, 0) if s.has_allocated else self._lookup(s)
        held = hits + [src] * (partial > 0)
        num_tokens = s.num_computed + len(hits) * tpp + partial + num_new_tokens
        num_new_pages = max(0, -(-num_tokens // tpp) - len(s.block_table) - len(hits))
        if num_new_pages > len(self.free_pages) + len(self.lru) - sum(p in self.lru for p in held):
            return False
        if not s.has_allocated:
            for page in held:  # referenced first, so taking pages cannot evict them
                self._ref(page)
            s.block_table, s.has_allocated = hits, True
            s.num_computed, s.num_registered = len(hits) * tpp + partial, len(hits)
        new_pages = [self._take() for _ in range(num_new_pages)]
        if partial:  # copy on write: the cached page's first tokens into the sequence's own
            self.copies.append((src, new_pages[0]))
            self._unref(src)
        s.block_table.extend(new_pages)
        return True

    def allocate_batch(self, request_ids: np.ndarray, num_new_tokens: np.ndarray) -> int:
        pairs = zip(request_ids.tolist(), num_new_tokens.tolist(), strict=True)
        for count, (sid, n) in enumerate(pairs):
            if not self.allocate(sid, n):
                return count
        return len(request_ids)

    def take_copies(self) -> list[tuple[int, int]]:
        copies, self.copies = self.copies, []
        return copies

    def commit_batch(self, request_ids: np.ndarray, num_tokens: np.ndarray) -> None:
        for sid, n in zip(request_ids.tolist(), num_tokens.tolist(), strict=True):
            s = self.seqs[sid]
            tpp = self.tpp[s.member]
            s.num_computed += n
            num_full = s.num_computed // tpp
            for i in range(s.num_registered, num_full):
                key, page = self._key(s, i), s.block_table[i]
                if key not in self.index:  # a duplicate of a cached page stays uncached
                    self.index[key], self.key_of_page[page] = page, key
                    self._register(page, self._parent(s, i), s.tokens[i * tpp : (i + 1) * tpp])
            s.num_registered = max(s.num_registered, num_full)

    def free(self, request_id: int) -> None:
        s = self.seqs.pop(request_id)
        tpp = self.tpp[s.member]
        i, n = divmod(s.num_computed, tpp)
        if n and i < len(s.block_table):  # offer the partly filled page, unless held already
            page, tokens = s.block_table[i], s.tokens[i * tpp : i * tpp + n]
            parent = self._parent(s, i)
            if (
                page not in self.parent_of
                and self.refcount[page] == 1
                and self._longest_child(parent, tokens)[1] < n
            ):
                self._register(page, parent, tokens)
        for page in reversed(s.block_table):  # last page first
            self._unref(page)

    def build_batch(self, request_ids: np.ndarray, num_new_tokens: np.ndarray) -> BatchMetadata:
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        tables: list[list[int]] = []
        cu_q, context_lens, last = [0], [], []
        query_lens = num_new_tokens.tolist()
        for sid, n in zip(request_ids.tolist(), query_lens, strict=True):
            s = self.seqs[sid]
            tpp, start = self.tpp[s.member], s.num_computed
            for pos in range(start, start + n):
                ids.append(s.tokens[pos])
                positions.append(pos)
                slots.append(s.block_table[pos // tpp] * tpp + pos % tpp)
            tables.append(s.block_table)
            cu_q.append(len(ids))
            context_lens.append(start + n)
            last.append(len(ids) - 1)
        block_tables = np.full((len(tables), max(map(len, tables))), -1, np.int32)
        for b, table in enumerate(tables):
            block_tables[b, : len(table)] = table
        arrays = [np.array(a, np.int32) for a in (ids, positions, slots)]
        arrays += [block_tables] + [np.array(a, np.int32) for a in (cu_q, context_lens, last)]
        return BatchMetadata(*arrays, max(query_lens), max(context_lens))


class RawCore(_core.KVCacheCore):
    """The pybind class without the typed layer; names map to ids on the (rare) add path."""

    def __init__(self, num_pages: int) -> None:
        super().__init__(num_pages, 1)
        self.member_ids: dict[str, int] = {}

    def register_member(self, name: str, tokens_per_page: int) -> None:
        self.member_ids[name] = super().register_member(name, tokens_per_page)

    def add_sequence(self, request_id: int, member: str, token_ids: np.ndarray) -> None:
        super().add_sequence(request_id, self.member_ids[member], token_ids)


IMPLS: dict[str, Callable[[int], Any]] = {  # the first is the baseline
    "python (PyCache)": PyCache,
    "KVCacheManager": lambda num_pages: KVCacheManager(num_pages, hash_seed=1),
    "_core (raw pybind)": RawCore,
}


@dataclass
class Workload:
    prompts: list[np.ndarray]  # initial prompt of each slot; slots are grouped by member
    personas: dict[str, np.ndarray]
    slot_member: list[str]
    slices: list[slice]  # the slots of each member
    sampled: np.ndarray  # [step, slot] int32: the token each step appends
    follow_ups: np.ndarray  # [step, FOLLOW_UP_TOKENS] int32: the new message of a churn
    churn_every: int
    num_pages: int


def make_workload(num_seqs: int, num_steps: int, churn_every: int, seed: int) -> Workload:
    rng = np.random.default_rng(seed)
    bounds = np.linspace(0, num_seqs, len(MEMBERS) + 1).astype(int).tolist()
    prompts, slot_member, personas = [], [], {}
    for m, (name, _) in enumerate(MEMBERS):
        persona = personas[name] = rng.integers(0, VOCAB, PERSONA_TOKENS, np.int32)
        for slot in range(bounds[m], bounds[m + 1]):
            if slot % 3:  # persona + own question
                tail = rng.integers(0, VOCAB, int(rng.integers(64, 321)), np.int32)
                prompts.append(np.concatenate([persona, tail]))
            else:
                prompts.append(rng.integers(0, VOCAB, int(rng.integers(200, 481)), np.int32))
            slot_member.append(name)
    # Room for the longest sequence a slot can reach, for each live and each freed sequence.
    num_churns = num_steps // churn_every + 1
    longest = max(map(len, prompts)) + num_steps + FOLLOW_UP_TOKENS * num_churns
    num_pages = (num_seqs + num_churns) * (-(-longest // min(t for _, t in MEMBERS)) + 1)
    sampled = rng.integers(0, VOCAB, (num_steps, num_seqs), np.int32)
    follow_ups = rng.integers(0, VOCAB, (num_steps, FOLLOW_UP_TOKENS), np.int32)
    slices = [slice(a, b) for a, b in itertools.pairwise(bounds)]
    return Workload(
        prompts, personas, slot_member, slices, sampled, follow_ups, churn_every, num_pages
    )


class Driver:
    """Replays a workload on one cache; `sink`, if given, collects every batch's metadata."""

    def __init__(self, cache: Any, wl: Workload, sink: list[Any] | None = None) -> None:
        self.cache, self.wl, self.sink = cache, wl, sink
        for name, tokens_per_page in MEMBERS:
            cache.register_member(name, tokens_per_page)
        self.ids = np.arange(len(wl.prompts), dtype=np.int64)  # seq id in each slot
        self.ones = np.ones(len(wl.prompts), np.int32)
        self.history = list(wl.prompts)  # prompt of each slot's sequence
        self.started = [0] * len(wl.prompts)  # step each slot's sequence began to decode
        for slot, prompt in enumerate(wl.prompts):  # one by one, so later prompts hit
            cache.add_sequence(slot, wl.slot_member[slot], prompt)
            ids = self.ids[slot : slot + 1]
            new = np.array([len(prompt) - cache.num_cached_tokens(slot)], np.int32)
            assert cache.allocate_batch(ids, new) == 1
            self._emit(cache.take_copies())
            self._emit(cache.build_batch(ids, new))
            cache.commit_batch(ids, new)

    def _emit(self, md: Any) -> None:
        if self.sink is not None:
            self.sink.append(md)

    def step(self, step: int) -> None:
        cache, wl, ids, new = self.cache, self.wl, self.ids, self.ones
        sampled = wl.sampled[step]
        if step and step % wl.churn_every == 0:  # a sequence ends, another starts
            slot = (step // wl.churn_every * 97) % len(ids)
            member = wl.slot_member[slot]
            if step // wl.churn_every % 2:  # the follow-up turn of the same conversation
                generated = wl.sampled[self.started[slot] : step, slot]
                tokens = np.concatenate([self.history[slot], generated, wl.follow_ups[step]])
            else:  # a new conversation: the old one's pages stay in the LRU queue
                tokens = np.concatenate([wl.personas[member], wl.follow_ups[step]])
            cache.free(int(ids[slot]))
            ids[slot] = request_id = len(ids) + step  # unique: at most one churn per step
            cache.add_sequence(request_id, member, tokens)
            self.history[slot], self.started[slot] = tokens, step + 1
            new = new.copy()
            new[slot] = len(tokens) - cache.num_cached_tokens(request_id)
            cache.append_token_batch(np.delete(ids, slot), np.delete(sampled, slot))
        else:
            cache.append_token_batch(ids, sampled)
        assert cache.allocate_batch(ids, new) == len(ids), "pool too small: preempted"
        self._emit(cache.take_copies())
        for member_slots in wl.slices:
            self._emit(cache.build_batch(ids[member_slots], new[member_slots]))
        cache.commit_batch(ids, new)


def run(cache: Any, wl: Workload, num_steps: int, sink: list[Any] | None = None) -> Any:
    driver = Driver(cache, wl, sink)
    for step in range(num_steps):
        driver.step(step)
    return cache


def tight_pool(wl: Workload, num_steps: int) -> int:
    """The smallest pool the baseline runs in without preempting (found by bisection)."""
    lo, hi = 1, wl.num_pages
    while lo < hi:
        mid = (lo + hi) // 2
        try:
            run(PyCache(mid), wl, num_steps)
            hi = mid
        except AssertionError:  # a sequence did not fit
            lo = mid + 1
    return hi


def verify(wl: Workload, num_steps: int, num_pages: int) -> None:
    """Every impl must give the baseline's metadata exactly, in every batch of a short run."""
    sinks: dict[str, list[Any]] = {name: [] for name in IMPLS}
    caches = [run(make(num_pages), wl, num_steps, sinks[name]) for name, make in IMPLS.items()]
    ref_name, ref = next(iter(sinks.items()))
    for name, got in sinks.items():
        for i, (a, b) in enumerate(zip(ref, got, strict=True)):
            if isinstance(a, list):  # the page copies of partial hits
                assert [tuple(c) for c in b] == a, f"{name} vs {ref_name}: copies {i}"
                continue
            b = b if isinstance(b, dict) else vars(b)
            for key, value in vars(a).items():
                msg = f"{name} vs {ref_name}: batch {i}, {key}"
                np.testing.assert_array_equal(b[key], value, err_msg=msg, strict=True)
    assert sum(len(a) for a in ref if isinstance(a, list)), "no partial hit was exercised"
    py, manager, raw = caches  # free pages and LRU order too
    manager.check_invariants()
    raw.check_invariants()
    state = (len(py.free_pages), list(py.lru))
    assert state == (manager.stats().pages_free, manager.lru_order())
    assert state == (raw.num_free_pages, raw.lru_order())


def bench(wl: Workload, make: Callable[[int], Any], warmup: int, steps: int) -> float:
    driver = Driver(make(wl.num_pages), wl)
    for step in range(warmup):
        driver.step(step)
    gc.collect()
    start = time.perf_counter()
    for step in range(warmup, warmup + steps):
        driver.step(step)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="timed steps per repeat")
    parser.add_argument("--seqs", type=int, default=256, help="running sequences")
    parser.add_argument("--repeat", type=int, default=5, help="repeats; the median is shown")
    parser.add_argument("--warmup", type=int, default=16, help="untimed steps before timing")
    parser.add_argument("--churn-every", type=int, default=64, help="steps between churns")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print a JSON object instead")
    args = parser.parse_args()
    if args.seqs < len(MEMBERS) or min(args.steps, args.repeat, args.churn_every) < 1:
        parser.error(f"need --seqs >= {len(MEMBERS)} and positive --steps/--repeat/--churn-every")

    check = make_workload(args.seqs, 40, 4, args.seed)  # 40 steps, 9 churns: frees and hits
    verify(check, 40, tight_pool(check, 40))  # a pool so tight that cached pages get evicted
    wl = make_workload(args.seqs, args.warmup + args.steps, args.churn_every, args.seed)
    times: dict[str, list[float]] = {name: [] for name in IMPLS}
    for _ in range(args.repeat):  # interleaved, so drift hits every impl alike
        for name, make in IMPLS.items():
            times[name].append(bench(wl, make, args.warmup, args.steps))
    medians = {name: statistics.median(t) / args.steps * 1e6 for name, t in times.items()}
    base = next(iter(medians.values()))
    results = {
        name: {"us_per_step": us, "us_per_seq_step": us / args.seqs, "speedup": base / us}
        for name, us in medians.items()
    }
    config = {k: v for k, v in vars(args).items() if k != "json"}
    config |= {"members": dict(MEMBERS), "num_pages": wl.num_pages}
    if args.json:
        print(json.dumps({"config": config, "results": results}, indent=2))
        return
    print(", ".join(f"{k}={v}" for k, v in config.items()))
    print(f"{'implementation':<20}{'us/step':>10}{'us/seq-step':>13}{'speedup':>9}")
    for name, r in results.items():
        us, per_seq, speedup = r["us_per_step"], r["us_per_seq_step"], r["speedup"]
        print(f"{name:<20}{us:>10.1f}{per_seq:>13.3f}{speedup:>8.1f}x")


if __name__ == "__main__":
    main()
