// KVCacheCore: members, sequences and their block tables over the shared page pool, with
// per-member prefix caching. It manages integers only (page ids, refcounts, keys); the KV
// bytes live in a torch tensor owned by Python (blendrt/cache/pool.py).
//
// A sequence's block table maps its logical pages to physical pages of the pool. With
// tokens_per_page = 4 and 10 tokens, 6 of them computed:
//
//   token ids     | t0 t1 t2 t3 | t4 t5 t6 t7 | t8 t9 .. .. |
//   logical page  |      0      |      1      |      2      |
//   block_table   [     17,           4,           42      ]   (any physical page ids)
//   state         | cached, may | KV written, | partial:    |
//                 | be shared   | full: reg-  | never       |
//                 | (refcnt>=1) | istered at  | cached      |
//                 |             | commit      |             |
//                             num_computed_tokens = 6 ^
//
// A member whose every layer has a sliding window releases the pages that fall wholly
// before the window of every query still to come: block_table keeps their slots, as
// kReleased (-1); full pages were registered at commit, so they stay in the prefix cache
// (LRU) and another sequence may still reuse them. A windowed lookup needs only the pages
// its first query's window reaches: earlier pages of the chain may be evicted.
//
// Lifecycle: add_sequence(ids) -> allocate(n) [first call reuses the longest cached prefix]
// -> build_batch -> forward writes KV -> commit(n) [registers newly full pages]
// -> append_tokens(sampled) -> allocate(1) -> ... -> free() [cached pages go to the LRU queue].
#pragma once

#include <cstdint>
#include <random>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "hash128.h"
#include "page_allocator.h"
#include "prefix_index.h"

namespace blendrt {

// An unknown member or sequence id (KeyError in Python).
class NotFoundError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A block-table slot whose page was released (wholly before the sliding window).
constexpr int32_t kReleased = -1;

struct MemberInfo {
  std::string name;
  int32_t tokens_per_page = 0;
  // Sliding window of every layer, in tokens (0: some layer sees the whole sequence). A
  // query at position p reads keys in (p - window, p]: pages wholly before that for every
  // future query are released while the sequence runs.
  int32_t window = 0;
  Hash128 root;              // key of the (virtual) page before the first one
  int64_t hit_tokens = 0;    // prompt tokens served from the prefix cache
  int64_t miss_tokens = 0;   // prompt tokens that had to be computed
  int64_t num_sequences = 0; // live sequences
  int64_t released_pages = 0; // pages released before a window while their sequence ran
};

struct Sequence {
  int32_t member = -1;
  std::vector<int32_t> token_ids;    // every known token: the prompt, then appended ones
  std::vector<int32_t> block_table;  // {logical page: physical page_id}
  std::vector<Hash128> page_keys;    // {logical page: key}, memoised for full pages
  int32_t num_computed_tokens = 0;   // tokens whose KV is written in the pool
  int32_t num_registered_pages = 0;  // block_table[:n] were offered to the prefix index
  // block_table[:n] are released (kReleased): before every future query's window.
  int32_t num_released_pages = 0;
  bool has_allocated = false;        // the first allocate() consulted the prefix cache
};

class KVCacheCore {
 public:
  // hash_seed = 0 draws a random SipHash key (the default); any other value is reproducible.
  // With enable_prefix_caching = false no page is ever registered, so nothing is ever reused.
  explicit KVCacheCore(int32_t num_pages, uint64_t hash_seed = 0, bool enable_prefix_caching = true);

  // window > 0: every layer of the member attends to at most `window` tokens back.
  int32_t register_member(const std::string& name, int32_t tokens_per_page, int32_t window = 0);
  int32_t num_members() const { return static_cast<int32_t>(members_.size()); }
  const MemberInfo& member(int32_t member_id) const;

  // use_prefix_cache = false: the sequence computes every token (e.g. to score all of
  // them); its full pages are still registered for others.
  void add_sequence(int64_t request_id, int32_t member_id, const int32_t* token_ids, size_t n,
                    bool use_prefix_cache = true);
  void append_tokens(int64_t request_id, const int32_t* token_ids, size_t n);
  bool has_sequence(int64_t request_id) const { return seqs_.count(request_id) != 0; }
  const Sequence& sequence(int64_t request_id) const;
  size_t num_sequences() const { return seqs_.size(); }

  // Tokens of the sequence's prompt found in the prefix cache: the full pages of the chain,
  // then the longest common prefix with a cached page where it ends (to the token); at least
  // one token is always left to compute (its logits are needed). 0 once it allocated.
  int32_t num_cached_tokens(int64_t request_id);
  // Whether allocate(request_id, num_new_tokens) would succeed now.
  bool can_allocate(int64_t request_id, int32_t num_new_tokens);
  // Ensures pages for num_computed_tokens + num_new_tokens tokens. The first call takes the
  // cached prefix (refcount + 1) and sets num_computed_tokens to its length; a partial hit
  // gets a fresh page, and a copy {cached page, fresh page} the caller must make on the
  // device before the step's forward (take_copies). Returns false and changes nothing when
  // too few pages are free or cached; throws ValueError when the pool could never hold it.
  bool allocate(int64_t request_id, int32_t num_new_tokens);
  // The page copies allocations asked for since the last call, in order: {src, dst}.
  std::vector<std::pair<int32_t, int32_t>> take_copies();
  // Marks num_tokens more tokens as computed and registers the pages they fill.
  void commit(int64_t request_id, int32_t num_tokens);
  // Releases the sequence: registered pages (its partly filled last page registered now)
  // go to the LRU queue, the others to the free queue.
  void free(int64_t request_id);
  // A new sequence child_id with parent_id's tokens and computed pages, shared (refcount
  // + 1): the candidates of one prompt are prefilled once. A partially computed last page
  // cannot be shared (both would write their next tokens into it): the child gets a fresh
  // page there, and the caller copies the parent's page into it (copy on write). Returns the
  // copy as {src, dst} ({-1, -1}: none needed), or {-2, -2} with nothing changed when no
  // page is available for the copy.
  std::pair<int32_t, int32_t> fork(int64_t parent_id, int64_t child_id);
  // Evicts every cached, unreferenced page; returns how many.
  int32_t clear_prefix_cache();

  int32_t tokens_per_page(int32_t member_id) const { return member(member_id).tokens_per_page; }
  // Token slots the member's live sequences hold in their pages but have not filled: the
  // page memory the page granularity costs it right now.
  int64_t slack_tokens(int32_t member_id) const;
  const PageAllocator& allocator() const { return allocator_; }
  size_t num_indexed_pages() const { return index_.size(); }
  bool prefix_caching_enabled() const { return enable_prefix_caching_; }
  // Verifies allocator, index and that refcounts equal block-table references.
  void check_invariants() const;

 private:
  Sequence& seq(int64_t request_id);
  void memoize_keys(Sequence& s, int32_t num_pages);
  // The longest cached prefix (capped to leave one token to compute).
  struct Lookup {
    std::vector<int32_t> hits;  // full pages of the chain
    int32_t partial_page = -1;  // then a cached page sharing the next tokens' start
    int32_t partial_tokens = 0; // how many of them
    int32_t num_tokens(int32_t tpp) const {
      return static_cast<int32_t>(hits.size()) * tpp + partial_tokens;
    }
  };
  Lookup lookup(Sequence& s);
  struct Plan {
    Lookup found;               // the cached prefix to take (first allocation only)
    int32_t num_new_pages = 0;
    int32_t num_available = 0;  // pages take() may hand out, found pages excluded
  };
  void register_partial_page(Sequence& s);
  // The first page a query at `position` can read (0 without a window).
  int32_t first_page_in_window(const MemberInfo& m, int64_t position) const;
  // Releases the pages before every future query's window.
  void release_before_window(Sequence& s);
  Plan plan(Sequence& s, int32_t num_new_tokens);

  PageAllocator allocator_;
  PrefixIndex index_;
  bool enable_prefix_caching_;
  SipKey key_;
  std::vector<MemberInfo> members_;                    // {member_id: info}
  std::unordered_map<std::string, int32_t> member_ids_; // {name: member_id}
  std::unordered_map<int64_t, Sequence> seqs_;          // {request_id: sequence}
  std::vector<std::pair<int32_t, int32_t>> copies_;     // partial hits' {src, dst}, pending
};

}  // namespace blendrt
