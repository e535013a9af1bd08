// elbokit/common.hpp: matrix types, error helpers and the deterministic parallel policy.
//
// Legend for shapes in comments (all elbokit headers):
//   B batch, D data, H hidden, Z latent, L levels, T steps, S samples, P parameters.
// Matrices are row-major with the batch along rows, as NumPy arrays are.
#pragma once

#include <Eigen/Dense>
#ifdef _OPENMP
#include <omp.h>
#endif

#include <cmath>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace elbokit {

using Index = Eigen::Index;
template <class T>
using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using Vec = Eigen::Matrix<T, Eigen::Dynamic, 1>;
template <class T>
using MatRef = Eigen::Ref<Mat<T>>;
template <class T>
using CMatRef = Eigen::Ref<const Mat<T>>;
template <class T>
using MatMap = Eigen::Map<Mat<T>>;
template <class T>
using CMatMap = Eigen::Map<const Mat<T>>;

// All user-facing errors are std::invalid_argument (ValueError in Python) that name the argument,
// what was expected and what came.
[[noreturn]] inline void fail(const std::string& msg) { throw std::invalid_argument(msg); }

inline std::string shape_str(Index r, Index c) {
  std::ostringstream s;
  s << "(" << r << ", " << c << ")";
  return s.str();
}

inline void check_shape(const char* name, Index rows, Index cols, Index want_rows, Index want_cols) {
  if (rows != want_rows || cols != want_cols)
    fail(std::string(name) + " must have shape " + shape_str(want_rows, want_cols) + ", got " +
         shape_str(rows, cols));
}

inline void check_cols(const char* name, Index rows, Index cols, Index want_cols) {
  if (cols != want_cols || rows <= 0)
    fail(std::string(name) + " must have shape (n, " + std::to_string(want_cols) +
         ") with n >= 1, got " + shape_str(rows, cols));
}

template <class T>
void check_finite(const char* name, const T* p, Index n) {
  for (Index i = 0; i < n; ++i)
    if (!std::isfinite(p[i]))
      fail(std::string(name) + " must contain only finite values, got " + std::to_string(double(p[i])) +
           " at flat index " + std::to_string(i));
}

inline void check_positive(const char* name, double v) {
  if (!(v > 0)) {
    std::ostringstream s;
    s << name << " must be positive, got " << v;
    fail(s.str());
  }
}

// Threading policy. Work is cut into tiles whose sizes depend only on the problem's shape, never on
// the number of threads; each tile is computed by one thread with a fixed summation order. Results
// are therefore bit-identical whatever OMP_NUM_THREADS is. Small problems run on one thread: the
// cost of waking a second one, and on a busy machine of waiting for it at the join, exceeds the
// work (a 64x64x128 GEMM is ~1 MFLOP, ~10 µs on one core). Products under 4 MFLOP stay serial.
constexpr double kParallelFlops = 4.0e6;

inline Index ceil_div(Index a, Index b) { return (a + b - 1) / b; }

inline int thread_slot() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}
inline int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// Row-chunk pipelines, for forward passes over many rows (evaluation, sampling, L_K): the rows are
// cut into chunks of at most kPipelineRows (the cut depends on the row count alone) and each chunk
// runs the whole network on one thread, its products and element-wise kernels serial (an inner
// parallel region inside this one runs on one thread). Between layers the chunk's activations stay
// in that core's cache, and there is no barrier per layer. A row's result depends only on its
// chunk's rows, never on the thread that ran it. f(begin, rows, slot): slot < max_threads() names
// the calling thread's scratch buffers.
constexpr Index kPipelineRows = 256;

template <class F>
void for_row_chunks(Index n, Index chunk, F&& f) {
  const Index nc = ceil_div(n, chunk);
#pragma omp parallel for schedule(dynamic, 1) if (nc > 1)
  for (Index c = 0; c < nc; ++c) f(c * chunk, std::min(chunk, n - c * chunk), thread_slot());
}

// Small training steps on both cores (the VAE's and HVAE's objective_grad). A step whose products
// are all below kParallelFlops runs on one core while the other waits. Such a step (about
// 6·rows·parameters FLOPs under kSplitStepFlops, at least kSplitMinRows rows per half) is cut into
// two halves of rows, each forward and backward on one thread with its own work buffers and
// gradient; the two gradients are added in half order. Steps through conv networks are cut at any
// size (module.hpp: split_rows). The cut depends on the shape and the networks alone.
constexpr double kSplitStepFlops = 64.0e6;
constexpr Index kSplitMinRows = 16;
struct RowHalves {
  int count = 1;       // 1: no split
  Index lo[3] = {0, 0, 0};  // half h is rows [lo[h], lo[h + 1])
  // split: wanted (cut when B has at least kSplitMinRows rows per half)
  RowHalves(Index B = 0, bool split = false) {
    count = split && B >= 2 * kSplitMinRows ? 2 : 1;
    lo[1] = count == 2 ? B / 2 : B;
    lo[2] = B;
  }
  // a training step: small, or the networks ask for the split at any size (prefer; module.hpp: split_rows)
  RowHalves(Index B, Index rows, Index params, bool prefer = false)
      : RowHalves(B, prefer || 6.0 * double(rows) * double(params) < kSplitStepFlops) {}
  Index size(int h) const { return lo[h + 1] - lo[h]; }
  // f(h) for h = 0, 1, one half per thread
  template <class F>
  static void run(F&& f) {
#pragma omp parallel for schedule(static, 1)
    for (int h = 0; h < 2; ++h) f(h);
  }
  // grad (P) += the halves' gradients g0, g1, in half order
  template <class T>
  static void add(T* grad, const T* g0, const T* g1, Index P) {
    for (Index i = 0; i < P; ++i) grad[i] += g0[i] + g1[i];
  }
};

}  // namespace elbokit
