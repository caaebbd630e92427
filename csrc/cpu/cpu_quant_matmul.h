// Weight-only quantized matmul on the CPU, float32 activations: y[t, n] = sum_k x[t, k] W[n, k]
// with W stored as blendrt/ops/quant.py describes (int8 per output channel; int4 in groups of
// G inputs, the last one possibly short, with zero points, two values per byte, the even
// input in the low nibble).
// blendrt/ops/cpu/quant_matmul.py checks the tensors behind the pointers.
#pragma once

#include <cstdint>

namespace blendrt {

struct QuantMatmulArgs {
  float* y;              // [T, N]
  const float* x;        // [T, K]
  int64_t num_tokens;    // T
  int64_t in_features;   // K
  int64_t out_features;  // N
  const void* qweight;   // int8 [N, K] or uint8 [N, K / 2]
  const float* scales;   // [N] (int8) or [N, ceil(K / G)] (int4)
  const uint8_t* zeros;  // int4: [N, ceil(K / G)]; int8: null
  int32_t bits;          // 8 or 4
  int64_t group_size;    // int4: G
  int32_t num_threads;
};

// Decode-shaped: each weight row is dequantized once into float32 (in L1) and dotted with
// every token's input, so a step reads each packed weight byte once.
void quant_matmul_cpu(const QuantMatmulArgs& a);

// Writes the float32 weight [N, K] (for long prefills, which then run a float GEMM).
void dequantize_cpu(float* w, const void* qweight, const float* scales, const uint8_t* zeros,
                    int64_t out_features, int64_t in_features, int32_t bits,
                    int64_t group_size);

}  // namespace blendrt
