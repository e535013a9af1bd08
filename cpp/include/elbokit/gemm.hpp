// elbokit/gemm.hpp: the one general matrix product the engine's tiles call.
//
//   C (m,n) = beta · C + op(A) · op(B),   op(A) (m,k), op(B) (k,n)
//
// All matrices are row-major with leading dimensions lda, ldb, ldc (a tile is a block of a larger
// matrix). `ta` / `tb`: A / B are stored transposed (A as (k,m), B as (n,k)).
//
// Backend. With ELBOKIT_USE_BLAS (the default build) the product is OpenBLAS's, from PyPI's
// scipy-openblas32 (symbols prefixed scipy_), run on ONE thread: the engine's own tiling decides
// the parallelism (layers.hpp), so a tile's result depends only on its shape, never on the number
// of threads. On AVX2 cores (2 x AMD EPYC here) OpenBLAS's single-thread sgemm runs these tile
// shapes at 65-91 GFLOP/s against 51-65 for Eigen's own (benchmarks/README.md). Without it
// (-C cmake.define.ELBOKIT_BLAS=OFF) Eigen's product runs on the same tiles.
//
// Which of the two, decided once when the module loads (gemm_init) and fixed for the process:
// OpenBLAS, unless the build targets AVX-512 (-march=native on such a core: Eigen's kernels then
// use 512-bit vectors) while OpenBLAS runs a kernel of narrower vectors (its DYNAMIC_ARCH core is
// chosen at load time and OPENBLAS_CORETYPE can force, say, Haswell on an AVX-512 core). Then
// Eigen's product is the faster: one thread, 2 x AMD EPYC (avx512f) with OPENBLAS_CORETYPE=Haswell,
// the engine's tile shapes (128x400x784, 400x784x128, 512x256x256, 32x288x196, every transpose):
// float32 140-171 GFLOP/s against 90-119 for OpenBLAS's Haswell kernel, float64 68-83 against
// 49-58.
//
// Float32 on AVX-512 builds: the engine's own kernel (gemm_f32 below) for every float product,
// faster again on those tiles: one thread, 2 x AMD EPYC (avx512f), against Eigen's on the same
// operands, 128x784 · 784x400 (op(B) = Bᵀ, the forward) 227 against 175 GFLOP/s, 128x400 · 400x784
// 218-229 against 179-180, 400x128ᵀ · 128x784 (the weight gradient) 199-207 against 171-174,
// 512x256x256 211-247 against 173-181, 128x20 · 20x400 139-178 against 79-126; float64 stays on
// the rule above. ELBOKIT_GEMM=own|openblas|eigen overrides the choice (auto: own for float32 on
// AVX-512 builds, the rule above otherwise; own needs an AVX-512 build). The choice changes the
// summation order of the products, not their determinism: each tile is one single-threaded call
// whose result depends only on its shape.
#pragma once

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#ifdef __AVX512F__
#include <immintrin.h>
#endif

#include "elbokit/common.hpp"

#ifdef ELBOKIT_USE_BLAS
extern "C" {
void scipy_cblas_sgemm(int order, int transa, int transb, int m, int n, int k, float alpha, const float* a,
                       int lda, const float* b, int ldb, float beta, float* c, int ldc);
void scipy_cblas_dgemm(int order, int transa, int transb, int m, int n, int k, double alpha, const double* a,
                       int lda, const double* b, int ldb, double beta, double* c, int ldc);
void scipy_openblas_set_num_threads(int num_threads);
char* scipy_openblas_get_config(void);
char* scipy_openblas_get_corename(void);
}
#endif

namespace elbokit {

#ifdef ELBOKIT_USE_BLAS
namespace blas_detail {
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;  // CBLAS enum values
inline void gemm(int ta, int tb, int m, int n, int k, const float* A, int lda, const float* B, int ldb, float beta,
                 float* C, int ldc) {
  scipy_cblas_sgemm(kRowMajor, ta, tb, m, n, k, 1.0f, A, lda, B, ldb, beta, C, ldc);
}
inline void gemm(int ta, int tb, int m, int n, int k, const double* A, int lda, const double* B, int ldb,
                 double beta, double* C, int ldc) {
  scipy_cblas_dgemm(kRowMajor, ta, tb, m, n, k, 1.0, A, lda, B, ldb, beta, C, ldc);
}
}  // namespace blas_detail
#endif

namespace gemm_detail {
// true: the products go through Eigen's own GEMM (set once by gemm_init, read by every call).
inline bool& use_eigen() {
  static bool v =
#ifdef ELBOKIT_USE_BLAS
      false;
#else
      true;
#endif
  return v;
}
// true: float products go through the engine's own AVX-512 kernel (gemm_f32 below; set once by
// gemm_init: the default of AVX-512 builds; double products stay on Eigen's or OpenBLAS's).
#ifdef __AVX512F__
constexpr bool kHasOwn = true;  // the build has the own kernel (AVX-512)
#else
constexpr bool kHasOwn = false;
#endif
inline bool& use_own() {
  static bool v = kHasOwn;
  return v;
}
#ifdef __AVX512F__
inline void gemm_f32(bool ta, bool tb, Index m, Index n, Index k, const float* A, Index lda, const float* B, Index ldb,
              float beta, float* C, Index ldc);
#endif
// Whether OpenBLAS's running core uses 512-bit vectors (its DYNAMIC_ARCH core names).
inline bool openblas_core_is_avx512([[maybe_unused]] const char* core) {
#ifdef ELBOKIT_USE_BLAS
  for (const char* c : {"SkylakeX", "Cooperlake", "SapphireRapids", "Zen4", "Zen5"})
    if (std::strstr(core, c)) return true;
#endif
  return false;
}
}  // namespace gemm_detail

inline std::string eigen_version() {
  return std::to_string(EIGEN_WORLD_VERSION) + "." + std::to_string(EIGEN_MAJOR_VERSION) + "." +
         std::to_string(EIGEN_MINOR_VERSION);
}

// Which backend the products use, and why, for elbokit.info() and the benchmark's header.
inline std::string gemm_backend() {
#ifdef ELBOKIT_USE_BLAS
  const std::string blas = std::string("OpenBLAS (scipy-openblas32; ") + scipy_openblas_get_config() + "; core " +
                           scipy_openblas_get_corename() + ")";
  std::string other;
  if (gemm_detail::use_eigen())
    other = "Eigen " + eigen_version() +
#ifdef __AVX512F__
            " (its own GEMM, AVX-512, one thread per tile; preferred to " + blas + ")";
#else
            " (its own GEMM, one thread per tile; ELBOKIT_GEMM=eigen, instead of " + blas + ")";
#endif
  else
    other = blas.substr(0, blas.size() - 1) + ", one thread per tile)";
#else
  const std::string other = "Eigen " + eigen_version() + " (its own GEMM, one thread per tile)";
#endif
  if (gemm_detail::use_own())
    return "elbokit's own AVX-512 kernel for float32 (gemm.hpp: gemm_f32, one thread per tile); float64: " + other;
  return other;
}

// Called once when the module loads: OpenBLAS's own threads are never used, and the backend is
// chosen (see the top of this file). Throws on an unknown ELBOKIT_GEMM.
inline void gemm_init() {
  const char* env = std::getenv("ELBOKIT_GEMM");
  const std::string choice = env && *env ? env : "auto";
  if (choice != "auto" && choice != "own" && choice != "openblas" && choice != "eigen")
    fail("the environment variable ELBOKIT_GEMM must be 'auto', 'own', 'openblas' or 'eigen', got '" + choice + "'");
  if (choice == "own" && !gemm_detail::kHasOwn)
    fail("ELBOKIT_GEMM=own needs a build for AVX-512 (the engine's own kernel), this one is not");
  gemm_detail::use_own() = gemm_detail::kHasOwn && (choice == "auto" || choice == "own");
#ifdef ELBOKIT_USE_BLAS
  scipy_openblas_set_num_threads(1);
  if (choice == "openblas") gemm_detail::use_eigen() = false;
  else if (choice == "eigen") gemm_detail::use_eigen() = true;
  else {
#ifdef __AVX512F__
    gemm_detail::use_eigen() = !gemm_detail::openblas_core_is_avx512(scipy_openblas_get_corename());
#else
    gemm_detail::use_eigen() = false;
#endif
  }
#else
  if (choice == "openblas") fail("ELBOKIT_GEMM=openblas: this build has no OpenBLAS (ELBOKIT_BLAS=OFF)");
#endif
}

// Eigen's own product on the same operands: the backend of an ELBOKIT_BLAS=OFF build, and the
// reference the tests compare the BLAS path with (kernels.gemm(..., backend="eigen")).
template <class T>
void gemm_eigen(bool ta, bool tb, Index m, Index n, Index k, const T* A, Index lda, const T* B, Index ldb, T beta,
                T* C, Index ldc) {
  if (m <= 0 || n <= 0) return;
  using Stride = Eigen::OuterStride<>;
  using RM = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using CM = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>;
  Eigen::Map<RM, 0, Stride> Cm(C, m, n, Stride(ldc));
  if (beta == T(0)) Cm.setZero(); else if (beta != T(1)) Cm *= beta;
  if (k <= 0) return;
  // A stored transposed, (k,m) row-major, is op(A) (m,k) column-major with the same stride.
  auto run = [&](const auto& Am) {
    if (tb) Cm.noalias() += Am * Eigen::Map<const CM, 0, Stride>(B, k, n, Stride(ldb));
    else Cm.noalias() += Am * Eigen::Map<const RM, 0, Stride>(B, k, n, Stride(ldb));
  };
  if (ta) run(Eigen::Map<const CM, 0, Stride>(A, m, k, Stride(lda)));
  else run(Eigen::Map<const RM, 0, Stride>(A, m, k, Stride(lda)));
}

#ifdef ELBOKIT_USE_BLAS
// OpenBLAS's product whatever gemm_init chose (the tests compare the backends on the same operands).
template <class T>
void gemm_openblas(bool ta, bool tb, Index m, Index n, Index k, const T* A, Index lda, const T* B, Index ldb, T beta,
                   T* C, Index ldc) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) return gemm_eigen(ta, tb, m, n, k, A, lda, B, ldb, beta, C, ldc);  // C = beta · C
  blas_detail::gemm(ta ? blas_detail::kTrans : blas_detail::kNoTrans, tb ? blas_detail::kTrans : blas_detail::kNoTrans,
                    int(m), int(n), int(k), A, int(lda), B, int(ldb), beta, C, int(ldc));
}
#endif

template <class T>
void gemm(bool ta, bool tb, Index m, Index n, Index k, const T* A, Index lda, const T* B, Index ldb, T beta, T* C,
          Index ldc) {
#ifdef __AVX512F__
  if constexpr (std::is_same_v<T, float>)
    if (gemm_detail::use_own()) return gemm_detail::gemm_f32(ta, tb, m, n, k, A, lda, B, ldb, beta, C, ldc);
#endif
#ifdef ELBOKIT_USE_BLAS
  if (m <= 0 || n <= 0) return;
  if (gemm_detail::use_eigen()) return gemm_eigen(ta, tb, m, n, k, A, lda, B, ldb, beta, C, ldc);
  gemm_openblas(ta, tb, m, n, k, A, lda, B, ldb, beta, C, ldc);
#else
  gemm_eigen(ta, tb, m, n, k, A, lda, B, ldb, beta, C, ldc);
#endif
}

// ---- The transforms' products: gemm_rows ------------------------------------------------------
//
//   C (m, n) = beta · C + op(A) · B,   op(A) (m, k) (ta: A stored (k, m)), beta 0 or 1,
//
// for the convolutions' products (winograd.hpp, winograd_s2.hpp, conv.hpp's im2col): few rows (m, k
// ≤ a few hundred: channels, or channels × taps), long rows of B and C (n: a group's tiles or
// positions), B's and C's rows strided through the transformed tiles. On AVX-512 (float) a
// register-blocked kernel reads A, B and C in place: no packing of either operand, which for these
// shapes cost Eigen's product a fifth of its time. Per panel of 32 columns of B (k·128 bytes, kept
// in L1 while every row block of A passes over it), blocks of up to 12 rows of C accumulate 24
// packets of 16 columns, one broadcast of A and two packets of B per k. It runs on gemm_f32
// (below), which adds depth blocks of 256: each entry of C is the sum of its blocks in order, each
// block Σ_k in order, one fused multiply-add each: the result depends on the shapes alone.
// Elsewhere (double, or no AVX-512) the product is gemm's.
#ifdef __AVX512F__
// The first r of 16 lanes (a tail packet's mask; the Winograd windows use it too).
inline __mmask16 lanes16(Index r) {
  return r >= 16 ? __mmask16(0xffff) : r <= 0 ? __mmask16(0) : __mmask16((1u << r) - 1);
}

namespace gemm_detail {

// rows [0, MR) of C at columns [0, 32) (masks m0, m1: the panel's columns < n), a(i, kk) = A[i·si + kk·sk]
template <int MR, bool beta1>
inline void rows_kernel(Index k, const float* A, Index si, Index sk, const float* B, Index ldb, float* C, Index ldc,
                        __mmask16 m0, __mmask16 m1) {
  __m512 acc[MR][2];
#pragma GCC unroll 12
  for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  for (Index kk = 0; kk < k; ++kk) {
    const float* b = B + kk * ldb;
    const __m512 b0 = _mm512_maskz_loadu_ps(m0, b), b1 = _mm512_maskz_loadu_ps(m1, b + 16);
    const float* a = A + kk * sk;
#pragma GCC unroll 12
    for (int i = 0; i < MR; ++i) {
      const __m512 ai = _mm512_set1_ps(a[i * si]);
      acc[i][0] = _mm512_fmadd_ps(ai, b0, acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(ai, b1, acc[i][1]);
    }
  }
#pragma GCC unroll 12
  for (int i = 0; i < MR; ++i) {
    float* c = C + i * ldc;
    if constexpr (beta1) {
      acc[i][0] = _mm512_add_ps(acc[i][0], _mm512_maskz_loadu_ps(m0, c));
      acc[i][1] = _mm512_add_ps(acc[i][1], _mm512_maskz_loadu_ps(m1, c + 16));
    }
    _mm512_mask_storeu_ps(c, m0, acc[i][0]);
    _mm512_mask_storeu_ps(c + 16, m1, acc[i][1]);
  }
}

template <bool beta1>
inline void rows_block(Index mr, Index k, const float* A, Index si, Index sk, const float* B, Index ldb, float* C,
                       Index ldc, __mmask16 m0, __mmask16 m1) {
  switch (mr) {
#define ELBOKIT_ROWS_CASE(R) \
  case R: return rows_kernel<R, beta1>(k, A, si, sk, B, ldb, C, ldc, m0, m1);
    ELBOKIT_ROWS_CASE(1) ELBOKIT_ROWS_CASE(2) ELBOKIT_ROWS_CASE(3) ELBOKIT_ROWS_CASE(4) ELBOKIT_ROWS_CASE(5)
    ELBOKIT_ROWS_CASE(6) ELBOKIT_ROWS_CASE(7) ELBOKIT_ROWS_CASE(8) ELBOKIT_ROWS_CASE(9) ELBOKIT_ROWS_CASE(10)
    ELBOKIT_ROWS_CASE(11)
#undef ELBOKIT_ROWS_CASE
    default: return rows_kernel<12, beta1>(k, A, si, sk, B, ldb, C, ldc, m0, m1);
  }
}

// rows_kernel for a panel of at most 16 columns (mask m0): one packet per row, so that 24 rows fill
// the registers (the 32-column kernel would spend half its products on the masked-out half). Each
// entry's products are the same chain in the same order as rows_kernel's: the same results.
template <int MR, bool beta1>
inline void rows16_kernel(Index k, const float* A, Index si, Index sk, const float* B, Index ldb, float* C,
                          Index ldc, __mmask16 m0) {
  __m512 acc[MR];
#pragma GCC unroll 24
  for (int i = 0; i < MR; ++i) acc[i] = _mm512_setzero_ps();
  for (Index kk = 0; kk < k; ++kk) {
    const __m512 b0 = _mm512_maskz_loadu_ps(m0, B + kk * ldb);
    const float* a = A + kk * sk;
#pragma GCC unroll 24
    for (int i = 0; i < MR; ++i) acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(a[i * si]), b0, acc[i]);
  }
#pragma GCC unroll 24
  for (int i = 0; i < MR; ++i) {
    float* c = C + i * ldc;
    if constexpr (beta1) acc[i] = _mm512_add_ps(acc[i], _mm512_maskz_loadu_ps(m0, c));
    _mm512_mask_storeu_ps(c, m0, acc[i]);
  }
}

// Rows [0, mr) of a ≤ 16-column panel: blocks of 24, then 16, 8, 4, 2, 1.
template <bool beta1>
inline void rows16_block(Index mr, Index k, const float* A, Index si, Index sk, const float* B, Index ldb,
                         float* C, Index ldc, __mmask16 m0) {
  Index i = 0;
  for (; i + 24 <= mr; i += 24) rows16_kernel<24, beta1>(k, A + i * si, si, sk, B, ldb, C + i * ldc, ldc, m0);
#define ELBOKIT_ROWS16_TAIL(R) \
  if (mr - i >= R) {           \
    rows16_kernel<R, beta1>(k, A + i * si, si, sk, B, ldb, C + i * ldc, ldc, m0); \
    i += R;                    \
  }
  ELBOKIT_ROWS16_TAIL(16) ELBOKIT_ROWS16_TAIL(8) ELBOKIT_ROWS16_TAIL(4) ELBOKIT_ROWS16_TAIL(2) ELBOKIT_ROWS16_TAIL(1)
#undef ELBOKIT_ROWS16_TAIL
}

// r[0 … 15] (rows of 16) := its transpose, in registers: in-lane unpacks and shuffles give 4 x 4
// blocks, then two rounds of 128-bit-lane shuffles put the blocks in place.
[[gnu::always_inline]] inline void transpose16(__m512* r) {
  __m512 t[16];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {  // r[4i + c], 128-bit lane L: column 4L + c of rows 4i … 4i + 3
    r[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
#pragma GCC unroll 4
  for (int c = 0; c < 4; ++c) {
    t[c] = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x88);
    t[c + 4] = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xDD);
    t[c + 8] = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x88);
    t[c + 12] = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xDD);
  }
#pragma GCC unroll 4
  for (int c = 0; c < 4; ++c) {
    r[c] = _mm512_shuffle_f32x4(t[c], t[c + 8], 0x88);
    r[c + 8] = _mm512_shuffle_f32x4(t[c], t[c + 8], 0xDD);
    r[c + 4] = _mm512_shuffle_f32x4(t[c + 4], t[c + 12], 0x88);
    r[c + 12] = _mm512_shuffle_f32x4(t[c + 4], t[c + 12], 0xDD);
  }
}

// op(B) = Bᵀ (B stored (n, k)): the panel of kc rows and w ≤ 32 columns starting at B (B[j·ldb + kk]
// is op(B)(kk, j)) into P (kc, 32), P[kk·32 + j] = B[j·ldb + kk], columns ≥ w zero; 16 x 16 blocks
// transposed in registers.
inline void pack_bt_panel(const float* B, Index ldb, Index kc, Index w, float* P) {
  for (Index h = 0; h < 2; ++h) {  // the panel's two halves of 16 columns
    const Index wh = std::clamp<Index>(w - 16 * h, 0, 16);
    const float* Bh = B + 16 * h * ldb;
    for (Index k0 = 0; k0 < kc; k0 += 16) {
      const Index kw = std::min<Index>(16, kc - k0);
      const __mmask16 mk = lanes16(kw);
      __m512 r[16];
#pragma GCC unroll 16
      for (Index j = 0; j < 16; ++j) r[j] = j < wh ? _mm512_maskz_loadu_ps(mk, Bh + j * ldb + k0) : _mm512_setzero_ps();
      transpose16(r);
      for (Index kk = 0; kk < kw; ++kk) _mm512_store_ps(P + (k0 + kk) * 32 + 16 * h, r[kk]);
    }
  }
}

constexpr Index kDepthBlock = 256;  // depth per pass, at most: a panel of 32 columns is ≤ 32 KB, in L1
constexpr Index kRowBlock = 384;    // rows of op(A) per pass (with a depth block: ≤ 384 KB, in L2)

// The engine's float product on AVX-512 (gemm's and gemm_rows' path there):
//   C (m, n) = beta · C + op(A) · op(B).
// The depth is cut into ceil(k / 256) balanced blocks and the rows into blocks of 384. Per row
// block and depth block, each panel of 32 columns of op(B) (read in place when B is untransposed,
// transposed into a 32 KB aligned buffer when it is: tb) stays in L1 while blocks of 12 rows of C
// accumulate it over the depth block in 24 registers (rows_kernel: one broadcast of A and two
// packets of B per k, read in place, no packing of A; a panel of ≤ 16 columns, blocks of 24 rows
// with one packet each: rows16_kernel). Each entry of C is the sum over its depth
// blocks in order, each block's terms in order: the result depends on the shapes alone.
inline void gemm_f32(bool ta, bool tb, Index m, Index n, Index k, const float* A, Index lda, const float* B,
                     Index ldb, float beta, float* C, Index ldc) {
  if (m <= 0 || n <= 0) return;
  if (beta != 0.0f && beta != 1.0f) {  // C = beta · C first, then accumulate onto it
    for (Index i = 0; i < m; ++i)
      for (Index j = 0; j < n; ++j) C[i * ldc + j] *= beta;
    beta = 1.0f;
  }
  if (k <= 0) {
    if (beta == 0.0f)
      for (Index i = 0; i < m; ++i) std::fill(C + i * ldc, C + i * ldc + n, 0.0f);
    return;
  }
  constexpr Index MR = 12;
  alignas(64) thread_local float panel[kDepthBlock * 32];
  const Index nk = ceil_div(k, kDepthBlock), kcs = ceil_div(k, nk);  // balanced depth blocks
  const Index si = ta ? 1 : lda, sk = ta ? lda : 1;  // op(A)(i, kk) = A[i·si + kk·sk]
  for (Index i0 = 0; i0 < m; i0 += kRowBlock) {
    const Index mb = std::min(kRowBlock, m - i0);
    for (Index kb = 0; kb < nk; ++kb) {
      const Index k0 = kb * kcs, kc = std::min(kcs, k - k0);
      const bool acc = kb > 0 || beta == 1.0f;
      const float* Ak = A + i0 * si + k0 * sk;
      for (Index j = 0; j < n; j += 32) {
        const Index w = std::min<Index>(32, n - j);
        const __mmask16 m0 = lanes16(w), m1 = lanes16(w - 16);
        const float* Bp = B + k0 * ldb + j;
        Index ldp = ldb;
        if (tb) {
          pack_bt_panel(B + j * ldb + k0, ldb, kc, w, panel);
          Bp = panel;
          ldp = 32;
        }
        float* Cj = C + i0 * ldc + j;
        if (w <= 16) {  // one packet per row (n ≤ 16, or the last panel's ≤ 16 columns)
          if (acc) rows16_block<true>(mb, kc, Ak, si, sk, Bp, ldp, Cj, ldc, m0);
          else rows16_block<false>(mb, kc, Ak, si, sk, Bp, ldp, Cj, ldc, m0);
          continue;
        }
        for (Index i = 0; i < mb; i += MR) {
          const Index mr = std::min(MR, mb - i);
          if (acc) rows_block<true>(mr, kc, Ak + i * si, si, sk, Bp, ldp, Cj + i * ldc, ldc, m0, m1);
          else rows_block<false>(mr, kc, Ak + i * si, si, sk, Bp, ldp, Cj + i * ldc, ldc, m0, m1);
        }
      }
    }
  }
}

// The 16 sums of v[0 … 15] (16 packets each), out[4L + t] = Σ v[4t + L]: a transposing tree of
// 15 adds (128-bit-lane shuffles, then in-lane unpacks) instead of 16 separate reductions.
[[gnu::always_inline]] inline void reduce16(const __m512* v, float* out) {
  __m512 z[8], w[4], p[2];
#pragma GCC unroll 16
  for (int k = 0; k < 8; ++k)  // z_k: v[2k]'s 8 partials in lanes 0-1, v[2k + 1]'s in lanes 2-3
    z[k] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * k], v[2 * k + 1], 0x44),
                         _mm512_shuffle_f32x4(v[2 * k], v[2 * k + 1], 0xEE));
#pragma GCC unroll 16
  for (int m = 0; m < 4; ++m)  // w_m: lane L holds 4 partials of v[4m + L]
    w[m] = _mm512_add_ps(_mm512_shuffle_f32x4(z[2 * m], z[2 * m + 1], 0x88),
                         _mm512_shuffle_f32x4(z[2 * m], z[2 * m + 1], 0xDD));
#pragma GCC unroll 16
  for (int r = 0; r < 2; ++r)  // p_r, lane L: 2 partials each of v[8r + L] and v[8r + 4 + L], interleaved
    p[r] = _mm512_add_ps(_mm512_unpacklo_ps(w[2 * r], w[2 * r + 1]), _mm512_unpackhi_ps(w[2 * r], w[2 * r + 1]));
  _mm512_storeu_ps(out, _mm512_add_ps(_mm512_shuffle_ps(p[0], p[1], 0x44), _mm512_shuffle_ps(p[0], p[1], 0xEE)));
}

// C (MI, MJ) (row stride ldc) += A (MI, n) · B (MJ, n)ᵀ, the rows of A and B at strides lda, ldb,
// MI, MJ ≤ 4: per output, 16 lane sums over q ≡ lane (mod 16) in order, then reduce16's fixed tree.
template <int MI, int MJ>
[[gnu::always_inline]] inline void dots_kernel(Index n, const float* A, Index lda, const float* B, Index ldb,
                                               float* C, Index ldc) {
  __m512 acc[16];
#pragma GCC unroll 16
  for (int k = 0; k < 16; ++k) acc[k] = _mm512_setzero_ps();
  for (Index q = 0; q < n; q += 16) {
    const __mmask16 mq = lanes16(n - q);
    __m512 a[MI];
#pragma GCC unroll 4
    for (int i = 0; i < MI; ++i) a[i] = _mm512_maskz_loadu_ps(mq, A + i * lda + q);
#pragma GCC unroll 4
    for (int j = 0; j < MJ; ++j) {
      const __m512 b = _mm512_maskz_loadu_ps(mq, B + j * ldb + q);
#pragma GCC unroll 4
      for (int i = 0; i < MI; ++i) acc[4 * i + j] = _mm512_fmadd_ps(a[i], b, acc[4 * i + j]);
    }
  }
  alignas(64) float sums[16];
  reduce16(acc, sums);  // Σ acc[4i + j] at sums[4j + i]
#pragma GCC unroll 4
  for (int i = 0; i < MI; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < MJ; ++j) C[i * ldc + j] += sums[4 * j + i];
}

template <int MI>
inline void dots_block(Index mj, Index n, const float* A, Index lda, const float* B, Index ldb, float* C, Index ldc) {
  switch (mj) {
    case 1: return dots_kernel<MI, 1>(n, A, lda, B, ldb, C, ldc);
    case 2: return dots_kernel<MI, 2>(n, A, lda, B, ldb, C, ldc);
    case 3: return dots_kernel<MI, 3>(n, A, lda, B, ldb, C, ldc);
    default: return dots_kernel<MI, 4>(n, A, lda, B, ldb, C, ldc);
  }
}
}  // namespace gemm_detail
#endif

// C (m, p) += A (m, n) · B (p, n)ᵀ (beta 1, both operands' rows long runs of n entries): the
// convolutions' weight gradients (Winograd: dU_ξ += dM_ξ · V_ξᵀ), a reduction over a group's tiles. On AVX-512
// (float) blocks of 4 × 4 outputs, each 16 lane sums over n read in place (no packing), reduced
// together (reduce16); elsewhere gemm's.
template <class T>
void gemm_dots(Index m, Index p, Index n, const T* A, Index lda, const T* B, Index ldb, T* C, Index ldc) {
#ifdef __AVX512F__
  if constexpr (std::is_same_v<T, float>) {
    if (m <= 0 || p <= 0 || n <= 0) return;
    // 32 columns of C or more: gemm_f32 with Bᵀ packed, faster there (64 x 32, 32 x 64, 64 x 64 outputs
    // over 196-256 tiles: 165-196 GFLOP/s against 142-181 one thread); narrower, the dots
    if (p >= 32) return gemm_detail::gemm_f32(false, true, m, p, n, A, lda, B, ldb, 1.0f, C, ldc);
    for (Index i = 0; i < m; i += 4)
      for (Index j = 0; j < p; j += 4) {
        const Index mi = std::min<Index>(4, m - i), mj = std::min<Index>(4, p - j);
        const float* a = A + i * lda;
        const float* b = B + j * ldb;
        float* c = C + i * ldc + j;
        switch (mi) {
          case 1: gemm_detail::dots_block<1>(mj, n, a, lda, b, ldb, c, ldc); break;
          case 2: gemm_detail::dots_block<2>(mj, n, a, lda, b, ldb, c, ldc); break;
          case 3: gemm_detail::dots_block<3>(mj, n, a, lda, b, ldb, c, ldc); break;
          default: gemm_detail::dots_block<4>(mj, n, a, lda, b, ldb, c, ldc);
        }
      }
    return;
  }
#endif
  gemm(false, true, m, p, n, A, lda, B, ldb, T(1), C, ldc);
}

template <class T>
void gemm_rows(bool ta, Index m, Index n, Index k, const T* A, Index lda, const T* B, Index ldb, T beta, T* C,
               Index ldc) {
#ifdef __AVX512F__
  if constexpr (std::is_same_v<T, float>) return gemm_detail::gemm_f32(ta, false, m, n, k, A, lda, B, ldb, beta, C, ldc);
#endif
  gemm(ta, false, m, n, k, A, lda, B, ldb, beta, C, ldc);
}

}  // namespace elbokit
