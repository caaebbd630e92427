"""KVCacheManager: the typed Python face of the C++ core (`blendrt._core.KVCacheCore`).

The core keeps, for every sequence of every member, its token ids, its block table into the
shared pool and a count of computed tokens; it owns the page allocator (free queue, refcounts,
one LRU queue of cached-unreferenced pages for all members) and the prefix index (page keys
chained from a root that names the member). This layer validates names, converts arguments
to numpy, and returns dataclasses instead of dicts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

import blendrt._core as _core

IntArray = Sequence[int] | np.ndarray


@dataclass(frozen=True)
class BatchMetadata:
    """What one member's forward pass needs for a step (all int32 numpy arrays).

    Sequence b processes the new tokens at positions [context_lens[b] - query_len_b,
    context_lens[b]), where query_len_b = cu_seqlens_q[b + 1] - cu_seqlens_q[b].
    """

    input_ids: np.ndarray  # [T]
    positions: np.ndarray  # [T]
    slot_mapping: np.ndarray  # [T] page_id * tokens_per_page + position % tokens_per_page
    block_tables: np.ndarray  # [B, W] page ids, padded with -1
    cu_seqlens_q: np.ndarray  # [B + 1]
    context_lens: np.ndarray  # [B] cached + new tokens
    logits_indices: np.ndarray  # [B] row of each sequence's last new token
    max_query_len: int
    max_context_len: int

    @property
    def num_seqs(self) -> int:
        return self.context_lens.shape[0]

    @property
    def num_tokens(self) -> int:
        return self.input_ids.shape[0]


@dataclass(frozen=True)
class MemberCacheStats:
    name: str
    tokens_per_page: int
    pages_in_use: int  # referenced by at least one live sequence
    pages_cached: int  # registered and unreferenced: reusable, evicted in LRU order
    hit_tokens: int  # prompt tokens served from the prefix cache
    miss_tokens: int  # prompt tokens computed
    num_sequences: int
    slack_tokens: int  # slots live sequences hold in their pages but have not filled
    window: int  # tokens every layer sees back (0: unbounded)
    released_pages: int  # pages released before a window while their sequence ran

    @property
    def hit_rate(self) -> float:
        total = self.hit_tokens + self.miss_tokens
        return self.hit_tokens / total if total else 0.0


@dataclass(frozen=True)
class CacheStats:
    num_pages: int
    pages_free: int
    pages_cached: int
    pages_in_use: int
    members: dict[str, MemberCacheStats]  # {member name: stats}


def _ids32(token_ids: IntArray, what: str = "token_ids") -> np.ndarray:
    """int32 view of 1-D ints. int32 arrays pass untouched (the engine's hot path: the core
    validates counts); anything else is checked to be integral and in range first."""
    arr = np.asarray(token_ids)
    if arr.dtype == np.int32 and arr.ndim == 1:
        return arr
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a 1-D sequence of ints, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{what} must hold integers, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() > np.iinfo(np.int32).max):
        raise ValueError(f"{what} must lie in [0, 2**31), got range [{arr.min()}, {arr.max()}]")
    return arr.astype(np.int32)


class KVCacheManager:
    """Block tables, prefix caching and batch metadata for all members over one page pool."""

    def __init__(
        self, num_pages: int, *, hash_seed: int = 0, enable_prefix_caching: bool = True
    ) -> None:
        self._core = _core.KVCacheCore(num_pages, hash_seed, enable_prefix_caching)
        self._member_ids: dict[str, int] = {}  # {member name: member id}

    # ---- members -------------------------------------------------------------------------

    def register_member(self, name: str, tokens_per_page: int, *, window: int = 0) -> int:
        """window > 0: every layer of the member sees at most `window` tokens back, so pages
        wholly before every future query's window are released while a sequence runs
        (their block-table slots read -1; kernels start at the window's first page)."""
        member_id = self._core.register_member(name, tokens_per_page, window)
        self._member_ids[name] = member_id
        return member_id

    def member_id(self, name: str) -> int:
        try:
            return self._member_ids[name]
        except KeyError:
            known = ", ".join(self._member_ids) or "none"
            raise KeyError(f"unknown member {name!r} (registered: {known})") from None

    def tokens_per_page(self, name: str) -> int:
        return self._core.tokens_per_page(self.member_id(name))

    @property
    def num_pages(self) -> int:
        return self._core.num_pages

    @property
    def num_pages_in_use(self) -> int:
        """Pages referenced by live sequences (neither free nor cached-unreferenced)."""
        core = self._core
        return core.num_pages - core.num_free_pages - core.num_cached_pages

    # ---- sequences -----------------------------------------------------------------------

    def add_sequence(
        self, request_id: int, member: str, token_ids: IntArray, *, use_prefix_cache: bool = True
    ) -> None:
        """Registers a sequence and its known tokens; takes no pages yet. Without
        use_prefix_cache it computes every token (to score them all)."""
        ids = _ids32(token_ids)
        if ids.size and ids.min() < 0:
            raise ValueError(f"token_ids must be non-negative, got {ids.min()}")
        self._core.add_sequence(request_id, self.member_id(member), ids, use_prefix_cache)

    def append_tokens(self, request_id: int, token_ids: IntArray) -> None:
        self._core.append_tokens(request_id, _ids32(token_ids))

    def append_token_batch(self, request_ids: IntArray, token_ids: IntArray) -> None:
        """Appends token_ids[i] to request_ids[i] (one decoded token per sequence)."""
        self._core.append_token_batch(np.asarray(request_ids, np.int64), _ids32(token_ids))

    def has_sequence(self, request_id: int) -> bool:
        return self._core.has_sequence(request_id)

    def num_cached_tokens(self, request_id: int) -> int:
        """Prompt tokens a first allocate() would take from the prefix cache."""
        return self._core.num_cached_tokens(request_id)

    def can_allocate(self, request_id: int, num_new_tokens: int) -> bool:
        return self._core.can_allocate(request_id, num_new_tokens)

    def allocate(self, request_id: int, num_new_tokens: int) -> bool:
        """Pages for `num_new_tokens` more tokens (the cached prefix first, on the first call).

        False, with nothing changed, when the pool is short right now; ValueError when the
        sequence could never fit in the pool.
        """
        return self._core.allocate(request_id, num_new_tokens)

    def allocate_batch(self, request_ids: IntArray, num_new_tokens: IntArray) -> int:
        """Allocates in order up to the first sequence that does not fit; returns the count."""
        return self._core.allocate_batch(
            np.asarray(request_ids, np.int64), _ids32(num_new_tokens, "num_new_tokens")
        )

    def commit(self, request_id: int, num_tokens: int) -> None:
        """Records that the KV of `num_tokens` more tokens is written; caches filled pages."""
        self._core.commit(request_id, num_tokens)

    def commit_batch(self, request_ids: IntArray, num_tokens: IntArray) -> None:
        self._core.commit_batch(np.asarray(request_ids, np.int64), _ids32(num_tokens, "num_tokens"))

    def free(self, request_id: int) -> None:
        """Releases a sequence; its cached pages stay in the LRU queue for later hits."""
        self._core.free(request_id)

    def take_copies(self) -> list[tuple[int, int]]:
        """The (src, dst) page copies that allocations since the last call need made on the
        device before the step's forward: a partial prefix hit reuses a cached page's first
        tokens by copying it into the sequence's own page."""
        return self._core.take_copies()

    def fork(self, parent_id: int, child_id: int) -> tuple[int, int] | None:
        """A new sequence sharing the parent's tokens and computed pages (n candidates of one
        prompt, prefilled once). Returns the (src, dst) page copy the caller must make on the
        device (copy on write of a partially computed last page), (-1, -1) if none, or None
        with nothing changed when no page is free for that copy."""
        src, dst = self._core.fork(parent_id, child_id)
        return None if src == -2 else (src, dst)

    def num_computed_tokens(self, request_id: int) -> int:
        return self._core.sequence_info(request_id)["num_computed_tokens"]

    def block_table(self, request_id: int) -> np.ndarray:
        return self._core.sequence_info(request_id)["block_table"]

    # ---- steps ---------------------------------------------------------------------------

    def build_batch(
        self, request_ids: IntArray, num_new_tokens: IntArray, *, min_block_table_width: int = 0
    ) -> BatchMetadata:
        """Metadata for one member's forward over the next `num_new_tokens[i]` tokens of
        each `request_ids[i]` (pages must be allocated)."""
        raw = self._core.build_batch(
            np.asarray(request_ids, np.int64),
            _ids32(num_new_tokens, "num_new_tokens"),
            min_block_table_width,
        )
        return BatchMetadata(**raw)

    # ---- cache-wide ----------------------------------------------------------------------

    def clear_prefix_cache(self) -> int:
        """Evicts every cached unreferenced page; returns how many."""
        return self._core.clear_prefix_cache()

    def stats(self) -> CacheStats:
        members = {
            name: MemberCacheStats(**self._core.member_stats(member_id))
            for name, member_id in self._member_ids.items()
        }
        free, cached = self._core.num_free_pages, self._core.num_cached_pages
        return CacheStats(
            num_pages=self.num_pages,
            pages_free=free,
            pages_cached=cached,
            pages_in_use=self.num_pages - free - cached,
            members=members,
        )

    def page_info(self, page_id: int) -> tuple[int, bool, int]:
        """(refcount, cached, owner member id or -1) of one page."""
        return self._core.page_info(page_id)

    def lru_order(self) -> list[int]:
        """Evictable page ids, the next to be evicted first."""
        return self._core.lru_order()

    def check_invariants(self) -> None:
        """Raises RuntimeError if any bookkeeping invariant is broken (tests, debugging)."""
        self._core.check_invariants()
