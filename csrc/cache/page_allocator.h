// Page allocator of the shared KV pool: page ids, refcounts, one free queue and ONE LRU queue
// of cached pages shared by all members.
//
// Vocabulary (the same in Python): a page is "registered" while it holds a prefix page the
// index knows; every page is in exactly one state:
//
//   free      refcount 0, not registered, in the free queue
//   cached    refcount 0, registered, in the LRU queue (reused by a prefix hit, or evicted)
//   in use    refcount > 0, in no queue (registered or not)
//
//   take():  free -> in use; if no page is free, the oldest cached page is evicted -> in use
//   ref():   cached -> in use (a prefix hit), or in use -> in use (refcount + 1)
//   unref(): in use -> in use, or at refcount 0 -> cached (registered) / free (not)
//
// Pages carry an owner tag (the member using them) so stats can be reported per member.
#pragma once

#include <cstdint>
#include <deque>
#include <vector>

namespace blendrt {

class PageAllocator {
 public:
  explicit PageAllocator(int32_t num_pages);

  int32_t num_pages() const { return static_cast<int32_t>(refcount_.size()); }
  int32_t num_free() const { return static_cast<int32_t>(free_queue_.size()); }
  int32_t num_cached() const { return num_cached_; }
  // Pages that take() can hand out now: free ones first, then cached ones.
  int32_t num_available() const { return num_free() + num_cached_; }

  // Takes a page for `owner` with refcount 1. Returns the page id; `*evicted` is set to true
  // when the page was an cached cached page (the caller must drop it from its index).
  // NOTE: never call with num_available() == 0 (checked, throws std::logic_error).
  int32_t take(int32_t owner, bool* evicted);
  // One more reference. An cached page leaves the LRU queue.
  void ref(int32_t page);
  // One reference less; at zero the page goes to the LRU tail if cached, else to the free queue.
  void unref(int32_t page);
  // Marks an in-use page as holding a registered prefix page.
  void set_registered(int32_t page);
  // Drops the cached mark; an cached page moves to the free queue.
  void unregister(int32_t page);
  // The oldest cached page, or -1 if none.
  int32_t lru_front() const { return lru_head_; }

  int32_t refcount(int32_t page) const { return refcount_[check(page)]; }
  bool is_registered(int32_t page) const { return registered_[check(page)] != 0; }
  bool is_cached(int32_t page) const;
  int32_t owner(int32_t page) const { return owner_[check(page)]; }

  // Per-owner counters, grown on demand.
  int64_t num_in_use(int32_t owner) const { return at(in_use_, owner); }
  int64_t num_cached_of(int32_t owner) const { return at(cached_of_, owner); }

  // Evictable pages, oldest first (for tests and debugging).
  std::vector<int32_t> lru_order() const;
  // Verifies queue membership, counters and links; throws std::logic_error on a violation.
  void check_invariants() const;

 private:
  static constexpr int32_t kNone = -1;

  int32_t check(int32_t page) const;
  static int64_t at(const std::vector<int64_t>& v, int32_t owner) {
    return owner >= 0 && owner < static_cast<int32_t>(v.size()) ? v[owner] : 0;
  }
  void bump(std::vector<int64_t>& v, int32_t owner, int64_t delta);
  void lru_push_back(int32_t page);
  void lru_remove(int32_t page);

  std::vector<int32_t> refcount_;  // {page_id: refcount}
  std::vector<uint8_t> registered_;    // {page_id: holds a registered prefix page}
  std::vector<int32_t> owner_;     // {page_id: owner tag}, -1 when free
  std::deque<int32_t> free_queue_; // page ids, taken from the front, returned to the back
  // Intrusive doubly linked LRU list over page ids: O(1) removal on a prefix hit.
  std::vector<int32_t> lru_prev_;  // {page_id: previous page id in LRU order or -1}
  std::vector<int32_t> lru_next_;  // {page_id: next page id in LRU order or -1}
  std::vector<uint8_t> in_lru_;    // {page_id: linked in the LRU list}
  int32_t lru_head_ = kNone;       // oldest cached page
  int32_t lru_tail_ = kNone;       // newest cached page
  int32_t num_cached_ = 0;
  std::vector<int64_t> in_use_;    // {owner: pages in use}
  std::vector<int64_t> cached_of_; // {owner: cached pages}
};

}  // namespace blendrt
