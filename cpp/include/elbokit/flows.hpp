// elbokit/flows.hpp: normalizing flows, the VAE whose encoder is deterministic and invertible
// (MATH.md §8): z = f(x) = f_L ∘ … ∘ f_1(x), log p(x) = log N(f(x); 0, I) + Σ_l log |det ∂f_l/∂x_l|.
//
// Shapes: B batch, D data (= latent), H hidden, A kept coordinates of a coupling layer, C the
// coordinates it transforms (A + C = D), P parameters.
//
// Layers, written in the encoder direction x -> z (the direction the density needs):
//  * affine coupling (RealNVP, Dinh et al. 2017): coordinates j with j % 2 == parity are kept
//    (x_A), the others are transformed: z_C = x_C ⊙ exp(s) + t, [s_raw, t] = head(net(x_A)),
//    s = tanh(s_raw) (bounded scales keep training stable); log|det| = Σ_c s_c. Inverse in closed form.
//  * planar (Rezende & Mohamed 2015): z = x + û tanh(wᵀx + b), log|det| = log(1 + (1 − h²) wᵀû),
//    with û = u + (softplus(wᵀu) − 1 − wᵀu) w/‖w‖² so that wᵀû > −1 and the layer is invertible.
//    Its inverse solves the scalar monotone equation α + wᵀû tanh(α) = wᵀz + b (Newton, bracketed).
//
// Parameters (one flat buffer, names as a PyTorch module's state_dict):
//   coupling l: layers.{l}.net.{i}.weight/bias (hidden layer i), layers.{l}.head.weight (2C, H)/bias (2C)
//               (rows 0..C-1 give s_raw, rows C..2C-1 give t);
//   planar l:   layers.{l}.u (D), layers.{l}.w (D), layers.{l}.b (1).
#pragma once

#include <mutex>
#include <string>
#include <vector>

#include "elbokit/mlp.hpp"
#include "elbokit/train.hpp"

namespace elbokit {

struct FlowConfig {
  Index dim = 0;
  std::vector<std::string> layers;  // "coupling" or "planar", applied in this order from x to z
  std::vector<Index> hidden;        // coupling conditioner widths
  std::string activation = "relu";  // coupling conditioner activation
};

// Per-example terms of log p(x) (MATH.md §8): log_prob = prior + logdet.
struct FlowTerms {
  Vec<double> prior, logdet;  // (B): log N(f(x); 0, I) and Σ_l log|det ∂f_l/∂x_l|
};

template <class T>
class Flow {
 public:
  Flow(const FlowConfig& cfg, uint64_t seed);

  const FlowConfig& config() const { return cfg_; }
  const ParamLayout& layout() const { return layout_; }
  Index num_params() const { return layout_.total; }
  Index data_dim() const { return cfg_.dim; }
  T* param_data() { return params_.data(); }
  Vec<T>& params() { return params_; }

  // forward: z (B, D) = f(x), terms per example.
  void forward(CMatRef<T> x, Mat<T>& z, FlowTerms& terms);
  // inverse: x (B, D) = f⁻¹(z).
  Mat<T> inverse(CMatRef<T> z);
  // vjp: for J = Σ_b dz_b · z_b + dlogdet_b · logdet_b, accumulates ∂J/∂θ into grad (P) and writes
  // ∂J/∂x into dx (B, D) when dx is not null.
  void vjp(CMatRef<T> x, CMatRef<T> dz, const double* dlogdet, T* grad, T* dx);
  // objective_grad: J = mean_b log p(x_b); accumulates scale·∂J/∂θ into grad (P); returns J.
  double objective_grad(CMatRef<T> x, double scale, T* grad, FlowTerms* terms);

  // The training-loop interface (train.hpp): the loss is −mean log p(x); StepResult.elbo is
  // mean log p(x), reconstruction the mean log|det| and kl the mean −log p(f(x)).
  StepResult train_step(const T* x, Index B, const Shard& sh, const FitOptions& o, uint64_t step, double beta,
                        T* grad);
  EvalResult evaluate(const T* x, Index N, const Shard& sh, const FitOptions& o);
  std::vector<Index> active_units(const T*, Index) { return {}; }

 private:
  enum class Kind { Coupling, Planar };
  struct Layer {
    Kind kind;
    std::vector<Index> keep, change;  // coupling: kept (A) and transformed (C) coordinates
    Trunk net;
    Dense head;
    Index u = 0, w = 0, b = 0;        // planar: offsets of u (D), w (D), b (1)
  };
  struct LayerCache {
    TrunkCache<T> net;
    Mat<T> xa, o, s, dout, dh, dxa;   // coupling: (B, A), (B, 2C), (B, C), (B, 2C), (B, H), (B, A)
    Vec<T> uhat;                      // planar: (D)
    Vec<double> h, det;               // planar: tanh(wᵀx + b), 1 + (1 − h²) wᵀû (B)
  };
  void forward_raw(const T* x, Index B, FlowTerms& terms);  // fills acts_ and caches_
  void backward_raw(Index B, const T* dz, const double* dlogdet, T* grad, T* dx);
  Vec<T> planar_uhat(const Layer& L) const;
  const T* conditioner(const Layer& L, const T* xa, Index B, LayerCache& c) const;

  FlowConfig cfg_;
  ParamLayout layout_;
  std::vector<Layer> layers_;
  Vec<T> params_;                 // (P)
  std::vector<Mat<T>> acts_;      // acts_[l] (B, D): the input of layer l; acts_[L] = z
  std::vector<LayerCache> caches_;
  std::mutex mutex_;
};

extern template class Flow<float>;
extern template class Flow<double>;

}  // namespace elbokit
