// The inner loops of CPU paged attention (see cpu_page_kernels.h).
#include "cpu_page_kernels.h"

namespace blendrt {

// The two inner loops, over one run of tokens of one page, in float32. Tokens go in blocks of
// four, outermost, so a page is read front to back once (a token's heads are adjacent) while
// the queries and accumulators of all rows stay in L1; four tokens per row give four
// independent accumulators. On x86-64 each is also compiled for AVX2+FMA and picked at load.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define BLENDRT_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define BLENDRT_CLONES
#endif

BLENDRT_CLONES void page_scores(const float* k, int64_t token_stride, int n,
                                const float* queries, int rows, int heads, int group, int d,
                                float scale, float* scores, int64_t score_stride) {
  int t = 0;
  for (; t + 4 <= n; t += 4) {
    const float* k0 = k + t * token_stride;
    for (int r = 0; r < rows; ++r) {
      const float* q = queries + static_cast<int64_t>(r) * d;
      const int64_t head = static_cast<int64_t>((r % heads) / group) * d;
      const float* a0 = k0 + head;
      const float* a1 = a0 + token_stride;
      const float* a2 = a1 + token_stride;
      const float* a3 = a2 + token_stride;
      float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
      for (int j = 0; j < d; ++j) {
        s0 += q[j] * a0[j];
        s1 += q[j] * a1[j];
        s2 += q[j] * a2[j];
        s3 += q[j] * a3[j];
      }
      float* out = scores + static_cast<int64_t>(r) * score_stride + t;
      out[0] = s0 * scale;
      out[1] = s1 * scale;
      out[2] = s2 * scale;
      out[3] = s3 * scale;
    }
  }
  for (; t < n; ++t) {
    for (int r = 0; r < rows; ++r) {
      const float* q = queries + static_cast<int64_t>(r) * d;
      const float* a0 = k + t * token_stride + static_cast<int64_t>((r % heads) / group) * d;
      float s0 = 0.0f;
#pragma omp simd reduction(+ : s0)
      for (int j = 0; j < d; ++j) s0 += q[j] * a0[j];
      scores[static_cast<int64_t>(r) * score_stride + t] = s0 * scale;
    }
  }
}

BLENDRT_CLONES void page_values(const float* v, int64_t token_stride, int n,
                                const float* probs, int64_t prob_stride, int rows, int heads,
                                int group, int d, float* acc) {
  int t = 0;
  for (; t + 4 <= n; t += 4) {
    const float* v0 = v + t * token_stride;
    for (int r = 0; r < rows; ++r) {
      const float* p = probs + static_cast<int64_t>(r) * prob_stride + t;
      const int64_t head = static_cast<int64_t>((r % heads) / group) * d;
      const float* b0 = v0 + head;
      const float* b1 = b0 + token_stride;
      const float* b2 = b1 + token_stride;
      const float* b3 = b2 + token_stride;
      const float p0 = p[0], p1 = p[1], p2 = p[2], p3 = p[3];
      float* o = acc + static_cast<int64_t>(r) * d;
#pragma omp simd
      for (int j = 0; j < d; ++j) o[j] += p0 * b0[j] + p1 * b1[j] + p2 * b2[j] + p3 * b3[j];
    }
  }
  for (; t < n; ++t) {
    for (int r = 0; r < rows; ++r) {
      const float p0 = probs[static_cast<int64_t>(r) * prob_stride + t];
      const float* b0 = v + t * token_stride + static_cast<int64_t>((r % heads) / group) * d;
      float* o = acc + static_cast<int64_t>(r) * d;
#pragma omp simd
      for (int j = 0; j < d; ++j) o[j] += p0 * b0[j];
    }
  }
}

}  // namespace blendrt
