#include "kv_cache_core.h"

#include <algorithm>
#include <limits>

namespace blendrt {
namespace {

// A request's sequence (its tokens and pages), as errors name it.
std::string request_name(int64_t request_id) { return "sequence " + std::to_string(request_id); }

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

}  // namespace

KVCacheCore::KVCacheCore(int32_t num_pages, uint64_t hash_seed, bool enable_prefix_caching)
    : allocator_(num_pages), index_(num_pages), enable_prefix_caching_(enable_prefix_caching) {
  if (hash_seed == 0) {
    std::random_device rd;
    key_.k0 = (static_cast<uint64_t>(rd()) << 32) ^ rd();
    key_.k1 = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  } else {
    key_.k0 = splitmix64(hash_seed);
    key_.k1 = splitmix64(key_.k0);
  }
}

int32_t KVCacheCore::register_member(const std::string& name, int32_t tokens_per_page,
                                     int32_t window) {
  if (name.empty()) throw std::invalid_argument("member name must not be empty");
  if (window < 0) {
    throw std::invalid_argument("member '" + name + "': window must be >= 0, got " +
                                std::to_string(window));
  }
  if (tokens_per_page <= 0) {
    throw std::invalid_argument("member '" + name + "': tokens_per_page must be positive, got " +
                                std::to_string(tokens_per_page));
  }
  if (static_cast<int64_t>(allocator_.num_pages()) * tokens_per_page > INT32_MAX) {
    throw std::invalid_argument("member '" + name + "': num_pages * tokens_per_page overflows " +
                                "int32 slot ids; use larger pages or a smaller pool");
  }
  if (member_ids_.count(name)) {
    throw std::invalid_argument("member '" + name + "' is already registered");
  }
  MemberInfo info;
  info.name = name;
  info.tokens_per_page = tokens_per_page;
  info.window = window;
  // NOTE: the chain's root names the member, so identical token ids of two members never
  // map to the same key: members never share pages.
  const std::string tagged = "blendrt.member:" + name;
  info.root = siphash128(tagged.data(), tagged.size(), key_);
  const auto id = static_cast<int32_t>(members_.size());
  members_.push_back(std::move(info));
  member_ids_.emplace(name, id);
  return id;
}

const MemberInfo& KVCacheCore::member(int32_t member_id) const {
  if (member_id < 0 || member_id >= num_members()) {
    throw NotFoundError("unknown member id " + std::to_string(member_id) + " (" +
                        std::to_string(num_members()) + " registered)");
  }
  return members_[member_id];
}

Sequence& KVCacheCore::seq(int64_t request_id) {
  auto it = seqs_.find(request_id);
  if (it == seqs_.end()) {
    throw NotFoundError("unknown " + request_name(request_id) + " (never added, or already freed)");
  }
  return it->second;
}

const Sequence& KVCacheCore::sequence(int64_t request_id) const {
  return const_cast<KVCacheCore*>(this)->seq(request_id);
}

void KVCacheCore::add_sequence(int64_t request_id, int32_t member_id, const int32_t* token_ids,
                               size_t n, bool use_prefix_cache) {
  member(member_id);  // validates
  if (seqs_.count(request_id)) throw std::invalid_argument(request_name(request_id) + " already exists");
  if (n == 0) throw std::invalid_argument(request_name(request_id) + ": token_ids must not be empty");
  if (n > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    throw std::invalid_argument(request_name(request_id) + ": too many tokens");
  }
  Sequence s;
  s.member = member_id;
  s.token_ids.assign(token_ids, token_ids + n);
  s.has_allocated = !use_prefix_cache;  // no lookup will happen
  seqs_.emplace(request_id, std::move(s));
  ++members_[member_id].num_sequences;
}

void KVCacheCore::append_tokens(int64_t request_id, const int32_t* token_ids, size_t n) {
  Sequence& s = seq(request_id);
  if (s.token_ids.size() + n > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    throw std::invalid_argument(request_name(request_id) + ": too many tokens");
  }
  s.token_ids.insert(s.token_ids.end(), token_ids, token_ids + n);
}

void KVCacheCore::memoize_keys(Sequence& s, int32_t num_pages) {
  const int32_t tpp = members_[s.member].tokens_per_page;
  while (static_cast<int32_t>(s.page_keys.size()) < num_pages) {
    const size_t i = s.page_keys.size();
    const Hash128& parent = i == 0 ? members_[s.member].root : s.page_keys[i - 1];
    s.page_keys.push_back(chain_hash(parent, s.token_ids.data() + i * tpp, tpp, key_));
  }
}

KVCacheCore::Lookup KVCacheCore::lookup(Sequence& s) {
  const int32_t tpp = members_[s.member].tokens_per_page;
  // NOTE: at least the last known token is always computed: its logits are needed.
  const auto reusable = static_cast<int32_t>(s.token_ids.size()) - 1;
  Lookup found;
  const int32_t max_pages = reusable / tpp;
  // NOTE: with a window, the prefix of pages [0, i) is usable when the pages the query at
  // position i * tpp reads are all cached; pages before its window may have been evicted
  // (they stay kReleased in the hit list). Without one, every page must be cached.
  const MemberInfo& m = members_[s.member];
  std::vector<int32_t> chain;  // {logical page: cached page or kReleased}
  int32_t run_start = 0;       // first page of the current run of cached pages
  size_t best = 0;
  for (int32_t i = 0; i < max_pages; ++i) {
    memoize_keys(s, i + 1);
    const int32_t page = index_.find(s.page_keys[i]);
    if (page < 0) {
      if (m.window == 0) break;
      run_start = i + 1;
    }
    chain.push_back(page);
    if (page >= 0 && run_start <= first_page_in_window(m, static_cast<int64_t>(i + 1) * tpp)) {
      best = chain.size();
    }
  }
  chain.resize(best);
  if (m.window > 0 && best > 0) {
    const int32_t first = first_page_in_window(m, static_cast<int64_t>(best) * tpp);
    for (int32_t i = 0; i < first; ++i) chain[i] = kReleased;  // not needed: not taken
  }
  found.hits = std::move(chain);
  // Where the chain of full pages ends, a cached page sharing the next tokens' start (a
  // partly filled one, or a full one the sequence leaves midway) is reused up to the token.
  const auto i = static_cast<int32_t>(found.hits.size());
  const int32_t room = std::min(tpp, reusable - i * tpp);
  if (room > 0) {
    const Hash128& parent = i == 0 ? members_[s.member].root : s.page_keys[i - 1];
    const auto [page, length] = index_.longest_child(parent, s.token_ids.data() + i * tpp, room);
    found.partial_page = page;
    found.partial_tokens = length;
  }
  return found;
}

int32_t KVCacheCore::num_cached_tokens(int64_t request_id) {
  Sequence& s = seq(request_id);
  if (s.has_allocated) return 0;
  return lookup(s).num_tokens(members_[s.member].tokens_per_page);
}

KVCacheCore::Plan KVCacheCore::plan(Sequence& s, int32_t num_new_tokens) {
  if (num_new_tokens < 0) {
    throw std::invalid_argument("num_new_tokens must be >= 0, got " +
                                std::to_string(num_new_tokens));
  }
  const int32_t tpp = members_[s.member].tokens_per_page;
  Plan p;
  int64_t num_computed = s.num_computed_tokens;
  int64_t num_held = static_cast<int64_t>(s.block_table.size());
  if (!s.has_allocated) {
    p.found = lookup(s);
    num_computed = p.found.num_tokens(tpp);
    num_held = static_cast<int64_t>(p.found.hits.size());
  }
  const int64_t num_tokens = num_computed + num_new_tokens;
  if (num_tokens > static_cast<int64_t>(s.token_ids.size())) {
    throw std::invalid_argument("cannot allocate " + std::to_string(num_new_tokens) +
                                " new tokens: only " +
                                std::to_string(s.token_ids.size() - num_computed) +
                                " known tokens are not computed yet");
  }
  const int64_t num_pages = ceil_div(num_tokens, tpp);
  if (num_pages > allocator_.num_pages()) {
    throw std::invalid_argument("a sequence of " + std::to_string(num_tokens) +
                                " tokens needs " + std::to_string(num_pages) +
                                " pages but the pool has only " +
                                std::to_string(allocator_.num_pages()));
  }
  p.num_new_pages = static_cast<int32_t>(std::max<int64_t>(0, num_pages - num_held));
  p.num_available = allocator_.num_available();
  for (int32_t page : p.found.hits) {
    // taking a cached page removes it from the LRU
    if (page != kReleased && allocator_.is_cached(page)) --p.num_available;
  }
  if (p.found.partial_tokens > 0 && allocator_.is_cached(p.found.partial_page)) {
    --p.num_available;  // held while its copy's page is taken
  }
  return p;
}

bool KVCacheCore::can_allocate(int64_t request_id, int32_t num_new_tokens) {
  const Plan p = plan(seq(request_id), num_new_tokens);
  return p.num_new_pages <= p.num_available;
}

bool KVCacheCore::allocate(int64_t request_id, int32_t num_new_tokens) {
  Sequence& s = seq(request_id);
  const Plan p = plan(s, num_new_tokens);
  if (p.num_new_pages > p.num_available) return false;
  MemberInfo& m = members_[s.member];
  const bool first = !s.has_allocated;
  const int32_t src = first && p.found.partial_tokens > 0 ? p.found.partial_page : -1;
  if (first) {
    // NOTE: hits (and the page a partial hit copies) are referenced before new pages are
    // taken, so taking cannot evict them.
    for (int32_t page : p.found.hits) {
      if (page != kReleased) allocator_.ref(page);
      s.num_released_pages += page == kReleased;
      s.block_table.push_back(page);
    }
    if (src >= 0) allocator_.ref(src);
    const int32_t num_hit_tokens = p.found.num_tokens(m.tokens_per_page);
    s.num_computed_tokens = num_hit_tokens;
    s.num_registered_pages = static_cast<int32_t>(p.found.hits.size());
    s.has_allocated = true;
    m.hit_tokens += num_hit_tokens;
    m.miss_tokens += static_cast<int64_t>(s.token_ids.size()) - num_hit_tokens;
  }
  for (int32_t i = 0; i < p.num_new_pages; ++i) {
    bool evicted = false;
    const int32_t page = allocator_.take(s.member, &evicted);
    if (evicted) index_.erase_page(page);
    if (i == 0 && src >= 0) copies_.emplace_back(src, page);  // the partial hit's copy
    s.block_table.push_back(page);
  }
  if (src >= 0) allocator_.unref(src);
  return true;
}

std::vector<std::pair<int32_t, int32_t>> KVCacheCore::take_copies() {
  std::vector<std::pair<int32_t, int32_t>> out;
  out.swap(copies_);
  return out;
}

void KVCacheCore::commit(int64_t request_id, int32_t num_tokens) {
  Sequence& s = seq(request_id);
  const int32_t tpp = members_[s.member].tokens_per_page;
  const int64_t num_computed = static_cast<int64_t>(s.num_computed_tokens) + num_tokens;
  const int64_t capacity = static_cast<int64_t>(s.block_table.size()) * tpp;
  if (num_tokens < 0 || num_computed > capacity ||
      num_computed > static_cast<int64_t>(s.token_ids.size())) {
    throw std::invalid_argument("cannot commit " + std::to_string(num_tokens) + " tokens to " +
                                request_name(request_id) + ": " + std::to_string(s.num_computed_tokens) +
                                " computed, " + std::to_string(capacity) + " allocated, " +
                                std::to_string(s.token_ids.size()) + " known");
  }
  s.num_computed_tokens = static_cast<int32_t>(num_computed);
  if (!enable_prefix_caching_) return release_before_window(s);
  const auto num_full = static_cast<int32_t>(num_computed / tpp);
  memoize_keys(s, num_full);
  for (int32_t i = s.num_registered_pages; i < num_full; ++i) {
    const int32_t page = s.block_table[i];
    if (page == kReleased) continue;  // a windowed hit skipped it
    // NOTE: a page computed twice (two sequences prefilling the same text at once) is
    // registered once; the duplicate stays uncached and is freed with its sequence.
    const Hash128& parent = i == 0 ? members_[s.member].root : s.page_keys[i - 1];
    if (index_.insert(s.page_keys[i], parent, page, s.token_ids.data() + i * tpp, tpp)) {
      allocator_.set_registered(page);
    }
  }
  s.num_registered_pages = std::max(s.num_registered_pages, num_full);
  release_before_window(s);
}

int32_t KVCacheCore::first_page_in_window(const MemberInfo& m, int64_t position) const {
  if (m.window == 0) return 0;
  return static_cast<int32_t>(std::max<int64_t>(0, position - m.window + 1) / m.tokens_per_page);
}

void KVCacheCore::release_before_window(Sequence& s) {
  const MemberInfo& m = members_[s.member];
  if (m.window == 0) return;
  // NOTE: queries still to come sit at positions >= num_computed_tokens, so none reads a
  // page before the one this position's window starts in. Released heads first: the LRU
  // evicts them before the pages the window still covers.
  const int32_t first = std::min(first_page_in_window(m, s.num_computed_tokens),
                                 static_cast<int32_t>(s.block_table.size()));
  for (; s.num_released_pages < first; ++s.num_released_pages) {
    int32_t& page = s.block_table[s.num_released_pages];
    if (page != kReleased) {
      allocator_.unref(page);
      ++members_[s.member].released_pages;
    }
    page = kReleased;
  }
}

void KVCacheCore::free(int64_t request_id) {
  Sequence& s = seq(request_id);
  register_partial_page(s);
  // NOTE: released last page first, so within one sequence the LRU queue evicts the tail
  // of a prefix before its head (a head evicted first would strand the tail).
  for (auto it = s.block_table.rbegin(); it != s.block_table.rend(); ++it) {
    if (*it != kReleased) allocator_.unref(*it);
  }
  --members_[s.member].num_sequences;
  seqs_.erase(request_id);
}

void KVCacheCore::register_partial_page(Sequence& s) {
  // NOTE: a partly filled page is offered to the index only when its sequence lets it go:
  // until then it is still being written. Only its own (refcount 1): a forked partial page
  // is a copy, never shared.
  const int32_t tpp = members_[s.member].tokens_per_page;
  const int32_t i = s.num_computed_tokens / tpp, n = s.num_computed_tokens % tpp;
  if (!enable_prefix_caching_ || n == 0 || i >= static_cast<int32_t>(s.block_table.size())) {
    return;
  }
  const int32_t page = s.block_table[i];
  if (page == kReleased || index_.contains_page(page) || allocator_.refcount(page) != 1) return;
  memoize_keys(s, i);
  const Hash128& parent = i == 0 ? members_[s.member].root : s.page_keys[i - 1];
  if (index_.insert_partial(parent, page, s.token_ids.data() + i * tpp, n)) {
    allocator_.set_registered(page);
  }
}

std::pair<int32_t, int32_t> KVCacheCore::fork(int64_t parent_id, int64_t child_id) {
  if (seqs_.count(child_id)) throw std::invalid_argument(request_name(child_id) + " already exists");
  const Sequence& parent = seq(parent_id);
  if (!parent.has_allocated) {
    throw std::invalid_argument("cannot fork " + request_name(parent_id) + ": it has no pages yet");
  }
  const int32_t tpp = members_[parent.member].tokens_per_page;
  const auto num_pages = static_cast<size_t>(ceil_div(parent.num_computed_tokens, tpp));
  const bool partial = parent.num_computed_tokens % tpp != 0;
  if (partial && allocator_.num_available() == 0) return {-2, -2};
  Sequence child = parent;
  child.block_table.resize(num_pages);
  child.page_keys.resize(std::min(child.page_keys.size(), num_pages));
  std::pair<int32_t, int32_t> copy{-1, -1};
  for (size_t i = 0; i < num_pages; ++i) {
    if (partial && i + 1 == num_pages) {
      bool evicted = false;
      const int32_t page = allocator_.take(child.member, &evicted);
      if (evicted) index_.erase_page(page);
      copy = {child.block_table[i], page};
      child.block_table[i] = page;
    } else if (child.block_table[i] != kReleased) {
      allocator_.ref(child.block_table[i]);
    }
  }
  ++members_[child.member].num_sequences;
  seqs_.emplace(child_id, std::move(child));
  return copy;
}

int64_t KVCacheCore::slack_tokens(int32_t member_id) const {
  const int64_t tpp = member(member_id).tokens_per_page;
  int64_t slack = 0;
  for (const auto& [id, s] : seqs_) {
    if (s.member == member_id) {
      slack += static_cast<int64_t>(s.block_table.size()) * tpp - s.num_computed_tokens;
    }
  }
  return slack;
}

int32_t KVCacheCore::clear_prefix_cache() {
  int32_t num_evicted = 0;
  for (int32_t page = allocator_.lru_front(); page >= 0; page = allocator_.lru_front()) {
    index_.erase_page(page);
    allocator_.unregister(page);
    ++num_evicted;
  }
  return num_evicted;
}

void KVCacheCore::check_invariants() const {
  allocator_.check_invariants();
  index_.check_invariants();
  auto fail = [](const std::string& what) { throw std::logic_error("kv cache: " + what); };
  std::vector<int32_t> refs(allocator_.num_pages(), 0);
  std::vector<int64_t> live(members_.size(), 0);
  for (const auto& [id, s] : seqs_) {
    const int32_t tpp = members_[s.member].tokens_per_page;
    ++live[s.member];
    for (size_t i = 0; i < s.block_table.size(); ++i) {
      const int32_t page = s.block_table[i];
      if (page == kReleased) {
        if (static_cast<int32_t>(i) >= s.num_released_pages) fail("a live slot has no page");
        continue;
      }
      ++refs[page];
      if (allocator_.owner(page) != s.member) fail("page owned by another member");
    }
    if (s.num_computed_tokens > static_cast<int64_t>(s.block_table.size()) * tpp) {
      fail(request_name(id) + " computed beyond its pages");
    }
  }
  for (int32_t p = 0; p < allocator_.num_pages(); ++p) {
    if (refs[p] != allocator_.refcount(p)) {
      fail("page " + std::to_string(p) + " refcount " + std::to_string(allocator_.refcount(p)) +
           " != " + std::to_string(refs[p]) + " references");
    }
    if (index_.contains_page(p) != allocator_.is_registered(p)) {
      fail("page " + std::to_string(p) + " cached flag disagrees with the index");
    }
  }
  for (size_t m = 0; m < members_.size(); ++m) {
    if (live[m] != members_[m].num_sequences) fail("live sequence count mismatch");
  }
}

}  // namespace blendrt
