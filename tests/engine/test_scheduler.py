"""The scheduler over a bare cache manager (no model): exact page ids as it admits, chunks,
preempts, commits, forks and frees; the token budget and max_num_seqs; scoring requests in
their own batches."""

from __future__ import annotations

import torch

from blendrt.cache.pool import KVGeometry
from blendrt.engine.kv_layout import build_kv_layout
from blendrt.engine.request import Request
from blendrt.engine.scheduler import Scheduler
from blendrt.sampling import SamplingParams

# 128 and 256 bytes per token in 512-byte pages: member a has 4 tokens a page, b has 2.
GEOMETRIES = {
    "a": KVGeometry(1, 1, 16, torch.float32),
    "b": KVGeometry(1, 1, 32, torch.float32),
}


def make(num_pages: int = 8, budget: int = 8, max_seqs: int = 8) -> Scheduler:
    kv = build_kv_layout(
        GEOMETRIES, page_bytes=512, num_pages=num_pages, partition="shared", device="cpu",
        enable_prefix_caching=True,
    )  # fmt: skip
    return Scheduler(kv, max_num_batched_tokens=budget, max_num_seqs=max_seqs)


def request(rid: int, member: str, prompt: list[int], **sampling: object) -> Request:
    return Request(rid, member, prompt, SamplingParams(**sampling))


def table(s: Scheduler, r: Request) -> list[int]:
    return s.managers[r.member].block_table(r.request_id).tolist()


def step(s: Scheduler, sampled: dict[int, list[int]] | None = None):
    """One schedule + update; every request whose tokens are all computed gets token 7."""
    plan = s.schedule()
    for batch in plan.batches:
        tokens = sampled or {
            r.request_id: [7] for i, r in enumerate(batch.requests) if batch.needs_token(i)
        }
        s.update(batch, tokens)
    return plan


def test_admission_chunks_a_prefill_to_the_budget_with_exact_pages() -> None:
    s = make(budget=8)
    r0, r1 = request(0, "a", list(range(1, 7))), request(1, "b", list(range(1, 6)))
    s.add(r0)
    s.add(r1)
    plan = step(s)
    assert [(b.member, b.num_new_tokens) for b in plan.batches] == [("a", [6]), ("b", [2])]
    assert table(s, r0) == [0, 1] and table(s, r1) == [2]  # 6 tokens / 4 a page; 2 / 2
    assert r0.output_token_ids == [7] and r1.output_token_ids == []  # r1's prompt not done
    plan = step(s)
    # r0 decodes its 7th token (page 1 still has room); r1 prefills the rest of its prompt.
    assert [(b.member, b.num_new_tokens) for b in plan.batches] == [("a", [1]), ("b", [3])]
    assert table(s, r0) == [0, 1] and table(s, r1) == [2, 3, 4]
    assert (r0.num_computed_tokens, r1.num_computed_tokens) == (7, 5)
    assert r1.output_token_ids == [7]


def test_a_finished_prompt_is_a_prefix_hit_for_the_same_member_only() -> None:
    s = make()
    r0 = request(0, "a", list(range(1, 10)))
    s.add(r0)
    step(s)
    s.finish(r0)  # pages 0, 1 (full, registered) cached; page 2 (partial) free
    again, other = request(1, "a", list(range(1, 10))), request(2, "b", list(range(1, 10)))
    s.add(again)
    s.add(other)
    plan = step(s)
    assert again.num_cached_tokens == 8 and table(s, again)[:2] == [0, 1]
    assert other.num_cached_tokens == 0  # members never share pages
    assert plan.batches[0].num_new_tokens == [1]  # only the last prompt token is computed


def test_the_most_recent_request_is_preempted_when_pages_run_out() -> None:
    s = make(num_pages=3, budget=16)
    r0, r1 = request(0, "a", list(range(1, 5))), request(1, "a", list(range(11, 19)))
    s.add(r0)
    s.add(r1)
    step(s)  # r0: page 0 (4 tokens); r1: pages 1, 2 (8 tokens); the pool is full
    assert s.managers["a"].stats().pages_free == 0
    plan = step(s)  # r0's next token needs a page: r1, admitted last, is preempted
    assert plan.num_preempted == 1 and s.num_preemptions == 1
    assert s.running == [r0] and list(s.waiting) == [r1] and r1.num_computed_tokens == 0
    assert table(s, r0) == [0, 2]  # a freed page of r1 (page 1 stays cached for it)


def test_max_num_seqs_bounds_the_running_requests() -> None:
    s = make(num_pages=16, budget=64, max_seqs=2)
    for i in range(4):
        s.add(request(i, "a", [i + 1, i + 2]))
    step(s)
    assert len(s.running) == 2 and len(s.waiting) == 2


def test_update_forks_candidates_sharing_pages_and_copying_a_partial_one() -> None:
    s = make()
    parent = request(0, "a", list(range(1, 7)), n=3)
    children = [request(i, "a", parent.prompt_token_ids, n=3) for i in (1, 2)]
    parent.pending_forks = list(children)
    s.add(parent)
    pool = s.kv.pools["a"]
    plan = s.schedule()
    (batch,) = plan.batches
    pool.buffer.view(8, 512)[1] = 42  # "KV" of the partial page 1 (tokens 4-5)
    forks = s.update(batch, {0: [7, 8, 9]})  # a token per candidate
    assert forks == {0: children}
    assert table(s, parent) == [0, 1]
    assert table(s, children[0]) == [0, 2] and table(s, children[1]) == [0, 3]
    assert bool((pool.buffer.view(8, 512)[2:4] == 42).all())  # copied on write
    assert [c.output_token_ids for c in (parent, *children)] == [[7], [8], [9]]
    assert all(c.num_computed_tokens == 6 for c in children) and len(s.running) == 3
    s.managers["a"].check_invariants()


def test_a_scoring_request_runs_alone_with_all_logits() -> None:
    s = make(budget=16)
    scoring = Request(0, "a", [1, 2, 3, 4, 5], SamplingParams(max_tokens=1), score=True)
    s.add(scoring)
    s.add(request(1, "a", [9, 9, 9]))
    plan = step(s)
    assert [(b.all_logits, [r.request_id for r in b.requests]) for b in plan.batches] == [
        (True, [0]),
        (False, [1]),
    ]
    assert scoring.output_token_ids == []  # nothing is sampled for it
