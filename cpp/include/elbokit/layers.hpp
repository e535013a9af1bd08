// elbokit/layers.hpp: the linear layer and the activations, each a forward/backward pair.
//
// Shapes: B batch rows, I inputs, O outputs. Weights are (O, I) as in torch.nn.Linear.
// Backward functions *accumulate* (+=) into parameter gradients (zeroed once per step by the
// caller) and into input gradients when a pointer is given (nullptr: not needed).
#pragma once

#include <algorithm>
#include <string>

#include "elbokit/common.hpp"
#include "elbokit/gemm.hpp"
#include "elbokit/simd.hpp"

namespace elbokit {

// Tiles of the deterministic parallel products (see common.hpp: threading policy). A dimension of
// size n is cut into ceil(n / max) tiles of balanced sizes (multiples of 16); the cut depends on
// the shape alone; which thread computes a tile does not matter (dynamic schedule for balance),
// since each tile is computed whole by one thread. Large row tiles let one packed panel of the other operand serve many rows.
constexpr Index kTileRows = 128;  // rows of the output per tile, at most
constexpr Index kTileCols = 256;  // columns of the output per tile, at most

struct Tiling {
  Index n = 0, count = 1, size = 0;
  Tiling(Index n_, Index max_size) : n(n_) {
    count = std::max<Index>(1, ceil_div(n, max_size));
    size = std::max<Index>(1, ceil_div(ceil_div(n, count), 16) * 16);
    count = std::max<Index>(1, ceil_div(n, size));
  }
  Index begin(Index t) const { return t * size; }
  Index len(Index t) const { return std::min(size, n - t * size); }
};

// linear_forward: out (B,O) = inp (B,I) · weightᵀ (I,O) + bias (O). The weight's rows are ldw apart
// (ldw > I: the first I columns of a wider weight; default I).
template <class T>
void linear_forward(T* out, const T* inp, const T* weight, const T* bias, Index B, Index I, Index O,
                    Index ldw = -1) {
  if (ldw < 0) ldw = I;
  MatMap<T> Y(out, B, O);  // (B, O)
  const Tiling tr(B, kTileRows), tc(O, kTileCols);
  const Index ntiles = tr.count * tc.count;
  const bool par = ntiles > 1 && 2.0 * double(B) * double(I) * double(O) > kParallelFlops;
#pragma omp parallel for schedule(dynamic, 1) if (par)
  for (Index t = 0; t < ntiles; ++t) {
    const Index r0 = tr.begin(t / tc.count), c0 = tc.begin(t % tc.count);
    const Index rb = tr.len(t / tc.count), cb = tc.len(t % tc.count);
    // Y[r0:r0+rb, c0:c0+cb] = X[r0:r0+rb, :] (rb,I) · W[c0:c0+cb, :]ᵀ (I,cb)
    gemm<T>(false, true, rb, cb, I, inp + r0 * I, I, weight + c0 * ldw, ldw, T(0), out + r0 * O + c0, O);
    auto Yt = Y.block(r0, c0, rb, cb);
    if (bias) {
      Eigen::Map<const Eigen::Matrix<T, 1, Eigen::Dynamic>> bt(bias + c0, cb);
      Yt.rowwise() += bt;
    }
  }
}

// linear_backward, given dout (B,O) = ∂J/∂out:
//   dinp (B,I)    += dout (B,O) · weight (O,I)
//   dweight (O,I) += doutᵀ (O,B) · inp (B,I)
//   dbias (O)     += Σ_b dout[b, :]
template <class T>
void linear_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight,
                     Index B, Index I, Index O) {
  const bool par = 2.0 * double(B) * double(I) * double(O) > kParallelFlops;
  // One parallel region for the input gradient's tiles and the weight gradient's tiles.
  const Tiling xr(B, kTileRows), xc(I, kTileCols), wr(O, kTileRows), wc(I, kTileCols);
  const Index nx = dinp ? xr.count * xc.count : 0, nw = wr.count * wc.count;
#pragma omp parallel for schedule(dynamic, 1) if (par && nx + nw > 1)
  for (Index t = 0; t < nx + nw; ++t) {
    if (t < nx) {  // dX tile: (rows of the batch) x (input units); depth O
      const Index i = t / xc.count, j = t % xc.count;
      const Index r0 = xr.begin(i), c0 = xc.begin(j);
      // dX[r0:, c0:] (rb,cb) += dY[r0:r0+rb, :] (rb,O) · W[:, c0:c0+cb] (O,cb)
      gemm<T>(false, false, xr.len(i), xc.len(j), O, dout + r0 * O, O, weight + c0, I, T(1), dinp + r0 * I + c0, I);
    } else {  // dW tile: (output units) x (input units); depth B, the whole batch
      const Index u = t - nx, i = u / wc.count, j = u % wc.count;
      const Index r0 = wr.begin(i), c0 = wc.begin(j);
      // dW[r0:, c0:] (rb,cb) += dY[:, r0:r0+rb]ᵀ (rb,B) · X[:, c0:c0+cb] (B,cb)
      gemm<T>(true, false, wr.len(i), wc.len(j), B, dout + r0, O, inp + c0, I, T(1), dweight + r0 * I + c0, I);
    }
  }
  if (dbias) {
    for (Index b = 0; b < B; ++b) {
      const T* row = dout + b * O;
      for (Index o = 0; o < O; ++o) dbias[o] += row[o];
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Activations: out = f(inp) elementwise; backward writes dinp = dout ⊙ f'(inp) using the saved
// input and output.

enum class Activation { Identity, ReLU, Tanh, Sigmoid, Softplus, ELU, SiLU, LeakyReLU };

inline const char* activation_names() {
  return "'relu', 'tanh', 'sigmoid', 'softplus', 'elu', 'silu', 'leaky_relu', 'identity'";
}

inline Activation activation_from_string(const std::string& s) {
  if (s == "relu") return Activation::ReLU;
  if (s == "tanh") return Activation::Tanh;
  if (s == "sigmoid") return Activation::Sigmoid;
  if (s == "softplus") return Activation::Softplus;
  if (s == "elu") return Activation::ELU;
  if (s == "silu") return Activation::SiLU;
  if (s == "leaky_relu") return Activation::LeakyReLU;
  if (s == "identity") return Activation::Identity;
  fail("activation must be one of " + std::string(activation_names()) + ", got '" + s + "'");
}

constexpr double kLeakySlope = 0.01;  // torch.nn.LeakyReLU default

// Numerically stable scalar helpers.
template <class T>
inline T sigmoid(T a) {
  if (a >= T(0)) return T(1) / (T(1) + std::exp(-a));
  const T e = std::exp(a);
  return e / (T(1) + e);
}
template <class T>
inline T softplus(T a) {  // max(a, 0) + log1p(exp(-|a|)): never overflows (MATH.md §1)
  return std::max(a, T(0)) + std::log1p(std::exp(-std::abs(a)));
}

template <class T>
using ArrMap = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>;
template <class T>
using CArrMap = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>;

// The elementwise kernels run on blocks of kElemBlock entries, in parallel over blocks for large
// arrays; within a block, on SIMD packets (simd.hpp: no select, so no scalar fallback).
constexpr Index kElemBlock = 8192;

// Large copies, clears and sums on blocks of kElemBlock entries, in parallel over blocks (a
// single thread's memset of a 10 MB activation gradient is ~1 ms the other core waits through).
// Exact: each entry is written by one thread, in one operation.
template <class F>
void for_elem_blocks(Index n, F&& f) {
  const Index nb = ceil_div(n, kElemBlock);
#pragma omp parallel for schedule(static) if (n > 4 * kElemBlock)
  for (Index k = 0; k < nb; ++k) f(k * kElemBlock, std::min(kElemBlock, n - k * kElemBlock));
}
template <class T>
void zero_fill(T* p, Index n) {
  for_elem_blocks(n, [p](Index o, Index len) { std::fill(p + o, p + o + len, T(0)); });
}
// m resized to (rows, cols) and cleared.
template <class T>
void set_zero(Mat<T>& m, Index rows, Index cols) {
  m.resize(rows, cols);
  zero_fill(m.data(), rows * cols);
}
// dst (n) += src (n)
template <class T>
void add_into(T* dst, const T* src, Index n) {
  for_elem_blocks(n, [dst, src](Index o, Index len) {
    for (Index i = o; i < o + len; ++i) dst[i] += src[i];
  });
}

// sigmoid and softplus of a packet from one exp: e = exp(−|a|), u = 1 + e, r = 1/u;
// σ(a) = r (a ≥ 0) or e·r (a < 0); softplus(a) = max(a, 0) + log1p(e) (MATH.md §1).
template <class P>
struct SigmoidParts {
  P e, u, r, nonneg;
  explicit SigmoidParts(const P& a) {
    namespace ei = simd::ei;
    e = ei::pexp(ei::pnegate(ei::pabs(a)));
    u = ei::padd(simd::one<P>(), e);
    r = ei::pdiv(simd::one<P>(), u);
    nonneg = ei::pcmp_le(simd::zero<P>(), a);
  }
  P sigmoid() const { return simd::select(nonneg, r, simd::ei::pmul(e, r)); }
  P softplus(const P& a) const { return simd::ei::padd(simd::ei::pmax(a, simd::zero<P>()), simd::log1p_given(e, u, r)); }
};

template <class T>
void activation_forward(T* out, const T* inp, Index n, Activation act) {
  using P = simd::Packet<T>;
  namespace ei = simd::ei;
  const Index nb = ceil_div(n, kElemBlock);
#pragma omp parallel for schedule(static) if (n > 4 * kElemBlock)
  for (Index k = 0; k < nb; ++k) {
    const Index o = k * kElemBlock, len = std::min(kElemBlock, n - o);
    CArrMap<T> a(inp + o, len);
    ArrMap<T> y(out + o, len);
    const T* const in[1] = {inp + o};
    T* const res[1] = {out + o};
    switch (act) {
      case Activation::ReLU: y = a.max(T(0)); break;
      case Activation::Tanh: y = a.tanh(); break;
      case Activation::Sigmoid:
        simd::map<T>(len, in, res, [](const P* v, P* r) { r[0] = SigmoidParts<P>(v[0]).sigmoid(); });
        break;
      case Activation::Softplus:
        simd::map<T>(len, in, res, [](const P* v, P* r) { r[0] = SigmoidParts<P>(v[0]).softplus(v[0]); });
        break;
      case Activation::ELU:  // expm1 where a <= 0 (Eigen's vectorized expm1, then a packet select)
        y = a.min(T(0)).expm1();
        {
          const T* const in2[2] = {inp + o, out + o};
          simd::map<T>(len, in2, res, [](const P* v, P* r) { r[0] = simd::select(simd::positive(v[0]), v[0], v[1]); });
        }
        break;
      case Activation::SiLU:  // a / (1 + e^{−a})
        simd::map<T>(len, in, res, [](const P* v, P* r) {
          r[0] = ei::pdiv(v[0], ei::padd(simd::one<P>(), ei::pexp(ei::pnegate(v[0]))));
        });
        break;
      case Activation::LeakyReLU:
        simd::map<T>(len, in, res, [](const P* v, P* r) {
          r[0] = simd::select(simd::positive(v[0]), v[0], ei::pmul(ei::pset1<P>(T(kLeakySlope)), v[0]));
        });
        break;
      default: y = a;
    }
  }
}

template <class T>
void activation_backward(T* dinp, const T* dout, const T* inp, const T* out, Index n, Activation act) {
  using P = simd::Packet<T>;
  namespace ei = simd::ei;
  const Index nb = ceil_div(n, kElemBlock);
#pragma omp parallel for schedule(static) if (n > 4 * kElemBlock)
  for (Index k = 0; k < nb; ++k) {
    const Index o = k * kElemBlock, len = std::min(kElemBlock, n - o);
    CArrMap<T> a(inp + o, len), y(out + o, len), g(dout + o, len);
    ArrMap<T> d(dinp + o, len);
    const T* const ag[2] = {inp + o, dout + o};
    T* const res[1] = {dinp + o};
    switch (act) {
      case Activation::ReLU:
        simd::map<T>(len, ag, res, [](const P* v, P* r) { r[0] = simd::select(simd::positive(v[0]), v[1], simd::zero<P>()); });
        break;
      case Activation::Tanh: d = g * (T(1) - y * y); break;
      case Activation::Sigmoid: d = g * y * (T(1) - y); break;
      case Activation::Softplus: d = g / (T(1) + (-a).exp()); break;  // σ(a); exp(-a) = inf gives 0
      case Activation::ELU: {  // y + 1 = e^a where a <= 0
        const T* const agy[3] = {inp + o, dout + o, out + o};
        simd::map<T>(len, agy, res, [](const P* v, P* r) {
          r[0] = simd::select(simd::positive(v[0]), v[1], ei::pmul(v[1], ei::padd(v[2], simd::one<P>())));
        });
        break;
      }
      case Activation::SiLU:  // s = σ(a): d = g·s·(1 + a(1 − s)), one exp per entry
        simd::map<T>(len, ag, res, [](const P* v, P* r) {
          const P s = ei::pdiv(simd::one<P>(), ei::padd(simd::one<P>(), ei::pexp(ei::pnegate(v[0]))));
          r[0] = ei::pmul(ei::pmul(v[1], s), ei::padd(simd::one<P>(), ei::pmul(v[0], ei::psub(simd::one<P>(), s))));
        });
        break;
      case Activation::LeakyReLU:
        simd::map<T>(len, ag, res, [](const P* v, P* r) {
          r[0] = simd::select(simd::positive(v[0]), v[1], ei::pmul(ei::pset1<P>(T(kLeakySlope)), v[1]));
        });
        break;
      default: d = g;
    }
  }
}

}  // namespace elbokit
