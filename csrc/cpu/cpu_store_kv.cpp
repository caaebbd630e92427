// Stores a step's new K/V rows into pool pages on the CPU (see cpu_attention.h).
#include <cstring>
#include <stdexcept>
#include <string>

#include "cpu_attention.h"

namespace blendrt {

void store_kv_cpu(const StoreKVArgs& a) {
  const int64_t num_slots = a.num_pages * a.tokens_per_page;
  for (int64_t t = 0; t < a.num_tokens; ++t) {
    if (a.slot_mapping[t] >= num_slots) {
      throw std::invalid_argument("slot " + std::to_string(a.slot_mapping[t]) +
                                  " out of range [0, " + std::to_string(num_slots) + ")");
    }
  }
  const int64_t elem = a.dtype == StorageType::kFloat32 ? 4 : 2;
  const size_t row_bytes = static_cast<size_t>(a.head_dim * elem);
  for (int64_t t = 0; t < a.num_tokens; ++t) {
    const int32_t slot = a.slot_mapping[t];
    if (slot < 0) continue;
    const int64_t dst =
        (slot / a.tokens_per_page) * a.page_stride + (slot % a.tokens_per_page) * a.token_stride;
    for (int32_t h = 0; h < a.num_kv_heads; ++h) {
      const int64_t at = (dst + h * a.head_stride) * elem;
      std::memcpy(static_cast<char*>(a.k_cache) + at,
                  static_cast<const char*>(a.k) + (t * a.k_row_stride + h * a.head_dim) * elem,
                  row_bytes);
      std::memcpy(static_cast<char*>(a.v_cache) + at,
                  static_cast<const char*>(a.v) + (t * a.v_row_stride + h * a.head_dim) * elem,
                  row_bytes);
    }
  }
}

}  // namespace blendrt
