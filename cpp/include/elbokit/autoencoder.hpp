// elbokit/autoencoder.hpp: autoencoders without probabilities (MATH.md §9): plain, denoising and
// contractive. Deterministic codes, no ELBO: the contrast with the VAE's latent space.
//
// Shapes: B batch, D data (x_dim), C code (code_dim), H hidden, P parameters.
//
//   code  y = s(W_c · net_enc(x̃) + b_c)   (s = the code activation, identity by default)
//   recon x̂ = W_o · net_dec(y) + b_o
//   loss  = mean_b [ Σ_j (x_bj − x̂_bj)² + λ ‖∂y/∂x (x_b)‖_F² ]
// plain: x̃ = x, λ = 0; denoising: x̃ = x + δ, δ ~ N(0, s² I) drawn per step, λ = 0;
// contractive: x̃ = x and λ > 0. The contractive penalty and its gradient are written by hand for
// the classic one-layer encoder (no hidden encoder layers, s ∈ {sigmoid, tanh, identity}):
//   ‖J‖_F² = Σ_i s'(a_i)² ‖W_i‖²,  a = W x + b  (Rifai et al. 2011).
//
// Parameters (PyTorch names): encoder.{i}.weight/bias, encoder.code.weight (C, H)/bias (C),
// decoder.{i}.weight/bias (hidden widths reversed), decoder.out.weight (D, H)/bias (D).
#pragma once

#include <mutex>
#include <string>
#include <vector>

#include "elbokit/mlp.hpp"
#include "elbokit/train.hpp"

namespace elbokit {

struct AutoencoderConfig {
  Index x_dim = 0, code_dim = 0;
  std::vector<Index> hidden;
  std::string activation = "relu";
  std::string code_activation = "identity";
  std::string kind = "plain";  // "plain", "denoising" or "contractive"
  double noise_std = 0.0;      // denoising: s
  double contraction = 0.0;    // contractive: λ
};

struct AELossTerms {
  Vec<double> reconstruction, penalty;  // (B): Σ_j (x − x̂)² and ‖∂y/∂x‖_F² (0 unless contractive)
};

template <class T>
class Autoencoder {
 public:
  Autoencoder(const AutoencoderConfig& cfg, uint64_t seed);

  const AutoencoderConfig& config() const { return cfg_; }
  const ParamLayout& layout() const { return layout_; }
  Index num_params() const { return layout_.total; }
  Index data_dim() const { return cfg_.x_dim; }
  T* param_data() { return params_.data(); }
  Vec<T>& params() { return params_; }

  Mat<T> encode(CMatRef<T> x);  // (B, C)
  Mat<T> decode(CMatRef<T> y);  // (B, D)

  // loss_grad: per-example terms for input x (B, D) and corruption noise (B, D) (the encoder sees
  // x + noise, the target is x; an empty noise matrix means none). When grad is not null,
  // accumulates scale·∂J/∂θ of J = mean_b [rec_b + λ pen_b] into grad (P). Returns J.
  double loss_grad(CMatRef<T> x, CMatRef<T> noise, double scale, T* grad, AELossTerms* terms);

  // The training-loop interface (train.hpp): loss J; StepResult.reconstruction is the mean
  // squared error Σ_j, kl the mean penalty λ‖J‖², elbo = −loss (an autoencoder has no ELBO).
  StepResult train_step(const T* x, Index B, const Shard& sh, const FitOptions& o, uint64_t step, double beta,
                        T* grad);
  EvalResult evaluate(const T* x, Index N, const Shard& sh, const FitOptions& o);
  std::vector<Index> active_units(const T* x, Index N);  // code units with variance > 0.01

 private:
  struct Work {
    TrunkCache<T> enc, dec;
    Mat<T> xt, a, y, out, dout, dy, da, dh, dhd;
  };
  void encode_raw(const T* x, Index B, Work& w);
  void decode_raw(const T* y, Index B, Work& w);
  void forward_terms(const T* x, const T* xin, Index B, Work& w, AELossTerms& t);
  template <class Run>
  Mat<T> chunked(const T* in, Index N, Index in_cols, Index out_cols, Run run);

  AutoencoderConfig cfg_;
  bool contractive_ = false, denoising_ = false;
  Activation code_act_;
  ParamLayout layout_;
  Trunk enc_, dec_;
  Dense code_, out_;
  Vec<T> params_;
  Work work_;                // loss_grad's (a training step's) buffers
  std::vector<Work> pool_;    // encode, decode, evaluate: one per thread
  std::mutex mutex_;
};

extern template class Autoencoder<float>;
extern template class Autoencoder<double>;

}  // namespace elbokit
