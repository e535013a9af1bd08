// diffusion.cpp: the diffusion model's schedule, ε-network (forward and hand-written backward),
// losses and both ELBO decompositions (MATH.md §7); sampling and training in diffusion_sampling.cpp.
// Shapes as in diffusion.hpp.
#include "elbokit/diffusion.hpp"

#include <algorithm>
#include <cmath>

namespace elbokit {

namespace {
constexpr double kPi = 3.141592653589793;
}  // namespace

std::vector<double> schedule_betas(const std::string& kind, Index T) {
  if (T < 2) fail("timesteps must be an integer >= 2, got " + std::to_string(T));
  std::vector<double> b(static_cast<size_t>(T));
  if (kind == "linear") {
    // Ho et al. 2020: β from 1e-4 to 0.02 for T = 1000; other T scale both ends by 1000/T (as
    // Nichol & Dhariwal's code does) so that q(x_T|x_0) stays ≈ N(0, I); clipped at 0.999.
    const double scale = 1000.0 / double(T), lo = 1e-4 * scale, hi = 0.02 * scale;
    for (Index t = 1; t <= T; ++t)
      b[size_t(t - 1)] = std::min(0.999, lo + (hi - lo) * double(t - 1) / double(T - 1));
  } else if (kind == "cosine") {
    // MATH.md §7: ᾱ_t = f(t)/f(0), f(t) = cos²(((t/T + s)/(1 + s))·π/2), β_t = 1 − ᾱ_t/ᾱ_{t−1} ≤ 0.999
    constexpr double s = 0.008;
    auto f = [&](double t) {
      const double c = std::cos((t / double(T) + s) / (1.0 + s) * kPi / 2);
      return c * c;
    };
    for (Index t = 1; t <= T; ++t) b[size_t(t - 1)] = std::min(0.999, 1.0 - f(double(t)) / f(double(t - 1)));
  } else {
    fail("schedule must be one of 'linear', 'cosine' or an array of betas, got '" + kind + "'");
  }
  return b;
}

Schedule make_schedule(const std::vector<double>& betas) {
  const Index T = Index(betas.size());
  if (T < 2) fail("the schedule must have at least 2 steps (betas of length >= 2), got " + std::to_string(T));
  Schedule s;
  s.T = T;
  s.betas.assign(size_t(T + 1), 0.0);
  s.alphas.assign(size_t(T + 1), 1.0);
  s.alphas_cumprod.assign(size_t(T + 1), 1.0);
  s.posterior_variance.assign(size_t(T + 1), 0.0);
  for (Index t = 1; t <= T; ++t) {
    const double b = betas[size_t(t - 1)];
    if (!(b > 0 && b < 1))
      fail("betas must lie in the open interval (0, 1), got " + std::to_string(b) + " at step t = " + std::to_string(t));
    s.betas[size_t(t)] = b;
    s.alphas[size_t(t)] = 1.0 - b;                                          // α_t = 1 − β_t
    s.alphas_cumprod[size_t(t)] = s.alphas_cumprod[size_t(t - 1)] * (1.0 - b);  // ᾱ_t = Π_{s≤t} α_s
    // β̃_t = (1 − ᾱ_{t−1})/(1 − ᾱ_t)·β_t (MATH.md §7)
    s.posterior_variance[size_t(t)] = (1.0 - s.alphas_cumprod[size_t(t - 1)]) / (1.0 - s.alphas_cumprod[size_t(t)]) * b;
  }
  return s;
}

LossKind loss_from_string(const std::string& s) {
  if (s == "simple") return LossKind::Simple;
  if (s == "elbo") return LossKind::Elbo;
  if (s == "hybrid") return LossKind::Hybrid;
  fail("loss must be one of 'simple', 'elbo', 'hybrid', got '" + s + "'");
}

template <class T>
Diffusion<T>::Diffusion(const DiffusionConfig& cfg, uint64_t seed) : cfg_(cfg) {
  if (cfg.x_dim <= 0) fail("x_dim must be a positive integer, got " + std::to_string(cfg.x_dim));
  if (cfg.emb_dim <= 0 || cfg.emb_dim % 2)
    fail("emb_dim must be a positive even integer, got " + std::to_string(cfg.emb_dim));
  check_net_spec(cfg.net);
  sch_ = make_schedule(cfg.betas);
  if (cfg.prediction == "epsilon") pred_ = Prediction::Epsilon;
  else if (cfg.prediction == "x0") pred_ = Prediction::X0;
  else if (cfg.prediction == "v") pred_ = Prediction::V;
  else fail("prediction must be one of 'epsilon', 'x0', 'v', got '" + cfg.prediction + "'");
  if (cfg.variance == "small") var_ = VarianceKind::Small;
  else if (cfg.variance == "large") var_ = VarianceKind::Large;
  else if (cfg.variance == "learned") var_ = VarianceKind::Learned;
  else fail("variance must be one of 'small', 'large', 'learned', got '" + cfg.variance + "'");
  if (cfg.data == "continuous") data_ = DataKind::Continuous;
  else if (cfg.data == "discrete256") data_ = DataKind::Discrete256;
  else fail("data must be one of 'continuous', 'discrete256', got '" + cfg.data + "'");
  // "learned": 2·D outputs, the prediction then v ("first half, second half", diffusion.hpp)
  net_ = make_net<T>(layout_, "net", cfg.net, cfg.x_dim, cfg.emb_dim, out_dim());
  params_ = Vec<T>::Zero(layout_.total);
  net_->init(params_.data(), seed);  // as the VAE: torch.nn.Linear's default init
  // The sinusoidal embedding of every step, once: emb(t)_k = sin(t f_k), emb(t)_{half+k} = cos(t f_k).
  const Index E = cfg.emb_dim, half = E / 2;
  const double lnmax = std::log(10000.0);
  emb_.resize(sch_.T + 1, E);
  for (Index t = 0; t <= sch_.T; ++t)
    for (Index k = 0; k < half; ++k) {
      const double f = half > 1 ? std::exp(-lnmax * double(k) / double(half - 1)) : 1.0;
      emb_(t, k) = T(std::sin(double(t) * f));
      emb_(t, half + k) = T(std::cos(double(t) * f));
    }
}

// σ_t²: "large" β_t; "small" β̃_t, except at t = 1 where β̃_1 = 0 (a point mass, no density):
// there σ_1² = β̃_2, as Ho et al.'s code (posterior_log_variance_clipped) does.
template <class T>
double Diffusion<T>::sigma2(Index t) const {
  if (var_ == VarianceKind::Learned) fail("sigma2: variance='learned' has a variance per example and dimension");
  if (var_ == VarianceKind::Large) return sch_.betas[size_t(t)];
  return sch_.posterior_variance[size_t(t == 1 ? 2 : t)];
}

template <class T>
void Diffusion<T>::check_t(const std::vector<Index>& t, Index B) const {
  if (Index(t.size()) != B)
    fail("t must have one step per row (" + std::to_string(B) + "), got " + std::to_string(t.size()));
  for (size_t i = 0; i < t.size(); ++i)
    if (t[i] < 1 || t[i] > sch_.T)
      fail("t must hold steps in 1 … T = " + std::to_string(sch_.T) + ", got " + std::to_string(t[i]) +
           " at position " + std::to_string(i));
}

template <class T>
Mat<T> Diffusion<T>::q_sample(CMatRef<T> x0, const std::vector<Index>& t, CMatRef<T> eps) const {
  check_cols("x0", x0.rows(), x0.cols(), cfg_.x_dim);
  check_shape("eps", eps.rows(), eps.cols(), x0.rows(), cfg_.x_dim);
  check_t(t, x0.rows());
  Mat<T> xt(x0.rows(), cfg_.x_dim);
  for (Index b = 0; b < x0.rows(); ++b) {  // x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε (MATH.md §7)
    const double ab = sch_.alphas_cumprod[size_t(t[size_t(b)])];
    xt.row(b) = T(std::sqrt(ab)) * x0.row(b) + T(std::sqrt(1.0 - ab)) * eps.row(b);
  }
  return xt;
}

template <class T>
void Diffusion<T>::q_posterior(CMatRef<T> x0, CMatRef<T> xt, const std::vector<Index>& t, Mat<T>& mean,
                               Vec<double>& var) const {
  check_cols("x0", x0.rows(), x0.cols(), cfg_.x_dim);
  check_shape("xt", xt.rows(), xt.cols(), x0.rows(), cfg_.x_dim);
  check_t(t, x0.rows());
  mean.resize(x0.rows(), cfg_.x_dim);
  var.resize(x0.rows());
  for (Index b = 0; b < x0.rows(); ++b) {
    // μ̃_t = √ᾱ_{t−1} β_t/(1−ᾱ_t)·x_0 + √α_t (1−ᾱ_{t−1})/(1−ᾱ_t)·x_t, β̃_t (MATH.md §7)
    const size_t s = size_t(t[size_t(b)]);
    const double ab = sch_.alphas_cumprod[s], abp = sch_.alphas_cumprod[s - 1], beta = sch_.betas[s];
    const double c0 = std::sqrt(abp) * beta / (1.0 - ab), ct = std::sqrt(sch_.alphas[s]) * (1.0 - abp) / (1.0 - ab);
    mean.row(b) = T(c0) * x0.row(b) + T(ct) * xt.row(b);
    var[b] = sch_.posterior_variance[s];
  }
}

// ---- The ε-network (nets.hpp): x_t (B, D) conditioned on emb(t) (B, E), then ε̂.
template <class T>
void Diffusion<T>::net_forward(const T* xt, const Index* t, Index B, Work& w) {
  const Index D = cfg_.x_dim, E = cfg_.emb_dim;
  w.emb.resize(B, E);
  for (Index b = 0; b < B; ++b)  // emb(t) from the table
    std::copy(emb_.data() + t[b] * E, emb_.data() + (t[b] + 1) * E, w.emb.data() + b * E);
  const Index O = out_dim();
  const RowHalves& hv = w.halves = RowHalves(B, net_->split_rows());
  if (hv.count == 2) {  // two halves of rows, one per thread
    const T* o[2] = {nullptr, nullptr};
    RowHalves::run([&](int h) {
      o[h] = net_->forward(params_.data(), xt + hv.lo[h] * D, w.emb.data() + hv.lo[h] * E, hv.size(h),
                           h ? w.net1 : w.net);
    });
    w.out_cat.resize(B, O);
    for (int h = 0; h < 2; ++h) std::copy(o[h], o[h] + hv.size(h) * O, w.out_cat.data() + hv.lo[h] * O);
    w.out = w.out_cat.data();
  } else {
    w.out = net_->forward(params_.data(), xt, w.emb.data(), B, w.net);  // (B, O)
  }
  const bool learned = var_ == VarianceKind::Learned;
  w.eps_hat.resize(B, D);
  if (learned) w.lv.resize(B, D);
  for (Index b = 0; b < B; ++b) {  // ε̂ = a_t x_t + b_t out (the prediction's reparameterization)
    const double ab = sch_.alphas_cumprod[size_t(t[b])], s1 = std::sqrt(1.0 - ab), s = std::sqrt(ab);
    const T a = T(pred_ == Prediction::Epsilon ? 0.0 : pred_ == Prediction::X0 ? 1.0 / s1 : s1);
    const T c = T(pred_ == Prediction::Epsilon ? 1.0 : pred_ == Prediction::X0 ? -s / s1 : s);
    for (Index j = 0; j < D; ++j) w.eps_hat(b, j) = a * xt[b * D + j] + c * w.out[b * O + j];
    if (learned)  // log σ² = v log β_t + (1 − v) log β̃_t from the second half, in double
      for (Index j = 0; j < D; ++j) w.lv(b, j) = log_sigma2_learned(t[b], double(w.out[b * O + D + j]));
  }
}

// net_backward: given w.deps (B, D) = ∂J/∂ε̂ at the inputs of the last net_forward (x_t in w.xt):
// dout[:, :D] = b_t·deps; for "learned" dout[:, D:] = dv (w.dv, ∂J/∂v); then the network.
template <class T>
void Diffusion<T>::net_backward(Index B, Work& w, T* grad) {
  const Index D = cfg_.x_dim;
  const bool learned = var_ == VarianceKind::Learned;
  w.dout.resize(B, out_dim());
  for (Index b = 0; b < B; ++b) {
    const double ab = sch_.alphas_cumprod[size_t(w.t[size_t(b)])];
    const T c = T(pred_ == Prediction::Epsilon ? 1.0 : pred_ == Prediction::X0 ? -std::sqrt(ab / (1.0 - ab)) : std::sqrt(ab));
    w.dout.row(b).head(D) = c * w.deps.row(b);
    if (learned) w.dout.row(b).tail(D) = w.dv.row(b);
  }
  const RowHalves& hv = w.halves;
  if (hv.count == 2) {  // as net_forward split the rows: each half's gradient, then added in half order
    const Index P = Index(params_.size()), E = cfg_.emb_dim, O = out_dim();
    RowHalves::run([&](int h) {
      const Index r0 = hv.lo[h];
      w.grad_h[h].setZero(P);
      net_->backward(params_.data(), w.grad_h[h].data(), w.xt.data() + r0 * D, w.emb.data() + r0 * E, hv.size(h),
                     h ? w.net1 : w.net, w.dout.data() + r0 * O, nullptr);
    });
    RowHalves::add(grad, w.grad_h[0].data(), w.grad_h[1].data(), P);
    return;
  }
  net_->backward(params_.data(), grad, w.xt.data(), w.emb.data(), B, w.net, w.dout.data(), nullptr);
}

template <class T>
void Diffusion<T>::mean_from_eps(const T* xt, const T* eps_hat, const Index* t, Index B, T* mean) const {
  const Index D = cfg_.x_dim;
  for (Index b = 0; b < B; ++b) {  // μ_θ = (x_t − β_t/√(1−ᾱ_t)·ε̂)/√α_t (MATH.md §7)
    const size_t s = size_t(t[b]);
    const double c = sch_.betas[s] / std::sqrt(1.0 - sch_.alphas_cumprod[s]), r = 1.0 / std::sqrt(sch_.alphas[s]);
    for (Index j = 0; j < D; ++j) mean[b * D + j] = T(r * (double(xt[b * D + j]) - c * double(eps_hat[b * D + j])));
  }
}

// recon_nll: −log p_θ(x_0|x_1) (B) given x_1 and ε̂(x_1, 1) (B, D): a Gaussian N(μ_θ, σ_1² I) for
// continuous data, the discretized Gaussian for discrete256 (MATH.md §7). Leaves μ_θ in mean.
// "learned": σ_1² = exp(lv[b, j]) per dimension (N(μ_θ, diag σ²), MATH.md §1).
template <class T>
void Diffusion<T>::recon_nll(const T* x0, const T* x1, const T* eps_hat, const double* lv, Index B, double* out,
                             Mat<T>& mean) const {
  const Index D = cfg_.x_dim;
  const std::vector<Index> ones(size_t(B), 1);
  mean.resize(B, D);
  mean_from_eps(x1, eps_hat, ones.data(), B, mean.data());
  if (lv) {
    if (data_ == DataKind::Discrete256) {
      std::vector<double> logsd(size_t(B * D));
      for (Index i = 0; i < B * D; ++i) logsd[size_t(i)] = 0.5 * lv[i];
      discretized_gaussian_logpmf_pd_forward(out, x0, mean.data(), logsd.data(), B, D);
      for (Index b = 0; b < B; ++b) out[b] = -out[b];
      return;
    }
    for (Index b = 0; b < B; ++b) {
      double acc = 0;
      for (Index j = 0; j < D; ++j) {
        const double e = double(x0[b * D + j]) - double(mean(b, j)), l = lv[b * D + j];
        acc += 0.5 * (kLog2Pi + l + e * e * std::exp(-l));
      }
      out[b] = acc;
    }
    return;
  }
  const double s2 = sigma2(1);
  if (data_ == DataKind::Discrete256) {
    const std::vector<double> sd(size_t(B), std::sqrt(s2));
    discretized_gaussian_logpmf_forward(out, x0, mean.data(), sd.data(), B, D);
    for (Index b = 0; b < B; ++b) out[b] = -out[b];
    return;
  }
  for (Index b = 0; b < B; ++b) {
    double acc = 0;
    for (Index j = 0; j < D; ++j) {
      const double e = double(x0[b * D + j]) - double(mean(b, j));
      acc += e * e;
    }
    out[b] = 0.5 * double(D) * (kLog2Pi + std::log(s2)) + acc / (2.0 * s2);
  }
}

// KL(q(x_T|x_0) ‖ N(0, I)) = ½ Σ_j [ᾱ_T x_0² + (1 − ᾱ_T) − 1 − log(1 − ᾱ_T)] (MATH.md §1, §7)
template <class T>
double Diffusion<T>::prior_kl(const T* x0) const {
  const double ab = sch_.alphas_cumprod[size_t(sch_.T)];
  double acc = 0;
  for (Index j = 0; j < cfg_.x_dim; ++j) acc += ab * double(x0[j]) * double(x0[j]);
  return 0.5 * (acc + double(cfg_.x_dim) * (-ab - std::log1p(-ab)));
}

// The step KL (MATH.md §7) with shared variance: w_t‖ε − ε̂‖² + c_t,
// w_t = β_t²/(2σ_t² α_t (1−ᾱ_t)), c_t = (D/2)(β̃_t/σ_t² − 1 − log(β̃_t/σ_t²)); at t = 1 (continuous)
// −log N(x_0; μ_θ, σ_1²) = w_1‖ε − ε̂‖² + (D/2) log 2πσ_1², since μ_θ − x_0 = √(β_1/α_1)(ε − ε̂).
template <class T>
LossTerms Diffusion<T>::loss(CMatRef<T> x0, const std::vector<Index>& t, CMatRef<T> eps, LossKind kind) {
  LossTerms terms;
  loss_grad(x0, t, eps, kind, 0.0, nullptr, &terms);
  return terms;
}

template <class T>
double Diffusion<T>::loss_grad(CMatRef<T> x0, const std::vector<Index>& t, CMatRef<T> eps, LossKind kind,
                               double scale, T* grad, LossTerms* terms) {
  check_cols("x", x0.rows(), x0.cols(), cfg_.x_dim);
  const Index B = x0.rows(), D = cfg_.x_dim;
  check_shape("eps", eps.rows(), eps.cols(), B, D);
  check_t(t, B);
  std::lock_guard<std::mutex> lock(mutex_);
  Work& w = work_;
  w.t = t;
  // 1. x_t ~ q(x_t|x_0) and the network's ε̂
  w.xt.resize(B, D);
  for (Index b = 0; b < B; ++b) {
    const double ab = sch_.alphas_cumprod[size_t(t[size_t(b)])];
    w.xt.row(b) = T(std::sqrt(ab)) * x0.row(b) + T(std::sqrt(1.0 - ab)) * eps.row(b);
  }
  net_forward(w.xt.data(), t.data(), B, w);
  // 2. per-example terms, in double
  LossTerms r;
  r.sq.resize(B);
  r.step.resize(B);
  r.prior.resize(B);
  r.loss.resize(B);
  const double Tn = double(sch_.T);
  const bool discrete = data_ == DataKind::Discrete256;
  std::vector<double> wsq(static_cast<size_t>(B));  // w_t of each row (0 for a discrete t = 1 row)
  w.mean.resize(B, D);
  mean_from_eps(w.xt.data(), w.eps_hat.data(), t.data(), B, w.mean.data());
  if (var_ == VarianceKind::Learned) return loss_grad_learned(x0, t, eps, kind, scale, grad, terms);
  for (Index b = 0; b < B; ++b) {
    const size_t s = size_t(t[size_t(b)]);
    double sq = 0;
    for (Index j = 0; j < D; ++j) {
      const double e = double(eps(b, j)) - double(w.eps_hat(b, j));
      sq += e * e;
    }
    r.sq[b] = sq;
    const double s2 = sigma2(Index(s)), beta = sch_.betas[s];
    const double wt = beta * beta / (2.0 * s2 * sch_.alphas[s] * (1.0 - sch_.alphas_cumprod[s]));
    if (s == 1) {
      if (discrete) {
        const double sd = std::sqrt(s2);
        double lp;
        discretized_gaussian_logpmf_forward(&lp, x0.data() + b * D, w.mean.data() + b * D, &sd, 1, D);
        r.step[b] = -lp;
        wsq[size_t(b)] = 0;
      } else {
        r.step[b] = wt * sq + 0.5 * double(D) * (kLog2Pi + std::log(s2));
        wsq[size_t(b)] = wt;
      }
    } else {
      const double ratio = sch_.posterior_variance[s] / s2;
      r.step[b] = wt * sq + 0.5 * double(D) * (ratio - 1.0 - std::log(ratio));
      wsq[size_t(b)] = wt;
    }
    r.prior[b] = prior_kl(x0.data() + b * D);
    const double elbo_loss = r.prior[b] + Tn * r.step[b];
    r.loss[b] = kind == LossKind::Simple ? sq : kind == LossKind::Elbo ? elbo_loss : sq + kHybridLambda * elbo_loss;
  }
  const double J = r.loss.mean();
  // 3. backward: ∂J/∂ε̂ = Σ (coefficient of ‖ε − ε̂‖²)·2(ε̂ − ε) + the discretized term's part
  if (grad) {
    const double ce = kind == LossKind::Simple ? 0.0 : kind == LossKind::Elbo ? Tn : kHybridLambda * Tn;
    const double cs = kind == LossKind::Elbo ? 0.0 : 1.0;
    w.deps.resize(B, D);
    std::vector<double> coef_lp(static_cast<size_t>(B), 0.0);
    for (Index b = 0; b < B; ++b) {
      const double c = scale / double(B) * (cs + ce * wsq[size_t(b)]);
      for (Index j = 0; j < D; ++j) w.deps(b, j) = T(2.0 * c * (double(w.eps_hat(b, j)) - double(eps(b, j))));
      if (discrete && t[size_t(b)] == 1) coef_lp[size_t(b)] = -scale / double(B) * ce;  // ∂J/∂log p(x_0|x_1)
    }
    if (discrete && ce != 0) {
      // through μ_θ = (x_1 − β_1/√(1−ᾱ_1)·ε̂)/√α_1: ∂μ/∂ε̂ = −β_1/(√(1−ᾱ_1)√α_1)
      Mat<T> dmean = Mat<T>::Zero(B, D);
      const std::vector<double> sd(size_t(B), std::sqrt(sigma2(1)));
      discretized_gaussian_logpmf_backward(dmean.data(), coef_lp.data(), x0.data(), w.mean.data(), sd.data(), B, D);
      const T k = T(-sch_.betas[1] / (std::sqrt(1.0 - sch_.alphas_cumprod[1]) * std::sqrt(sch_.alphas[1])));
      for (Index b = 0; b < B; ++b)
        if (t[size_t(b)] == 1) w.deps.row(b) += k * dmean.row(b);
    }
    net_backward(B, w, grad);
  }
  if (terms) *terms = std::move(r);
  return J;
}

// loss_grad for "learned" (after net_forward and mean_from_eps in work_): per (example, dimension)
// σ_j² = exp(lv_j), with d_j² = (μ̃ − μ_θ)_j² = k_t(ε_j − ε̂_j)², k_t = β_t²/(α_t(1 − ᾱ_t)) (at t = 1
// the same k_1 = β_1/α_1 gives (x_0 − μ_θ)_j²):
//   t ≥ 2: L_t = Σ_j ½[lv_j − log β̃_t + (β̃_t + d_j²)/σ_j² − 1]      (KL, MATH.md §1, §7)
//   t = 1: L_1 = Σ_j ½[log 2π + lv_j + d_j²/σ_j²]  (continuous), −log P(x_0; μ_θ, σ) (discrete256)
// so with b_t = β̃_t (0 at t = 1): ∂L_t/∂lv_j = ½[1 − (b_t + d_j²)/σ_j²], ∂L_t/∂ε̂_j = k_t(ε̂_j − ε_j)/σ_j²,
// and ∂lv_j/∂v_j = log β_t − log β̃_t. "elbo" sends ∂L_t to ε̂ and v; "hybrid" sends λT·∂L_t to v only
// (μ_θ is a stop-gradient in the vlb term, Nichol & Dhariwal 2021 §3.1) and ∂‖ε − ε̂‖² to ε̂.
template <class T>
double Diffusion<T>::loss_grad_learned(CMatRef<T> x0, const std::vector<Index>& t, CMatRef<T> eps, LossKind kind,
                                       double scale, T* grad, LossTerms* terms) {
  Work& w = work_;
  const Index B = x0.rows(), D = cfg_.x_dim;
  const double Tn = double(sch_.T);
  const bool discrete = data_ == DataKind::Discrete256;
  LossTerms r;
  r.sq.resize(B);
  r.step.resize(B);
  r.prior.resize(B);
  r.loss.resize(B);
  // the discrete t = 1 rows' log σ (B, D) (0 elsewhere) and ∂J/∂log σ
  std::vector<double> logsd(size_t(B * D), 0.0), dlogsd(size_t(B * D), 0.0), coef_lp(size_t(B), 0.0);
  const double ce = kind == LossKind::Simple ? 0.0 : kind == LossKind::Elbo ? Tn : kHybridLambda * Tn;
  const double cs = kind == LossKind::Elbo ? 0.0 : 1.0;
  const bool mean_vlb = kind == LossKind::Elbo;  // does the vlb term reach ε̂?
  if (grad) {
    w.deps.resize(B, D);
    w.dv.resize(B, D);
  }
  for (Index b = 0; b < B; ++b) {
    const Index tb = t[size_t(b)];
    const size_t s = size_t(tb);
    const double beta = sch_.betas[s], k = beta * beta / (sch_.alphas[s] * (1.0 - sch_.alphas_cumprod[s]));
    const double dl = std::log(beta) - std::log(sch_.posterior_variance[size_t(tb == 1 ? 2 : tb)]);  // ∂lv/∂v
    const double bt = tb == 1 ? 0.0 : sch_.posterior_variance[s];
    double sq = 0, step = 0;
    for (Index j = 0; j < D; ++j) {
      const double e = double(eps(b, j)) - double(w.eps_hat(b, j));
      sq += e * e;
    }
    const double g = scale / double(B);
    if (tb == 1 && discrete) {
      for (Index j = 0; j < D; ++j) logsd[size_t(b * D + j)] = 0.5 * w.lv(b, j);
      double lp;
      discretized_gaussian_logpmf_pd_forward(&lp, x0.data() + b * D, w.mean.data() + b * D, logsd.data() + b * D, 1, D);
      step = -lp;
      coef_lp[size_t(b)] = -g * ce;  // ∂J/∂log p(x_0|x_1)
      if (grad)
        for (Index j = 0; j < D; ++j)
          w.deps(b, j) = T(2.0 * g * cs * (double(w.eps_hat(b, j)) - double(eps(b, j))));
    } else {
      const double c0 = tb == 1 ? 0.5 * kLog2Pi : -0.5 * (std::log(sch_.posterior_variance[s]) + 1.0);
      for (Index j = 0; j < D; ++j) {
        const double e = double(eps(b, j)) - double(w.eps_hat(b, j)), l = w.lv(b, j), is2 = std::exp(-l);
        const double u = (bt + k * e * e) * is2;
        step += 0.5 * (l + u) + c0;
        if (grad) {
          w.deps(b, j) = T(g * (2.0 * cs * (-e) + (mean_vlb ? ce * k * (-e) * is2 : 0.0)));
          w.dv(b, j) = T(g * ce * 0.5 * (1.0 - u) * dl);
        }
      }
    }
    r.sq[b] = sq;
    r.step[b] = step;
    r.prior[b] = prior_kl(x0.data() + b * D);
    const double elbo_loss = r.prior[b] + Tn * step;
    r.loss[b] = kind == LossKind::Simple ? sq : kind == LossKind::Elbo ? elbo_loss : sq + kHybridLambda * elbo_loss;
  }
  const double J = r.loss.mean();
  if (grad) {
    if (discrete && ce != 0) {
      // the t = 1 rows: log P through μ_θ (elbo only; ∂μ/∂ε̂ = −β_1/(√(1−ᾱ_1)√α_1)) and through log σ = lv/2
      Mat<T> dmean = Mat<T>::Zero(B, D);
      discretized_gaussian_logpmf_pd_backward(mean_vlb ? dmean.data() : static_cast<T*>(nullptr), dlogsd.data(),
                                              coef_lp.data(), x0.data(), w.mean.data(), logsd.data(), B, D);
      const T km = T(-sch_.betas[1] / (std::sqrt(1.0 - sch_.alphas_cumprod[1]) * std::sqrt(sch_.alphas[1])));
      const double dl1 = std::log(sch_.betas[1]) - std::log(sch_.posterior_variance[2]);
      for (Index b = 0; b < B; ++b)
        if (t[size_t(b)] == 1) {
          if (mean_vlb) w.deps.row(b) += km * dmean.row(b);
          for (Index j = 0; j < D; ++j) w.dv(b, j) = T(0.5 * dlogsd[size_t(b * D + j)] * dl1);
        }
    } else if (discrete) {
      for (Index b = 0; b < B; ++b)
        if (t[size_t(b)] == 1) w.dv.row(b).setZero();
    }
    net_backward(B, w, grad);
  }
  if (terms) *terms = std::move(r);
  return J;
}

// ---- Decomposition B (MATH.md §7): every step of every example; rows p = b·T + (t − 1).
template <class T>
DiffusionElboTerms Diffusion<T>::elbo_denoising(CMatRef<T> x0, uint64_t seed, Index row0) {
  check_cols("x", x0.rows(), x0.cols(), cfg_.x_dim);
  std::lock_guard<std::mutex> lock(mutex_);
  const Index N = x0.rows(), D = cfg_.x_dim, Tn = sch_.T;
  DiffusionElboTerms out;
  out.reconstruction.resize(N);
  out.prior.resize(N);
  out.steps = Mat<double>::Zero(N, Tn);
  for (Index b = 0; b < N; ++b) out.prior[b] = prior_kl(x0.data() + b * D);
  // The N·T network rows (example b, step t) at p = b·T + t − 1, in chunks of kPipelineRows, each
  // through the network on one thread (common.hpp: row-chunk pipelines).
  pool_.resize(size_t(max_threads()));
  const Index total = N * Tn;
  for_row_chunks(total, kPipelineRows, [&](Index p0, Index R, int slot) {
    Work& w = pool_[size_t(slot)];
    Mat<T>& eps = w.deps;  // (R, D) the rows' noise
    std::vector<Index>& tt = w.t;
    eps.resize(R, D);
    w.xt.resize(R, D);
    tt.resize(size_t(R));
    for (Index r = 0; r < R; ++r) {
      const Index p = p0 + r, b = p / Tn, t = p % Tn + 1;
      tt[size_t(r)] = t;
      const double ab = sch_.alphas_cumprod[size_t(t)];
      fill_normal_serial(eps.row(r).data(), D, seed, streams::kDiffusionElbo, uint64_t(row0 * Tn + p) * uint64_t(D));
      for (Index j = 0; j < D; ++j) w.xt(r, j) = T(std::sqrt(ab)) * x0(b, j) + T(std::sqrt(1.0 - ab)) * eps(r, j);
    }
    net_forward(w.xt.data(), tt.data(), R, w);
    const bool learned = var_ == VarianceKind::Learned;
    for (Index r = 0; r < R; ++r) {
      const Index p = p0 + r, b = p / Tn, t = tt[size_t(r)];
      if (t == 1) {
        double v;
        recon_nll(x0.data() + b * D, w.xt.data() + r * D, w.eps_hat.data() + r * D,
                  learned ? w.lv.data() + r * D : nullptr, 1, &v, w.mean);
        out.reconstruction[b] = -v;
        continue;
      }
      if (learned) {  // Σ_j KL(N(μ̃_j, β̃_t) ‖ N(μ_θj, σ_j²)) (MATH.md §1), as loss_grad_learned
        const size_t s = size_t(t);
        const double beta = sch_.betas[s], bt = sch_.posterior_variance[s];
        const double k = beta * beta / (sch_.alphas[s] * (1.0 - sch_.alphas_cumprod[s])), lb = std::log(bt);
        double acc = 0;
        for (Index j = 0; j < D; ++j) {
          const double e = double(eps(r, j)) - double(w.eps_hat(r, j)), l = w.lv(r, j);
          acc += 0.5 * (l - lb + (bt + k * e * e) * std::exp(-l) - 1.0);
        }
        out.steps(b, t - 1) = acc;
        continue;
      }
      double sq = 0;
      for (Index j = 0; j < D; ++j) {
        const double e = double(eps(r, j)) - double(w.eps_hat(r, j));
        sq += e * e;
      }
      const size_t s = size_t(t);
      const double s2 = sigma2(t), beta = sch_.betas[s], ratio = sch_.posterior_variance[s] / s2;
      const double wt = beta * beta / (2.0 * s2 * sch_.alphas[s] * (1.0 - sch_.alphas_cumprod[s]));
      out.steps(b, t - 1) = wt * sq + 0.5 * double(D) * (ratio - 1.0 - std::log(ratio));
    }
  });
  return out;
}

// ---- Decomposition A (the consistency form, MATH.md §6 applied to §7): one forward chain per
// example, x_t = √α_t x_{t−1} + √β_t z_t. The level-t term is E[log q(x_t|x_{t−1}) − log p_θ(x_t|x_{t+1})]
// at the chain's joint sample of (x_{t−1}, x_t, x_{t+1}); the log q part is replaced by its exact
// expectation −(D/2)(1 + log 2πβ_t) (Rao-Blackwell), the log p part is one Monte-Carlo draw. The
// expectation of KL(q(x_t|x_{t−1}) ‖ p_θ(x_t|x_{t+1})) over q(x_{t−1}, x_{t+1}|x_0) written in MATH.md
// is not this: it treats x_t as independent of x_{t+1}, which it is not (see the report).
// The top term KL(q(x_T|x_{T−1}) ‖ N(0, I)) is analytic given x_{T−1}.
template <class T>
DiffusionElboTerms Diffusion<T>::elbo_consistency(CMatRef<T> x0, uint64_t seed, Index row0) {
  check_cols("x", x0.rows(), x0.cols(), cfg_.x_dim);
  std::lock_guard<std::mutex> lock(mutex_);
  const Index N = x0.rows(), D = cfg_.x_dim, Tn = sch_.T;
  DiffusionElboTerms out;
  out.reconstruction.resize(N);
  out.prior.resize(N);
  out.steps = Mat<double>::Zero(N, Tn);
  // Chunks of whole chains (about kPipelineRows network rows, at least one example), each on one
  // thread (common.hpp: row-chunk pipelines).
  pool_.resize(size_t(max_threads()));
  const Index per = std::max<Index>(1, kPipelineRows / Tn);
  for_row_chunks(N, per, [&](Index b0, Index bc, int slot) {
    Work& w = pool_[size_t(slot)];
    const Index R = bc * Tn;
    Mat<T>& chain = w.xt;  // (bc·T, D): row b·T + (t − 1) holds x_t of example b0 + b
    Mat<T>& mu = w.mean;   // (bc·T, D): μ_θ(x_t, t)
    Mat<T>& mean = w.dout;  // recon_nll's scratch
    std::vector<Index>& tt = w.t;
    chain.resize(R, D);
    tt.resize(size_t(R));
    std::vector<double> noise(static_cast<size_t>(D));  // one step's forward-chain noise
    for (Index b = 0; b < bc; ++b) {
      for (Index t = 1; t <= Tn; ++t) {
        const Index r = b * Tn + t - 1;
        tt[size_t(r)] = t;
        const double sa = std::sqrt(sch_.alphas[size_t(t)]), sb = std::sqrt(sch_.betas[size_t(t)]);
        fill_normal_serial(noise.data(), D, seed, streams::kDiffusionChain,
                           (uint64_t(row0 + b0 + b) * uint64_t(Tn) + uint64_t(t - 1)) * uint64_t(D));
        for (Index j = 0; j < D; ++j) {
          const double prev = t == 1 ? double(x0(b0 + b, j)) : double(chain(r - 1, j));
          chain(r, j) = T(sa * prev + sb * noise[j]);
        }
      }
    }
    net_forward(chain.data(), tt.data(), R, w);
    const bool learned = var_ == VarianceKind::Learned;
    mu.resize(R, D);
    mean_from_eps(chain.data(), w.eps_hat.data(), tt.data(), R, mu.data());
    for (Index b = 0; b < bc; ++b) {
      const Index r1 = b * Tn;
      double v;
      recon_nll(x0.data() + (b0 + b) * D, chain.data() + r1 * D, w.eps_hat.data() + r1 * D,
                learned ? w.lv.data() + r1 * D : nullptr, 1, &v, mean);
      out.reconstruction[b0 + b] = -v;
      for (Index t = 1; t < Tn; ++t) {
        if (learned) {  // per dimension: ½(lv_j − 1 − log β_t) + (x_t − μ_θ)_j²/(2σ_j²), σ² of step t + 1
          double acc = 0;
          const double lb = std::log(sch_.betas[size_t(t)]);
          for (Index j = 0; j < D; ++j) {
            const double e = double(chain(r1 + t - 1, j)) - double(mu(r1 + t, j)), l = w.lv(r1 + t, j);
            acc += 0.5 * (l - 1.0 - lb) + 0.5 * e * e * std::exp(-l);
          }
          out.steps(b0 + b, t - 1) = acc;
          continue;
        }
        // −(D/2)(1 + log 2πβ_t) + (D/2) log 2πσ²_{t+1} + ‖x_t − μ_θ(x_{t+1}, t+1)‖²/(2σ²_{t+1})
        const double s2 = sigma2(t + 1);
        double sq = 0;
        for (Index j = 0; j < D; ++j) {
          const double e = double(chain(r1 + t - 1, j)) - double(mu(r1 + t, j));
          sq += e * e;
        }
        out.steps(b0 + b, t - 1) = 0.5 * double(D) * (std::log(s2) - 1.0 - std::log(sch_.betas[size_t(t)])) + sq / (2.0 * s2);
      }
      // KL(N(√α_T x_{T−1}, β_T) ‖ N(0, 1)) = ½ Σ_j [α_T x_{T−1}² + β_T − 1 − log β_T]
      const double aT = sch_.alphas[size_t(Tn)], bT = sch_.betas[size_t(Tn)];
      double acc = 0;
      for (Index j = 0; j < D; ++j) acc += aT * double(chain(r1 + Tn - 2, j)) * double(chain(r1 + Tn - 2, j));
      out.prior[b0 + b] = 0.5 * (acc + double(D) * (bT - 1.0 - std::log(bT)));
    }
  });
  return out;
}

template class Diffusion<float>;
template class Diffusion<double>;

}  // namespace elbokit
