"""Property tests: random operation sequences over several members keep every invariant.

Besides the core's own check_invariants(), the test keeps a shadow copy of what each page
holds (the member, and the whole token prefix ending at the last token whose KV was committed
into it: a token's KV depends on everything before it) and checks that every prefix-cache hit
returns pages computed from exactly the sequence's prefix.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from blendrt.cache import KVCacheManager

MEMBERS = {"gptj": 3, "llama": 4, "tiny": 7}  # {name: tokens_per_page}
NUM_PAGES = 24
# A tiny alphabet and shared openings make prefix hits (and near misses) frequent.
PREFIXES = [[1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 9, 9, 9, 9], [9, 9, 9, 9, 5, 6, 7, 8], [5]]


class CacheMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.m = KVCacheManager(NUM_PAGES, hash_seed=11)
        for name, tpp in MEMBERS.items():
            self.m.register_member(name, tpp)
        self.next_id = 0
        self.live: dict[int, tuple[str, list[int]]] = {}  # {seq_id: (member, token ids)}
        self.shadow: dict[int, tuple[str, tuple[int, ...]]] = {}  # {page: (member, prefix)}

    @rule(
        member=st.sampled_from(sorted(MEMBERS)),
        prefix=st.sampled_from(PREFIXES),
        tail=st.lists(st.integers(0, 3), max_size=12),
    )
    def add(self, member: str, prefix: list[int], tail: list[int]) -> None:
        tokens = prefix + tail
        self.m.add_sequence(self.next_id, member, tokens)
        self.live[self.next_id] = (member, tokens)
        self.next_id += 1

    def _check_hits(self, seq_id: int) -> None:
        """Every computed token's KV, as the sequence's pages hold it, is its own."""
        member, tokens = self.live[seq_id]
        tpp = MEMBERS[member]
        table = self.m.block_table(seq_id).tolist()
        computed = self.m.num_computed_tokens(seq_id)
        for i in range(-(-computed // tpp)):
            held_member, held = self.shadow[table[i]]
            end = min(computed, (i + 1) * tpp)
            assert held_member == member and held[:end] == tuple(tokens[:end])

    @precondition(lambda self: self.live)
    @rule(data=st.data(), fraction=st.floats(0, 1))
    def allocate_and_compute(self, data: st.DataObject, fraction: float) -> None:
        seq_id = data.draw(st.sampled_from(sorted(self.live)))
        first = self.m.block_table(seq_id).size == 0
        cached = self.m.num_cached_tokens(seq_id) if first else 0
        computed = cached if first else self.m.num_computed_tokens(seq_id)
        remaining = len(self.live[seq_id][1]) - computed
        n = round(remaining * fraction)
        before = self.m.stats()
        if not self.m.allocate(seq_id, n):
            assert self.m.stats() == before  # a failed allocation changes nothing
            return
        for src, dst in self.m.take_copies():  # a partial hit: the page's KV copied
            self.shadow[dst] = self.shadow[src]
        if first:
            assert self.m.num_computed_tokens(seq_id) == cached
            self._check_hits(seq_id)
        # "Run the forward": write the tokens' KV into the shadow pages, then commit.
        member, tokens = self.live[seq_id]
        tpp = MEMBERS[member]
        table = self.m.block_table(seq_id).tolist()
        for pos in range(computed, computed + n):
            self.shadow[table[pos // tpp]] = (member, tuple(tokens[: pos + 1]))
        self.m.commit(seq_id, n)

    @precondition(lambda self: self.live)
    @rule(data=st.data(), new=st.lists(st.integers(0, 3), min_size=1, max_size=4))
    def append(self, data: st.DataObject, new: list[int]) -> None:
        seq_id = data.draw(st.sampled_from(sorted(self.live)))
        self.m.append_tokens(seq_id, new)
        self.live[seq_id][1].extend(new)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def fork(self, data: st.DataObject) -> None:
        seq_id = data.draw(st.sampled_from(sorted(self.live)))
        if self.m.block_table(seq_id).size == 0:
            return  # nothing allocated yet: nothing to share
        member, tokens = self.live[seq_id]
        before = self.m.stats()
        copy = self.m.fork(seq_id, self.next_id)
        if copy is None:  # no page for the copy on write
            assert self.m.stats() == before
            return
        src, dst = copy
        if src >= 0:  # the partial page's KV, copied on the device
            self.shadow[dst] = self.shadow[src]
        parent, child = self.m.block_table(seq_id).tolist(), self.m.block_table(self.next_id)
        computed = self.m.num_computed_tokens(seq_id)
        assert self.m.num_computed_tokens(self.next_id) == computed
        full = computed // MEMBERS[member]
        assert child.tolist()[:full] == parent[:full]  # full pages shared
        self.live[self.next_id] = (member, list(tokens))
        self.next_id += 1

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def free(self, data: st.DataObject) -> None:
        seq_id = data.draw(st.sampled_from(sorted(self.live)))
        self.m.free(seq_id)
        del self.live[seq_id]

    @rule()
    def clear(self) -> None:
        cached = self.m.stats().pages_cached
        assert self.m.clear_prefix_cache() == cached
        assert self.m.stats().pages_cached == 0

    @invariant()
    def consistent(self) -> None:
        self.m.check_invariants()
        s = self.m.stats()
        assert s.pages_free + s.pages_cached + s.pages_in_use == NUM_PAGES
        assert sum(ms.pages_in_use for ms in s.members.values()) == s.pages_in_use
        assert sum(ms.pages_cached for ms in s.members.values()) == s.pages_cached
        # Refcounts equal references from live block tables.
        refs: dict[int, int] = {}
        for seq_id in self.live:
            for page in self.m.block_table(seq_id).tolist():
                refs[page] = refs.get(page, 0) + 1
        for page in range(NUM_PAGES):
            refcount, cached, _ = self.m.page_info(page)
            assert refcount == refs.get(page, 0)
            # Each page is exactly one of free / cached-unreferenced / referenced.
            state = "in use" if refcount else ("cached" if cached else "free")
            assert (page in self.m.lru_order()) == (state == "cached")

    def teardown(self) -> None:
        for seq_id in list(self.live):
            self.m.free(seq_id)
        self.m.clear_prefix_cache()
        s = self.m.stats()
        assert s.pages_free == NUM_PAGES
        assert all(ms.pages_in_use == ms.pages_cached == 0 for ms in s.members.values())
        self.m.check_invariants()


CacheMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
TestCacheProperties = CacheMachine.TestCase
