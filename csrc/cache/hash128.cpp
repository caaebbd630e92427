// SipHash-2-4 (128-bit output), written from the paper by Aumasson and Bernstein (2012).
#include "hash128.h"

#include <cstring>
#include <vector>

namespace blendrt {
namespace {

inline uint64_t rotl(uint64_t x, int b) { return (x << b) | (x >> (64 - b)); }

inline uint64_t load_le64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return v;
}

struct SipState {
  uint64_t v0, v1, v2, v3;

  void round() {
    v0 += v1; v1 = rotl(v1, 13); v1 ^= v0; v0 = rotl(v0, 32);
    v2 += v3; v3 = rotl(v3, 16); v3 ^= v2;
    v0 += v3; v3 = rotl(v3, 21); v3 ^= v0;
    v2 += v1; v1 = rotl(v1, 17); v1 ^= v2; v2 = rotl(v2, 32);
  }

  void compress(uint64_t m) {
    v3 ^= m;
    round();
    round();
    v0 ^= m;
  }
};

}  // namespace

Hash128 siphash128(const void* data, size_t len, const SipKey& key) {
  const auto* in = static_cast<const uint8_t*>(data);
  SipState s{key.k0 ^ 0x736f6d6570736575ULL, key.k1 ^ 0x646f72616e646f6dULL,
             key.k0 ^ 0x6c7967656e657261ULL, key.k1 ^ 0x7465646279746573ULL};
  s.v1 ^= 0xee;  // 128-bit output variant

  const size_t num_words = len / 8;
  for (size_t i = 0; i < num_words; ++i) s.compress(load_le64(in + 8 * i));

  uint64_t last = static_cast<uint64_t>(len & 0xff) << 56;
  const uint8_t* tail = in + 8 * num_words;
  for (size_t i = 0; i < (len & 7); ++i) last |= static_cast<uint64_t>(tail[i]) << (8 * i);
  s.compress(last);

  s.v2 ^= 0xee;
  for (int i = 0; i < 4; ++i) s.round();
  Hash128 out;
  out.lo = s.v0 ^ s.v1 ^ s.v2 ^ s.v3;
  s.v1 ^= 0xdd;
  for (int i = 0; i < 4; ++i) s.round();
  out.hi = s.v0 ^ s.v1 ^ s.v2 ^ s.v3;
  return out;
}

Hash128 chain_hash(const Hash128& parent, const int32_t* token_ids, size_t num_tokens,
                   const SipKey& key) {
  // Serialise as little-endian bytes: parent.lo, parent.hi, then each token id.
  constexpr size_t kStackTokens = 512;
  uint8_t stack_buf[16 + 4 * kStackTokens];
  std::vector<uint8_t> heap_buf;
  uint8_t* buf = stack_buf;
  const size_t len = 16 + 4 * num_tokens;
  if (num_tokens > kStackTokens) {
    heap_buf.resize(len);
    buf = heap_buf.data();
  }
  for (int i = 0; i < 8; ++i) buf[i] = static_cast<uint8_t>(parent.lo >> (8 * i));
  for (int i = 0; i < 8; ++i) buf[8 + i] = static_cast<uint8_t>(parent.hi >> (8 * i));
  for (size_t t = 0; t < num_tokens; ++t) {
    const auto v = static_cast<uint32_t>(token_ids[t]);
    for (int i = 0; i < 4; ++i) buf[16 + 4 * t + i] = static_cast<uint8_t>(v >> (8 * i));
  }
  return siphash128(buf, len, key);
}

}  // namespace blendrt
