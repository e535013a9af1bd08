// flows.cpp: affine coupling and planar layers, forward / inverse / log-determinant / backward,
// and the flow as a model of the training loop (MATH.md §8). Shapes as in flows.hpp.
#include "elbokit/flows.hpp"

#include <algorithm>

#include "elbokit/distributions.hpp"

namespace elbokit {

template <class T>
Flow<T>::Flow(const FlowConfig& cfg, uint64_t seed) : cfg_(cfg) {
  if (cfg.dim <= 0) fail("dim must be a positive integer, got " + std::to_string(cfg.dim));
  if (cfg.layers.empty()) fail("layers must name at least one layer ('coupling' or 'planar'), got none");
  for (size_t i = 0; i < cfg.hidden.size(); ++i)
    if (cfg.hidden[i] <= 0)
      fail("hidden must hold positive layer widths, got " + std::to_string(cfg.hidden[i]) + " at position " +
           std::to_string(i));
  const Activation act = activation_from_string(cfg.activation);
  constexpr uint64_t kInitStream = 0xF10;
  params_.resize(0);
  Index n_coupling = 0;
  for (size_t l = 0; l < cfg.layers.size(); ++l) {
    const std::string pre = "layers." + std::to_string(l);
    Layer L;
    if (cfg.layers[l] == "coupling") {
      if (cfg.dim < 2) fail("a coupling layer needs dim >= 2, got dim " + std::to_string(cfg.dim));
      L.kind = Kind::Coupling;
      const Index parity = n_coupling++ % 2;
      for (Index j = 0; j < cfg.dim; ++j) (j % 2 == parity ? L.keep : L.change).push_back(j);
      const Index A = Index(L.keep.size()), C = Index(L.change.size());
      L.net = make_trunk(layout_, pre + ".net", A, cfg.hidden, act);
      L.head = layout_.add_dense(pre + ".head", L.net.out_dim(), 2 * C);
    } else if (cfg.layers[l] == "planar") {
      L.kind = Kind::Planar;
      L.u = layout_.add(pre + ".u", {cfg.dim});
      L.w = layout_.add(pre + ".w", {cfg.dim});
      L.b = layout_.add(pre + ".b", {1});
    } else {
      fail("layers must hold 'coupling' or 'planar', got '" + cfg.layers[l] + "' at position " + std::to_string(l));
    }
    layers_.push_back(std::move(L));
  }
  params_ = Vec<T>::Zero(layout_.total);
  T* p = params_.data();
  for (const Layer& L : layers_) {
    if (L.kind == Kind::Coupling) {
      for (const Dense& d : L.net.layers) init_dense(p, d, seed, kInitStream);
      init_dense(p, L.head, seed, kInitStream);
    } else {  // u, w ~ U(−1/√D, 1/√D), b = 0
      const double bound = 1.0 / std::sqrt(double(cfg.dim));
      for (Index j = 0; j < cfg.dim; ++j) {
        p[L.u + j] = T(bound * (2.0 * uniform_at(seed, kInitStream, uint64_t(L.u + j)) - 1.0));
        p[L.w + j] = T(bound * (2.0 * uniform_at(seed, kInitStream, uint64_t(L.w + j)) - 1.0));
      }
    }
  }
  caches_.resize(layers_.size());
}

// û = u + (m(wᵀu) − wᵀu) w/‖w‖², m(a) = −1 + softplus(a): guarantees wᵀû > −1 (invertibility).
template <class T>
Vec<T> Flow<T>::planar_uhat(const Layer& L) const {
  const Index D = cfg_.dim;
  const T* p = params_.data();
  double wu = 0, ww = 0;
  for (Index j = 0; j < D; ++j) {
    wu += double(p[L.w + j]) * double(p[L.u + j]);
    ww += double(p[L.w + j]) * double(p[L.w + j]);
  }
  ww = std::max(ww, 1e-12);
  const double coef = (softplus(wu) - 1.0 - wu) / ww;
  Vec<T> uh(D);
  for (Index j = 0; j < D; ++j) uh[j] = T(double(p[L.u + j]) + coef * double(p[L.w + j]));
  return uh;
}

// conditioner: o (B, 2C) = head(net(x_A)); s = tanh(o[:, :C]) into c.s. Returns o's data.
template <class T>
const T* Flow<T>::conditioner(const Layer& L, const T* xa, Index B, LayerCache& c) const {
  const T* p = params_.data();
  const Index C = Index(L.change.size());
  const T* h = L.net.forward(p, xa, B, c.net);  // (B, H)
  c.o.resize(B, 2 * C);
  linear_forward(c.o.data(), h, p + L.head.w, p + L.head.b, B, L.head.in, L.head.out);
  c.s.resize(B, C);
  for (Index r = 0; r < B; ++r)
    for (Index k = 0; k < C; ++k) c.s(r, k) = std::tanh(c.o(r, k));
  return c.o.data();
}

template <class T>
void Flow<T>::forward_raw(const T* x, Index B, FlowTerms& t) {
  const Index D = cfg_.dim, NL = Index(layers_.size());
  const T* p = params_.data();
  acts_.resize(size_t(NL + 1));
  acts_[0] = CMatMap<T>(x, B, D);
  t.logdet.setZero(B);
  for (Index l = 0; l < NL; ++l) {
    const Layer& L = layers_[size_t(l)];
    LayerCache& c = caches_[size_t(l)];
    const Mat<T>& xin = acts_[size_t(l)];
    Mat<T>& y = acts_[size_t(l + 1)];
    y = xin;
    if (L.kind == Kind::Coupling) {
      // 1. z_A = x_A; 2. [s_raw, t] = head(net(x_A)); 3. z_C = x_C ⊙ e^s + t, log|det| = Σ s
      const Index A = Index(L.keep.size()), C = Index(L.change.size());
      c.xa.resize(B, A);
      for (Index k = 0; k < A; ++k) c.xa.col(k) = xin.col(L.keep[size_t(k)]);
      conditioner(L, c.xa.data(), B, c);
      for (Index r = 0; r < B; ++r) {
        double ld = 0;
        for (Index k = 0; k < C; ++k) {
          const Index j = L.change[size_t(k)];
          y(r, j) = xin(r, j) * std::exp(c.s(r, k)) + c.o(r, C + k);
          ld += double(c.s(r, k));
        }
        t.logdet[r] += ld;
      }
    } else {
      // z = x + û h, h = tanh(wᵀx + b); log|det| = log(1 + (1 − h²) wᵀû)
      c.uhat = planar_uhat(L);
      double wu = 0;
      for (Index j = 0; j < D; ++j) wu += double(p[L.w + j]) * double(c.uhat[j]);
      c.h.resize(B);
      c.det.resize(B);
      for (Index r = 0; r < B; ++r) {
        double a = double(p[L.b]);
        for (Index j = 0; j < D; ++j) a += double(p[L.w + j]) * double(xin(r, j));
        const double h = std::tanh(a);
        c.h[r] = h;
        c.det[r] = 1.0 + (1.0 - h * h) * wu;
        for (Index j = 0; j < D; ++j) y(r, j) = xin(r, j) + c.uhat[j] * T(h);
        t.logdet[r] += std::log(c.det[r]);
      }
    }
  }
  // prior term log N(z; 0, I) (MATH.md §1)
  const Mat<T>& z = acts_[size_t(NL)];
  t.prior.resize(B);
  for (Index r = 0; r < B; ++r) {
    double acc = 0;
    for (Index j = 0; j < D; ++j) acc += double(z(r, j)) * double(z(r, j));
    t.prior[r] = -0.5 * (double(D) * kLog2Pi + acc);
  }
}

// backward_raw: dz (B, D) and dlogdet (B) given; walks the layers from z back to x.
template <class T>
void Flow<T>::backward_raw(Index B, const T* dz, const double* dlogdet, T* grad, T* dx) {
  const Index D = cfg_.dim, NL = Index(layers_.size());
  const T* p = params_.data();
  Mat<T> g = CMatMap<T>(dz, B, D);  // (B, D): ∂J/∂(output of the current layer)
  Mat<T> gin(B, D);
  for (Index l = NL; l-- > 0;) {
    const Layer& L = layers_[size_t(l)];
    LayerCache& c = caches_[size_t(l)];
    const Mat<T>& xin = acts_[size_t(l)];
    gin = g;  // identity part: kept coordinates (coupling) or the x term (planar)
    if (L.kind == Kind::Coupling) {
      const Index A = Index(L.keep.size()), C = Index(L.change.size());
      // dx_C = dz_C ⊙ e^s;  ds = dz_C ⊙ x_C ⊙ e^s + dlogdet;  ds_raw = ds ⊙ (1 − s²);  dt = dz_C
      c.dout.resize(B, 2 * C);
      for (Index r = 0; r < B; ++r)
        for (Index k = 0; k < C; ++k) {
          const Index j = L.change[size_t(k)];
          const T es = std::exp(c.s(r, k));
          gin(r, j) = g(r, j) * es;
          const T ds = g(r, j) * xin(r, j) * es + (dlogdet ? T(dlogdet[r]) : T(0));
          c.dout(r, k) = ds * (T(1) - c.s(r, k) * c.s(r, k));
          c.dout(r, C + k) = g(r, j);
        }
      // head, then the conditioner's trunk, down to dx_A
      const T* h = L.net.layers.empty() ? c.xa.data() : c.net.post.back().data();
      c.dxa.setZero(B, A);
      if (L.net.layers.empty()) {
        linear_backward(c.dxa.data(), grad + L.head.w, grad + L.head.b, c.dout.data(), h, p + L.head.w, B,
                        L.head.in, L.head.out);
      } else {
        c.dh.setZero(B, L.head.in);
        linear_backward(c.dh.data(), grad + L.head.w, grad + L.head.b, c.dout.data(), h, p + L.head.w, B,
                        L.head.in, L.head.out);
        L.net.backward(p, grad, c.xa.data(), B, c.net, c.dh.data(), c.dxa.data());
      }
      for (Index r = 0; r < B; ++r)
        for (Index k = 0; k < A; ++k) gin(r, L.keep[size_t(k)]) += c.dxa(r, k);
    } else {
      // per row: da = (dz·û) h' + dlogdet · wᵀû · (−2 h h')/det, h' = 1 − h²; dx = dz + da w
      // dû = Σ_r dz h + dlogdet h' w/det;  dw = Σ_r da x + dlogdet h' û/det;  db = Σ_r da
      double wu = 0;
      for (Index j = 0; j < D; ++j) wu += double(p[L.w + j]) * double(c.uhat[j]);
      std::vector<double> duh(size_t(D), 0.0), dw(size_t(D), 0.0);
      double db = 0;
      for (Index r = 0; r < B; ++r) {
        const double h = c.h[r], hp = 1.0 - h * h, det = c.det[r], gl = dlogdet ? dlogdet[r] : 0.0;
        double gu = 0;
        for (Index j = 0; j < D; ++j) gu += double(g(r, j)) * double(c.uhat[j]);
        const double da = gu * hp + gl * wu * (-2.0 * h * hp) / det;
        for (Index j = 0; j < D; ++j) {
          gin(r, j) += T(da * double(p[L.w + j]));
          duh[size_t(j)] += double(g(r, j)) * h + gl * hp * double(p[L.w + j]) / det;
          dw[size_t(j)] += da * double(xin(r, j)) + gl * hp * double(c.uhat[j]) / det;
        }
        db += da;
      }
      // through û(u, w) = u + c(wᵀu) w, c = (softplus(a) − 1 − a)/‖w‖², a = wᵀu:
      // du = dû + (dû·w)(σ(a) − 1)/‖w‖² w;  dw += c dû + (dû·w)[(σ(a) − 1)/‖w‖² u − 2c/‖w‖² w]
      double a = 0, ww = 0, gw = 0;
      for (Index j = 0; j < D; ++j) {
        a += double(p[L.w + j]) * double(p[L.u + j]);
        ww += double(p[L.w + j]) * double(p[L.w + j]);
        gw += duh[size_t(j)] * double(p[L.w + j]);
      }
      ww = std::max(ww, 1e-12);
      const double coef = (softplus(a) - 1.0 - a) / ww, mp = (sigmoid(a) - 1.0) / ww;
      for (Index j = 0; j < D; ++j) {
        const double wj = double(p[L.w + j]), uj = double(p[L.u + j]);
        grad[L.u + j] += T(duh[size_t(j)] + gw * mp * wj);
        grad[L.w + j] += T(dw[size_t(j)] + coef * duh[size_t(j)] + gw * (mp * uj - 2.0 * coef / ww * wj));
      }
      grad[L.b] += T(db);
    }
    g.swap(gin);
  }
  if (dx) {
    MatMap<T> DX(dx, B, D);
    DX = g;
  }
}

template <class T>
void Flow<T>::forward(CMatRef<T> x, Mat<T>& z, FlowTerms& terms) {
  check_cols("x", x.rows(), x.cols(), cfg_.dim);
  std::lock_guard<std::mutex> lock(mutex_);
  forward_raw(x.data(), x.rows(), terms);
  z = acts_.back();
}

template <class T>
Mat<T> Flow<T>::inverse(CMatRef<T> z) {
  check_cols("z", z.rows(), z.cols(), cfg_.dim);
  std::lock_guard<std::mutex> lock(mutex_);
  const Index B = z.rows(), D = cfg_.dim;
  const T* p = params_.data();
  Mat<T> y = z;
  LayerCache c;
  for (size_t l = layers_.size(); l-- > 0;) {
    const Layer& L = layers_[l];
    if (L.kind == Kind::Coupling) {
      // x_A = z_A; x_C = (z_C − t) ⊙ e^{−s}
      const Index A = Index(L.keep.size()), C = Index(L.change.size());
      c.xa.resize(B, A);
      for (Index k = 0; k < A; ++k) c.xa.col(k) = y.col(L.keep[size_t(k)]);
      conditioner(L, c.xa.data(), B, c);
      for (Index r = 0; r < B; ++r)
        for (Index k = 0; k < C; ++k) {
          const Index j = L.change[size_t(k)];
          y(r, j) = (y(r, j) - c.o(r, C + k)) * std::exp(-c.s(r, k));
        }
    } else {
      // α = wᵀx + b solves α + (wᵀû) tanh(α) = wᵀz + b, monotone since wᵀû > −1; x = z − û tanh(α)
      const Vec<T> uh = planar_uhat(L);
      double wu = 0;
      for (Index j = 0; j < D; ++j) wu += double(p[L.w + j]) * double(uh[j]);
      for (Index r = 0; r < B; ++r) {
        double target = double(p[L.b]);
        for (Index j = 0; j < D; ++j) target += double(p[L.w + j]) * double(y(r, j));
        double lo = target - std::abs(wu) - 1e-12, hi = target + std::abs(wu) + 1e-12, al = target;
        for (int it = 0; it < 100; ++it) {
          const double th = std::tanh(al), f = al + wu * th - target;
          if (f > 0) hi = al; else lo = al;
          const double fp = 1.0 + wu * (1.0 - th * th);
          double nx = al - f / fp;
          if (!(nx > lo && nx < hi)) nx = 0.5 * (lo + hi);  // Newton left the bracket: bisect
          if (std::abs(nx - al) <= 1e-15 * (1.0 + std::abs(al))) { al = nx; break; }
          al = nx;
        }
        const double th = std::tanh(al);
        for (Index j = 0; j < D; ++j) y(r, j) = T(double(y(r, j)) - double(uh[j]) * th);
      }
    }
  }
  return y;
}

template <class T>
void Flow<T>::vjp(CMatRef<T> x, CMatRef<T> dz, const double* dlogdet, T* grad, T* dx) {
  check_cols("x", x.rows(), x.cols(), cfg_.dim);
  check_shape("dz", dz.rows(), dz.cols(), x.rows(), cfg_.dim);
  std::lock_guard<std::mutex> lock(mutex_);
  FlowTerms t;
  forward_raw(x.data(), x.rows(), t);
  backward_raw(x.rows(), dz.data(), dlogdet, grad, dx);
}

template <class T>
double Flow<T>::objective_grad(CMatRef<T> x, double scale, T* grad, FlowTerms* terms) {
  check_cols("x", x.rows(), x.cols(), cfg_.dim);
  std::lock_guard<std::mutex> lock(mutex_);
  const Index B = x.rows(), D = cfg_.dim;
  FlowTerms t;
  forward_raw(x.data(), B, t);
  // J = mean_b [log N(z_b; 0, I) + logdet_b]: ∂J/∂z = −z/B, ∂J/∂logdet = 1/B
  const Mat<T> dz = acts_.back() * T(-scale / double(B));
  std::vector<double> dld(size_t(B), scale / double(B));
  backward_raw(B, dz.data(), dld.data(), grad, nullptr);
  (void)D;
  const double J = (t.prior + t.logdet).mean();
  if (terms) *terms = std::move(t);
  return J;
}

template <class T>
StepResult Flow<T>::train_step(const T* x, Index B, const Shard& sh, const FitOptions&, uint64_t, double, T* grad) {
  FlowTerms t;
  const double J = objective_grad(CMatMap<T>(x, B, cfg_.dim), -sh.weight(B), grad, &t);
  StepResult r;
  r.loss = -J;
  r.elbo = J;
  r.reconstruction = t.logdet.mean();
  r.kl = -t.prior.mean();
  return r;
}

template <class T>
EvalResult Flow<T>::evaluate(const T* x, Index N, const Shard&, const FitOptions&) {
  Mat<T> z;
  FlowTerms t;
  forward(CMatMap<T>(x, N, cfg_.dim), z, t);
  EvalResult r;
  r.reconstruction = t.logdet.mean();
  r.kl = -t.prior.mean();
  r.elbo = r.reconstruction - r.kl;
  return r;
}

template class Flow<float>;
template class Flow<double>;

}  // namespace elbokit
