// Per-step batch metadata for one member's forward pass, built without a per-token Python loop.
//
// For a step's list of (sequence, num_new_tokens), sequence b processes the tokens at
// positions [num_computed_b, num_computed_b + num_new_b), attending to all tokens before
// them. All arrays are int32; T = sum of num_new_tokens, B = number of sequences.
#pragma once

#include <cstdint>
#include <vector>

#include "kv_cache_core.h"

namespace blendrt {

struct BatchMetadata {
  int32_t num_seqs = 0;          // B
  int32_t num_tokens = 0;        // T
  int32_t max_query_len = 0;
  int32_t max_context_len = 0;
  int32_t block_table_width = 0; // W
  std::vector<int32_t> input_ids;     // [T] token ids to feed
  std::vector<int32_t> positions;     // [T] absolute positions
  std::vector<int32_t> slot_mapping;  // [T] page_id * tokens_per_page + position % tokens_per_page
  std::vector<int32_t> block_tables;  // [B, W] page ids, padded with -1
  std::vector<int32_t> cu_seqlens_q;  // [B + 1] cumulative new-token counts
  std::vector<int32_t> context_lens;  // [B] tokens attended to after this step (cached + new)
  std::vector<int32_t> logits_indices;// [B] row of each sequence's last new token
};

// All sequences must belong to one member and have their pages allocated; num_new_tokens
// must be >= 1. min_block_table_width pads W (e.g. to a fixed width for CUDA graphs).
BatchMetadata build_batch_metadata(const KVCacheCore& core, const int64_t* request_ids,
                                   const int32_t* num_new_tokens, int32_t num_seqs,
                                   int32_t min_block_table_width = 0);

}  // namespace blendrt
