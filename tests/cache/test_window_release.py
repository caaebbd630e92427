"""Sliding-window members: pages wholly before every future query's window are released while
the sequence runs (their slots read -1), stay reusable in the prefix cache, and a later
lookup needs only the pages its window reaches."""

from __future__ import annotations

import numpy as np
import pytest

from blendrt.cache import KVCacheManager

TPP, WINDOW = 4, 6


def manager(num_pages: int = 32, window: int = WINDOW) -> KVCacheManager:
    m = KVCacheManager(num_pages, hash_seed=3)
    m.register_member("w", TPP, window=window)
    m.register_member("g", TPP)  # a global member beside it: never releases
    return m


def run(m: KVCacheManager, rid: int, tokens: list[int], chunks: list[int]) -> list[int]:
    """Allocates and commits `tokens` chunk by chunk; returns pages in use after each."""
    m.add_sequence(rid, "w", tokens)
    in_use = []
    for n in chunks:
        assert m.allocate(rid, n)
        m.commit(rid, n)
        m.check_invariants()
        in_use.append(m.num_pages_in_use)
    return in_use


def first_needed_page(num_computed: int) -> int:
    return max(0, num_computed - WINDOW + 1) // TPP


def test_pages_before_the_window_are_released_while_running() -> None:
    m = manager()
    tokens = list(range(10, 50))
    computed = 0
    m.add_sequence(1, "w", tokens)
    for n in (5, 1, 7, 3, 9, 2, 13):
        assert m.allocate(1, n)
        m.commit(1, n)
        computed += n
        table = m.block_table(1)
        released = first_needed_page(computed)
        assert (table[:released] == -1).all() and (table[released:] >= 0).all()
        # only the pages the window still reaches (and the one being filled) are held
        assert m.num_pages_in_use == len(table) - released
        m.check_invariants()
    # released full pages went to the prefix cache, not the free list
    assert m.stats().pages_cached == first_needed_page(computed)
    assert m.stats().members["w"].released_pages == first_needed_page(computed)
    assert m.stats().members["w"].window == WINDOW
    m.free(1)
    m.check_invariants()
    assert m.num_pages_in_use == 0


def test_a_global_member_releases_nothing() -> None:
    m = manager()
    m.add_sequence(2, "g", list(range(40)))
    assert m.allocate(2, 40)
    m.commit(2, 40)
    assert (m.block_table(2) >= 0).all() and m.num_pages_in_use == 10
    m.free(2)


def test_windowed_lookup_survives_evicted_heads() -> None:
    """The first turn's head pages are evicted (released first, so first in the LRU);
    the next turn of the conversation still reuses everything its window reaches."""
    m = manager(num_pages=12)
    turn1 = list(range(100, 130))  # 30 tokens: 7 full pages
    run(m, 1, turn1, [30])
    m.free(1)
    lru = m.lru_order()
    # fill the pool from another member until the two oldest cached pages are evicted
    m.add_sequence(9, "g", list(range(4 * (12 - len(lru) + 2))))
    assert m.allocate(9, 4 * (12 - len(lru) + 2))
    evicted = [p for p in lru if m.page_info(p)[1] is False]
    assert len(evicted) >= 2
    turn2 = turn1 + list(range(200, 210))
    m.add_sequence(3, "w", turn2)
    # all 7 full pages of turn 1 count as cached: the query at 28 reads keys from 23 on
    assert m.num_cached_tokens(3) >= 28
    assert m.allocate(3, len(turn2) - m.num_cached_tokens(3))
    table = m.block_table(3)
    assert (table[: first_needed_page(28)] == -1).all()
    m.check_invariants()
    m.free(3)
    m.free(9)
    m.check_invariants()


def test_global_lookup_stops_where_the_chain_breaks() -> None:
    m = KVCacheManager(12, hash_seed=3)
    m.register_member("g", TPP)
    m.register_member("x", TPP)
    tokens = list(range(100, 130))
    m.add_sequence(1, "g", tokens)
    assert m.allocate(1, 30)
    m.commit(1, 30)
    m.free(1)
    # evict the LRU front: for a global member the chain's tail is evicted first, so the
    # head is still reusable and the lookup stops at the first missing page
    m.add_sequence(9, "x", list(range(4 * 7)))
    assert m.allocate(9, 28)
    m.add_sequence(2, "g", tokens)
    cached = m.num_cached_tokens(2)
    assert cached < 28 and cached % TPP == 0


def test_fork_and_free_skip_released_slots() -> None:
    m = manager()
    run(m, 1, list(range(10, 33)), [23])
    copy = m.fork(1, 2)
    assert copy is not None
    np.testing.assert_array_equal(m.block_table(2)[: first_needed_page(23)], -1)
    m.check_invariants()
    m.free(1)
    m.check_invariants()
    m.free(2)
    m.check_invariants()
    assert m.num_pages_in_use == 0


def test_prefix_caching_off_releases_to_the_free_list() -> None:
    m = KVCacheManager(16, hash_seed=3, enable_prefix_caching=False)
    m.register_member("w", TPP, window=WINDOW)
    m.add_sequence(1, "w", list(range(40)))
    assert m.allocate(1, 40)
    m.commit(1, 40)
    assert m.stats().pages_cached == 0
    assert m.stats().pages_free == 16 - (10 - first_needed_page(40))
    m.free(1)
    m.check_invariants()


def test_negative_window_is_refused() -> None:
    m = KVCacheManager(4)
    with pytest.raises(ValueError, match="window must be >= 0"):
        m.register_member("w", TPP, window=-1)
