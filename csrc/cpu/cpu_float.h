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

// float8 e4m3fn (bias 7, no infinities, 0x7F / 0xFF are NaN) <-> float32.
inline float fp8_e4m3_to_float(uint8_t b) {
  const int exp = (b >> 3) & 15, man = b & 7;
  float v;
  if (exp == 0) {
    v = std::ldexp(static_cast<float>(man), -9);  // subnormal: man * 2^-9
  } else if (exp == 15 && man == 7) {
    v = std::nanf("");
  } else {
    v = std::ldexp(1.0f + static_cast<float>(man) / 8.0f, exp - 7);
  }
  return (b & 0x80) ? -v : v;
}
// Round to nearest even; |x| <= 448 (callers clamp), not NaN.
inline uint8_t float_to_fp8_e4m3(float x) {
  const uint8_t sign = std::signbit(x) ? 0x80 : 0;
  const float a = std::fabs(x);
  if (a < 0.015625f) {  // below 2^-6: subnormal steps of 2^-9 (8 of them carry into 2^-6)
    return sign | static_cast<uint8_t>(std::nearbyint(a * 512.0f));
  }
  int e = 0;
  std::frexp(a, &e);  // a in [2^(e-1), 2^e)
  const int q = static_cast<int>(std::nearbyint(std::ldexp(a, 4 - e)));  // in [8, 16]
  return sign | static_cast<uint8_t>(((e - 1 + 7) << 3) + q - 8);  // 16 carries into the exponent
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
