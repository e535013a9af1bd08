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
// 49-58. ELBOKIT_GEMM=openblas|eigen overrides the choice (auto: the rule above). The choice
// changes the summation order of the products, not their determinism: each tile is one
// single-threaded call whose result depends only on its shape.
#pragma once

#include <cstdlib>
#include <cstring>

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
  if (gemm_detail::use_eigen())
    return "Eigen " + eigen_version() +
#ifdef __AVX512F__
           " (its own GEMM, AVX-512, one thread per tile; preferred to " + blas + ")";
#else
           " (its own GEMM, one thread per tile; ELBOKIT_GEMM=eigen, instead of " + blas + ")";
#endif
  return blas.substr(0, blas.size() - 1) + ", one thread per tile)";
#else
  return "Eigen " + eigen_version() + " (its own GEMM, one thread per tile)";
#endif
}

// Called once when the module loads: OpenBLAS's own threads are never used, and the backend is
// chosen (see the top of this file). Throws on an unknown ELBOKIT_GEMM.
inline void gemm_init() {
#ifdef ELBOKIT_USE_BLAS
  scipy_openblas_set_num_threads(1);
  const char* env = std::getenv("ELBOKIT_GEMM");
  const std::string choice = env && *env ? env : "auto";
  if (choice == "openblas") gemm_detail::use_eigen() = false;
  else if (choice == "eigen") gemm_detail::use_eigen() = true;
  else if (choice == "auto") {
#ifdef __AVX512F__
    gemm_detail::use_eigen() = !gemm_detail::openblas_core_is_avx512(scipy_openblas_get_corename());
#else
    gemm_detail::use_eigen() = false;
#endif
  } else {
    fail("the environment variable ELBOKIT_GEMM must be 'auto', 'openblas' or 'eigen', got '" + choice + "'");
  }
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
#ifdef ELBOKIT_USE_BLAS
  if (m <= 0 || n <= 0) return;
  if (gemm_detail::use_eigen()) return gemm_eigen(ta, tb, m, n, k, A, lda, B, ldb, beta, C, ldc);
  gemm_openblas(ta, tb, m, n, k, A, lda, B, ldb, beta, C, ldc);
#else
  gemm_eigen(ta, tb, m, n, k, A, lda, B, ldb, beta, C, ldc);
#endif
}

}  // namespace elbokit
