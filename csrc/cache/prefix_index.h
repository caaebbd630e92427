// Prefix index: {page key: page id} for full pages whose KV has been written.
//
// A page's key chains from its parent's: key_i = H(key_{i-1}, tokens of page i), and key_{-1}
// (the root) is derived from the member's name. Two members therefore never share a page,
// even for identical token ids, and a lookup walks the chain from the root until a miss.
#pragma once

#include <cstdint>
#include <unordered_map>
#include <vector>

#include "hash128.h"

namespace blendrt {

class PrefixIndex {
 public:
  explicit PrefixIndex(int32_t num_pages)
      : key_of_page_(num_pages), has_key_(num_pages, 0) {}

  // The page registered under `key`, or -1.
  int32_t find(const Hash128& key) const {
    auto it = page_of_key_.find(key);
    return it == page_of_key_.end() ? -1 : it->second;
  }
  // Registers `page` under `key`; false (and no change) when the key is already registered.
  bool insert(const Hash128& key, int32_t page);
  // Drops the page's registration, if any.
  void erase_page(int32_t page);
  bool contains_page(int32_t page) const { return has_key_[page] != 0; }
  size_t size() const { return page_of_key_.size(); }
  void check_invariants() const;

 private:
  std::unordered_map<Hash128, int32_t, Hash128Hasher> page_of_key_;  // {page key: page_id}
  std::vector<Hash128> key_of_page_;                                  // {page_id: page key}
  std::vector<uint8_t> has_key_;                                      // {page_id: registered}
};

}  // namespace blendrt
