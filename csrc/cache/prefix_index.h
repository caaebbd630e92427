// Prefix index: the cached pages a new sequence may reuse, full or partly filled.
//
// A full page's key chains from its parent's: key_i = H(key_{i-1}, tokens of page i), and
// key_{-1} (the root) is derived from the member's name. Two members therefore never share a
// page, even for identical token ids, and a lookup walks the chain from the root until a miss.
//
// Every registered page is also listed under its parent key with its tokens (a full page's
// tokens_per_page of them, a partly filled page's first n): where the chain misses, the
// child sharing the longest common prefix with the sequence's next tokens gives a partial
// hit, reused by copying the page (copy on write), so reuse is to the token, whatever a
// member's tokens per page.
#pragma once

#include <cstdint>
#include <unordered_map>
#include <utility>
#include <vector>

#include "hash128.h"

namespace blendrt {

class PrefixIndex {
 public:
  explicit PrefixIndex(int32_t num_pages)
      : key_of_page_(num_pages), parent_of_page_(num_pages), tokens_of_page_(num_pages),
        kind_(num_pages, kNone) {}

  // The full page registered under `key`, or -1.
  int32_t find(const Hash128& key) const {
    auto it = page_of_key_.find(key);
    return it == page_of_key_.end() ? -1 : it->second;
  }
  // Registers full `page` (under `key`, child of `parent`, holding `tokens`); false (and no
  // change) when the key is already registered.
  bool insert(const Hash128& key, const Hash128& parent, int32_t page, const int32_t* tokens,
              int32_t n);
  // Registers a partly filled `page` (its first n tokens) under `parent`; false (and no
  // change) when a registered child of `parent` already holds those n tokens first.
  bool insert_partial(const Hash128& parent, int32_t page, const int32_t* tokens, int32_t n);
  // The child of `parent` sharing the longest common prefix with tokens[0:n]: {page, length},
  // {-1, 0} when none shares a first token.
  std::pair<int32_t, int32_t> longest_child(const Hash128& parent, const int32_t* tokens,
                                            int32_t n) const;
  // Drops the page's registration, if any.
  void erase_page(int32_t page);
  bool contains_page(int32_t page) const { return kind_[page] != kNone; }
  size_t size() const { return num_registered_; }
  void check_invariants() const;

 private:
  static constexpr uint8_t kNone = 0, kFull = 1, kPartial = 2;
  static constexpr size_t kMaxChildrenScanned = 256;  // most recent first

  void add_child(const Hash128& parent, int32_t page, const int32_t* tokens, int32_t n);

  std::unordered_map<Hash128, int32_t, Hash128Hasher> page_of_key_;  // {page key: full page}
  // {parent key: registered child pages, oldest first}
  std::unordered_map<Hash128, std::vector<int32_t>, Hash128Hasher> children_;
  std::vector<Hash128> key_of_page_;                  // {page_id: key}, full pages
  std::vector<Hash128> parent_of_page_;               // {page_id: parent key}
  std::vector<std::vector<int32_t>> tokens_of_page_;  // {page_id: its tokens}
  std::vector<uint8_t> kind_;                         // {page_id: kNone | kFull | kPartial}
  size_t num_registered_ = 0;
};

}  // namespace blendrt
