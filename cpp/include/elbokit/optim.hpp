// elbokit/optim.hpp: SGD with momentum, Adam, and gradient-norm clipping over one flat buffer.
//
// Shapes: P parameters. The gradient given to step() is that of the loss to *minimize*.
// Semantics follow torch.optim.SGD / torch.optim.Adam (defaults betas (0.9, 0.999), eps 1e-8,
// L2 weight decay added to the gradient) and torch.nn.utils.clip_grad_norm_.
#pragma once

#include <string>

#include "elbokit/common.hpp"
#include "elbokit/simd.hpp"

namespace elbokit {

struct OptimConfig {
  std::string kind = "adam";  // "adam" or "sgd"
  double lr = 1e-3;
  double momentum = 0.0;  // sgd
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;  // adam
  double weight_decay = 0.0;
};

inline void validate(const OptimConfig& c) {
  if (c.kind != "adam" && c.kind != "sgd") fail("optimizer must be one of 'adam', 'sgd', got '" + c.kind + "'");
  if (!(c.lr > 0) || !std::isfinite(c.lr)) fail("lr must be a positive finite number, got " + std::to_string(c.lr));
  if (!(c.momentum >= 0 && c.momentum < 1)) fail("momentum must be in [0, 1), got " + std::to_string(c.momentum));
  if (!(c.beta1 >= 0 && c.beta1 < 1) || !(c.beta2 >= 0 && c.beta2 < 1))
    fail("betas must be in [0, 1), got (" + std::to_string(c.beta1) + ", " + std::to_string(c.beta2) + ")");
  if (!(c.eps > 0)) fail("eps must be positive, got " + std::to_string(c.eps));
  if (!(c.weight_decay >= 0)) fail("weight_decay must be >= 0, got " + std::to_string(c.weight_decay));
}

// The optimizer's moments have the parameter buffer's layout: the update is one flat loop.
template <class T>
class Optimizer {
 public:
  Optimizer(const OptimConfig& c, Index P) : c_(c), m_(Vec<T>::Zero(P)), v_(c.kind == "adam" ? Vec<T>::Zero(P) : Vec<T>()) {
    validate(c);
  }

  int64_t steps() const { return t_; }

  // step: params (P) -= update(grad (P)); grad is left unchanged. The flat buffer is updated in
  // blocks, in parallel over blocks when large; Adam in one pass on SIMD packets (each entry read
  // and written once), SGD as Eigen array expressions.
  void step(T* params, const T* grad) {
    using A = Eigen::Array<T, Eigen::Dynamic, 1>;
    using P = simd::Packet<T>;
    namespace ei = simd::ei;
    const Index Pn = m_.size();
    ++t_;
    const T wd = T(c_.weight_decay);
    const bool sgd = c_.kind == "sgd", first = t_ == 1;
    const T lr = T(c_.lr), mom = T(c_.momentum), b1 = T(c_.beta1), b2 = T(c_.beta2), eps = T(c_.eps);
    const double bc1 = 1.0 - std::pow(c_.beta1, double(t_)), bc2 = 1.0 - std::pow(c_.beta2, double(t_));
    const T step_size = T(c_.lr / bc1), inv_sqrt_bc2 = T(1.0 / std::sqrt(bc2));
    constexpr Index kBlock = 16384;
    const Index nb = ceil_div(Pn, kBlock);
#pragma omp parallel for schedule(static) if (Pn > 4 * kBlock)
    for (Index k = 0; k < nb; ++k) {
      const Index o = k * kBlock, len = std::min(kBlock, Pn - o);
      if (sgd) {  // torch.optim.SGD: g = grad + wd·p; buf = g (first step), then buf = momentum·buf + g
        Eigen::Map<A> p(params + o, len), m(m_.data() + o, len);
        Eigen::Map<const A> g(grad + o, len);
        if (mom == T(0)) {
          p -= lr * (g + wd * p);
        } else {
          if (first)
            m = g + wd * p;
          else
            m = mom * m + (g + wd * p);
          p -= lr * m;
        }
      } else {  // torch.optim.Adam: g = grad + wd·p; m = β1 m + (1−β1) g; v = β2 v + (1−β2) g²;
                // p −= lr/(1−β1^t) · m / (√v / √(1−β2^t) + eps)
        const P pb1 = ei::pset1<P>(b1), pb1c = ei::pset1<P>(T(1) - b1), pb2 = ei::pset1<P>(b2),
                pb2c = ei::pset1<P>(T(1) - b2), pwd = ei::pset1<P>(wd), pstep = ei::pset1<P>(step_size),
                pinv = ei::pset1<P>(inv_sqrt_bc2), peps = ei::pset1<P>(eps);
        const bool decay = wd != T(0);
        const T* const in[4] = {params + o, m_.data() + o, v_.data() + o, grad + o};
        T* const out[3] = {params + o, m_.data() + o, v_.data() + o};
        simd::map<T>(len, in, out, [&](const P* a, P* r) {
          const P g = decay ? ei::padd(a[3], ei::pmul(pwd, a[0])) : a[3];
          r[1] = ei::padd(ei::pmul(pb1, a[1]), ei::pmul(pb1c, g));
          r[2] = ei::padd(ei::pmul(pb2, a[2]), ei::pmul(pb2c, ei::pmul(g, g)));
          r[0] = ei::psub(a[0], ei::pdiv(ei::pmul(pstep, r[1]), ei::padd(ei::pmul(ei::psqrt(r[2]), pinv), peps)));
        });
      }
    }
  }

 private:
  OptimConfig c_;
  Vec<T> m_, v_;  // (P): momentum buffer / Adam's first and second moments
  int64_t t_ = 0;
};

// Euclidean norm of a flat gradient (P): squared norms of fixed blocks of 4096 (in T, vectorized),
// added in double in a fixed order:
// the same bits whatever the number of threads. Non-finite entries give a non-finite norm.
template <class T>
double grad_norm(const T* g, Index P) {
  constexpr Index kBlock = 4096;
  const Index nb = ceil_div(P, kBlock);
  std::vector<double> partial(size_t(nb), 0.0);
#pragma omp parallel for schedule(static) if (P > 65536)
  for (Index k = 0; k < nb; ++k) {
    const Index o = k * kBlock, len = std::min(kBlock, P - o);
    partial[size_t(k)] = double(Eigen::Map<const Vec<T>>(g + o, len).squaredNorm());  // vectorized
  }
  double total = 0;
  for (double p : partial) total += p;
  return std::sqrt(total);
}

// clip_grad_norm: scales g so that its norm is at most max_norm (torch: coef = max_norm/(norm + 1e-6),
// applied when < 1). Returns the norm before clipping.
template <class T>
double clip_grad_norm(T* g, Index P, double max_norm) {
  const double norm = grad_norm(g, P);
  if (max_norm > 0 && std::isfinite(norm)) {
    const double coef = max_norm / (norm + 1e-6);
    if (coef < 1.0) Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>(g, P) *= T(coef);
  }
  return norm;
}

}  // namespace elbokit
