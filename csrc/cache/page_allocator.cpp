#include "page_allocator.h"

#include <stdexcept>
#include <string>

namespace blendrt {

PageAllocator::PageAllocator(int32_t num_pages) {
  if (num_pages <= 0) {
    throw std::invalid_argument("num_pages must be positive, got " + std::to_string(num_pages));
  }
  refcount_.assign(num_pages, 0);
  registered_.assign(num_pages, 0);
  owner_.assign(num_pages, kNone);
  lru_prev_.assign(num_pages, kNone);
  lru_next_.assign(num_pages, kNone);
  in_lru_.assign(num_pages, 0);
  for (int32_t p = 0; p < num_pages; ++p) free_queue_.push_back(p);
}

int32_t PageAllocator::check(int32_t page) const {
  if (page < 0 || page >= num_pages()) {
    throw std::out_of_range("page id " + std::to_string(page) + " out of range [0, " +
                            std::to_string(num_pages()) + ")");
  }
  return page;
}

bool PageAllocator::is_cached(int32_t page) const { return in_lru_[check(page)] != 0; }

void PageAllocator::bump(std::vector<int64_t>& v, int32_t owner, int64_t delta) {
  if (owner < 0) return;
  if (owner >= static_cast<int32_t>(v.size())) v.resize(owner + 1, 0);
  v[owner] += delta;
}

void PageAllocator::lru_push_back(int32_t page) {
  lru_prev_[page] = lru_tail_;
  lru_next_[page] = kNone;
  if (lru_tail_ != kNone) lru_next_[lru_tail_] = page;
  lru_tail_ = page;
  if (lru_head_ == kNone) lru_head_ = page;
  in_lru_[page] = 1;
  ++num_cached_;
  bump(cached_of_, owner_[page], +1);
}

void PageAllocator::lru_remove(int32_t page) {
  const int32_t prev = lru_prev_[page];
  const int32_t next = lru_next_[page];
  (prev != kNone ? lru_next_[prev] : lru_head_) = next;
  (next != kNone ? lru_prev_[next] : lru_tail_) = prev;
  lru_prev_[page] = lru_next_[page] = kNone;
  in_lru_[page] = 0;
  --num_cached_;
  bump(cached_of_, owner_[page], -1);
}

int32_t PageAllocator::take(int32_t owner, bool* evicted) {
  int32_t page;
  if (!free_queue_.empty()) {
    page = free_queue_.front();
    free_queue_.pop_front();
    *evicted = false;
  } else if (lru_head_ != kNone) {
    // NOTE: cached pages are reused only when no free page is left, oldest first.
    page = lru_head_;
    lru_remove(page);
    registered_[page] = 0;
    *evicted = true;
  } else {
    throw std::logic_error("PageAllocator::take: no page available");
  }
  refcount_[page] = 1;
  owner_[page] = owner;
  bump(in_use_, owner, +1);
  return page;
}

void PageAllocator::ref(int32_t page) {
  check(page);
  if (refcount_[page] == 0) {
    if (!in_lru_[page]) {
      throw std::logic_error("ref of free page " + std::to_string(page));
    }
    lru_remove(page);
    bump(in_use_, owner_[page], +1);
  }
  ++refcount_[page];
}

void PageAllocator::unref(int32_t page) {
  check(page);
  if (refcount_[page] <= 0) {
    throw std::logic_error("unref of unreferenced page " + std::to_string(page));
  }
  if (--refcount_[page] > 0) return;
  bump(in_use_, owner_[page], -1);
  if (registered_[page]) {
    lru_push_back(page);
  } else {
    owner_[page] = kNone;
    free_queue_.push_back(page);
  }
}

void PageAllocator::set_registered(int32_t page) {
  if (refcount_[check(page)] == 0) {
    throw std::logic_error("set_registered on unreferenced page " + std::to_string(page));
  }
  registered_[page] = 1;
}

void PageAllocator::unregister(int32_t page) {
  check(page);
  registered_[page] = 0;
  if (in_lru_[page]) {
    lru_remove(page);
    owner_[page] = kNone;
    free_queue_.push_back(page);
  }
}

std::vector<int32_t> PageAllocator::lru_order() const {
  std::vector<int32_t> order;
  order.reserve(num_cached_);
  for (int32_t p = lru_head_; p != kNone; p = lru_next_[p]) order.push_back(p);
  return order;
}

void PageAllocator::check_invariants() const {
  auto fail = [](const std::string& what) { throw std::logic_error("allocator: " + what); };
  const int32_t n = num_pages();
  std::vector<int> seen(n, 0);
  for (int32_t p : free_queue_) {
    if (p < 0 || p >= n) fail("free queue holds bad id " + std::to_string(p));
    if (refcount_[p] != 0 || registered_[p] || in_lru_[p] || owner_[p] != kNone) {
      fail("free page " + std::to_string(p) + " is referenced, cached or owned");
    }
    ++seen[p];
  }
  int32_t count = 0;
  int32_t prev = kNone;
  std::vector<int64_t> cached(cached_of_.size(), 0);
  for (int32_t p = lru_head_; p != kNone; p = lru_next_[p]) {
    if (++count > n) fail("LRU list has a cycle");
    if (lru_prev_[p] != prev) fail("LRU back link broken at page " + std::to_string(p));
    if (refcount_[p] != 0 || !registered_[p] || !in_lru_[p]) {
      fail("LRU page " + std::to_string(p) + " is referenced or not cached");
    }
    if (owner_[p] >= static_cast<int32_t>(cached.size())) fail("LRU page owner unknown");
    if (owner_[p] >= 0) ++cached[owner_[p]];
    ++seen[p];
    prev = p;
  }
  if (prev != lru_tail_) fail("LRU tail mismatch");
  if (count != num_cached_) fail("cached count mismatch");
  std::vector<int64_t> in_use(in_use_.size(), 0);
  for (int32_t p = 0; p < n; ++p) {
    if (refcount_[p] < 0) fail("negative refcount on page " + std::to_string(p));
    if (refcount_[p] > 0) {
      ++seen[p];
      if (owner_[p] >= static_cast<int32_t>(in_use.size())) fail("in-use page owner unknown");
      if (owner_[p] >= 0) ++in_use[owner_[p]];
    }
    if (seen[p] != 1) {
      fail("page " + std::to_string(p) + " is in " + std::to_string(seen[p]) + " states");
    }
  }
  if (in_use != in_use_) fail("per-owner in-use counters mismatch");
  if (cached != cached_of_) fail("per-owner cached counters mismatch");
}

}  // namespace blendrt
