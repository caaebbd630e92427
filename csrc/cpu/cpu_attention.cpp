// Paged attention on the CPU (see cpu_attention.h).
#include "cpu_attention.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <exception>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "cpu_float.h"
#include "cpu_page_kernels.h"

namespace blendrt {
namespace {

// Per-thread scratch, grown on demand and reused across work items.
struct Scratch {
  std::vector<float> queries;  // [rows, D], row r = i * H_q + head
  std::vector<float> scores;   // [rows, context_len]
  std::vector<float> acc;      // [rows, D]
  std::vector<float> inv_sum;  // [rows]
  std::vector<float> kv;       // [tokens_per_page, heads, D] a page run as float32
};

// The first key position any query of a sequence can see: queries start at first_pos.
// NOTE: its page is the first a kernel may read; entries before it may be -1 (released).
inline int first_visible_key(int first_pos, int window) {
  return window > 0 ? std::max(0, first_pos - window + 1) : 0;
}

// A quantized cache value as float32 (before its row's scale).
inline float cache_value(int8_t q) { return static_cast<float>(q); }
inline float cache_value(uint8_t q) { return fp8_e4m3_to_float(q); }  // fp8 e4m3fn

// Tokens [0, n) of one page, KV heads [h_begin, h_end), as float32 rows of `*token_stride`
// floats: in place for float32 storage, else converted into the scratch (quantized values
// times their (token, head) scale, `scales` pointing at the page's first token).
// NOTE: the kernels index heads at multiples of D, so heads must be contiguous within a
// token (head_stride == D), as pool views are; the launcher checks it.
template <typename C>
const float* page_run(const PagedAttentionArgs& a, const C* first, const _Float16* scales,
                      int n, int h_begin, int h_end, Scratch& s, int64_t* token_stride) {
  if constexpr (std::is_same_v<C, float>) {
    *token_stride = a.token_stride;
    return first + static_cast<int64_t>(h_begin) * a.head_stride;
  }
  const int width = (h_end - h_begin) * a.head_dim;
  float* out = s.kv.data();
  for (int t = 0; t < n; ++t) {
    for (int h = h_begin; h < h_end; ++h) {
      const C* src = first + t * a.token_stride + h * a.head_stride;
      float* dst = out + static_cast<int64_t>(t) * width + (h - h_begin) * a.head_dim;
      if constexpr (std::is_same_v<C, int8_t> || std::is_same_v<C, uint8_t>) {
        const float scale = static_cast<float>(scales[t * a.scales.token_stride + h]);
        for (int j = 0; j < a.head_dim; ++j) dst[j] = cache_value(src[j]) * scale;
      } else {
        to_float(src, dst, a.head_dim);
      }
    }
  }
  *token_stride = width;
  return out;
}

// One work item: KV heads [h_begin, h_end) of one sequence, all its query rows and all query
// heads of those groups. A page holds a token's heads side by side, so walking the tokens
// reads each page's bytes in order.
template <typename T, typename C>
void attend(const PagedAttentionArgs& a, int32_t seq, int h_begin, int h_end, Scratch& s) {
  const int d = a.head_dim;
  const int group = a.num_q_heads / a.num_kv_heads;
  const int32_t row0 = a.cu_seqlens_q[seq];
  const int q_len = a.cu_seqlens_q[seq + 1] - row0;
  const int ctx = a.context_lens[seq];
  if (q_len <= 0) return;
  const int first_pos = ctx - q_len;  // position of the first new query
  const int tpp = a.tokens_per_page;
  // Pages are read from the one holding the first visible key; scores are kept for the
  // positions [base, ctx), column t <-> position base + t.
  const int base = first_visible_key(first_pos, a.window) / tpp * tpp;
  const int span = ctx - base;
  const int heads = (h_end - h_begin) * group;  // query heads of this item
  const int rows = q_len * heads;               // row r = i * heads + local query head
  s.queries.resize(static_cast<size_t>(rows) * d);
  s.scores.resize(static_cast<size_t>(rows) * span);
  s.acc.assign(static_cast<size_t>(rows) * d, 0.0f);
  s.inv_sum.resize(rows);
  s.kv.resize(static_cast<size_t>(a.tokens_per_page) * (h_end - h_begin) * d);

  const T* q = static_cast<const T*>(a.q);
  for (int i = 0; i < q_len; ++i) {
    const T* q_row = q + ((row0 + i) * static_cast<int64_t>(a.num_q_heads) + h_begin * group) * d;
    to_float(q_row, &s.queries[static_cast<size_t>(i) * heads * d], heads * d);
  }
  const int32_t* table = a.block_tables + static_cast<int64_t>(seq) * a.block_table_width;
  // Calls fn(t0 - base, n, first token, its scales) for each page's run of tokens of `cache`,
  // from base's page on.
  // Bytes of one page run (a layer's K or V of every token of the page).
  const int64_t run_bytes = static_cast<int64_t>(tpp) * a.token_stride * sizeof(C);
  auto for_each_page = [&](const void* cache, const _Float16* scales, auto&& fn) {
    const C* first = static_cast<const C*>(cache);
    for (int t0 = base; t0 < ctx; t0 += tpp) {
      // NOTE: pages are scattered, so the hardware prefetcher stops at each page's end;
      // fetching the next page's run while this one is computed hides the DRAM latency.
      if (t0 + tpp < ctx) {
        const C* next_page = first + table[t0 / tpp + 1] * a.page_stride;
        const char* next = reinterpret_cast<const char*>(next_page);
        for (int64_t b = 0; b < run_bytes; b += 64) __builtin_prefetch(next + b);
      }
      const int64_t page = table[t0 / tpp];
      fn(t0 - base, std::min(tpp, ctx - t0), first + page * a.page_stride,
         scales ? scales + page * a.scales.page_stride : nullptr);
    }
  };
  for_each_page(a.k_cache, a.scales.k, [&](int t0, int n, const C* k, const _Float16* ks) {
    int64_t stride = 0;
    const float* rows_k = page_run<C>(a, k, ks, n, h_begin, h_end, s, &stride);
    page_scores(rows_k, stride, n, s.queries.data(), rows, heads, group, d, a.scale,
                s.scores.data() + t0, span);
  });
  // Softmax over each row's visible keys, columns [lo, hi) (positions p - window < j <= p
  // for the row's position p); the others get 0.
  const float cap = a.softcap, inv_cap = cap > 0.0f ? 1.0f / cap : 0.0f;
  for (int r = 0; r < rows; ++r) {
    const int pos = first_pos + r / heads;
    const int lo = first_visible_key(pos, a.window) - base, hi = pos + 1 - base;
    float* sc = &s.scores[static_cast<size_t>(r) * span];
    if (cap > 0.0f) {
      for (int t = lo; t < hi; ++t) sc[t] = cap * std::tanh(sc[t] * inv_cap);
    }
    float mx = -std::numeric_limits<float>::infinity();
    for (int t = lo; t < hi; ++t) mx = std::max(mx, sc[t]);
    float sum = 0.0f;
    for (int t = lo; t < hi; ++t) {
      sc[t] = std::exp(sc[t] - mx);
      sum += sc[t];
    }
    std::fill(sc, sc + lo, 0.0f);
    std::fill(sc + hi, sc + span, 0.0f);
    s.inv_sum[r] = 1.0f / sum;
  }
  for_each_page(a.v_cache, a.scales.v, [&](int t0, int n, const C* v, const _Float16* vs) {
    int64_t stride = 0;
    const float* rows_v = page_run<C>(a, v, vs, n, h_begin, h_end, s, &stride);
    page_values(rows_v, stride, n, s.scores.data() + t0, span, rows, heads, group, d,
                s.acc.data());
  });
  T* out = static_cast<T*>(a.out);
  for (int i = 0; i < q_len; ++i) {
    T* o = out + ((row0 + i) * static_cast<int64_t>(a.num_q_heads) + h_begin * group) * d;
    for (int h = 0; h < heads; ++h) {
      const int r = i * heads + h;
      for (int j = 0; j < d; ++j) {
        store(o + h * d + j, s.acc[static_cast<size_t>(r) * d + j] * s.inv_sum[r]);
      }
    }
  }
}

template <typename T, typename C>
void run(const PagedAttentionArgs& a) {
  int64_t work = 0;
  for (int64_t i = 0; i < a.num_seq_indices; ++i) {
    const int32_t seq = a.seq_indices[i];
    const int32_t ctx = a.context_lens[seq];
    const int32_t q_len = a.cu_seqlens_q[seq + 1] - a.cu_seqlens_q[seq];
    work += ctx - first_visible_key(ctx - q_len, a.window);
  }
  work *= static_cast<int64_t>(a.num_q_heads) * a.head_dim;
  // NOTE: helpers cost tens of microseconds to start and, inside a torch process, share the
  // cores with OpenMP workers that spin for a while after each parallel op. Measured on a
  // 2-core VM in the engine's decode steps, a helper per 8M multiply-adds pays; below that
  // (11 sequences x 800 tokens x 192 dims is 1.7M) the calling thread alone is faster.
  const int64_t num_threads =
      1 + std::min<int64_t>(a.num_threads - 1, work / (1 << 23));
  // Items are (sequence, block of KV heads). Whole sequences read their pages front to
  // back; heads are split only when there are too few sequences to keep the threads busy.
  const int64_t wanted = num_threads == 1 ? 1 : 4 * num_threads;
  const int64_t num_blocks = std::min<int64_t>(
      a.num_kv_heads, std::max<int64_t>(1, (wanted + a.num_seq_indices - 1) / a.num_seq_indices));
  const int64_t heads_per_block = (a.num_kv_heads + num_blocks - 1) / num_blocks;
  const int64_t num_items = a.num_seq_indices * num_blocks;
  std::atomic<int64_t> next{0};
  std::mutex error_mutex;
  std::exception_ptr error;  // the first exception of any thread, rethrown after the join
  auto worker = [&]() {
    try {
      Scratch scratch;
      for (int64_t item = next++; item < num_items; item = next++) {
        const int h_begin = static_cast<int>((item % num_blocks) * heads_per_block);
        const int h_end = static_cast<int>(
            std::min<int64_t>(a.num_kv_heads, h_begin + heads_per_block));
        if (h_begin < h_end) {
          attend<T, C>(a, a.seq_indices[item / num_blocks], h_begin, h_end, scratch);
        }
      }
    } catch (...) {
      next = num_items;
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
    }
  };
  std::vector<std::thread> threads;
  for (int64_t i = 1; i < std::min(num_threads, num_items); ++i) threads.emplace_back(worker);
  worker();
  for (auto& t : threads) t.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace

void paged_attention_cpu(const PagedAttentionArgs& a) {
  if (a.num_kv_heads <= 0 || a.num_q_heads % a.num_kv_heads != 0) {
    throw std::invalid_argument("num_q_heads must be a positive multiple of num_kv_heads");
  }
  if (a.head_dim <= 0 || a.tokens_per_page <= 0) {
    throw std::invalid_argument("head_dim and tokens_per_page must be positive");
  }
  if (a.window < 0 || !(a.softcap >= 0.0f) || std::isinf(a.softcap)) {
    throw std::invalid_argument("window must be >= 0 and softcap a finite value >= 0");
  }
  for (int64_t i = 0; i < a.num_seq_indices; ++i) {
    const int32_t seq = a.seq_indices[i];
    if (seq < 0 || seq >= a.num_seqs) {
      throw std::invalid_argument("sequence id " + std::to_string(seq) + " out of range [0, " +
                                  std::to_string(a.num_seqs) + ")");
    }
    const int64_t ctx = a.context_lens[seq];
    const int64_t q_len = a.cu_seqlens_q[seq + 1] - a.cu_seqlens_q[seq];
    if (q_len < 0 || ctx < q_len) {
      throw std::invalid_argument("sequence " + std::to_string(seq) + " has " +
                                  std::to_string(q_len) + " query rows but context " +
                                  std::to_string(ctx));
    }
    const int64_t pages = (ctx + a.tokens_per_page - 1) / a.tokens_per_page;
    if (pages > a.block_table_width) {
      throw std::invalid_argument("sequence " + std::to_string(seq) + ": context " +
                                  std::to_string(ctx) + " needs " + std::to_string(pages) +
                                  " pages, its block table has " +
                                  std::to_string(a.block_table_width));
    }
    const int32_t* table = a.block_tables + seq * a.block_table_width;
    // NOTE: entries before the first visible key's page may be -1 (released): not read.
    const int64_t first_page =
        first_visible_key(static_cast<int>(ctx - q_len), a.window) / a.tokens_per_page;
    for (int64_t p = first_page; p < pages; ++p) {
      if (table[p] < 0 || table[p] >= a.num_pages) {
        throw std::invalid_argument("sequence " + std::to_string(seq) + ": page id " +
                                    std::to_string(table[p]) + " out of range [0, " +
                                    std::to_string(a.num_pages) + ")");
      }
    }
  }
  const bool quantized =
      a.cache_dtype == StorageType::kInt8 || a.cache_dtype == StorageType::kFp8E4M3;
  if (quantized && (a.scales.k == nullptr || a.scales.v == nullptr)) {
    throw std::invalid_argument("a quantized cache needs its scales");
  }
  if (!quantized && a.cache_dtype != a.dtype) {
    throw std::invalid_argument("the cache must hold q's dtype, or int8 / fp8 values");
  }
  // Cache element type C: q's own, or one byte per value (int8, fp8 e4m3fn) with scales.
  auto dispatch = [&](auto t) {
    using T = decltype(t);
    switch (a.cache_dtype) {
      case StorageType::kInt8:
        return run<T, int8_t>(a);
      case StorageType::kFp8E4M3:
        return run<T, uint8_t>(a);
      default:
        return run<T, T>(a);
    }
  };
  switch (a.dtype) {
    case StorageType::kFloat32:
      return dispatch(float{});
    case StorageType::kFloat16:
      return dispatch(_Float16{});
    case StorageType::kBFloat16:
      return dispatch(uint16_t{});
    default:
      throw std::invalid_argument("q must be float32, float16 or bfloat16");
  }
}

}  // namespace blendrt
