// elbokit/hvae.hpp: hierarchical VAEs with L stochastic levels (MATH.md §6), in two structures:
//
//   markov:  p(x, z_{1:L}) = p(z_L) p(x|z_1) Π_{l<L} p(z_l|z_{l+1}),
//            q(z_{1:L}|x)  = q(z_1|x) Π_{l>1} q(z_l|z_{l−1});
//   topdown: the same generative model; q(z_{1:L}|x) = q(z_L|x) Π_{l<L} q(z_l|z_{l+1}, x), where a
//            deterministic bottom-up pass gives Gaussians N(μ_d,l, σ_d,l²) from features d_l(x) and
//            q(z_l|z_{l+1}, x) is their precision-weighted combination with the prior
//            p(z_l|z_{l+1}) (the ladder VAE; the top-down path conditions on z_{l+1}, a special
//            case of z_{>l}).
//
// Shapes: B batch, D data, Z_l level l's latent width, H hidden, S samples, R = S·B rows with row
// r = s·B + b, L levels, P parameters. Levels are 0-based in the code: level l holds z_{l+1}.
//
// Per-example terms (elbo = reconstruction − Σ_l kl_levels[:, l]), one ancestral sample of the
// whole chain per draw, averaged over S draws:
//   reconstruction  log p(x|z_1);
//   top level L     KL(q(z_L|·) ‖ N(0, I)): analytic given the sampled z_{L−1} (kl = "analytic")
//                   or log q(z_L|·) − log p(z_L) at the sample (kl = "mc");
//   level l < L     markov: log q(z_l|z_{l−1}) − log p(z_l|z_{l+1}) at the samples (always Monte
//                   Carlo: a consistency term); topdown: KL(q(z_l|z_{l+1},x) ‖ p(z_l|z_{l+1})),
//                   analytic given the sampled z_{l+1}, or its Monte-Carlo form with kl = "mc".
// With L = 1 both structures are the VAE of vae.hpp (same names, values and gradients).
//
// Parameters (one flat buffer; names as the state_dict of the PyTorch module layout below):
//   encoder.{l}.{i}.weight/bias, encoder.{l}.mu.*, encoder.{l}.logvar.*   l = 0..L−1
//     markov: the network of q(z_{l+1}|z_l) (z_0 = x): trunk on z_l, heads for z_{l+1};
//     topdown: the bottom-up block l: trunk on d_l (d_0 = x) giving d_{l+1}, heads for the
//     bottom-up Gaussian of z_{l+1}.
//   decoder.0.{i}.*, decoder.0.out.*, decoder.0.logvar (Gaussian, learned): p(x|z_1);
//   decoder.{l}.{i}.*, decoder.{l}.mu.*, decoder.{l}.logvar.*   l = 1..L−1: p(z_l|z_{l+1}).
//   The bodies are built from HVAEConfig's encoder and decoder descriptions (nets.hpp; from Python,
//   an MLP with `hidden` for the encoders and `hidden` reversed for the decoders). With L = 1 the level index is
//   dropped (encoder.mu.weight, decoder.out.weight, ...): exactly the VAE's names.
#pragma once

#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "elbokit/distributions.hpp"
#include "elbokit/nets.hpp"
#include "elbokit/train.hpp"
#include "elbokit/vae.hpp"

namespace elbokit {

enum class Structure { Markov, TopDown };

inline Structure structure_from_string(const std::string& s) {
  if (s == "markov") return Structure::Markov;
  if (s == "topdown") return Structure::TopDown;
  fail("structure must be one of 'markov', 'topdown', got '" + s + "'");
}

// A Gaussian conditional network: a body network (nets.hpp) and two linear heads giving μ and
// log-variance (the VAE encoder's shape, MATH.md §2). Its cache keeps the body's features h.
template <class T>
struct GaussianNetCache {
  Cache body;
  const T* h = nullptr;  // (B, H)
};

template <class T>
struct GaussianNet {
  ModulePtr<T> body;
  Dense mu, lv;

  // forward: in (B, I) -> mu_out, lv_out (B, Z); returns the body's output h (B, H).
  const T* forward(const T* p, const T* in, Index B, GaussianNetCache<T>& c, T* mu_out, T* lv_out) const {
    c.h = body->forward(p, in, nullptr, B, c.body);
    linear_forward(mu_out, c.h, p + mu.w, p + mu.b, B, mu.in, mu.out);
    linear_forward(lv_out, c.h, p + lv.w, p + lv.b, B, lv.in, lv.out);
    return c.h;
  }

  // backward: given dmu, dlv (B, Z), accumulates parameter gradients into g, ∂J/∂h into dh (B, H)
  // (the caller zeroes it, or preloads it with another consumer's gradient of h), then runs the
  // body backward from dh, accumulating ∂J/∂in into din (B, I) when it is not null.
  void backward(const T* p, T* g, const T* in, Index B, GaussianNetCache<T>& c, const T* dmu, const T* dlv, T* dh,
                T* din) const {
    linear_backward(dh, g + mu.w, g + mu.b, dmu, c.h, p + mu.w, B, mu.in, mu.out);
    linear_backward(dh, g + lv.w, g + lv.b, dlv, c.h, p + lv.w, B, lv.in, lv.out);
    body->backward(p, g, in, nullptr, B, c.body, dh, din);
  }

  void init(T* p, uint64_t seed) const {
    body->init(p, seed);
    init_dense(p, mu, seed);
    init_dense(p, lv, seed);
  }
};

template <class T>
GaussianNet<T> make_gaussian_net(ParamLayout& layout, const std::string& prefix, const NetSpec& spec, Index in_dim,
                                 Index z_dim) {
  GaussianNet<T> n;
  n.body = make_net<T>(layout, prefix, spec, in_dim, 0, 0);
  n.mu = layout.add_dense(prefix + ".mu", n.body->out_dim(), z_dim);
  n.lv = layout.add_dense(prefix + ".logvar", n.body->out_dim(), z_dim);
  return n;
}

struct HVAEConfig {
  Index x_dim = 0;
  std::vector<Index> z_dims;  // (L): Z_1 .. Z_L, bottom to top
  NetSpec encoder;  // every encoder.l body (q(z_{l+1}|z_l), or the bottom-up block l)
  NetSpec decoder;  // every decoder.l body (p(x|z_1) with its output layer, p(z_l|z_{l+1}))
  // Level 0's networks when they differ (none: `encoder` / `decoder`): encoder.0 reads x
  // (q(z_1|x), or the bottom-up block 0) and decoder.0 is p(x|z_1): e.g. a conv net for images.
  std::optional<NetSpec> encoder0, decoder0;
  const NetSpec& encoder_at(Index l) const { return l == 0 && encoder0 ? *encoder0 : encoder; }
  const NetSpec& decoder_at(Index l) const { return l == 0 && decoder0 ? *decoder0 : decoder; }
  std::string structure = "markov";  // "markov" or "topdown"
  std::string likelihood = "bernoulli";
  bool learned_var = true;
  double fixed_var = 1.0;
};

// Per-example terms: elbo = reconstruction − Σ_l kl_levels[:, l].
struct HElboTerms {
  Vec<double> reconstruction;  // (B)
  Mat<double> kl_levels;       // (B, L)
};

template <class T>
class HVAE {
 public:
  HVAE(const HVAEConfig& cfg, uint64_t seed);

  const HVAEConfig& config() const { return cfg_; }
  const ParamLayout& layout() const { return layout_; }
  Index num_params() const { return layout_.total; }
  Index data_dim() const { return cfg_.x_dim; }
  Index levels() const { return L_; }
  Index z_total() const { return ztot_; }
  T* param_data() { return params_.data(); }
  Vec<T>& params() { return params_; }

  // Noise layout (every eps buffer): level l's block (S·B, Z_l), rows s·B + b, starts at
  // S·B·(Z_1 + … + Z_l) (level-major), so one fill_normal of S·B·Σ_l Z_l draws all levels.

  // encode: the Gaussians of q along one path of the chain (eps (B·Σ Z_l) in the layout above with
  // S = 1; eps = nullptr: the mean path, every ε = 0): mu[l], logvar[l] (B, Z_l).
  void encode(CMatRef<T> x, const T* eps, std::vector<Mat<T>>& mu, std::vector<Mat<T>>& logvar);
  // decode: z (B, Z_level) at level `level` (1..L) passed down through the prior's conditional
  // means to p(x|z_1): (B, D) logits or means (probabilities when mean and Bernoulli).
  Mat<T> decode(CMatRef<T> z, Index level, bool mean);
  // prior: the Gaussian (mu, logvar) (B, Z_{level−1}) of p(z_{level−1}|z_level) for z (B, Z_level),
  // level in 2..L (1-based, as in MATH.md §6).
  void prior(CMatRef<T> z, Index level, Mat<T>& mu, Mat<T>& logvar);
  // generate: ancestral samples of p with noise eps (B·Σ Z_l), z_L = ε_L, z_l = μ_p + σ_p ε_l;
  // returns the mean of p(x|z_1) (B, D) and fills z[l] (B, Z_l).
  Mat<T> generate(Index B, const T* eps, std::vector<Mat<T>>& z);
  Vec<T> decoder_logvar() const;

  // elbo: per-example terms with eps (S·N·Σ Z_l) in the layout above. Memory bounded by chunks.
  HElboTerms elbo(CMatRef<T> x, const T* eps, Index S, KLMode kl);

  // objective_grad: J = mean_b reconstruction_b − β Σ_l F(mean_b kl_levels[b, l]), F(k) = max(λ, k)
  // when λ = free_bits > 0 (free bits per level), F(k) = k otherwise. Accumulates scale·∂J/∂θ into
  // grad (P) and returns J; the per-example terms go to *terms when not null.
  double objective_grad(CMatRef<T> x, const T* eps, Index S, KLMode kl, double beta, double free_bits, double scale,
                        T* grad, HElboTerms* terms);

  // log_likelihood: L_K (MATH.md §3) with importance samples of the whole chain z_{1:L} ~ q,
  // log w = log p(x, z_{1:L}) − log q(z_{1:L}|x); noise (seed, streams::kLogLikelihood) at index
  // (b·K + k)·Σ Z_l + (Z_1 + … + Z_{l−1}) + j for level l (with L = 1: the VAE's indices).
  // row0: the index of x's first row in a larger set whose noise this call reproduces (a shard of it).
  Vec<double> log_likelihood(CMatRef<T> x, Index K, uint64_t seed, Index row0 = 0);

  // The training-loop interface (train.hpp); kl_terms and active units are per level.
  StepResult train_step(const T* x, Index B, const Shard& sh, const FitOptions& o, uint64_t step, double beta,
                        T* grad);
  EvalResult evaluate(const T* x, Index N, const Shard& sh, const FitOptions& o);
  std::vector<Index> active_units(const T* x, Index N);

 private:
  struct Level {
    GaussianNetCache<T> enc, dec;  // the encoder (or bottom-up) net and the prior net p(z_l|z_{l+1})
    Mat<T> mu, lv, sigma;    // q's Gaussian: (B, Z) when shared by the samples (qrows = B), else (R, Z)
    Mat<T> z;                // (R, Z)
    Mat<T> mud, lvd;         // topdown: the bottom-up Gaussian (B, Z)
    Mat<T> pm, plv;          // p(z_l|z_{l+1}) (R, Z), l < L−1
    Mat<T> dz, dmu, dlv, dmud, dlvd, dpm, dplv, dh, dhp;  // gradients, shapes as above
    Vec<double> krow;        // the level's term per row: (B) for a shared analytic KL, else (R)
    Index qrows = 0;         // rows of q's Gaussian: B or R
    const T* in = nullptr;   // the encoder net's input: x, z of the level below, or d_l (topdown)
  };
  struct Work {
    std::vector<Level> lv;
    Cache dec0;
    const T* out = nullptr;  // p(x|z_1)'s output (R, D), in dec0
    Mat<T> sig, dout;        // sigmoid(output) (Bernoulli), ∂J/∂output (R, D)
    Vec<double> logp;       // (R)
  };
  // Per-thread scratch of the row-chunk pipelines (elbo, log_likelihood; common.hpp).
  struct Scratch {
    Work w;
    Mat<T> eps;        // the chunk's noise, level-blocked
    Mat<double> logw;  // (B, K) log importance weights
  };

  // forward: every level's Gaussians and samples, log p(x|z_1) and the per-row level terms.
  // posterior_only: stop once q's Gaussians and samples are computed (encode, active units).
  void forward(const T* x, Index B, const T* eps, Index S, KLMode kl, Work& w, bool posterior_only = false);
  // collect: per-example means over the S samples of w's per-row terms.
  void collect(Index B, Index S, const Work& w, HElboTerms& t) const;
  void backward_rows(const T* x, Index B, const T* eps, Index S, KLMode kl, const std::vector<double>& c,
                     double c_rec, Work& w, T* grad);
  const T* level_eps(const T* eps, Index rows, Index l) const { return eps + rows * zoff_[size_t(l)]; }
  bool q_shared(Index l) const {  // q of level l is a function of x alone (shared by the S samples)
    return structure_ == Structure::Markov ? l == 0 : l == L_ - 1;
  }
  Vec<T> clamped_logvar() const;

  HVAEConfig cfg_;
  Structure structure_;
  Likelihood lik_;
  Index L_ = 0, ztot_ = 0;
  std::vector<Index> zoff_;  // (L + 1): Z_1 + … + Z_l
  ParamLayout layout_;
  std::vector<GaussianNet<T>> enc_;    // (L): q(z_{l+1}|z_l) or the bottom-up blocks
  std::vector<GaussianNet<T>> prior_;  // (L): prior_[l] (decoder.l, l ≥ 1) maps level l's z to level l−1's prior; [0] unused
  ModulePtr<T> dec_;                   // p(x|z_1): z_1 (R, Z_1) → logits or means (R, D)
  Index dec_lv_ = -1;
  Vec<T> params_;  // (P)
  Work work_, work2_;  // work2_: the second half of a split step (objective_grad)
  Vec<T> grad_h_[2];   // the halves' gradients (P)
  std::vector<Scratch> pool_;  // one per thread
  std::mutex mutex_;
};

extern template class HVAE<float>;
extern template class HVAE<double>;

}  // namespace elbokit
