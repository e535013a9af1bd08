// autoencoder.cpp: plain / denoising / contractive autoencoders, forward and hand-written backward
// (MATH.md §9). Shapes as in autoencoder.hpp.
#include "elbokit/autoencoder.hpp"

#include <algorithm>

namespace elbokit {

namespace {
// s'(a) and s''(a) of the code activation from its output y (sigmoid, tanh, identity).
template <class T>
inline void code_derivs(Activation act, T y, T& d1, T& d2) {
  switch (act) {
    case Activation::Sigmoid: d1 = y * (T(1) - y); d2 = d1 * (T(1) - T(2) * y); break;
    case Activation::Tanh: d1 = T(1) - y * y; d2 = T(-2) * y * d1; break;
    default: d1 = T(1); d2 = T(0);
  }
}
}  // namespace

template <class T>
Autoencoder<T>::Autoencoder(const AutoencoderConfig& cfg, uint64_t seed) : cfg_(cfg) {
  if (cfg.x_dim <= 0) fail("x_dim must be a positive integer, got " + std::to_string(cfg.x_dim));
  if (cfg.code_dim <= 0) fail("code_dim must be a positive integer, got " + std::to_string(cfg.code_dim));
  for (size_t i = 0; i < cfg.hidden.size(); ++i)
    if (cfg.hidden[i] <= 0)
      fail("hidden must hold positive layer widths, got " + std::to_string(cfg.hidden[i]) + " at position " +
           std::to_string(i));
  if (cfg.kind != "plain" && cfg.kind != "denoising" && cfg.kind != "contractive")
    fail("kind must be one of 'plain', 'denoising', 'contractive', got '" + cfg.kind + "'");
  denoising_ = cfg.kind == "denoising";
  contractive_ = cfg.kind == "contractive";
  if (denoising_ && !(cfg.noise_std > 0 && std::isfinite(cfg.noise_std)))
    fail("noise_std must be a positive finite number for kind 'denoising', got " + std::to_string(cfg.noise_std));
  if (contractive_ && !(cfg.contraction > 0 && std::isfinite(cfg.contraction)))
    fail("contraction must be a positive finite number for kind 'contractive', got " +
         std::to_string(cfg.contraction));
  const Activation act = activation_from_string(cfg.activation);
  code_act_ = activation_from_string(cfg.code_activation);
  if (contractive_) {
    if (!cfg.hidden.empty())
      fail("kind 'contractive' supports the one-layer encoder only: hidden must be (), got " +
           std::to_string(cfg.hidden.size()) + " hidden layers");
    if (code_act_ != Activation::Sigmoid && code_act_ != Activation::Tanh && code_act_ != Activation::Identity)
      fail("kind 'contractive' needs code_activation 'sigmoid', 'tanh' or 'identity', got '" + cfg.code_activation +
           "'");
  }
  enc_ = make_trunk(layout_, "encoder", cfg.x_dim, cfg.hidden, act);
  code_ = layout_.add_dense("encoder.code", enc_.out_dim(), cfg.code_dim);
  std::vector<Index> rev(cfg.hidden.rbegin(), cfg.hidden.rend());
  dec_ = make_trunk(layout_, "decoder", cfg.code_dim, rev, act);
  out_ = layout_.add_dense("decoder.out", dec_.out_dim(), cfg.x_dim);
  params_ = Vec<T>::Zero(layout_.total);
  constexpr uint64_t kInitStream = 0xAE;
  for (const Dense& d : enc_.layers) init_dense(params_.data(), d, seed, kInitStream);
  for (const Dense& d : dec_.layers) init_dense(params_.data(), d, seed, kInitStream);
  init_dense(params_.data(), code_, seed, kInitStream);
  init_dense(params_.data(), out_, seed, kInitStream);
}

// encode_raw: a (B, C) = code head(net_enc(x)), y = s(a).
template <class T>
void Autoencoder<T>::encode_raw(const T* x, Index B, Work& w) {
  const T* p = params_.data();
  const T* h = enc_.forward(p, x, B, w.enc);
  w.a.resize(B, cfg_.code_dim);
  w.y.resize(B, cfg_.code_dim);
  linear_forward(w.a.data(), h, p + code_.w, p + code_.b, B, code_.in, code_.out);
  activation_forward(w.y.data(), w.a.data(), B * cfg_.code_dim, code_act_);
}

// decode_raw: x̂ (B, D) = out(net_dec(y)) into w.out.
template <class T>
void Autoencoder<T>::decode_raw(const T* y, Index B, Work& w) {
  const T* p = params_.data();
  const T* hd = dec_.forward(p, y, B, w.dec);
  w.out.resize(B, cfg_.x_dim);
  linear_forward(w.out.data(), hd, p + out_.w, p + out_.b, B, out_.in, out_.out);
}

// encode, decode and evaluate run in chunks of kPipelineRows rows, each through the network on one
// thread with its own buffers (common.hpp: row-chunk pipelines): the saved activations take
// kPipelineRows rows per thread, not the whole input's. chunked: out (N, out_cols), whose rows
// [b0, b0 + bc) are run(in + b0·in_cols, bc, work), a matrix of the work buffers.
template <class T>
template <class Run>
Mat<T> Autoencoder<T>::chunked(const T* in, Index N, Index in_cols, Index out_cols, Run run) {
  Mat<T> out(N, out_cols);
  pool_.resize(size_t(max_threads()));
  for_row_chunks(N, kPipelineRows, [&](Index b0, Index bc, int slot) {
    out.middleRows(b0, bc) = run(in + b0 * in_cols, bc, pool_[size_t(slot)]);
  });
  return out;
}

template <class T>
Mat<T> Autoencoder<T>::encode(CMatRef<T> x) {
  check_cols("x", x.rows(), x.cols(), cfg_.x_dim);
  std::lock_guard<std::mutex> lock(mutex_);
  return chunked(x.data(), x.rows(), cfg_.x_dim, cfg_.code_dim, [this](const T* r, Index bc, Work& w) -> const Mat<T>& {
    encode_raw(r, bc, w);
    return w.y;
  });
}

template <class T>
Mat<T> Autoencoder<T>::decode(CMatRef<T> y) {
  check_cols("code", y.rows(), y.cols(), cfg_.code_dim);
  std::lock_guard<std::mutex> lock(mutex_);
  return chunked(y.data(), y.rows(), cfg_.code_dim, cfg_.x_dim, [this](const T* r, Index bc, Work& w) -> const Mat<T>& {
    decode_raw(r, bc, w);
    return w.out;
  });
}

// forward_terms: steps 1-2 of loss_grad for the rows xin (B, D) (x itself, or x + noise), whose
// clean targets are x: the code, the reconstruction in w.out, and the per-row terms.
template <class T>
void Autoencoder<T>::forward_terms(const T* x, const T* xin, Index B, Work& w, AELossTerms& t) {
  const Index C = cfg_.code_dim;
  encode_raw(xin, B, w);
  decode_raw(w.y.data(), B, w);
  // per-example squared error and contractive penalty Σ_i s'(a_i)² ‖W_i‖² (MATH.md §9)
  t.reconstruction = (CMatMap<T>(x, B, cfg_.x_dim) - w.out).rowwise().squaredNorm().template cast<double>();
  t.penalty.setZero(B);
  if (contractive_) {
    const T* p = params_.data();
    const Vec<double> wnorm2 = CMatMap<T>(p + code_.w, C, code_.in).template cast<double>().rowwise().squaredNorm();
    for (Index b = 0; b < B; ++b)
      for (Index i = 0; i < C; ++i) {
        T d1, d2;
        code_derivs(code_act_, w.y(b, i), d1, d2);
        t.penalty[b] += double(d1) * double(d1) * wnorm2[i];
      }
  }
}

template <class T>
double Autoencoder<T>::loss_grad(CMatRef<T> x, CMatRef<T> noise, double scale, T* grad, AELossTerms* terms) {
  check_cols("x", x.rows(), x.cols(), cfg_.x_dim);
  const Index B = x.rows(), D = cfg_.x_dim, C = cfg_.code_dim;
  const bool noisy = noise.size() > 0;
  if (noisy) check_shape("noise", noise.rows(), noise.cols(), B, D);
  std::lock_guard<std::mutex> lock(mutex_);
  Work& w = work_;
  const T* p = params_.data();
  // 1. corrupted input x̃ = x + noise (denoising), the code and the reconstruction
  const T* xin = x.data();
  if (noisy) {
    w.xt = x + noise;
    xin = w.xt.data();
  }
  // 2. the reconstruction and the per-example terms
  AELossTerms t;
  forward_terms(x.data(), xin, B, w, t);
  const T* hd = dec_.layers.empty() ? w.y.data() : w.dec.post.back().data();
  Vec<double> wnorm2;  // (C): ‖W_i‖²
  if (contractive_) wnorm2 = CMatMap<T>(p + code_.w, C, code_.in).template cast<double>().rowwise().squaredNorm();
  const double lam = contractive_ ? cfg_.contraction : 0.0;
  const double J = t.reconstruction.mean() + lam * t.penalty.mean();
  if (grad) {
    // 3. ∂J/∂x̂ = −2 (x − x̂)/B, then the decoder down to dy (B, C)
    w.dout = (w.out - x) * T(2.0 * scale / double(B));
    w.dy.setZero(B, C);
    if (dec_.layers.empty()) {
      linear_backward(w.dy.data(), grad + out_.w, grad + out_.b, w.dout.data(), hd, p + out_.w, B, out_.in, out_.out);
    } else {
      w.dhd.setZero(B, out_.in);
      linear_backward(w.dhd.data(), grad + out_.w, grad + out_.b, w.dout.data(), hd, p + out_.w, B, out_.in,
                      out_.out);
      dec_.backward(p, grad, w.y.data(), B, w.dec, w.dhd.data(), w.dy.data());
    }
    // 4. da = dy ⊙ s'(a) + c·2 s' s'' ‖W_i‖²; the penalty's direct term dW_i += c·2 (Σ_b s'_bi²) W_i
    const double c = lam * scale / double(B);
    w.da.resize(B, C);
    std::vector<double> sum_d1sq(size_t(C), 0.0);
    for (Index b = 0; b < B; ++b)
      for (Index i = 0; i < C; ++i) {
        T d1, d2;
        code_derivs(code_act_, w.y(b, i), d1, d2);
        T v = w.dy(b, i) * d1;
        if (contractive_) {
          v += T(c * 2.0 * double(d1) * double(d2) * wnorm2[i]);
          sum_d1sq[size_t(i)] += double(d1) * double(d1);
        }
        w.da(b, i) = v;
      }
    const T* h = enc_.layers.empty() ? xin : w.enc.post.back().data();
    if (enc_.layers.empty()) {
      linear_backward<T>(nullptr, grad + code_.w, grad + code_.b, w.da.data(), h, p + code_.w, B, code_.in, code_.out);
    } else {
      w.dh.setZero(B, code_.in);
      linear_backward(w.dh.data(), grad + code_.w, grad + code_.b, w.da.data(), h, p + code_.w, B, code_.in,
                      code_.out);
      enc_.backward<T>(p, grad, xin, B, w.enc, w.dh.data(), nullptr);
    }
    if (contractive_)
      for (Index i = 0; i < C; ++i)
        for (Index j = 0; j < code_.in; ++j)
          grad[code_.w + i * code_.in + j] += T(c * 2.0 * sum_d1sq[size_t(i)]) * p[code_.w + i * code_.in + j];
  }
  if (terms) *terms = std::move(t);
  return J;
}

template <class T>
StepResult Autoencoder<T>::train_step(const T* x, Index B, const Shard& sh, const FitOptions& o, uint64_t step,
                                      double, T* grad) {
  Mat<T> noise;  // (B, D): δ = s ε from (seed, kTrainNoise + step), at the rows' global indices (Shard)
  if (denoising_) {
    noise.resize(B, cfg_.x_dim);
    fill_normal(noise.data(), B * cfg_.x_dim, o.seed, streams::kTrainNoise + step, uint64_t(sh.offset * cfg_.x_dim));
    noise *= T(cfg_.noise_std);
  }
  AELossTerms t;
  const double J = loss_grad(CMatMap<T>(x, B, cfg_.x_dim), noise, sh.weight(B), grad, &t);
  StepResult r;
  r.loss = J;
  r.elbo = -J;
  r.reconstruction = t.reconstruction.mean();
  r.kl = (contractive_ ? cfg_.contraction : 0.0) * t.penalty.mean();
  return r;
}

template <class T>
EvalResult Autoencoder<T>::evaluate(const T* x, Index N, const Shard&, const FitOptions&) {
  std::lock_guard<std::mutex> lock(mutex_);
  AELossTerms t;
  t.reconstruction.resize(N);
  t.penalty.resize(N);
  pool_.resize(size_t(max_threads()));
  for_row_chunks(N, kPipelineRows, [&](Index b0, Index bc, int slot) {
    AELossTerms tc;
    const T* xc = x + b0 * cfg_.x_dim;
    forward_terms(xc, xc, bc, pool_[size_t(slot)], tc);
    t.reconstruction.segment(b0, bc) = tc.reconstruction;
    t.penalty.segment(b0, bc) = tc.penalty;
  });
  const double lam = contractive_ ? cfg_.contraction : 0.0;
  EvalResult r;
  r.reconstruction = t.reconstruction.mean();
  r.kl = lam * t.penalty.mean();
  r.elbo = -(r.reconstruction + r.kl);
  return r;
}

template <class T>
std::vector<Index> Autoencoder<T>::active_units(const T* x, Index N) {
  const Mat<double> m = encode(CMatMap<T>(x, N, cfg_.x_dim)).template cast<double>();
  const Eigen::RowVectorXd mean = m.colwise().mean();
  const Eigen::RowVectorXd var = (m.rowwise() - mean).array().square().colwise().mean();
  Index active = 0;
  for (Index j = 0; j < var.size(); ++j) active += var[j] > 0.01;
  return {active};
}

template class Autoencoder<float>;
template class Autoencoder<double>;

}  // namespace elbokit
