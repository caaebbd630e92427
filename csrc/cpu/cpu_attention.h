// Paged attention on the CPU: queries of a step attend over their sequence's pages in place,
// and the store of the step's new K/V into the pages.
//
// The pool is never gathered: each (sequence, KV head) work item walks its block table, reads
// each cached token's K and V once for all query heads of its GQA group, and keeps the scores
// in a per-thread buffer. Work items are shared out to `num_threads` threads (the GIL is
// released by the binding). Storage may be float32, float16 or bfloat16, or int8 / fp8 e4m3
// with a float16 scale per (token, head), dequantized as pages are read; arithmetic is float32.
//
// A sliding window (window > 0) limits query p to keys p - window < j <= p, and the walk
// starts at the page of the first key any of a sequence's queries can see: pages before it
// may have been released (block-table entry -1, the page reused), and are never read.
// softcap > 0 replaces each scaled score s by softcap * tanh(s / softcap) (Gemma-2).
#pragma once

#include <cstdint>

namespace blendrt {

enum class StorageType : int32_t {
  kFloat32 = 0,
  kFloat16 = 1,
  kBFloat16 = 2,
  kInt8 = 3,      // quantized cache values (blendrt/ops/kv_quant.py), with float16 scales
  kFp8E4M3 = 4,   // same, float8 e4m3fn
};

// A quantized cache's per-(token, head) float16 scales of one layer: [num_pages,
// tokens_per_page, H_kv] through the strides below (in elements; heads contiguous).
struct KVScales {
  const _Float16* k = nullptr;  // null: the cache is not quantized
  const _Float16* v = nullptr;
  int64_t page_stride = 0, token_stride = 0;
};

struct PagedAttentionArgs {
  void* out;                 // [T, H_q, D] contiguous, storage type
  const void* q;             // [T, H_q, D] contiguous, storage type
  const void* k_cache;       // [num_pages, tokens_per_page, H_kv, D] through the strides below
  const void* v_cache;       // same shape and strides as k_cache
  int64_t num_pages;         // page ids must lie in [0, num_pages)
  int64_t page_stride;       // elements between pages
  int64_t token_stride;      // elements between tokens of a page
  int64_t head_stride;       // elements between KV heads of a token; D is contiguous
  int64_t num_seqs;             // B
  const int32_t* block_tables;  // [B, block_table_width] page ids
  int64_t block_table_width;
  const int32_t* cu_seqlens_q;  // [B + 1] query rows of each sequence
  const int32_t* context_lens;  // [B] cached + new tokens of each sequence
  const int32_t* seq_indices;       // [num_seq_indices] which sequences to compute
  int64_t num_seq_indices;
  int32_t num_q_heads, num_kv_heads, head_dim, tokens_per_page;
  float scale;
  StorageType dtype;         // of q and out (and of the cache unless cache_dtype says)
  int32_t num_threads;
  StorageType cache_dtype;   // the cache's values: dtype, or kInt8 / kFp8E4M3 with scales
  KVScales scales;
  int32_t window = 0;        // > 0: query p sees keys p - window < j <= p; 0: all j <= p
  float softcap = 0.0f;      // > 0: scores s -> softcap * tanh(s / softcap); 0: off
};

// Query i of sequence b sits at position p = context_lens[b] - query_len_b + i and attends to
// keys 0..p (causal over the new tokens), or p - window + 1..p with a window. Rows of
// sequences not in seq_indices are left untouched. Throws std::invalid_argument, before
// reading the pool, on a page id out of range (checked from the first visible key's page on),
// a context longer than its block table, or fewer context tokens than query rows.
void paged_attention_cpu(const PagedAttentionArgs& args);

struct StoreKVArgs {
  const void* k;              // [T, H_kv, D], rows of k_row_stride elements, heads of D
  const void* v;              // [T, H_kv, D], rows of v_row_stride elements
  int64_t k_row_stride, v_row_stride;
  void* k_cache;              // [num_pages, tokens_per_page, H_kv, D] through the strides
  void* v_cache;              // same shape and strides as k_cache
  int64_t num_pages, page_stride, token_stride, head_stride;
  const int32_t* slot_mapping;  // [T] page * tokens_per_page + offset; -1 = skip
  int64_t num_tokens;
  int32_t num_kv_heads, head_dim, tokens_per_page;
  StorageType dtype;          // of k and v (and of the cache unless cache_dtype says)
  StorageType cache_dtype;    // kInt8 / kFp8E4M3: rows quantized on store, scales written
  KVScales scales;            // where the scales go (const_cast-written by the store)
};

// Writes each new token's K and V rows into its slot (quantizing each (token, head) row when
// the cache is quantized). Throws std::invalid_argument, before writing anything, if a slot
// lies outside the pool.
void store_kv_cpu(const StoreKVArgs& args);

}  // namespace blendrt
