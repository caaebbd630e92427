// Stores a step's new K/V rows into pool pages on the CPU (see cpu_attention.h).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "cpu_attention.h"
#include "cpu_float.h"

namespace blendrt {
namespace {

// One (token, head) row into the quantized format of blendrt/ops/kv_quant.py: the scale
// rounded to float16 first, values divided by that stored scale.
template <typename T>
void quantize_row(const T* x, int d, StorageType kind, void* out, _Float16* scale_out) {
  float amax = 0.0f;
  for (int j = 0; j < d; ++j) amax = std::max(amax, std::fabs(load(x + j)));
  const float qmax = kind == StorageType::kInt8 ? 127.0f : 448.0f;
  const _Float16 s16 = static_cast<_Float16>(std::min(amax / qmax, 65504.0f));
  *scale_out = s16;
  const float s = static_cast<float>(s16);
  for (int j = 0; j < d; ++j) {
    const float y = s > 0.0f ? load(x + j) / s : 0.0f;
    if (kind == StorageType::kInt8) {
      static_cast<int8_t*>(out)[j] =
          static_cast<int8_t>(std::clamp(std::nearbyint(y), -127.0f, 127.0f));
    } else {
      static_cast<uint8_t*>(out)[j] = float_to_fp8_e4m3(std::clamp(y, -448.0f, 448.0f));
    }
  }
}

template <typename T>
void store_quantized(const StoreKVArgs& a) {
  for (int64_t t = 0; t < a.num_tokens; ++t) {
    const int32_t slot = a.slot_mapping[t];
    if (slot < 0) continue;
    const int64_t page = slot / a.tokens_per_page, offset = slot % a.tokens_per_page;
    const int64_t dst = page * a.page_stride + offset * a.token_stride;
    const int64_t sdst = page * a.scales.page_stride + offset * a.scales.token_stride;
    for (int32_t h = 0; h < a.num_kv_heads; ++h) {
      const int64_t at = dst + h * a.head_stride;  // bytes: one per element
      quantize_row(static_cast<const T*>(a.k) + t * a.k_row_stride + h * a.head_dim,
                   a.head_dim, a.cache_dtype, static_cast<char*>(a.k_cache) + at,
                   const_cast<_Float16*>(a.scales.k) + sdst + h);
      quantize_row(static_cast<const T*>(a.v) + t * a.v_row_stride + h * a.head_dim,
                   a.head_dim, a.cache_dtype, static_cast<char*>(a.v_cache) + at,
                   const_cast<_Float16*>(a.scales.v) + sdst + h);
    }
  }
}

}  // namespace

void store_kv_cpu(const StoreKVArgs& a) {
  const int64_t num_slots = a.num_pages * a.tokens_per_page;
  for (int64_t t = 0; t < a.num_tokens; ++t) {
    if (a.slot_mapping[t] >= num_slots) {
      throw std::invalid_argument("slot " + std::to_string(a.slot_mapping[t]) +
                                  " out of range [0, " + std::to_string(num_slots) + ")");
    }
  }
  if (a.cache_dtype == StorageType::kInt8 || a.cache_dtype == StorageType::kFp8E4M3) {
    switch (a.dtype) {
      case StorageType::kFloat32:
        return store_quantized<float>(a);
      case StorageType::kFloat16:
        return store_quantized<_Float16>(a);
      case StorageType::kBFloat16:
        return store_quantized<uint16_t>(a);
      default:
        throw std::invalid_argument("k and v must be float32, float16 or bfloat16");
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
