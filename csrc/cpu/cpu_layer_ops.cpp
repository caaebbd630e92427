// Fused elementwise steps of a decoder layer on the CPU (see cpu_layer_ops.h).
#include "cpu_layer_ops.h"

#include <cmath>

namespace blendrt {

void rms_norm_f32(float* out, const float* x, float* residual, const float* weight,
                  int64_t rows, int64_t hidden, float eps) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* in = x + r * hidden;
    float* res = residual ? residual + r * hidden : nullptr;
    float* dst = out + r * hidden;
    float sum = 0.0f;
    if (res) {
#pragma omp simd reduction(+ : sum)
      for (int64_t i = 0; i < hidden; ++i) {
        const float v = in[i] + res[i];
        res[i] = v;
        sum += v * v;
      }
      in = res;
    } else {
#pragma omp simd reduction(+ : sum)
      for (int64_t i = 0; i < hidden; ++i) sum += in[i] * in[i];
    }
    const float scale = 1.0f / std::sqrt(sum / static_cast<float>(hidden) + eps);
#pragma omp simd
    for (int64_t i = 0; i < hidden; ++i) dst[i] = weight[i] * (in[i] * scale);
  }
}

void rotary_f32(float* x, int64_t rows, int64_t row_stride, int32_t num_heads,
                int32_t head_dim, int32_t rotary_dim, const int64_t* positions,
                const float* cos, const float* sin, bool interleaved) {
  const int32_t half = rotary_dim / 2;
  for (int64_t r = 0; r < rows; ++r) {
    const float* c = cos + positions[r] * rotary_dim;
    const float* s = sin + positions[r] * rotary_dim;
    for (int32_t h = 0; h < num_heads; ++h) {
      float* v = x + r * row_stride + static_cast<int64_t>(h) * head_dim;
      if (interleaved) {
        for (int32_t i = 0; i < rotary_dim; i += 2) {
          const float a = v[i], b = v[i + 1];
          v[i] = a * c[i] - b * s[i];
          v[i + 1] = b * c[i + 1] + a * s[i + 1];
        }
      } else {
#pragma omp simd
        for (int32_t i = 0; i < half; ++i) {
          const float a = v[i], b = v[i + half];
          v[i] = a * c[i] - b * s[i];
          v[i + half] = b * c[i + half] + a * s[i + half];
        }
      }
    }
  }
}

void silu_and_mul_f32(float* out, const float* x, int64_t rows, int64_t inter) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* gate = x + r * 2 * inter;
    const float* up = gate + inter;
    float* dst = out + r * inter;
    for (int64_t i = 0; i < inter; ++i) {
      const float g = gate[i];
      dst[i] = g / (1.0f + std::exp(-g)) * up[i];
    }
  }
}

}  // namespace blendrt
