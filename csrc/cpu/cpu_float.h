// float32 <-> the pool's storage types (float32, float16, bfloat16), for the CPU kernels.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace blendrt {

// Storage <-> float32. float16 goes through the compiler's _Float16 (GCC >= 12, clang).
inline float load(const float* p) { return *p; }
inline float load(const _Float16* p) { return static_cast<float>(*p); }
inline float load(const uint16_t* p) {  // bfloat16: the high half of a float32
  const uint32_t bits = static_cast<uint32_t>(*p) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
inline void store(float* p, float x) { *p = x; }
inline void store(_Float16* p, float x) { *p = static_cast<_Float16>(x); }
inline void store(uint16_t* p, float x) {  // bfloat16, round to nearest even
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  if (std::isnan(x)) {
    *p = 0x7FC0;
    return;
  }
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  *p = static_cast<uint16_t>(bits >> 16);
}

template <typename T>
inline void to_float(const T* src, float* dst, int n) {
  for (int i = 0; i < n; ++i) dst[i] = load(src + i);
}
template <>
inline void to_float(const float* src, float* dst, int n) {
  std::memcpy(dst, src, sizeof(float) * n);
}

}  // namespace blendrt
