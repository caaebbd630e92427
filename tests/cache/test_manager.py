"""Scripted scenarios over the C++ core: exact page ids, eviction order, sharing, members."""

from __future__ import annotations

import numpy as np
import pytest

from blendrt.cache import KVCacheManager


def run(m: KVCacheManager, seq_id: int, member: str, tokens: list[int]) -> list[int]:
    """Adds a sequence, allocates and computes all its tokens; returns its block table."""
    m.add_sequence(seq_id, member, tokens)
    cached = m.num_cached_tokens(seq_id)
    assert m.allocate(seq_id, len(tokens) - cached)
    m.commit(seq_id, len(tokens) - cached)
    m.check_invariants()
    return m.block_table(seq_id).tolist()


def test_exact_page_ids_and_lru_order() -> None:
    m = KVCacheManager(8, hash_seed=7)
    m.register_member("a", 4)
    assert run(m, 1, "a", list(range(10))) == [0, 1, 2]  # 2 full pages + a partial one
    m.free(1)
    # Every page is registered now (the partly filled one as the sequence lets it go) and
    # waits in the LRU queue, released last page first, so a prefix's tail is evicted
    # before its head.
    assert m.lru_order() == [2, 1, 0]
    assert m.page_info(2) == (0, True, 0)
    assert m.page_info(0) == (0, True, 0)
    s = m.stats()
    assert (s.pages_free, s.pages_cached, s.pages_in_use) == (5, 3, 0)

    # Same first 8 tokens: both pages hit; then no cached page starts with 100, so the rest
    # gets the next free page (3).
    assert run(m, 2, "a", [*range(8), 100, 101]) == [0, 1, 3]
    assert m.lru_order() == [2]
    assert m.stats().members["a"].hit_tokens == 8
    assert m.stats().members["a"].miss_tokens == 10 + 2


def test_a_cached_page_is_reused_to_the_token_by_copying_it() -> None:
    m = KVCacheManager(8, hash_seed=7)
    m.register_member("a", 4)
    assert run(m, 1, "a", list(range(10))) == [0, 1, 2]
    m.free(1)  # page 2 holds tokens 8, 9 (registered partly filled)
    # Tokens 0-9 then more: 2 full pages, then 2 tokens of page 2, copied into a fresh page.
    m.add_sequence(2, "a", [*range(10), 50, 51, 52])
    assert m.num_cached_tokens(2) == 10
    assert m.allocate(2, 3)
    assert m.block_table(2).tolist() == [0, 1, 3, 4] and m.num_computed_tokens(2) == 10
    assert m.take_copies() == [(2, 3)] and m.take_copies() == []
    assert m.page_info(2) == (0, True, 0)  # the source stays cached for others
    m.commit(2, 3)
    # A full page left midway: tokens 0-5 of a sequence whose page 1 holds 4-7.
    m.add_sequence(3, "a", [0, 1, 2, 3, 4, 5, 77])
    assert m.num_cached_tokens(3) == 6
    assert m.allocate(3, 1) and m.take_copies() == [(1, 5)]
    assert m.block_table(3).tolist() == [0, 5]
    m.check_invariants()


def test_a_partly_filled_page_is_registered_once() -> None:
    m = KVCacheManager(8, hash_seed=7)
    m.register_member("a", 4)
    run(m, 1, "a", [200, 201])
    run(m, 2, "a", [200, 201])  # computed again (both ran at once): no hit yet
    m.free(1)
    m.free(2)
    assert m.page_info(0) == (0, True, 0)  # the first is cached
    assert m.page_info(1) == (0, False, -1)  # the same tokens again: freed
    m.add_sequence(3, "a", [200, 201, 202])
    assert m.num_cached_tokens(3) == 2
    m.check_invariants()


def test_cached_pages_reused_only_when_nothing_is_free_oldest_first() -> None:
    m = KVCacheManager(6, hash_seed=7)
    m.register_member("a", 2)
    assert run(m, 1, "a", [1, 2, 3, 4]) == [0, 1]
    m.free(1)  # LRU: 1, 0
    assert run(m, 2, "a", [5, 6, 7, 8]) == [2, 3]
    m.free(2)  # LRU: 1, 0, 3, 2
    assert m.lru_order() == [1, 0, 3, 2]
    # Needs 3 pages: the two free ones (4, 5) first, then the oldest cached page (1).
    assert run(m, 3, "a", [9, 9, 9, 9, 9, 9]) == [4, 5, 1]
    assert m.lru_order() == [0, 3, 2]
    # Page 1 held [3, 4]: its key is gone, so [1, 2, 3, 4, 0] hits page 0 only.
    m.add_sequence(4, "a", [1, 2, 3, 4, 0])
    assert m.num_cached_tokens(4) == 2
    m.check_invariants()


def test_last_token_is_always_computed() -> None:
    m = KVCacheManager(8, hash_seed=7)
    m.register_member("a", 4)
    run(m, 1, "a", list(range(8)))
    m.free(1)
    m.add_sequence(2, "a", list(range(8)))  # fully cached, but its last logits are needed
    assert m.num_cached_tokens(2) == 7  # a page and 3 tokens of the next
    m.add_sequence(3, "a", list(range(9)))
    assert m.num_cached_tokens(3) == 8


def test_persona_prefix_shared_by_many_conversations() -> None:
    m = KVCacheManager(64, hash_seed=7)
    m.register_member("a", 4)
    persona = list(range(100, 112))  # 3 full pages
    first = run(m, 0, "a", [*persona, 1])
    for conv in range(1, 10):
        table = run(m, conv, "a", [*persona, 1000 + conv, 2000 + conv])
        assert table[:3] == first[:3]
    for page in first[:3]:
        assert m.page_info(page)[0] == 10  # refcount: one per live conversation
    stats = m.stats().members["a"]
    assert stats.hit_tokens == 9 * 12
    assert stats.num_sequences == 10
    # 3 shared pages + 1 own page each.
    assert stats.pages_in_use == 3 + 10
    for conv in range(10):
        m.free(conv)
    assert m.page_info(first[0]) == (0, True, 0)
    m.check_invariants()


def test_members_never_share_pages() -> None:
    m = KVCacheManager(16, hash_seed=7)
    m.register_member("a", 4)
    m.register_member("b", 4)
    run(m, 1, "a", list(range(9)))
    m.add_sequence(2, "b", list(range(9)))
    assert m.num_cached_tokens(2) == 0  # identical ids, other member: no hit
    m.add_sequence(3, "a", list(range(9)))
    assert m.num_cached_tokens(3) == 8


def test_same_page_tokens_after_another_prefix_miss() -> None:
    m = KVCacheManager(16, hash_seed=7)
    m.register_member("a", 4)
    run(m, 1, "a", [1, 2, 3, 4, 5, 6, 7, 8, 0])
    # Page 1's tokens match, but its KV was computed after another first page.
    m.add_sequence(2, "a", [9, 9, 9, 9, 5, 6, 7, 8, 0])
    assert m.num_cached_tokens(2) == 0


def test_idle_member_pages_evicted_to_serve_another() -> None:
    m = KVCacheManager(8, hash_seed=7)
    m.register_member("a", 4)
    m.register_member("b", 3)  # a different geometry: fewer tokens per page
    run(m, 1, "a", list(range(24)))  # 6 pages, all full and cached
    m.free(1)
    assert m.stats().members["a"].pages_cached == 6
    assert m.stats().members["a"].pages_in_use == 0
    # b needs 5 pages: 2 free, then 3 of a's cached pages, the tail of a's prefix first.
    table = run(m, 2, "b", list(range(15)))
    assert table == [6, 7, 5, 4, 3]
    stats = m.stats()
    assert stats.members["a"].pages_cached == 3
    assert stats.members["b"].pages_in_use == 5
    assert m.page_info(5)[2] == 1  # page 5 now belongs to b
    # a's head pages survive and still hit.
    m.add_sequence(3, "a", list(range(24)))
    assert m.num_cached_tokens(3) == 12


def test_allocation_failure_changes_nothing() -> None:
    m = KVCacheManager(4, hash_seed=7)
    m.register_member("a", 2)
    run(m, 1, "a", [1, 2, 3, 4, 5, 6])  # 3 pages
    m.add_sequence(2, "a", [7, 8, 9, 10])
    before = m.stats()
    assert not m.can_allocate(2, 4)
    assert not m.allocate(2, 4)
    assert m.stats() == before
    assert m.block_table(2).tolist() == []
    assert m.allocate(2, 2)
    m.check_invariants()


def test_decode_steps_extend_and_register_pages() -> None:
    m = KVCacheManager(8, hash_seed=7)
    m.register_member("a", 4)
    run(m, 1, "a", [1, 2, 3])
    for token in (4, 5, 6):
        m.append_tokens(1, [token])
        assert m.allocate(1, 1)
        m.commit(1, 1)
    assert m.block_table(1).tolist() == [0, 1]
    assert m.page_info(0)[1]  # [1, 2, 3, 4] filled and was registered
    assert not m.page_info(1)[1]
    assert m.num_computed_tokens(1) == 6


def test_batch_metadata_matches_a_python_reference() -> None:
    m = KVCacheManager(32, hash_seed=7)
    m.register_member("a", 3)
    m.register_member("b", 5)
    rng = np.random.default_rng(0)
    tokens = {}
    for seq_id, (member, n) in enumerate([("a", 7), ("a", 1), ("a", 12), ("b", 4)]):
        tokens[seq_id] = rng.integers(0, 50, n).tolist()
        m.add_sequence(seq_id, member, tokens[seq_id])
    # Sequence 0 has 4 tokens computed already; the others are prefilling from scratch.
    assert m.allocate(0, 4)
    m.commit(0, 4)
    new = {0: 3, 1: 1, 2: 12}
    for seq_id, n in new.items():
        assert m.allocate(seq_id, n)
    md = m.build_batch(list(new), list(new.values()))

    ids, positions, slots = [], [], []
    for s, n in new.items():
        table = m.block_table(s)
        start = m.num_computed_tokens(s)
        for pos in range(start, start + n):
            ids.append(tokens[s][pos])
            positions.append(pos)
            slots.append(table[pos // 3] * 3 + pos % 3)
    assert md.input_ids.tolist() == ids
    assert md.positions.tolist() == positions
    assert md.slot_mapping.tolist() == slots
    assert md.cu_seqlens_q.tolist() == [0, 3, 4, 16]
    assert md.context_lens.tolist() == [7, 1, 12]
    assert md.logits_indices.tolist() == [2, 3, 15]
    assert md.max_query_len == 12 and md.max_context_len == 12
    assert md.block_tables.shape == (3, 4)
    assert md.block_tables[1].tolist() == [m.block_table(1)[0], -1, -1, -1]
    assert md.block_tables[0, :3].tolist() == m.block_table(0).tolist()
    assert md.block_tables[2].tolist() == m.block_table(2).tolist()
    assert m.build_batch([1], [1], min_block_table_width=6).block_tables.shape == (1, 6)

    assert m.allocate(3, 4)
    with pytest.raises(ValueError, match="one member"):
        m.build_batch([0, 3], [3, 4])
    with pytest.raises(ValueError, match="cannot schedule"):
        m.build_batch([0], [4])  # only 3 tokens allocated beyond the computed ones


def test_prefix_caching_disabled() -> None:
    m = KVCacheManager(8, hash_seed=7, enable_prefix_caching=False)
    m.register_member("a", 4)
    assert run(m, 1, "a", list(range(10))) == [0, 1, 2]
    m.free(1)
    assert m.stats().pages_free == 8 and m.lru_order() == []
    m.add_sequence(2, "a", list(range(10)))
    assert m.num_cached_tokens(2) == 0


def test_sequence_may_skip_the_prefix_cache() -> None:
    m = KVCacheManager(8, hash_seed=7)
    m.register_member("a", 4)
    first = run(m, 1, "a", list(range(10)))
    m.add_sequence(2, "a", list(range(10)), use_prefix_cache=False)
    assert m.num_cached_tokens(2) == 0
    assert m.allocate(2, 10)
    assert set(m.block_table(2).tolist()).isdisjoint(first)
    assert m.stats().members["a"].hit_tokens == 0


def test_fork_shares_full_pages_and_copies_a_partial_one() -> None:
    m = KVCacheManager(8, hash_seed=7)
    m.register_member("a", 4)
    assert run(m, 1, "a", list(range(10))) == [0, 1, 2]  # 2 full pages + 2 tokens in page 2
    assert m.fork(1, 2) == (2, 3)  # page 2 is copied on write into the next free page
    assert m.block_table(2).tolist() == [0, 1, 3]
    assert m.num_computed_tokens(2) == 10
    assert [m.page_info(p)[0] for p in range(4)] == [2, 2, 1, 1]  # refcounts
    m.append_tokens(2, [50])
    assert m.allocate(2, 1)  # the next token goes into its own copy: no new page
    assert m.block_table(2).tolist() == [0, 1, 3]
    m.check_invariants()
    # Whole pages only: nothing to copy.
    assert run(m, 3, "a", [*range(8), 7, 7, 7, 7]) == [0, 1, 4]
    assert m.fork(3, 4) == (-1, -1)
    assert m.block_table(4).tolist() == [0, 1, 4]
    # No page left for a copy: the fork is refused and nothing changes.
    m.fork(1, 5)
    m.fork(1, 6)
    m.fork(1, 7)
    assert m.stats().pages_free == 0
    before = m.stats()
    assert m.fork(1, 8) is None and m.stats() == before
    for seq_id in (1, 2, 3, 4, 5, 6, 7):
        m.free(seq_id)
    m.check_invariants()
    assert m.stats().pages_in_use == 0
    with pytest.raises(ValueError, match="already exists"):
        run(m, 9, "a", [1, 2, 3])
        m.fork(9, 9)


def test_every_member_reuses_its_history_to_the_token_whatever_its_page() -> None:
    """Members whose per-token KV differs 1x to 16x get 16 to 256 tokens per page; each
    reuses what it computed of a conversation to within the one token it must compute."""
    members = {"x1": 256, "x2": 128, "x4": 64, "x8": 32, "x16": 16}  # tokens per page
    m = KVCacheManager(512, hash_seed=3)
    for name, tpp in members.items():
        m.register_member(name, tpp)
    rid = 0
    for name in members:
        history = list(range(1, 300))
        for turn in range(5):  # each turn: the whole history, then a reply of 9 tokens
            m.add_sequence(rid, name, history)
            cached = m.num_cached_tokens(rid)
            if turn:  # not computed before: the reply's last token and the user's 8
                assert cached == len(history) - 9 >= len(history) - 16, (name, turn)
            assert m.allocate(rid, len(history) - cached)
            m.commit(rid, len(history) - cached)
            reply = [1000 + turn * 10 + i for i in range(9)]
            m.append_tokens(rid, reply)
            assert m.allocate(rid, 8)  # the reply's last token is sampled, not computed
            m.commit(rid, 8)
            m.free(rid)
            rid += 1
            history = [*history, *reply, 5000 + turn * 10, *range(7)]
    s = m.stats()
    assert all(s.members[n].slack_tokens == 0 for n in members)  # nothing live
    m.check_invariants()
