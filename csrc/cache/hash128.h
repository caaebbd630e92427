// 128-bit keyed hashing for the prefix index.
//
// A page's key is SipHash-2-4 with 128-bit output over (parent key, token ids). SipHash is a
// keyed PRF: with a per-process random key, users cannot craft token sequences whose keys
// collide, and 128 bits make accidental collisions negligible (~2^-64 at 2^32 pages).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>

namespace blendrt {

struct Hash128 {
  uint64_t lo = 0;
  uint64_t hi = 0;
  bool operator==(const Hash128& other) const { return lo == other.lo && hi == other.hi; }
  bool operator!=(const Hash128& other) const { return !(*this == other); }
};

struct Hash128Hasher {
  // The key is already uniformly distributed: folding it is enough for a bucket index.
  size_t operator()(const Hash128& h) const { return static_cast<size_t>(h.lo ^ (h.hi >> 1)); }
};

struct SipKey {
  uint64_t k0 = 0;
  uint64_t k1 = 0;
};

// SipHash-2-4, 128-bit output variant, over `len` bytes.
Hash128 siphash128(const void* data, size_t len, const SipKey& key);

// Key of a full page: hash of the parent key followed by the page's token ids.
Hash128 chain_hash(const Hash128& parent, const int32_t* token_ids, size_t num_tokens,
                   const SipKey& key);

}  // namespace blendrt
