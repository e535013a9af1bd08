// diffusion_sampling.cpp: the diffusion model's decoder as a sampler, p_θ(x_{t−1}|x_t) (MATH.md §7):
// its mean and variance, ancestral (DDPM) and DDIM sampling, and the training-loop interface with
// the EMA of the weights. Shapes as in diffusion.hpp; the model's forward pieces are in diffusion.cpp.
#include <algorithm>
#include <cmath>

#include "elbokit/diffusion.hpp"

namespace elbokit {

template <class T>
void Diffusion<T>::p_mean_variance(CMatRef<T> xt, const std::vector<Index>& t, Mat<T>& mean, Mat<double>& var,
                                   Mat<T>& eps_hat, Mat<T>& x0_hat) {
  check_cols("xt", xt.rows(), xt.cols(), cfg_.x_dim);
  check_t(t, xt.rows());
  std::lock_guard<std::mutex> lock(mutex_);
  const Index B = xt.rows(), D = cfg_.x_dim;
  net_forward(xt.data(), t.data(), B, work_);
  eps_hat = work_.eps_hat;
  mean.resize(B, D);
  mean_from_eps(xt.data(), eps_hat.data(), t.data(), B, mean.data());
  const bool learned = var_ == VarianceKind::Learned;
  if (learned) var = work_.lv.array().exp().matrix();  // (B, D)
  else var.resize(B, 1);
  x0_hat.resize(B, D);
  for (Index b = 0; b < B; ++b) {  // x̂_0 = (x_t − √(1−ᾱ_t) ε̂)/√ᾱ_t
    const double ab = sch_.alphas_cumprod[size_t(t[size_t(b)])];
    if (!learned) var(b, 0) = sigma2(t[size_t(b)]);
    x0_hat.row(b) = (xt.row(b) - T(std::sqrt(1.0 - ab)) * eps_hat.row(b)) / T(std::sqrt(ab));
  }
}

// ---- Sampling (MATH.md §7): all n points go through the network together at each step.
template <class T>
Mat<T> Diffusion<T>::sample(Index n, const std::string& method, Index steps, double eta, uint64_t seed, Mat<T>* traj,
                            std::vector<Index>* times) {
  if (n <= 0) fail("n must be a positive integer, got " + std::to_string(n));
  const Index D = cfg_.x_dim, Tn = sch_.T;
  std::vector<Index> tau;  // the steps visited, ascending
  if (method == "ddpm") {
    if (steps != 0 && steps != Tn)
      fail("steps must be None (all T = " + std::to_string(Tn) + " steps) for method 'ddpm', got " +
           std::to_string(steps) + " (use method 'ddim' for fewer steps)");
    for (Index t = 1; t <= Tn; ++t) tau.push_back(t);
  } else if (method == "ddim") {
    const Index S = steps == 0 ? Tn : steps;
    if (S < 1 || S > Tn) fail("steps must be an integer in 1 … T = " + std::to_string(Tn) + ", got " + std::to_string(S));
    if (!(eta >= 0) || !std::isfinite(eta)) fail("eta must be a finite number >= 0, got " + std::to_string(eta));
    for (Index k = 0; k < S; ++k)
      tau.push_back(S == 1 ? Tn : Index(std::llround(1.0 + double(k) * double(Tn - 1) / double(S - 1))));
  } else {
    fail("method must be one of 'ddpm', 'ddim', got '" + method + "'");
  }
  std::lock_guard<std::mutex> lock(mutex_);
  const Index S = Index(tau.size());
  Mat<T> x(n, D);
  fill_normal(x.data(), n * D, seed, streams::kSample, 0);  // x_T ~ N(0, I)
  if (traj) {
    traj->resize((S + 1) * n, D);
    traj->topRows(n) = x;
  }
  if (times) {
    times->assign(1, tau.back());
  }
  pool_.resize(size_t(max_threads()));
  const bool ddpm = method == "ddpm";
  for (Index k = 1; k <= S; ++k) {
    const Index t = tau[size_t(S - k)], s = S - k - 1 >= 0 ? tau[size_t(S - k - 1)] : 0;
    // DDPM: x_{t−1} = μ_θ(x_t, t) + σ_t z (σ_θ ⊙ z per dimension for "learned"), no noise at the last step.
    // DDIM uses ε̂ only: a learned variance is ignored (σ below is η's).
    // DDIM (Song et al. 2021, eq. 12): x_s = √ᾱ_s x̂_0 + √(1 − ᾱ_s − σ²) ε̂ + σ z,
    // σ = η √((1 − ᾱ_s)/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_s)
    const bool learned = var_ == VarianceKind::Learned;
    const T sd = T(ddpm && s > 0 && !learned ? std::sqrt(sigma2(t)) : 0.0);
    const double at = sch_.alphas_cumprod[size_t(t)], as = sch_.alphas_cumprod[size_t(s)];
    const double sig = ddpm ? 0.0 : eta * std::sqrt((1.0 - as) / (1.0 - at) * (1.0 - at / as));
    const T c0 = T(std::sqrt(as) / std::sqrt(at)), ce = T(std::sqrt(std::max(0.0, 1.0 - as - sig * sig)) -
                                                          std::sqrt(as) * std::sqrt(1.0 - at) / std::sqrt(at));
    const bool noise = s > 0 && (ddpm || sig > 0);
    // Each chunk of rows goes through the network and its update on one thread (common.hpp); the
    // noise of row i is the same whatever the chunk: normal_at(seed, kSample, (k·n + i)·D + j).
    for_row_chunks(n, kPipelineRows, [&](Index b0, Index bn, int slot) {
      Work& w = pool_[size_t(slot)];
      w.t.assign(size_t(bn), t);
      auto xc = x.middleRows(b0, bn);
      net_forward(xc.data(), w.t.data(), bn, w);
      w.deps.resize(bn, D);  // the step's noise z (bn, D)
      if (noise) fill_normal_serial(w.deps.data(), bn * D, seed, streams::kSample, (uint64_t(k) * uint64_t(n) + uint64_t(b0)) * uint64_t(D));
      if (ddpm) {
        w.mean.resize(bn, D);
        mean_from_eps(xc.data(), w.eps_hat.data(), w.t.data(), bn, w.mean.data());
        if (noise && learned) xc = w.mean + ((0.5 * w.lv.array()).exp().template cast<T>() * w.deps.array()).matrix();
        else if (noise) xc = w.mean + sd * w.deps;
        else xc = w.mean;
      } else {
        if (noise) xc = c0 * xc + ce * w.eps_hat + T(sig) * w.deps;
        else xc = c0 * xc + ce * w.eps_hat;
      }
    });
    if (traj) traj->middleRows(k * n, n) = x;
    if (times) times->push_back(s);
  }
  return x;
}

// ---- EMA and the training-loop interface.
template <class T>
void Diffusion<T>::ema_begin(double decay) {
  if (!(decay >= 0 && decay < 1)) fail("ema must be in [0, 1), got " + std::to_string(decay));
  ema_ = params_;
  ema_decay_ = decay;
  ema_steps_ = 0;
}

template <class T>
void Diffusion<T>::ema_end(bool swap) {
  if (swap && ema_.size() == params_.size()) params_.swap(ema_);
  ema_decay_ = 0;
}

template <class T>
void Diffusion<T>::after_step(uint64_t) {
  if (ema_decay_ <= 0 || ema_.size() != params_.size()) return;
  const double d = std::min(ema_decay_, (1.0 + double(ema_steps_)) / (10.0 + double(ema_steps_)));
  ++ema_steps_;
  const T dt = T(d), dc = T(1.0 - d);
  const Index P = params_.size();
  for (Index i = 0; i < P; ++i) ema_[i] = dt * ema_[i] + dc * params_[i];
}

// train_step: t_b = 1 + ⌊T·u_b⌋, u_b = uniform_at(seed, kDiffusionTime + step, b); ε (B, D) from
// (seed, kTrainNoise + step) at b·D + j, b the row's index in the global minibatch (Shard). Reports
// unbiased estimates of the ELBO's terms.
template <class T>
StepResult Diffusion<T>::train_step(const T* x, Index B, const Shard& sh, const FitOptions& o, uint64_t step, double,
                                    T* grad) {
  const Index D = cfg_.x_dim, Tn = sch_.T;
  std::vector<Index> t(static_cast<size_t>(B));
  for (Index b = 0; b < B; ++b)
    t[size_t(b)] = std::min(
        Tn, 1 + Index(double(Tn) * uniform_at(o.seed, streams::kDiffusionTime + step, uint64_t(sh.offset + b))));
  Mat<T> eps(B, D);
  fill_normal(eps.data(), B * D, o.seed, streams::kTrainNoise + step, uint64_t(sh.offset * D));
  LossTerms lt;
  const double J = loss_grad(CMatMap<T>(x, B, D), t, eps, train_loss_, sh.weight(B), grad, &lt);
  StepResult r;
  r.loss = J;
  double rec = 0, kl = 0;
  for (Index b = 0; b < B; ++b) {
    kl += lt.prior[b];
    if (t[size_t(b)] == 1) rec -= double(Tn) * lt.step[b];
    else kl += double(Tn) * lt.step[b];
  }
  r.reconstruction = rec / double(B);
  r.kl = kl / double(B);
  r.elbo = r.reconstruction - r.kl;
  return r;
}

// evaluate: per example one reconstruction draw (t = 1) and one step t ~ U{2 … T} (from
// (seed, kDiffusionValTime) at b), noise from (seed, kValidation): an unbiased ELBO estimate whose
// draws are the same at every epoch.
template <class T>
EvalResult Diffusion<T>::evaluate(const T* x, Index N, const Shard& sh, const FitOptions& o) {
  const Index D = cfg_.x_dim, Tn = sch_.T;
  Mat<T> x2(2 * N, D), eps(2 * N, D);
  x2.topRows(N) = CMatMap<T>(x, N, D);
  x2.bottomRows(N) = CMatMap<T>(x, N, D);
  // (seed, kValidation) laid out (2, N_all, D), our rows of both halves; t at the row's global index
  fill_normal_rows(eps.data(), 2, N, D, sh.offset, sh.global(N), o.seed, streams::kValidation);
  std::vector<Index> t(size_t(2 * N), 1);
  for (Index b = 0; b < N; ++b)
    t[size_t(N + b)] = std::min(
        Tn, 2 + Index(double(Tn - 1) * uniform_at(o.seed, streams::kDiffusionValTime, uint64_t(sh.offset + b))));
  const LossTerms lt = loss(x2, t, eps, LossKind::Elbo);
  EvalResult r;
  r.reconstruction = -lt.step.head(N).mean();
  r.kl = lt.prior.head(N).mean() + double(Tn - 1) * lt.step.tail(N).mean();
  r.elbo = r.reconstruction - r.kl;
  return r;
}

template class Diffusion<float>;
template class Diffusion<double>;

}  // namespace elbokit
