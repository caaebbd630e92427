#include "prefix_index.h"

#include <stdexcept>
#include <string>

namespace blendrt {

bool PrefixIndex::insert(const Hash128& key, int32_t page) {
  if (has_key_[page]) {
    throw std::logic_error("page " + std::to_string(page) + " is already registered");
  }
  if (!page_of_key_.emplace(key, page).second) return false;
  key_of_page_[page] = key;
  has_key_[page] = 1;
  return true;
}

void PrefixIndex::erase_page(int32_t page) {
  if (!has_key_[page]) return;
  page_of_key_.erase(key_of_page_[page]);
  has_key_[page] = 0;
}

void PrefixIndex::check_invariants() const {
  size_t registered = 0;
  for (size_t p = 0; p < has_key_.size(); ++p) {
    if (!has_key_[p]) continue;
    ++registered;
    auto it = page_of_key_.find(key_of_page_[p]);
    if (it == page_of_key_.end() || it->second != static_cast<int32_t>(p)) {
      throw std::logic_error("prefix index: page " + std::to_string(p) + " key not mapped back");
    }
  }
  if (registered != page_of_key_.size()) {
    throw std::logic_error("prefix index: map size differs from registered pages");
  }
}

}  // namespace blendrt
