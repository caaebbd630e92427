#include "batch_metadata.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace blendrt {

BatchMetadata build_batch_metadata(const KVCacheCore& core, const int64_t* request_ids,
                                   const int32_t* num_new_tokens, int32_t num_seqs,
                                   int32_t min_block_table_width) {
  if (num_seqs <= 0) throw std::invalid_argument("a batch needs at least one sequence");
  if (min_block_table_width < 0) throw std::invalid_argument("negative block table width");
  std::vector<const Sequence*> seqs(num_seqs);
  BatchMetadata md;
  md.num_seqs = num_seqs;
  md.cu_seqlens_q.assign(num_seqs + 1, 0);
  md.context_lens.resize(num_seqs);
  md.logits_indices.resize(num_seqs);

  // First pass: validate, and size everything.
  int32_t member = -1;
  int64_t width = min_block_table_width;
  int64_t num_tokens = 0;
  int64_t num_kv = 0;
  for (int32_t b = 0; b < num_seqs; ++b) {
    const Sequence& s = core.sequence(request_ids[b]);
    seqs[b] = &s;
    if (member < 0) member = s.member;
    if (s.member != member) {
      throw std::invalid_argument("a batch holds one member's sequences: sequence " +
                                  std::to_string(request_ids[b]) + " is of member " +
                                  core.member(s.member).name + ", not " +
                                  core.member(member).name);
    }
    const int32_t n = num_new_tokens[b];
    const int64_t end = static_cast<int64_t>(s.num_computed_tokens) + n;
    const int64_t capacity =
        static_cast<int64_t>(s.block_table.size()) * core.tokens_per_page(member);
    if (n <= 0 || end > capacity || end > static_cast<int64_t>(s.token_ids.size())) {
      throw std::invalid_argument(
          "sequence " + std::to_string(request_ids[b]) + ": cannot schedule " + std::to_string(n) +
          " new tokens (" + std::to_string(s.num_computed_tokens) + " computed, " +
          std::to_string(capacity) + " allocated, " + std::to_string(s.token_ids.size()) +
          " known)");
    }
    num_tokens += n;
    num_kv += end;
    width = std::max<int64_t>(width, static_cast<int64_t>(s.block_table.size()));
    md.max_query_len = std::max(md.max_query_len, n);
    md.max_context_len = std::max(md.max_context_len, static_cast<int32_t>(end));
  }
  if (num_tokens > INT32_MAX || num_kv > INT32_MAX || width * num_seqs > INT32_MAX) {
    throw std::invalid_argument("batch too large for int32 metadata");
  }
  md.num_tokens = static_cast<int32_t>(num_tokens);
  md.block_table_width = static_cast<int32_t>(width);
  md.input_ids.resize(num_tokens);
  md.positions.resize(num_tokens);
  md.slot_mapping.resize(num_tokens);
  md.block_tables.assign(static_cast<size_t>(width) * num_seqs, -1);

  // Second pass: fill.
  const int32_t tpp = core.tokens_per_page(member);
  int32_t t = 0;
  for (int32_t b = 0; b < num_seqs; ++b) {
    const Sequence& s = *seqs[b];
    const int32_t start = s.num_computed_tokens;
    const int32_t end = start + num_new_tokens[b];
    for (int32_t pos = start; pos < end; ++pos, ++t) {
      md.input_ids[t] = s.token_ids[pos];
      md.positions[t] = pos;
      md.slot_mapping[t] = s.block_table[pos / tpp] * tpp + pos % tpp;
    }
    std::copy(s.block_table.begin(), s.block_table.end(),
              md.block_tables.begin() + static_cast<size_t>(b) * width);
    md.cu_seqlens_q[b + 1] = t;
    md.context_lens[b] = end;
    md.logits_indices[b] = t - 1;
  }
  return md;
}

}  // namespace blendrt
