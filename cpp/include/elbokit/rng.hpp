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

#include <Eigen/Core>  // plog on AVX-512 packets (normal_block8)

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

// Standard normal numbers by Box-Muller on Philox blocks: block i gives numbers 2i and 2i+1,
// r·cos θ and r·sin θ with r = √(−2 log u₁), θ = 2π u₂, u₁ and u₂ in (0, 1) from its words.
//
// Every normal number comes from normal_block8, which computes eight consecutive pairs in one
// compiled body (noinline): on AVX-512 the eight blocks run in the lanes of one packet, and a
// lane's result depends only on its own inputs, so a number is the same bits whether it is drawn
// alone (normal_at), in a row of a chunk or in a long fill, on any thread. Elsewhere the same eight
// pairs run one by one through the C library's log, cos and sin.
namespace rng_detail {
constexpr int kPairs = 8;  // pairs per normal_block8

// Box-Muller of one block on the C library's functions (the portable body).
inline void normal_pair_libm(const Philox4x32& r, double& a, double& b) {
  const double u1 = u01_open(r[0], r[1]);
  const double u2 = u01_open(r[2], r[3]);
  const double rad = std::sqrt(-2.0 * std::log(u1)), th = 6.283185307179586 * u2;
  a = rad * std::cos(th);
  b = rad * std::sin(th);
}

#if defined(__AVX512F__) && defined(__AVX512DQ__)
// Eight Philox4x32-10 blocks in the 64-bit lanes of four packets (each lane holds one 32-bit word).
inline void philox8(__m512i& c0, __m512i& c1, __m512i& c2, __m512i& c3, uint32_t k0, uint32_t k1) {
  const __m512i M0 = _mm512_set1_epi64(0xD2511F53), M1 = _mm512_set1_epi64(0xCD9E8D57);
  const __m512i lo = _mm512_set1_epi64(0xFFFFFFFF);
  for (int r = 0; r < 10; ++r) {
    if (r > 0) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    const __m512i p0 = _mm512_mul_epu32(c0, M0), p1 = _mm512_mul_epu32(c2, M1);
    const __m512i n0 = _mm512_xor_si512(_mm512_xor_si512(_mm512_srli_epi64(p1, 32), c1), _mm512_set1_epi64(k0));
    const __m512i n2 = _mm512_xor_si512(_mm512_xor_si512(_mm512_srli_epi64(p0, 32), c3), _mm512_set1_epi64(k1));
    c0 = n0;
    c1 = _mm512_and_si512(p1, lo);
    c2 = n2;
    c3 = _mm512_and_si512(p0, lo);
  }
}

// u01_open on eight lanes: 53 bits (a >> 5, b >> 6) to a double in (0, 1), exactly as the scalar.
inline __m512d u01_open8(__m512i a, __m512i b) {
  const __m512i m = _mm512_or_si512(_mm512_slli_epi64(_mm512_srli_epi64(a, 5), 26), _mm512_srli_epi64(b, 6));
  return _mm512_mul_pd(_mm512_add_pd(_mm512_cvtepu64_pd(m), _mm512_set1_pd(0.5)), _mm512_set1_pd(0x1.0p-53));
}

// cos(2πu) and sin(2πu) for u in (0, 1): u = q/4 + f exactly (q = round(4u), |f| <= 1/8), the
// kernels of fdlibm (k_sin.c, k_cos.c) at x = 2πf, |x| <= π/4, then the quadrant q mod 4.
inline void sincos_2pi8(__m512d u, __m512d& c, __m512d& s) {
  const __m512d q = _mm512_roundscale_pd(_mm512_mul_pd(u, _mm512_set1_pd(4.0)), _MM_FROUND_TO_NEAREST_INT);
  const __m512d f = _mm512_fnmadd_pd(q, _mm512_set1_pd(0.25), u);  // exact
  const __m512d x = _mm512_mul_pd(f, _mm512_set1_pd(6.283185307179586));
  const __m512d z = _mm512_mul_pd(x, x);
  auto k = [](double v) { return _mm512_set1_pd(v); };
  // sin x = x + x·z·(S1 + z·(S2 + z·(S3 + z·(S4 + z·(S5 + z·S6)))))
  __m512d ps = _mm512_fmadd_pd(z, k(1.58969099521155010221e-10), k(-2.50507602534068634195e-08));
  ps = _mm512_fmadd_pd(z, ps, k(2.75573137070700676789e-06));
  ps = _mm512_fmadd_pd(z, ps, k(-1.98412698298579493134e-04));
  ps = _mm512_fmadd_pd(z, ps, k(8.33333333332248946124e-03));
  ps = _mm512_fmadd_pd(z, ps, k(-1.66666666666666324348e-01));
  const __m512d sn = _mm512_fmadd_pd(_mm512_mul_pd(z, x), ps, x);
  // cos x = w + (((1 − w) − z/2) + z·r), w = 1 − z/2, r = z·(C1 + z·(C2 + ... + z·C6))
  __m512d pc = _mm512_fmadd_pd(z, k(-1.13596475577881948265e-11), k(2.08757232129817482790e-09));
  pc = _mm512_fmadd_pd(z, pc, k(-2.75573143513906633035e-07));
  pc = _mm512_fmadd_pd(z, pc, k(2.48015872894767294178e-05));
  pc = _mm512_fmadd_pd(z, pc, k(-1.38888888888741095749e-03));
  pc = _mm512_fmadd_pd(z, pc, k(4.16666666666666019037e-02));
  const __m512d hz = _mm512_mul_pd(z, k(0.5)), w = _mm512_sub_pd(k(1.0), hz);
  const __m512d err = _mm512_sub_pd(_mm512_sub_pd(k(1.0), w), hz);
  const __m512d cs = _mm512_add_pd(w, _mm512_fmadd_pd(_mm512_mul_pd(z, z), pc, err));
  // the quadrant: q odd turns (c, s) into (−s, c); q & 2 negates both
  const __m512i qi = _mm512_cvtpd_epi64(q);
  const __mmask8 odd = _mm512_test_epi64_mask(qi, _mm512_set1_epi64(1));
  const __mmask8 half = _mm512_test_epi64_mask(qi, _mm512_set1_epi64(2));
  const __m512d neg = k(-0.0);
  __m512d cc = _mm512_mask_blend_pd(odd, cs, _mm512_xor_pd(sn, neg));
  __m512d ss = _mm512_mask_blend_pd(odd, sn, cs);
  c = _mm512_mask_xor_pd(cc, half, cc, neg);
  s = _mm512_mask_xor_pd(ss, half, ss, neg);
}
#endif

// Pairs pair0 .. pair0 + 7 of (seed, stream): out[2l] and out[2l + 1] are numbers 2(pair0 + l) and
// 2(pair0 + l) + 1.
__attribute__((noinline)) inline void normal_block8(uint64_t seed, uint64_t stream, uint64_t pair0,
                                                    double (&out)[2 * kPairs]) {
#if defined(__AVX512F__) && defined(__AVX512DQ__)
  const __m512i idx = _mm512_add_epi64(_mm512_set1_epi64(int64_t(pair0)), _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7));
  const __m512i lo = _mm512_set1_epi64(0xFFFFFFFF);
  __m512i c0 = _mm512_and_si512(idx, lo), c1 = _mm512_srli_epi64(idx, 32);
  __m512i c2 = _mm512_set1_epi64(int64_t(stream & 0xFFFFFFFFu)), c3 = _mm512_set1_epi64(int64_t(stream >> 32));
  philox8(c0, c1, c2, c3, uint32_t(seed), uint32_t(seed >> 32));
  const __m512d u1 = u01_open8(c0, c1), u2 = u01_open8(c2, c3);
  const __m512d rad = _mm512_sqrt_pd(_mm512_mul_pd(_mm512_set1_pd(-2.0), Eigen::internal::plog(u1)));
  __m512d c, s;
  sincos_2pi8(u2, c, s);
  const __m512d a = _mm512_mul_pd(rad, c), b = _mm512_mul_pd(rad, s);
  _mm512_storeu_pd(out, _mm512_permutex2var_pd(a, _mm512_setr_epi64(0, 8, 1, 9, 2, 10, 3, 11), b));
  _mm512_storeu_pd(out + 8, _mm512_permutex2var_pd(a, _mm512_setr_epi64(4, 12, 5, 13, 6, 14, 7, 15), b));
#else
  for (int l = 0; l < kPairs; ++l)
    normal_pair_libm(philox_block(seed, stream, pair0 + uint64_t(l)), out[2 * l], out[2 * l + 1]);
#endif
}
}  // namespace rng_detail

// The standard normal number `index` of (seed, stream).
inline double normal_at(uint64_t seed, uint64_t stream, uint64_t index) {
  double v[2 * rng_detail::kPairs];
  rng_detail::normal_block8(seed, stream, index / 2, v);
  return v[index & 1];
}
// The uniform number `index` of (seed, stream) in (0, 1).
inline double uniform_at(uint64_t seed, uint64_t stream, uint64_t index) {
  const Philox4x32 r = philox_block(seed, stream, index);
  return u01_open(r[0], r[1]);
}

// out[i] = normal_at(seed, stream, offset + i), i < n, on the calling thread: eight pairs at a time.
template <class T>
void fill_normal_serial(T* out, int64_t n, uint64_t seed, uint64_t stream, uint64_t offset = 0) {
  int64_t i = 0;
  if (n > 0 && (offset & 1)) {  // an odd start: the second number of a pair
    out[0] = T(normal_at(seed, stream, offset));
    i = 1;
  }
  double v[2 * rng_detail::kPairs];
  while (i < n) {
    rng_detail::normal_block8(seed, stream, (offset + uint64_t(i)) / 2, v);
    const int64_t m = std::min<int64_t>(2 * rng_detail::kPairs, n - i);
    for (int64_t k = 0; k < m; ++k) out[i + k] = T(v[k]);
    i += m;
  }
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
