#include "prefix_index.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace blendrt {

void PrefixIndex::add_child(const Hash128& parent, int32_t page, const int32_t* tokens,
                            int32_t n) {
  if (kind_[page] != kNone) {
    throw std::logic_error("page " + std::to_string(page) + " is already registered");
  }
  parent_of_page_[page] = parent;
  tokens_of_page_[page].assign(tokens, tokens + n);
  children_[parent].push_back(page);
  ++num_registered_;
}

bool PrefixIndex::insert(const Hash128& key, const Hash128& parent, int32_t page,
                         const int32_t* tokens, int32_t n) {
  if (kind_[page] != kNone) {
    throw std::logic_error("page " + std::to_string(page) + " is already registered");
  }
  if (!page_of_key_.emplace(key, page).second) return false;
  add_child(parent, page, tokens, n);
  key_of_page_[page] = key;
  kind_[page] = kFull;
  return true;
}

bool PrefixIndex::insert_partial(const Hash128& parent, int32_t page, const int32_t* tokens,
                                 int32_t n) {
  if (n <= 0) return false;
  if (longest_child(parent, tokens, n).second == n) return false;  // already held
  add_child(parent, page, tokens, n);
  kind_[page] = kPartial;
  return true;
}

std::pair<int32_t, int32_t> PrefixIndex::longest_child(const Hash128& parent,
                                                       const int32_t* tokens, int32_t n) const {
  auto it = children_.find(parent);
  std::pair<int32_t, int32_t> best{-1, 0};
  if (it == children_.end()) return best;
  const std::vector<int32_t>& pages = it->second;
  const size_t first = pages.size() > kMaxChildrenScanned ? pages.size() - kMaxChildrenScanned : 0;
  for (size_t i = pages.size(); i-- > first;) {
    const std::vector<int32_t>& held = tokens_of_page_[pages[i]];
    const int32_t limit = std::min<int32_t>(n, static_cast<int32_t>(held.size()));
    int32_t k = 0;
    while (k < limit && held[k] == tokens[k]) ++k;
    if (k > best.second) best = {pages[i], k};
    if (best.second == n) break;
  }
  return best;
}

void PrefixIndex::erase_page(int32_t page) {
  if (kind_[page] == kNone) return;
  if (kind_[page] == kFull) page_of_key_.erase(key_of_page_[page]);
  auto it = children_.find(parent_of_page_[page]);
  std::vector<int32_t>& pages = it->second;
  pages.erase(std::find(pages.begin(), pages.end(), page));
  if (pages.empty()) children_.erase(it);
  tokens_of_page_[page].clear();
  tokens_of_page_[page].shrink_to_fit();
  kind_[page] = kNone;
  --num_registered_;
}

void PrefixIndex::check_invariants() const {
  size_t registered = 0, full = 0, listed = 0;
  auto fail = [](const std::string& what) { throw std::logic_error("prefix index: " + what); };
  for (size_t p = 0; p < kind_.size(); ++p) {
    if (kind_[p] == kNone) continue;
    ++registered;
    const auto page = static_cast<int32_t>(p);
    if (kind_[p] == kFull) {
      ++full;
      auto it = page_of_key_.find(key_of_page_[p]);
      if (it == page_of_key_.end() || it->second != page) {
        fail("page " + std::to_string(p) + " key not mapped back");
      }
    }
    auto it = children_.find(parent_of_page_[p]);
    if (it == children_.end() ||
        std::find(it->second.begin(), it->second.end(), page) == it->second.end()) {
      fail("page " + std::to_string(p) + " is not listed under its parent");
    }
  }
  for (const auto& [parent, pages] : children_) listed += pages.size();
  if (registered != num_registered_ || full != page_of_key_.size() || listed != registered) {
    fail("counts of registered, full and listed pages disagree");
  }
}

}  // namespace blendrt
