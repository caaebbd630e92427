// The inner loops of CPU paged attention, over one run of tokens of one page, in float32.
#pragma once

#include <cstdint>

namespace blendrt {

// scores[r * score_stride + t] = scale * <queries[r], k[t, head(r)]> for t < n, r < rows,
// where head(r) = (r % heads) / group picks the KV head of query row r; k rows are
// token_stride floats apart.
void page_scores(const float* k, int64_t token_stride, int n, const float* queries, int rows,
                 int heads, int group, int d, float scale, float* scores, int64_t score_stride);

// acc[r] += sum over t < n of probs[r * prob_stride + t] * v[t, head(r)].
void page_values(const float* v, int64_t token_stride, int n, const float* probs,
                 int64_t prob_stride, int rows, int heads, int group, int d, float* acc);

}  // namespace blendrt
