// elbokit/vae.hpp: the variational autoencoder (MATH.md §2) and its importance-weighted bound (§3).
//
// Shapes: B batch, D data (x_dim), Z latent (z_dim), H hidden, S samples per example, K importance
// samples, P parameters. Rows of sample-stacked matrices are r = s·B + b.
//
// Parameters (one flat buffer, names as the equivalent PyTorch module's state_dict, weights (out, in)):
//   encoder.{i}.weight/bias (hidden layer i), encoder.mu.*, encoder.logvar.*,
//   decoder.{i}.weight/bias (the hidden widths reversed), decoder.out.*,
//   decoder.logvar (D) when the likelihood is Gaussian with a learned variance.
#pragma once

#include <mutex>
#include <string>
#include <vector>

#include "elbokit/distributions.hpp"
#include "elbokit/nets.hpp"
#include "elbokit/train.hpp"

namespace elbokit {

// The Gaussian decoder's log-variance is clamped to this range (torch.clamp semantics: the gradient
// is zero outside it) so that no exp overflows (MATH.md §1).
constexpr double kDecoderLogvarMin = -10.0, kDecoderLogvarMax = 10.0;

// The Gaussian decoder's log-variance (D), clamped: the learned one (raw, D) or log(fixed_var).
template <class T>
Vec<T> clamped_decoder_logvar(const T* raw, double fixed_var, Index D) {
  Vec<T> lv(D);
  for (Index j = 0; j < D; ++j) {
    const double v = raw ? double(raw[j]) : std::log(fixed_var);
    lv[j] = T(std::min(kDecoderLogvarMax, std::max(kDecoderLogvarMin, v)));
  }
  return lv;
}

enum class Likelihood { Bernoulli, Gaussian };
enum class KLMode { Analytic, MonteCarlo };

inline KLMode kl_from_string(const std::string& s) {
  if (s == "analytic") return KLMode::Analytic;
  if (s == "mc") return KLMode::MonteCarlo;
  fail("kl must be one of 'analytic', 'mc', got '" + s + "'");
}

struct VAEConfig {
  Index x_dim = 0, z_dim = 0;
  NetSpec encoder;  // x (B, D) → features (B, H); the heads encoder.mu / encoder.logvar sit on top
  NetSpec decoder;  // z (B, Z) → logits or means (B, D); its output layer is decoder.out
  std::string likelihood = "bernoulli";  // "bernoulli" or "gaussian"
  bool learned_var = true;               // gaussian: learned per-dimension log-variance
  double fixed_var = 1.0;                // gaussian with learned_var = false
};

// Per-example ELBO terms (MATH.md §2): elbo = reconstruction − kl, kl = Σ_j kl_per_dim[:, j].
struct ElboTerms {
  Vec<double> reconstruction, kl;  // (B)
  Mat<double> kl_per_dim;          // (B, Z)
};

// The training objective from the reconstruction term's batch mean and the batch-mean KL of each
// group j (a latent dimension of the VAE, a level of the HVAE), kbar (n):
//   J = rec_mean − β Σ_j F(kbar_j),  F(k) = max(λ, k) when λ = free_bits > 0, F(k) = k otherwise
// (MATH.md §2); coef (n) gets ∂(scale·J)/∂(one example's KL of group j): 0 where the floor holds
// (free bits cut that group's gradient), −β·scale/B otherwise.
inline double kl_objective(double rec_mean, const Vec<double>& kbar, double beta, double free_bits, double scale,
                           Index B, std::vector<double>& coef) {
  coef.resize(size_t(kbar.size()));
  double J = rec_mean;
  for (Index j = 0; j < kbar.size(); ++j) {
    const bool floored = free_bits > 0 && kbar[j] < free_bits;
    J -= beta * (floored ? free_bits : kbar[j]);
    coef[size_t(j)] = floored ? 0.0 : -beta * scale / double(B);
  }
  return J;
}

template <class T>
class VAE {
 public:
  VAE(const VAEConfig& cfg, uint64_t seed);

  const VAEConfig& config() const { return cfg_; }
  const ParamLayout& layout() const { return layout_; }
  Index num_params() const { return layout_.total; }
  Index data_dim() const { return cfg_.x_dim; }
  T* param_data() { return params_.data(); }
  Vec<T>& params() { return params_; }

  // encode: mu, logvar (B, Z) of q(z|x) for x (B, D).
  void encode(CMatRef<T> x, Mat<T>& mu, Mat<T>& logvar);
  // decode: (B, D) Bernoulli logits or Gaussian means of p(x|z) for z (B, Z); probabilities when
  // mean = true and the likelihood is Bernoulli.
  Mat<T> decode(CMatRef<T> z, bool mean);
  // The decoder's (clamped) log-variance (D); Gaussian only.
  Vec<T> decoder_logvar() const;

  // elbo: per-example terms with eps (S·B, Z) given, row s·B + b. Memory is bounded by chunking.
  ElboTerms elbo(CMatRef<T> x, CMatRef<T> eps, Index S, KLMode kl);

  // objective_grad: J = mean_b reconstruction_b − β Σ_j F(mean_b kl_bj), F(k) = max(λ, k) when
  // λ = free_bits > 0 (free bits), F(k) = k otherwise (MATH.md §2). Accumulates scale·∂J/∂θ into
  // grad (P) and returns J; the per-example terms go to *terms when it is not null.
  double objective_grad(CMatRef<T> x, CMatRef<T> eps, Index S, KLMode kl, double beta, double free_bits,
                        double scale, T* grad, ElboTerms* terms);

  // encoder_backward: accumulates into grad (P) the encoder parameters' part of ∂J/∂φ for
  // dmu, dlogvar (B, Z) = ∂J/∂(mu, logvar) of q(z|x) at x (B, D).
  void encoder_backward(CMatRef<T> x, CMatRef<T> dmu, CMatRef<T> dlogvar, T* grad);

  // log_likelihood: L_K per example (MATH.md §3), importance samples z_k ~ q(z|x) from
  // (seed, streams::kLogLikelihood) at index (b·K + k)·Z + j for global row b; log-sum-exp in double.
  // row0: the index of x's first row in a larger set whose noise this call reproduces (a shard of it).
  Vec<double> log_likelihood(CMatRef<T> x, Index K, uint64_t seed, Index row0 = 0);

  // The training-loop interface (train.hpp).
  StepResult train_step(const T* x, Index B, const Shard& sh, const FitOptions& o, uint64_t step, double beta,
                        T* grad);
  EvalResult evaluate(const T* x, Index N, const Shard& sh, const FitOptions& o);
  std::vector<Index> active_units(const T* x, Index N);

 private:
  struct Work {
    Cache enc, dec;
    const T* h = nullptr;  // the encoder's features (B, H), in enc
    const T* out = nullptr;  // the decoder's output (S·B, D), in dec
    Mat<T> mu, lv, sigma, z, sig, dout, dz, dh, dmu, dlv;  // see forward()
    Vec<double> logp;                                     // (S·B)
  };
  // Per-thread scratch of the row-chunk pipelines (elbo, log_likelihood; common.hpp).
  struct Scratch {
    Work w;
    Mat<T> eps, z;           // (R, Z), (R, Z)
    Mat<T> mu, lv, sigma;    // (B, Z)
    Mat<double> logw;        // (B, K)
    Vec<double> logp;        // (R)
  };
  void forward(const T* x, Index B, const T* eps, Index S, KLMode kl, Work& w, ElboTerms& t, bool for_grad);
  void encode_raw(const T* x, Index B, Work& w);
  void encoder_backward_raw(const T* x, Index B, const T* dmu, const T* dlv, Work& w, T* grad);
  void backward_rows(const T* x, Index B, const T* eps, Index S, KLMode kl, const double* coef, double c_rec,
                     Work& w, T* grad);
  Vec<T> clamped_logvar() const;

  VAEConfig cfg_;
  Likelihood lik_;
  ParamLayout layout_;
  ModulePtr<T> enc_, dec_;  // the networks (nets.hpp)
  Dense mu_, lv_;           // q's heads on the encoder's features
  Index dec_lv_ = -1;  // offset of decoder.logvar, −1 when absent
  Vec<T> params_;      // (P)
  Work work_, work2_;          // work2_: the second half of a split step (objective_grad)
  Vec<T> grad_h_[2];           // the halves' gradients (P)
  std::vector<Scratch> pool_;  // one per thread
  std::mutex mutex_;   // one call at a time per model: the work buffers are shared
};

extern template class VAE<float>;
extern template class VAE<double>;

}  // namespace elbokit
