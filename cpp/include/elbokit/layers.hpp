// elbokit/layers.hpp: the linear layer and the activations, each a forward/backward pair.
//
// Shapes: B batch rows, I inputs, O outputs. Weights are (O, I) as in torch.nn.Linear.
// Backward functions *accumulate* (+=) into parameter gradients (zeroed once per step by the
// caller) and into input gradients when a pointer is given (nullptr: not needed).
#pragma once

#include <algorithm>
#include <string>

#include "elbokit/common.hpp"

namespace elbokit {

// Tile sizes of the deterministic parallel products (see common.hpp: threading policy).
constexpr Index kTileRows = 64;   // batch rows per tile
constexpr Index kTileCols = 256;  // output units (or input units) per tile

// linear_forward: out (B,O) = inp (B,I) · weightᵀ (I,O) + bias (O).
template <class T>
void linear_forward(T* out, const T* inp, const T* weight, const T* bias, Index B, Index I, Index O) {
  CMatMap<T> X(inp, B, I);     // (B, I)
  CMatMap<T> W(weight, O, I);  // (O, I)
  MatMap<T> Y(out, B, O);      // (B, O)
  const Index nr = ceil_div(B, kTileRows), nc = ceil_div(O, kTileCols), ntiles = nr * nc;
  const bool par = ntiles > 1 && 2.0 * double(B) * double(I) * double(O) > kParallelFlops;
#pragma omp parallel for schedule(static) if (par)
  for (Index t = 0; t < ntiles; ++t) {
    const Index r0 = (t / nc) * kTileRows, c0 = (t % nc) * kTileCols;
    const Index rb = std::min(kTileRows, B - r0), cb = std::min(kTileCols, O - c0);
    auto Yt = Y.block(r0, c0, rb, cb);
    Yt.noalias() = X.middleRows(r0, rb) * W.middleRows(c0, cb).transpose();
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
  CMatMap<T> dY(dout, B, O);
  CMatMap<T> X(inp, B, I);
  CMatMap<T> W(weight, O, I);
  const bool par = 2.0 * double(B) * double(I) * double(O) > kParallelFlops;
  if (dinp) {
    MatMap<T> dX(dinp, B, I);
    const Index nr = ceil_div(B, kTileRows), nc = ceil_div(I, kTileCols), ntiles = nr * nc;
#pragma omp parallel for schedule(static) if (par && ntiles > 1)
    for (Index t = 0; t < ntiles; ++t) {
      const Index r0 = (t / nc) * kTileRows, c0 = (t % nc) * kTileCols;
      const Index rb = std::min(kTileRows, B - r0), cb = std::min(kTileCols, I - c0);
      dX.block(r0, c0, rb, cb).noalias() += dY.middleRows(r0, rb) * W.middleCols(c0, cb);
    }
  }
  // Weight gradient: tiles over output units and input units, each with the whole batch as depth.
  MatMap<T> dW(dweight, O, I);
  const Index nr = ceil_div(O, kTileRows), nc = ceil_div(I, kTileCols), ntiles = nr * nc;
#pragma omp parallel for schedule(static) if (par && ntiles > 1)
  for (Index t = 0; t < ntiles; ++t) {
    const Index r0 = (t / nc) * kTileRows, c0 = (t % nc) * kTileCols;
    const Index rb = std::min(kTileRows, O - r0), cb = std::min(kTileCols, I - c0);
    dW.block(r0, c0, rb, cb).noalias() += dY.middleCols(r0, rb).transpose() * X.middleCols(c0, cb);
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
void activation_forward(T* out, const T* inp, Index n, Activation act) {
  const bool par = n > 32768;
#pragma omp parallel for schedule(static) if (par)
  for (Index i = 0; i < n; ++i) {
    const T a = inp[i];
    T y;
    switch (act) {
      case Activation::ReLU: y = a > T(0) ? a : T(0); break;
      case Activation::Tanh: y = std::tanh(a); break;
      case Activation::Sigmoid: y = sigmoid(a); break;
      case Activation::Softplus: y = softplus(a); break;
      case Activation::ELU: y = a > T(0) ? a : std::expm1(a); break;
      case Activation::SiLU: y = a * sigmoid(a); break;
      case Activation::LeakyReLU: y = a > T(0) ? a : T(kLeakySlope) * a; break;
      default: y = a;
    }
    out[i] = y;
  }
}

template <class T>
void activation_backward(T* dinp, const T* dout, const T* inp, const T* out, Index n, Activation act) {
  const bool par = n > 32768;
#pragma omp parallel for schedule(static) if (par)
  for (Index i = 0; i < n; ++i) {
    const T a = inp[i], y = out[i], g = dout[i];
    T d;
    switch (act) {
      case Activation::ReLU: d = a > T(0) ? T(1) : T(0); break;
      case Activation::Tanh: d = T(1) - y * y; break;
      case Activation::Sigmoid: d = y * (T(1) - y); break;
      case Activation::Softplus: d = sigmoid(a); break;
      case Activation::ELU: d = a > T(0) ? T(1) : y + T(1); break;
      case Activation::SiLU: {
        const T s = sigmoid(a);
        d = s * (T(1) + a * (T(1) - s));
        break;
      }
      case Activation::LeakyReLU: d = a > T(0) ? T(1) : T(kLeakySlope); break;
      default: d = T(1);
    }
    dinp[i] = g * d;
  }
}

}  // namespace elbokit
