// Weight-only quantized matmul on the CPU (see cpu_quant_matmul.h).
//
// Each weight byte is read once per call. Rows go four at a time, so a token's inputs are
// loaded once per four rows and four independent accumulators hide the FMA latency; on
// x86-64 with AVX2 + FMA (checked at run time) the inner loops are intrinsics, elsewhere the
// same loops in plain C++. Scales are applied per row (int8) or per group (int4) to the
// integer-weighted sums: for int4, sum_k (q_k - z) s x_k = s (sum_k q_k x_k - z sum_k x_k),
// with each token's per-group input sums computed once per call.
#include "cpu_quant_matmul.h"

#include <algorithm>
#include <exception>
#include <thread>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define BLENDRT_X86 1
#endif

namespace blendrt {
namespace {

// ---- int8: y[t, n] = s[n] * sum_k q[n, k] x[t, k] -----------------------------------------

void int8_rows_scalar(const QuantMatmulArgs& a, int64_t first, int64_t last) {
  const int64_t k = a.in_features;
  const int8_t* q = static_cast<const int8_t*>(a.qweight);
  for (int64_t n = first; n < last; ++n) {
    for (int64_t t = 0; t < a.num_tokens; ++t) {
      const float* x = a.x + t * k;
      float acc = 0.0f;
      for (int64_t i = 0; i < k; ++i) acc += static_cast<float>(q[n * k + i]) * x[i];
      a.y[t * a.out_features + n] = acc * a.scales[n];
    }
  }
}

#ifdef BLENDRT_X86
__attribute__((target("avx2,fma"))) inline float hsum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 h = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps(h, h, 1)));
}

__attribute__((target("avx2,fma"))) inline __m256 int8x8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

// Several tokens: two rows at a time, each 8-wide weight chunk converted once for up to four
// tokens (eight accumulators in registers).
__attribute__((target("avx2,fma"))) void int8_tokens_avx2(const QuantMatmulArgs& a,
                                                          int64_t first, int64_t last) {
  const int64_t k = a.in_features, k8 = k / 8 * 8;
  const int8_t* q = static_cast<const int8_t*>(a.qweight);
  int64_t n = first;
  for (; n + 2 <= last; n += 2) {
    const int8_t* r0 = q + n * k;
    const int8_t* r1 = r0 + k;
    for (int64_t t0 = 0; t0 < a.num_tokens; t0 += 4) {
      const int nt = static_cast<int>(std::min<int64_t>(4, a.num_tokens - t0));
      __m256 acc[2][4];
      for (auto& row : acc) {
        for (auto& v : row) v = _mm256_setzero_ps();
      }
      for (int64_t i = 0; i < k8; i += 8) {
        const __m256 w0 = int8x8(r0 + i), w1 = int8x8(r1 + i);
        for (int j = 0; j < nt; ++j) {
          const __m256 xv = _mm256_loadu_ps(a.x + (t0 + j) * k + i);
          acc[0][j] = _mm256_fmadd_ps(w0, xv, acc[0][j]);
          acc[1][j] = _mm256_fmadd_ps(w1, xv, acc[1][j]);
        }
      }
      for (int j = 0; j < nt; ++j) {
        const float* x = a.x + (t0 + j) * k;
        float s0 = hsum(acc[0][j]), s1 = hsum(acc[1][j]);
        for (int64_t i = k8; i < k; ++i) s0 += r0[i] * x[i], s1 += r1[i] * x[i];
        float* y = a.y + (t0 + j) * a.out_features + n;
        y[0] = s0 * a.scales[n];
        y[1] = s1 * a.scales[n + 1];
      }
    }
  }
  if (n < last) int8_rows_scalar(a, n, last);
}

__attribute__((target("avx2,fma"))) void int8_rows_avx2(const QuantMatmulArgs& a, int64_t first,
                                                        int64_t last) {
  if (a.num_tokens > 1) return int8_tokens_avx2(a, first, last);
  const int64_t k = a.in_features, k8 = k / 8 * 8;
  const int8_t* q = static_cast<const int8_t*>(a.qweight);
  int64_t n = first;
  for (; n + 4 <= last; n += 4) {
    const int8_t* r0 = q + n * k;
    const int8_t *r1 = r0 + k, *r2 = r1 + k, *r3 = r2 + k;
    for (int64_t t = 0; t < a.num_tokens; ++t) {
      const float* x = a.x + t * k;
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      for (int64_t i = 0; i < k8; i += 8) {
        const __m256 xv = _mm256_loadu_ps(x + i);
        a0 = _mm256_fmadd_ps(int8x8(r0 + i), xv, a0);
        a1 = _mm256_fmadd_ps(int8x8(r1 + i), xv, a1);
        a2 = _mm256_fmadd_ps(int8x8(r2 + i), xv, a2);
        a3 = _mm256_fmadd_ps(int8x8(r3 + i), xv, a3);
      }
      float s[4] = {hsum(a0), hsum(a1), hsum(a2), hsum(a3)};
      for (int64_t i = k8; i < k; ++i) {
        s[0] += r0[i] * x[i], s[1] += r1[i] * x[i], s[2] += r2[i] * x[i], s[3] += r3[i] * x[i];
      }
      float* y = a.y + t * a.out_features + n;
      for (int r = 0; r < 4; ++r) y[r] = s[r] * a.scales[n + r];
    }
  }
  if (n < last) int8_rows_scalar(a, n, last);
}
#endif

// ---- int4: groups of G inputs, two per byte (even input low nibble) ------------------------

// Per token: inputs split into even / odd ones ([T, K/2] each), and per-group sums [T, groups].
struct Int4Inputs {
  std::vector<float> even, odd, sums;
};

Int4Inputs split_inputs(const QuantMatmulArgs& a) {
  const int64_t k = a.in_features, half = k / 2, g = a.group_size;
  const int64_t groups = (k + g - 1) / g;
  Int4Inputs in{std::vector<float>(a.num_tokens * half), std::vector<float>(a.num_tokens * half),
                std::vector<float>(a.num_tokens * groups, 0.0f)};
  for (int64_t t = 0; t < a.num_tokens; ++t) {
    const float* x = a.x + t * k;
    for (int64_t j = 0; j < half; ++j) {
      in.even[t * half + j] = x[2 * j];
      in.odd[t * half + j] = x[2 * j + 1];
    }
    for (int64_t i = 0; i < k; ++i) in.sums[t * groups + i / g] += x[i];
  }
  return in;
}

void int4_rows_scalar(const QuantMatmulArgs& a, const Int4Inputs& in, int64_t first,
                      int64_t last) {
  const int64_t k = a.in_features, half = k / 2, g = a.group_size;
  const int64_t groups = (k + g - 1) / g;
  const uint8_t* q = static_cast<const uint8_t*>(a.qweight);
  for (int64_t n = first; n < last; ++n) {
    for (int64_t t = 0; t < a.num_tokens; ++t) {
      float y = 0.0f;
      for (int64_t gi = 0; gi < groups; ++gi) {
        float acc = 0.0f;
        const int64_t end = std::min(half, (gi + 1) * g / 2);
        for (int64_t j = gi * g / 2; j < end; ++j) {
          const uint8_t b = q[n * half + j];
          acc += (b & 15) * in.even[t * half + j] + (b >> 4) * in.odd[t * half + j];
        }
        const float z = a.zeros[n * groups + gi];
        y += a.scales[n * groups + gi] * (acc - z * in.sums[t * groups + gi]);
      }
      a.y[t * a.out_features + n] = y;
    }
  }
}

#ifdef BLENDRT_X86
// Eight bytes' low and high nibbles as floats.
__attribute__((target("avx2,fma"))) inline void nibbles(const uint8_t* p, __m256* lo,
                                                        __m256* hi) {
  const __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  *lo = _mm256_cvtepi32_ps(_mm256_and_si256(b, _mm256_set1_epi32(15)));
  *hi = _mm256_cvtepi32_ps(_mm256_srli_epi32(b, 4));
}

// Several tokens: two rows at a time, each chunk's nibbles converted once for up to four
// tokens (eight accumulators per group in registers).
__attribute__((target("avx2,fma"))) void int4_tokens_avx2(const QuantMatmulArgs& a,
                                                          const Int4Inputs& in, int64_t first,
                                                          int64_t last) {
  const int64_t k = a.in_features, half = k / 2, g = a.group_size;
  const int64_t groups = (k + g - 1) / g;
  const uint8_t* q = static_cast<const uint8_t*>(a.qweight);
  int64_t n = first;
  for (; n + 2 <= last; n += 2) {
    for (int64_t t0 = 0; t0 < a.num_tokens; t0 += 4) {
      const int nt = static_cast<int>(std::min<int64_t>(4, a.num_tokens - t0));
      float y[2][4] = {};
      for (int64_t gi = 0; gi < groups; ++gi) {
        const int64_t j0 = gi * g / 2, j1 = std::min(half, (gi + 1) * g / 2);
        const int64_t j8 = j0 + (j1 - j0) / 8 * 8;
        __m256 acc[2][4];
        for (auto& row : acc) {
          for (auto& v : row) v = _mm256_setzero_ps();
        }
        for (int64_t j = j0; j < j8; j += 8) {
          __m256 lo0, hi0, lo1, hi1;
          nibbles(q + n * half + j, &lo0, &hi0);
          nibbles(q + (n + 1) * half + j, &lo1, &hi1);
          for (int t = 0; t < nt; ++t) {
            const __m256 xe = _mm256_loadu_ps(in.even.data() + (t0 + t) * half + j);
            const __m256 xo = _mm256_loadu_ps(in.odd.data() + (t0 + t) * half + j);
            acc[0][t] = _mm256_fmadd_ps(lo0, xe, _mm256_fmadd_ps(hi0, xo, acc[0][t]));
            acc[1][t] = _mm256_fmadd_ps(lo1, xe, _mm256_fmadd_ps(hi1, xo, acc[1][t]));
          }
        }
        for (int r = 0; r < 2; ++r) {
          const int64_t at = (n + r) * groups + gi;
          for (int t = 0; t < nt; ++t) {
            const float* even = in.even.data() + (t0 + t) * half;
            const float* odd = in.odd.data() + (t0 + t) * half;
            float s = hsum(acc[r][t]);
            for (int64_t j = j8; j < j1; ++j) {
              const uint8_t b = q[(n + r) * half + j];
              s += (b & 15) * even[j] + (b >> 4) * odd[j];
            }
            y[r][t] += a.scales[at] * (s - a.zeros[at] * in.sums[(t0 + t) * groups + gi]);
          }
        }
      }
      for (int r = 0; r < 2; ++r) {
        for (int t = 0; t < nt; ++t) a.y[(t0 + t) * a.out_features + n + r] = y[r][t];
      }
    }
  }
  if (n < last) int4_rows_scalar(a, in, n, last);
}

__attribute__((target("avx2,fma"))) void int4_rows_avx2(const QuantMatmulArgs& a,
                                                        const Int4Inputs& in, int64_t first,
                                                        int64_t last) {
  const int64_t k = a.in_features, half = k / 2, g = a.group_size;
  const int64_t groups = (k + g - 1) / g;
  if (g % 16) return int4_rows_scalar(a, in, first, last);
  if (a.num_tokens > 1) return int4_tokens_avx2(a, in, first, last);
  const uint8_t* q = static_cast<const uint8_t*>(a.qweight);
  int64_t n = first;
  for (; n + 4 <= last; n += 4) {
    for (int64_t t = 0; t < a.num_tokens; ++t) {
      const float* even = in.even.data() + t * half;
      const float* odd = in.odd.data() + t * half;
      float y[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      for (int64_t gi = 0; gi < groups; ++gi) {
        const int64_t j0 = gi * g / 2, j1 = std::min(half, (gi + 1) * g / 2);
        const int64_t j8 = j0 + (j1 - j0) / 8 * 8;
        __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                         _mm256_setzero_ps()};
        for (int64_t j = j0; j < j8; j += 8) {
          const __m256 xe = _mm256_loadu_ps(even + j), xo = _mm256_loadu_ps(odd + j);
          for (int r = 0; r < 4; ++r) {
            __m256 lo, hi;
            nibbles(q + (n + r) * half + j, &lo, &hi);
            acc[r] = _mm256_fmadd_ps(lo, xe, _mm256_fmadd_ps(hi, xo, acc[r]));
          }
        }
        for (int r = 0; r < 4; ++r) {
          float s = hsum(acc[r]);
          for (int64_t j = j8; j < j1; ++j) {
            const uint8_t b = q[(n + r) * half + j];
            s += (b & 15) * even[j] + (b >> 4) * odd[j];
          }
          const int64_t at = (n + r) * groups + gi;
          y[r] += a.scales[at] * (s - a.zeros[at] * in.sums[t * groups + gi]);
        }
      }
      for (int r = 0; r < 4; ++r) a.y[t * a.out_features + n + r] = y[r];
    }
  }
  if (n < last) int4_rows_scalar(a, in, n, last);
}
#endif

bool has_avx2() {
#ifdef BLENDRT_X86
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

void rows(const QuantMatmulArgs& a, const Int4Inputs& in, int64_t first, int64_t last) {
#ifdef BLENDRT_X86
  if (has_avx2()) {
    return a.bits == 8 ? int8_rows_avx2(a, first, last) : int4_rows_avx2(a, in, first, last);
  }
#endif
  return a.bits == 8 ? int8_rows_scalar(a, first, last) : int4_rows_scalar(a, in, first, last);
}

}  // namespace

void quant_matmul_cpu(const QuantMatmulArgs& a) {
  const Int4Inputs in = a.bits == 4 ? split_inputs(a) : Int4Inputs{};
  // NOTE: threads only for big layers: starting one costs tens of microseconds, more than a
  // small layer's whole GEMV. Split points are multiples of 4 rows.
  const int64_t work = a.out_features * a.in_features * a.num_tokens;
  const int64_t num_threads =
      std::max<int64_t>(1, std::min<int64_t>(a.num_threads, work / (1 << 22)));
  if (num_threads == 1) return rows(a, in, 0, a.out_features);
  const int64_t chunk = (a.out_features / num_threads + 3) / 4 * 4;
  std::exception_ptr error;
  std::vector<std::thread> threads;
  for (int64_t i = 1; i < num_threads; ++i) {
    threads.emplace_back([&, i] {
      try {
        rows(a, in, std::min(a.out_features, i * chunk),
             i + 1 == num_threads ? a.out_features : std::min(a.out_features, (i + 1) * chunk));
      } catch (...) {
        error = std::current_exception();
      }
    });
  }
  rows(a, in, 0, std::min(a.out_features, chunk));
  for (auto& t : threads) t.join();
  if (error) std::rethrow_exception(error);
}

void dequantize_cpu(float* w, const void* qweight, const float* scales, const uint8_t* zeros,
                    int64_t out_features, int64_t in_features, int32_t bits,
                    int64_t group_size) {
  const int64_t k = in_features;
  for (int64_t n = 0; n < out_features; ++n) {
    float* row = w + n * k;
    if (bits == 8) {
      const int8_t* q = static_cast<const int8_t*>(qweight) + n * k;
      for (int64_t i = 0; i < k; ++i) row[i] = static_cast<float>(q[i]) * scales[n];
      continue;
    }
    const uint8_t* q = static_cast<const uint8_t*>(qweight) + n * (k / 2);
    const int64_t groups = (k + group_size - 1) / group_size;
    for (int64_t i = 0; i < k; ++i) {
      const int64_t at = n * groups + i / group_size;
      const float v = (i % 2) ? (q[i / 2] >> 4) : (q[i / 2] & 15);
      row[i] = (v - zeros[at]) * scales[at];
    }
  }
}

}  // namespace blendrt
