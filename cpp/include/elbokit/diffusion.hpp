// elbokit/diffusion.hpp: the variational diffusion model (DDPM) as a Markovian hierarchical VAE
// with a fixed Gaussian encoder (MATH.md §7): schedules, the closed forms of q, the denoising
// network with its hand-written backward pass, both ELBO decompositions, training and sampling.
//
// Shapes: B batch, D data (x_dim), E time-embedding width, H hidden, T diffusion steps, S sampling
// steps, P parameters. Steps are numbered t = 1 … T as in the math; t = 0 is the data.
//
// The network: ε-, x0- or v-prediction from an MLP on concat(x_t, emb(t)) (B, D + E):
//   net.{i}.weight/bias (hidden layer i, activation after each), net.out.weight/bias (D outputs),
// names as in the equivalent PyTorch module (a ModuleDict "net" with keys "0", "1", …, "out").
// Sinusoidal embedding of the integer step t (E even, half = E/2, Ho et al. 2020 / Vaswani 2017):
//   emb(t)_k = sin(t·f_k), emb(t)_{half+k} = cos(t·f_k), f_k = exp(−ln(10000)·k/(half − 1))
//   (f_0 = 1 when half = 1), k = 0 … half − 1.
// Every prediction is turned into ε̂ = a_t·x_t + b_t·out (MATH.md §7: the same model reparameterized):
//   epsilon: ε̂ = out;  x0: x̂0 = out, ε̂ = (x_t − √ᾱ_t·out)/√(1−ᾱ_t);
//   v (v = √ᾱ ε − √(1−ᾱ) x0): ε̂ = √(1−ᾱ_t)·x_t + √ᾱ_t·out.
// With variance "learned" the network has 2·D outputs (improved DDPM, Nichol & Dhariwal 2021): the
// first half (columns [0, D); for a channels-first image network the first C channels) is the
// prediction above, the second half [D, 2D) the variance output v, and per (example, dimension)
//   log σ_t² = v·log β_t + (1 − v)·log β̃_t,  log β̃_1 clipped to log β̃_2 (as "small"),
// with v raw (not (v + 1)/2 as in their code): v = 0 is "small", v = 1 is "large".
#pragma once

#include <mutex>
#include <string>
#include <vector>

#include "elbokit/distributions.hpp"
#include "elbokit/nets.hpp"
#include "elbokit/train.hpp"

namespace elbokit {

// ---- The schedule (MATH.md §7), in double. Arrays have T + 1 entries, index t = 0 … T, where
// entry 0 is the data: β_0 = 0, α_0 = ᾱ_0 = 1 (so ᾱ_{t−1} is alphas_cumprod[t − 1] for every t ≥ 1).
struct Schedule {
  Index T = 0;
  std::vector<double> betas, alphas, alphas_cumprod;  // (T + 1)
  std::vector<double> posterior_variance;             // β̃_t = (1 − ᾱ_{t−1})/(1 − ᾱ_t)·β_t, β̃_0 = β̃_1 = 0
};

// The β_t, t = 1 … T (T entries) of a named schedule: "linear" (1e-4 … 0.02 scaled by 1000/T, as
// Ho et al. 2020 for T = 1000) or "cosine" (Nichol & Dhariwal 2021, s = 0.008, β clipped at 0.999).
std::vector<double> schedule_betas(const std::string& kind, Index T);
// Validates β_t ∈ (0, 1) (finite) and T ≥ 2, and derives the other arrays.
Schedule make_schedule(const std::vector<double>& betas);

enum class Prediction { Epsilon, X0, V };
enum class VarianceKind { Small, Large, Learned };
enum class DataKind { Continuous, Discrete256 };
enum class LossKind { Simple, Elbo, Hybrid };

LossKind loss_from_string(const std::string& s);

// The weight of the ELBO term in the hybrid loss: simple + λ·elbo (Nichol & Dhariwal 2021). With
// variance "learned" the ELBO term's gradient reaches only the variance output v (μ_θ is held fixed
// in it: a stop-gradient); with a fixed variance it adds λ·∂elbo/∂θ through the mean (a reweighting
// of ‖ε − ε̂‖² by 1 + λT·w_t, plus the discretized term at t = 1).
constexpr double kHybridLambda = 1e-3;

struct DiffusionConfig {
  Index x_dim = 0;
  std::vector<double> betas;  // (T): β_1 … β_T
  NetSpec net;                // the ε/x0/v-network: x_t (B, D) conditioned on emb(t) (B, E) → (B, D)
  Index emb_dim = 32;
  std::string prediction = "epsilon";  // "epsilon", "x0", "v"
  std::string variance = "small";      // "small": σ_t² = β̃_t (σ_1² = β̃_2), "large": σ_t² = β_t,
                                       // "learned": per (example, dimension) from the network (above)
  std::string data = "continuous";     // "continuous" or "discrete256"
};

// Per-example ELBO terms in nats (MATH.md §7): elbo = reconstruction − prior − Σ_t steps[:, t − 1].
// Form B (denoising): steps[:, t−1] = KL(q(x_{t−1}|x_t,x_0) ‖ p_θ(x_{t−1}|x_t)) for t ≥ 2, column 0 = 0.
// Form A (consistency): steps[:, t−1] = E[log q(x_t|x_{t−1}) − log p_θ(x_t|x_{t+1})] for t ≤ T − 1,
// column T − 1 = 0 (the top level is the prior term).
struct DiffusionElboTerms {
  Vec<double> reconstruction, prior;  // (B)
  Mat<double> steps;                  // (B, T)
};

// The per-example losses of given (x_0, t, ε) and their parts, in double.
struct LossTerms {
  Vec<double> loss;  // (B): the requested kind
  Vec<double> sq;    // (B): ‖ε − ε̂‖²
  Vec<double> step;  // (B): L_t: −log p_θ(x_0|x_1) for t = 1, the step KL for t ≥ 2
  Vec<double> prior; // (B): KL(q(x_T|x_0) ‖ N(0, I))
};

template <class T>
class Diffusion {
 public:
  Diffusion(const DiffusionConfig& cfg, uint64_t seed);

  const DiffusionConfig& config() const { return cfg_; }
  const Schedule& schedule() const { return sch_; }
  const ParamLayout& layout() const { return layout_; }
  Index num_params() const { return layout_.total; }
  Index data_dim() const { return cfg_.x_dim; }
  Index timesteps() const { return sch_.T; }
  T* param_data() { return params_.data(); }
  Vec<T>& params() { return params_; }

  // σ_t² of p_θ(x_{t−1}|x_t), t = 1 … T, for a fixed variance (fails for "learned").
  double sigma2(Index t) const;
  bool learned_variance() const { return var_ == VarianceKind::Learned; }
  // The network's output width: D, or 2·D for "learned" (prediction, then v).
  Index out_dim() const { return var_ == VarianceKind::Learned ? 2 * cfg_.x_dim : cfg_.x_dim; }
  // "learned": log σ_t² = v·log β_t + (1 − v)·log β̃_t (β̃_1 → β̃_2) for the raw output v.
  double log_sigma2_learned(Index t, double v) const {
    const double lmin = std::log(sch_.posterior_variance[size_t(t == 1 ? 2 : t)]), lmax = std::log(sch_.betas[size_t(t)]);
    return v * lmax + (1.0 - v) * lmin;
  }

  // Closed forms of the encoder (MATH.md §7), t (B) in 1 … T:
  // q_sample: x_t (B, D) = √ᾱ_t x0 + √(1−ᾱ_t) ε.
  Mat<T> q_sample(CMatRef<T> x0, const std::vector<Index>& t, CMatRef<T> eps) const;
  // q_posterior: mean (B, D) and variance (B) of q(x_{t−1}|x_t, x_0).
  void q_posterior(CMatRef<T> x0, CMatRef<T> xt, const std::vector<Index>& t, Mat<T>& mean, Vec<double>& var) const;
  // p_mean_variance: mean (B, D), variance of p_θ(x_{t−1}|x_t) — (B, 1) for a fixed variance,
  // (B, D) for "learned" — and ε̂, x̂0 (B, D).
  void p_mean_variance(CMatRef<T> xt, const std::vector<Index>& t, Mat<T>& mean, Mat<double>& var, Mat<T>& eps_hat,
                       Mat<T>& x0_hat);

  // loss: per-example losses for x0 (B, D), t (B), eps (B, D):
  //   simple: ‖ε − ε̂‖²;  elbo: prior + T·L_t (unbiased for −ELBO when t ~ U{1…T});
  //   hybrid: simple + λ·elbo (for "learned" with μ_θ stop-gradient in the elbo term).
  // For "learned", "simple" gives v no gradient (fit refuses it; loss/loss_grad allow it).
  LossTerms loss(CMatRef<T> x0, const std::vector<Index>& t, CMatRef<T> eps, LossKind kind);
  // loss_grad: J = mean_b loss_b; accumulates scale·∂J/∂θ into grad (P) and returns J.
  double loss_grad(CMatRef<T> x0, const std::vector<Index>& t, CMatRef<T> eps, LossKind kind, double scale, T* grad,
                   LossTerms* terms);

  // elbo_denoising: form B with every step t = 2 … T computed (T network evaluations per example),
  // ε of (example b, step t) = normal_at(seed, streams::kDiffusionElbo, (b·T + t − 1)·D + j).
  // row0 (both forms): the index of x0's first row in a larger set whose noise the call reproduces.
  DiffusionElboTerms elbo_denoising(CMatRef<T> x0, uint64_t seed, Index row0 = 0);
  // elbo_consistency: form A, one forward chain x_1 … x_T per example (Monte Carlo),
  // z_t of (b, t) = normal_at(seed, streams::kDiffusionChain, (b·T + t − 1)·D + j).
  DiffusionElboTerms elbo_consistency(CMatRef<T> x0, uint64_t seed, Index row0 = 0);

  // sample: n points (n, D). method "ddpm" (ancestral, every step: x_{t−1} = μ_θ + σ_θ ⊙ z, per
  // dimension for "learned") or "ddim" (uses ε̂ only: a learned variance is ignored; S = steps of the
  // subsequence τ_k = round(1 + k(T − 1)/(S − 1)), k = 0 … S − 1, with η). Noise of sampling step k
  // (k = 0: x_T) = normal_at(seed, streams::kSample, (k·n + i)·D + j). With traj, the states
  // x_T, …, x_0 ((S + 1)·n, D) are written to *traj and the step numbers to *times.
  Mat<T> sample(Index n, const std::string& method, Index steps, double eta, uint64_t seed, Mat<T>* traj,
                std::vector<Index>* times);

  // EMA of the parameters (used by fit): ema ← d·ema + (1 − d)·θ after each optimizer step, with
  // d_k = min(decay, (1 + k)/(10 + k)) at the k-th step since ema_begin (a warm-up).
  void ema_begin(double decay);
  void ema_end(bool swap);  // swap: the parameters become the EMA, the EMA buffer the last iterate
  const Vec<T>& ema() const { return ema_; }

  // The training-loop interface (train.hpp). The loss kind is set by set_train_loss.
  void set_train_loss(LossKind k) { train_loss_ = k; }
  StepResult train_step(const T* x, Index B, const Shard& sh, const FitOptions& o, uint64_t step, double beta,
                        T* grad);
  EvalResult evaluate(const T* x, Index N, const Shard& sh, const FitOptions& o);
  std::vector<Index> active_units(const T*, Index) { return {}; }
  void after_step(uint64_t step);

 private:
  struct Work {
    Cache net;
    const T* out = nullptr;  // the network's output (B, O), O = out_dim(), in net (or out_cat)
    // Networks that ask for the row split (module.hpp: split_rows; the U-Net): half 0's rows go
    // through net and half 1's through net1, one thread each (common.hpp: RowHalves); out_cat
    // (B, O) joins their outputs and grad_h the halves' gradients (net_backward).
    RowHalves halves;
    Cache net1;
    Mat<T> out_cat;
    Vec<T> grad_h[2];
    Mat<T> emb, xt, eps_hat, mean, dout, deps, dv;  // emb (B, E); dout (B, O); the others (B, D)
    Mat<double> lv;  // (B, D): log σ_t² per dimension ("learned" only)
    std::vector<Index> t;
  };
  void check_t(const std::vector<Index>& t, Index B) const;
  // loss_grad's "learned" branch (after the network's forward pass in work_).
  double loss_grad_learned(CMatRef<T> x0, const std::vector<Index>& t, CMatRef<T> eps, LossKind kind, double scale,
                           T* grad, LossTerms* terms);
  // ε-network: fills w.emb (B, E) and w.out (B, O), then w.eps_hat (B, D) (and w.lv for "learned").
  void net_forward(const T* xt, const Index* t, Index B, Work& w);
  // backward of ε̂ = a_t x_t + b_t·out: deps (B, D) = ∂J/∂ε̂ (and for "learned" dv (B, D) = ∂J/∂v),
  // accumulated into grad.
  void net_backward(Index B, Work& w, T* grad);
  // the mean of p_θ(x_{t−1}|x_t) (MATH.md §7): μ_θ = (x_t − β_t/√(1−ᾱ_t)·ε̂)/√α_t
  void mean_from_eps(const T* xt, const T* eps_hat, const Index* t, Index B, T* mean) const;
  // −log p_θ(x_0|x_1) per row for rows with their own x_1 and ε̂; lv (B, D) the per-dimension
  // log σ_1² for "learned" (nullptr for a fixed variance).
  void recon_nll(const T* x0, const T* x1, const T* eps_hat, const double* lv, Index B, double* out,
                 Mat<T>& mean) const;
  double prior_kl(const T* x0) const;

  DiffusionConfig cfg_;
  Schedule sch_;
  Prediction pred_;
  VarianceKind var_;
  DataKind data_;
  ParamLayout layout_;
  ModulePtr<T> net_;  // (nets.hpp)
  Mat<T> emb_;  // (T + 1, E): the time embedding of every step
  Vec<T> params_, ema_;  // (P)
  double ema_decay_ = 0;
  uint64_t ema_steps_ = 0;
  LossKind train_loss_ = LossKind::Simple;
  Work work_;
  std::vector<Work> pool_;  // one per thread: the row-chunk pipelines' scratch (common.hpp)
  std::mutex mutex_;
};

extern template class Diffusion<float>;
extern template class Diffusion<double>;

}  // namespace elbokit
