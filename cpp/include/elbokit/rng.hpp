// elbokit/rng.hpp: a counter-based random number generator (Philox4x32-10, Salmon et al. 2011).
//
// Every number is a pure function of (seed, stream, index): no state is carried between calls, so a
// seed gives the same numbers whatever the number of threads and whatever order they run in.
// Streams keep apart the different uses of one seed (evaluation noise, training noise, shuffling).
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <vector>

namespace elbokit {

// Stream numbers used by the engine (documented in the Python layer too).
namespace streams {
constexpr uint64_t kUser = 0;            // ek.random.normal default
constexpr uint64_t kSample = 1;          // prior samples for vae.sample
constexpr uint64_t kLogLikelihood = 2;   // importance samples of L_K: index (b * K + k) * Z + j
constexpr uint64_t kShuffle = 1ull << 32;  // + epoch
constexpr uint64_t kTrainNoise = 1ull << 33;  // + global step
constexpr uint64_t kValidation = 3;      // validation ELBO noise during fit
constexpr uint64_t kDiffusionElbo = 4;   // diffusion ELBO, form B: ε of (example b, step t) at (b·T + t−1)·D + j
constexpr uint64_t kDiffusionChain = 5;  // diffusion ELBO, form A: forward-chain noise, same indexing
constexpr uint64_t kDiffusionValTime = 6;     // diffusion: the step t of each validation example
constexpr uint64_t kDiffusionTime = 1ull << 34;  // + global step: diffusion training steps t
}  // namespace streams

using Philox4x32 = std::array<uint32_t, 4>;

// philox4x32_10: 10 rounds of the Philox bijection of the 128-bit counter under a 64-bit key.
inline Philox4x32 philox4x32_10(Philox4x32 ctr, uint32_t k0, uint32_t k1) {
  constexpr uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
  for (int r = 0; r < 10; ++r) {
    if (r > 0) {
      k0 += W0;
      k1 += W1;
    }
    const uint64_t p0 = uint64_t(M0) * ctr[0];
    const uint64_t p1 = uint64_t(M1) * ctr[2];
    ctr = {uint32_t(p1 >> 32) ^ ctr[1] ^ k0, uint32_t(p1), uint32_t(p0 >> 32) ^ ctr[3] ^ k1, uint32_t(p0)};
  }
  return ctr;
}

inline Philox4x32 philox_block(uint64_t seed, uint64_t stream, uint64_t index) {
  return philox4x32_10({uint32_t(index), uint32_t(index >> 32), uint32_t(stream), uint32_t(stream >> 32)},
                       uint32_t(seed), uint32_t(seed >> 32));
}

// Two 32-bit words -> a double in the open interval (0, 1) with 53 random bits.
inline double u01_open(uint32_t a, uint32_t b) {
  const uint64_t m = (uint64_t(a >> 5) << 26) | uint64_t(b >> 6);  // 53 bits
  return (double(m) + 0.5) * 0x1.0p-53;
}

// Standard normal numbers 2i and 2i+1 of (seed, stream): the two outputs of Box-Muller on Philox
// block i, r·cos θ and r·sin θ with r = √(−2 log u₁), θ = 2π u₂.
inline void normal_pair(uint64_t seed, uint64_t stream, uint64_t pair, double& a, double& b) {
  const Philox4x32 r = philox_block(seed, stream, pair);
  const double u1 = u01_open(r[0], r[1]);
  const double u2 = u01_open(r[2], r[3]);
  const double rad = std::sqrt(-2.0 * std::log(u1)), th = 6.283185307179586 * u2;
  a = rad * std::cos(th);
  b = rad * std::sin(th);
}

// The standard normal number `index` of (seed, stream).
inline double normal_at(uint64_t seed, uint64_t stream, uint64_t index) {
  double a, b;
  normal_pair(seed, stream, index / 2, a, b);
  return (index & 1) ? b : a;
}

// The uniform number `index` of (seed, stream) in (0, 1).
inline double uniform_at(uint64_t seed, uint64_t stream, uint64_t index) {
  const Philox4x32 r = philox_block(seed, stream, index);
  return u01_open(r[0], r[1]);
}

// out[i] = normal_at(seed, stream, offset + i), i < n, on the calling thread.
template <class T>
void fill_normal_serial(T* out, int64_t n, uint64_t seed, uint64_t stream, uint64_t offset = 0) {
  int64_t i = 0;
  if (n > 0 && (offset & 1)) {  // an odd start: the second number of a pair
    out[0] = T(normal_at(seed, stream, offset));
    i = 1;
  }
  for (; i + 1 < n; i += 2) {
    double a, b;
    normal_pair(seed, stream, (offset + uint64_t(i)) / 2, a, b);
    out[i] = T(a);
    out[i + 1] = T(b);
  }
  if (i < n) out[i] = T(normal_at(seed, stream, offset + uint64_t(i)));
}

// The same in parallel over blocks of an even number of entries (results do not depend on it).
template <class T>
void fill_normal(T* out, int64_t n, uint64_t seed, uint64_t stream, uint64_t offset = 0) {
  constexpr int64_t kBlock = 4096;
  const int64_t nb = (n + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (nb > 1)
  for (int64_t k = 0; k < nb; ++k) {
    const int64_t len = std::min(kBlock, n - k * kBlock);
    fill_normal_serial(out + k * kBlock, len, seed, stream, offset + uint64_t(k * kBlock));
  }
}

// Rows [offset, offset + B) of S blocks of G rows of width Z, laid out (S, B, Z):
// out[(s·B + i)·Z + j] = normal_at(seed, stream, base + (s·G + offset + i)·Z + j). With offset 0 and
// G = B it is fill_normal(out, S·B·Z, seed, stream, base): a shard of a minibatch (train.hpp's Shard)
// gets exactly the numbers its rows have in the whole minibatch's draw.
template <class T>
void fill_normal_rows(T* out, int64_t S, int64_t B, int64_t Z, int64_t offset, int64_t G, uint64_t seed,
                      uint64_t stream, uint64_t base = 0) {
  if (offset == 0 && G == B) return fill_normal(out, S * B * Z, seed, stream, base);
  for (int64_t s = 0; s < S; ++s)
    fill_normal(out + s * B * Z, B * Z, seed, stream, base + uint64_t((s * G + offset) * Z));
}

// A uniformly random permutation of 0..n-1 (Fisher-Yates driven by uniform_at).
inline std::vector<int64_t> permutation(int64_t n, uint64_t seed, uint64_t stream) {
  std::vector<int64_t> p(size_t(n > 0 ? n : 0));
  for (int64_t i = 0; i < n; ++i) p[size_t(i)] = i;
  for (int64_t i = n - 1; i > 0; --i) {
    int64_t j = int64_t(uniform_at(seed, stream, uint64_t(i)) * double(i + 1));
    if (j > i) j = i;
    std::swap(p[size_t(i)], p[size_t(j)]);
  }
  return p;
}

}  // namespace elbokit
