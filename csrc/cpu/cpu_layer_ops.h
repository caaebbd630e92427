// The elementwise steps of a decoder layer on the CPU, fused so a layer runs a few calls
// instead of ~40 small torch ops, float32 (the CPU default dtype; other dtypes take the
// torch path). Rows are contiguous; blendrt/ops/cpu/layer_ops.py checks the tensors.
#pragma once

#include <cstdint>

namespace blendrt {

// out = weight * x * rsqrt(mean(x^2) + eps) per row of `hidden`; with `residual` (may be
// null) first residual += x in place and normalise the sum: the add before a norm, fused.
void rms_norm_f32(float* out, const float* x, float* residual, const float* weight,
                  int64_t rows, int64_t hidden, float eps);

// Rotates, in place, the first rotary_dim dims of `num_heads` heads of each row (heads of
// head_dim floats, rows row_stride floats apart), by the angles at positions[row] of the
// cos/sin tables ([*, rotary_dim] each, row-major). Pairs are halves (i, i + rotary_dim/2),
// or neighbours (2i, 2i + 1) when interleaved.
void rotary_f32(float* x, int64_t rows, int64_t row_stride, int32_t num_heads,
                int32_t head_dim, int32_t rotary_dim, const int64_t* positions,
                const float* cos, const float* sin, bool interleaved);

// out[r, i] = silu(x[r, i]) * x[r, inter + i]: gate and up halves of a fused projection.
void silu_and_mul_f32(float* out, const float* x, int64_t rows, int64_t inter);

}  // namespace blendrt
