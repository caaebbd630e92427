// Bindings of the CPU kernels over raw buffers; blendrt/ops/cpu/ checks every tensor behind
// the pointers before calling them.
#include "bindings.h"
#include "cpu_attention.h"
#include "cpu_layer_ops.h"
#include "cpu_quant_matmul.h"

namespace blendrt {

void bind_cpu(py::module_& m) {
  py::enum_<StorageType>(m, "StorageType", "Element type of the pool and the K/V/q rows")
      .value("float32", StorageType::kFloat32)
      .value("float16", StorageType::kFloat16)
      .value("bfloat16", StorageType::kBFloat16)
      .value("int8", StorageType::kInt8)
      .value("fp8_e4m3", StorageType::kFp8E4M3);

  m.def(
      "paged_attention_cpu",
      [](uintptr_t out, uintptr_t q, uintptr_t k_cache, uintptr_t v_cache, int64_t num_pages,
         int64_t page_stride, int64_t token_stride, int64_t head_stride,
         const I32Array& block_tables, const I32Array& cu_seqlens_q,
         const I32Array& context_lens, const I32Array& seq_indices, int32_t num_q_heads,
         int32_t num_kv_heads, int32_t head_dim, int32_t tokens_per_page, float scale,
         StorageType dtype, int32_t num_threads, StorageType cache_dtype, uintptr_t k_scale,
         uintptr_t v_scale, int64_t scale_page_stride, int64_t scale_token_stride,
         int32_t window, float softcap) {
        if (block_tables.ndim() != 2) throw std::invalid_argument("block_tables must be 2-D");
        const py::ssize_t num_seqs = block_tables.shape(0);
        if (cu_seqlens_q.ndim() != 1 || cu_seqlens_q.size() != num_seqs + 1 ||
            context_lens.ndim() != 1 || context_lens.size() != num_seqs) {
          throw std::invalid_argument("cu_seqlens_q must be [B + 1] and context_lens [B]");
        }
        const I32Array ids = flat(seq_indices, "seq_indices");
        PagedAttentionArgs args{
            reinterpret_cast<void*>(out),
            reinterpret_cast<const void*>(q),
            reinterpret_cast<const void*>(k_cache),
            reinterpret_cast<const void*>(v_cache),
            num_pages,
            page_stride,
            token_stride,
            head_stride,
            num_seqs,
            block_tables.data(),
            block_tables.shape(1),
            cu_seqlens_q.data(),
            context_lens.data(),
            ids.data(),
            ids.size(),
            num_q_heads,
            num_kv_heads,
            head_dim,
            tokens_per_page,
            scale,
            dtype,
            std::max(num_threads, 1),
            cache_dtype,
            KVScales{reinterpret_cast<const _Float16*>(k_scale),
                     reinterpret_cast<const _Float16*>(v_scale), scale_page_stride,
                     scale_token_stride},
            window,
            softcap};
        py::gil_scoped_release release;
        paged_attention_cpu(args);
      },
      py::arg("out"), py::arg("q"), py::arg("k_cache"), py::arg("v_cache"),
      py::arg("num_pages"), py::arg("page_stride"), py::arg("token_stride"),
      py::arg("head_stride"), py::arg("block_tables"), py::arg("cu_seqlens_q"),
      py::arg("context_lens"), py::arg("seq_indices"), py::arg("num_q_heads"),
      py::arg("num_kv_heads"), py::arg("head_dim"), py::arg("tokens_per_page"),
      py::arg("scale"), py::arg("dtype"), py::arg("num_threads"), py::arg("cache_dtype"),
      py::arg("k_scale") = 0, py::arg("v_scale") = 0, py::arg("scale_page_stride") = 0,
      py::arg("scale_token_stride") = 0, py::arg("window") = 0, py::arg("softcap") = 0.0f,
      "Paged attention over raw CPU buffers; use blendrt.ops.cpu.attention, which checks "
      "the tensors behind the pointers.");

  m.def(
      "store_kv_cpu",
      [](uintptr_t k, uintptr_t v, int64_t k_row_stride, int64_t v_row_stride,
         uintptr_t k_cache, uintptr_t v_cache, int64_t num_pages, int64_t page_stride,
         int64_t token_stride, int64_t head_stride, const I32Array& slot_mapping,
         int32_t num_kv_heads, int32_t head_dim, int32_t tokens_per_page, StorageType dtype,
         StorageType cache_dtype, uintptr_t k_scale, uintptr_t v_scale,
         int64_t scale_page_stride, int64_t scale_token_stride) {
        const I32Array slots = flat(slot_mapping, "slot_mapping");
        StoreKVArgs args{reinterpret_cast<const void*>(k),
                                  reinterpret_cast<const void*>(v),
                                  k_row_stride,
                                  v_row_stride,
                                  reinterpret_cast<void*>(k_cache),
                                  reinterpret_cast<void*>(v_cache),
                                  num_pages,
                                  page_stride,
                                  token_stride,
                                  head_stride,
                                  slots.data(),
                                  slots.size(),
                                  num_kv_heads,
                                  head_dim,
                                  tokens_per_page,
                                  dtype,
                                  cache_dtype,
                                  KVScales{reinterpret_cast<const _Float16*>(k_scale),
                                           reinterpret_cast<const _Float16*>(v_scale),
                                           scale_page_stride, scale_token_stride}};
        py::gil_scoped_release release;
        store_kv_cpu(args);
      },
      py::arg("k"), py::arg("v"), py::arg("k_row_stride"), py::arg("v_row_stride"),
      py::arg("k_cache"), py::arg("v_cache"), py::arg("num_pages"), py::arg("page_stride"),
      py::arg("token_stride"), py::arg("head_stride"), py::arg("slot_mapping"),
      py::arg("num_kv_heads"), py::arg("head_dim"), py::arg("tokens_per_page"),
      py::arg("dtype"), py::arg("cache_dtype"), py::arg("k_scale") = 0,
      py::arg("v_scale") = 0, py::arg("scale_page_stride") = 0,
      py::arg("scale_token_stride") = 0,
      "Stores K/V rows into pool slots over raw CPU buffers; use "
      "blendrt.ops.cpu.store_kv, which checks the tensors behind the pointers.");

  // The fused layer ops take raw pointers and positional arguments only: they run a few
  // times per layer, so the call itself must cost little. They hold the GIL (microseconds).
  m.def(
      "rms_norm_f32",
      [](uintptr_t out, uintptr_t x, uintptr_t residual, uintptr_t weight, int64_t rows,
         int64_t hidden, float eps) {
        rms_norm_f32(reinterpret_cast<float*>(out), reinterpret_cast<const float*>(x),
                     reinterpret_cast<float*>(residual), reinterpret_cast<const float*>(weight),
                     rows, hidden, eps);
      },
      "RMSNorm over raw float32 rows (residual 0: none); use blendrt.ops.cpu.layer_ops.");
  m.def(
      "rotary_f32",
      [](uintptr_t x, int64_t rows, int64_t row_stride, int32_t num_heads, int32_t head_dim,
         int32_t rotary_dim, uintptr_t positions, uintptr_t cos, uintptr_t sin,
         bool interleaved) {
        rotary_f32(reinterpret_cast<float*>(x), rows, row_stride, num_heads, head_dim,
                   rotary_dim, reinterpret_cast<const int64_t*>(positions),
                   reinterpret_cast<const float*>(cos), reinterpret_cast<const float*>(sin),
                   interleaved);
      },
      "Rotary embedding in place over raw float32 rows; use blendrt.ops.cpu.layer_ops.");
  m.def(
      "silu_and_mul_f32",
      [](uintptr_t out, uintptr_t x, int64_t rows, int64_t inter) {
        silu_and_mul_f32(reinterpret_cast<float*>(out), reinterpret_cast<const float*>(x),
                         rows, inter);
      },
      "silu(gate) * up over raw float32 rows; use blendrt.ops.cpu.layer_ops.");

  m.def(
      "quant_matmul_cpu",
      [](uintptr_t y, uintptr_t x, int64_t num_tokens, int64_t in_features,
         int64_t out_features, uintptr_t qweight, uintptr_t scales, uintptr_t zeros,
         int32_t bits, int64_t group_size, int32_t num_threads) {
        QuantMatmulArgs args{reinterpret_cast<float*>(y),
                             reinterpret_cast<const float*>(x),
                             num_tokens,
                             in_features,
                             out_features,
                             reinterpret_cast<const void*>(qweight),
                             reinterpret_cast<const float*>(scales),
                             reinterpret_cast<const uint8_t*>(zeros),
                             bits,
                             group_size,
                             num_threads};
        py::gil_scoped_release release;
        quant_matmul_cpu(args);
      },
      "Weight-only quantized matmul over raw buffers; use blendrt.ops.cpu.quant_matmul.");
  m.def(
      "dequantize_cpu",
      [](uintptr_t w, uintptr_t qweight, uintptr_t scales, uintptr_t zeros,
         int64_t out_features, int64_t in_features, int32_t bits, int64_t group_size) {
        py::gil_scoped_release release;
        dequantize_cpu(reinterpret_cast<float*>(w), reinterpret_cast<const void*>(qweight),
                       reinterpret_cast<const float*>(scales),
                       reinterpret_cast<const uint8_t*>(zeros), out_features, in_features,
                       bits, group_size);
      },
      "The float32 weight of a quantized one; use blendrt.ops.cpu.quant_matmul.");
}

}  // namespace blendrt
