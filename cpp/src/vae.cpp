// vae.cpp: the VAE's forward pass, its hand-written backward and its importance-weighted bound.
// Shapes as in vae.hpp: B batch, D data, Z latent, H hidden, S samples, K importance samples.
#include "elbokit/vae.hpp"

#include <algorithm>
#include <limits>

namespace elbokit {

template <class T>
VAE<T>::VAE(const VAEConfig& cfg, uint64_t seed) : cfg_(cfg) {
  if (cfg.x_dim <= 0) fail("x_dim must be a positive integer, got " + std::to_string(cfg.x_dim));
  if (cfg.z_dim <= 0) fail("z_dim must be a positive integer, got " + std::to_string(cfg.z_dim));
  check_net_spec(cfg.encoder);
  check_net_spec(cfg.decoder);
  if (cfg.likelihood == "bernoulli")
    lik_ = Likelihood::Bernoulli;
  else if (cfg.likelihood == "gaussian")
    lik_ = Likelihood::Gaussian;
  else
    fail("likelihood must be one of 'bernoulli', 'gaussian', got '" + cfg.likelihood + "'");
  if (lik_ == Likelihood::Gaussian && !cfg.learned_var && !(cfg.fixed_var > 0 && std::isfinite(cfg.fixed_var)))
    fail("decoder_var must be 'learned' or a positive finite variance, got " + std::to_string(cfg.fixed_var));

  enc_ = make_net<T>(layout_, "encoder", cfg.encoder, cfg.x_dim, 0, 0);
  mu_ = layout_.add_dense("encoder.mu", enc_->out_dim(), cfg.z_dim);
  lv_ = layout_.add_dense("encoder.logvar", enc_->out_dim(), cfg.z_dim);
  dec_ = make_net<T>(layout_, "decoder", cfg.decoder, cfg.z_dim, 0, cfg.x_dim);
  if (lik_ == Likelihood::Gaussian && cfg.learned_var) dec_lv_ = layout_.add("decoder.logvar", {cfg.x_dim});

  params_ = Vec<T>::Zero(layout_.total);
  enc_->init(params_.data(), seed);
  dec_->init(params_.data(), seed);
  init_dense(params_.data(), mu_, seed);
  init_dense(params_.data(), lv_, seed);
  // decoder.logvar starts at 0 (unit variance), as a zero-initialized nn.Parameter.
}

template <class T>
Vec<T> VAE<T>::clamped_logvar() const {
  return clamped_decoder_logvar(dec_lv_ >= 0 ? params_.data() + dec_lv_ : nullptr, cfg_.fixed_var, cfg_.x_dim);
}

template <class T>
Vec<T> VAE<T>::decoder_logvar() const {
  if (lik_ != Likelihood::Gaussian) fail("decoder_logvar: the likelihood is 'bernoulli', which has no variance");
  return clamped_logvar();
}

// encode_raw: h = encoder(x) (B, H); mu, lv (B, Z) = linear heads(h).
template <class T>
void VAE<T>::encode_raw(const T* x, Index B, Work& w) {
  const T* p = params_.data();
  w.h = enc_->forward(p, x, nullptr, B, w.enc);
  w.mu.resize(B, cfg_.z_dim);
  w.lv.resize(B, cfg_.z_dim);
  linear_forward(w.mu.data(), w.h, p + mu_.w, p + mu_.b, B, mu_.in, mu_.out);
  linear_forward(w.lv.data(), w.h, p + lv_.w, p + lv_.b, B, lv_.in, lv_.out);
}

template <class T>
void VAE<T>::encode(CMatRef<T> x, Mat<T>& mu, Mat<T>& logvar) {
  check_cols("x", x.rows(), x.cols(), cfg_.x_dim);
  std::lock_guard<std::mutex> lock(mutex_);
  const Index N = x.rows(), Z = cfg_.z_dim, D = cfg_.x_dim;
  mu.resize(N, Z);
  logvar.resize(N, Z);
  // Chunks of kPipelineRows rows, each through the encoder on one thread (common.hpp: row-chunk
  // pipelines): the activations held are one chunk's per thread, not all N rows' (a conv encoder
  // holds 75 KB per row).
  pool_.resize(size_t(max_threads()));
  for_row_chunks(N, kPipelineRows, [&](Index b0, Index bc, int slot) {
    Work& w = pool_[size_t(slot)].w;
    encode_raw(x.data() + b0 * D, bc, w);
    mu.middleRows(b0, bc) = w.mu;
    logvar.middleRows(b0, bc) = w.lv;
  });
}

// encoder_backward_raw: given dmu, dlv (B, Z) = ∂J/∂(mu, logvar) and the activations of the last
// encode_raw(x), accumulates ∂J/∂φ of both heads and the encoder trunk into grad (P).
template <class T>
void VAE<T>::encoder_backward_raw(const T* x, Index B, const T* dmu, const T* dlv, Work& w, T* grad) {
  const T* p = params_.data();
  if (w.h == x) {  // no encoder layers: the heads read x, whose gradient is not needed
    linear_backward<T>(nullptr, grad + mu_.w, grad + mu_.b, dmu, x, p + mu_.w, B, mu_.in, mu_.out);
    linear_backward<T>(nullptr, grad + lv_.w, grad + lv_.b, dlv, x, p + lv_.w, B, lv_.in, lv_.out);
    return;
  }
  w.dh.setZero(B, mu_.in);
  linear_backward(w.dh.data(), grad + mu_.w, grad + mu_.b, dmu, w.h, p + mu_.w, B, mu_.in, mu_.out);
  linear_backward(w.dh.data(), grad + lv_.w, grad + lv_.b, dlv, w.h, p + lv_.w, B, lv_.in, lv_.out);
  enc_->backward(p, grad, x, nullptr, B, w.enc, w.dh.data(), nullptr);
}

// encoder_backward: the vector-Jacobian product of the encoder at x (used by the score-function
// estimator, MATH.md §2, which needs ∇_φ log q(z|x) = backward of (∂ log q/∂mu, ∂ log q/∂logvar)).
template <class T>
void VAE<T>::encoder_backward(CMatRef<T> x, CMatRef<T> dmu, CMatRef<T> dlogvar, T* grad) {
  check_cols("x", x.rows(), x.cols(), cfg_.x_dim);
  check_shape("dmu", dmu.rows(), dmu.cols(), x.rows(), cfg_.z_dim);
  check_shape("dlogvar", dlogvar.rows(), dlogvar.cols(), x.rows(), cfg_.z_dim);
  std::lock_guard<std::mutex> lock(mutex_);
  encode_raw(x.data(), x.rows(), work_);
  encoder_backward_raw(x.data(), x.rows(), dmu.data(), dlogvar.data(), work_, grad);
}

template <class T>
Mat<T> VAE<T>::decode(CMatRef<T> z, bool mean) {
  check_cols("z", z.rows(), z.cols(), cfg_.z_dim);
  std::lock_guard<std::mutex> lock(mutex_);
  const Index B = z.rows(), Z = cfg_.z_dim, D = cfg_.x_dim;
  Mat<T> out(B, D);
  pool_.resize(size_t(max_threads()));
  for_row_chunks(B, kPipelineRows, [&](Index b0, Index bc, int slot) {  // as encode
    const T* y = dec_->forward(params_.data(), z.data() + b0 * Z, nullptr, bc, pool_[size_t(slot)].w.dec);
    out.middleRows(b0, bc) = CMatMap<T>(y, bc, D);
  });
  if (mean && lik_ == Likelihood::Bernoulli) out = out.unaryExpr([](T a) { return sigmoid(a); });
  return out;
}

// forward: the ELBO's terms for x (B, D) and eps (S·B, Z) (MATH.md §2). Leaves in w:
//   mu, lv, sigma (B, Z); z (S·B, Z); the decoder's activations; out (S·B, D); logp (S·B); and,
//   when for_grad, sig (S·B, D) = sigmoid(out) for the Bernoulli backward.
template <class T>
void VAE<T>::forward(const T* x, Index B, const T* eps, Index S, KLMode kl, Work& w, ElboTerms& t, bool for_grad) {
  const Index Z = cfg_.z_dim, D = cfg_.x_dim, R = S * B;
  // 1. encoder q(z|x) = N(mu, diag exp(lv))
  encode_raw(x, B, w);
  // 2. reparameterization z = mu + sigma ⊙ eps
  w.sigma.resize(B, Z);
  w.z.resize(R, Z);
  reparam_forward(w.z.data(), w.sigma.data(), w.mu.data(), w.lv.data(), eps, S, B, Z);
  // 3. decoder p(x|z): logits or means (S·B, D)
  w.out = dec_->forward(params_.data(), w.z.data(), nullptr, R, w.dec);
  // 4. reconstruction term log p(x|z), one per (sample, example), averaged over samples
  w.logp.resize(R);
  if (lik_ == Likelihood::Bernoulli) {
    if (for_grad) w.sig.resize(R, D);
    bernoulli_logpdf_forward(w.logp.data(), x, w.out, R, B, D, for_grad ? w.sig.data() : nullptr);
  } else {
    const Vec<T> lvx = clamped_logvar();
    gaussian_logpdf_forward(w.logp.data(), x, w.out, lvx.data(), R, B, D);
  }
  t.reconstruction.setZero(B);
  for (Index s = 0; s < S; ++s)
    for (Index b = 0; b < B; ++b) t.reconstruction[b] += w.logp[s * B + b];
  t.reconstruction /= double(S);
  // 5. prior-matching term KL(q(z|x) ‖ N(0, I)) per dimension: analytic or Monte Carlo
  t.kl_per_dim.resize(B, Z);
  if (kl == KLMode::Analytic)
    kl_std_normal_forward(t.kl_per_dim.data(), w.mu.data(), w.lv.data(), B, Z);
  else
    kl_mc_forward(t.kl_per_dim.data(), w.z.data(), w.lv.data(), eps, S, B, Z);
  t.kl = t.kl_per_dim.rowwise().sum();
}

template <class T>
ElboTerms VAE<T>::elbo(CMatRef<T> x, CMatRef<T> eps, Index S, KLMode kl) {
  check_cols("x", x.rows(), x.cols(), cfg_.x_dim);
  if (S <= 0) fail("n_samples must be a positive integer, got " + std::to_string(S));
  const Index N = x.rows(), Z = cfg_.z_dim;
  check_shape("eps", eps.rows(), eps.cols(), S * N, Z);
  std::lock_guard<std::mutex> lock(mutex_);
  ElboTerms out;
  out.reconstruction.resize(N);
  out.kl.resize(N);
  out.kl_per_dim.resize(N, Z);
  // Chunks of about kPipelineRows decoder rows (S·bc), each through the whole network on one
  // thread (common.hpp: row-chunk pipelines).
  pool_.resize(size_t(max_threads()));
  const Index chunk = std::max<Index>(1, kPipelineRows / S);
  for_row_chunks(N, chunk, [&](Index b0, Index bc, int slot) {
    Scratch& sc = pool_[size_t(slot)];
    const T* e = eps.data() + b0 * Z;  // one sample: the chunk's rows of eps are contiguous
    if (S > 1) {
      sc.eps.resize(S * bc, Z);
      for (Index s = 0; s < S; ++s) sc.eps.middleRows(s * bc, bc) = eps.middleRows(s * N + b0, bc);
      e = sc.eps.data();
    }
    ElboTerms t;
    forward(x.data() + b0 * cfg_.x_dim, bc, e, S, kl, sc.w, t, false);
    out.reconstruction.segment(b0, bc) = t.reconstruction;
    out.kl.segment(b0, bc) = t.kl;
    out.kl_per_dim.middleRows(b0, bc) = t.kl_per_dim;
  });
  return out;
}

// The rows' share of the backward (steps 1-4 of objective_grad) for x (B, D), eps (S·B, Z) and the
// activations of forward(x, ...) in w: accumulates into grad (P) with the reconstruction weight
// c_rec per row and the KL coefficients coef (Z), both those of the whole minibatch.
template <class T>
void VAE<T>::backward_rows(const T* x, Index B, const T* eps, Index S, KLMode kl, const double* coef, double c_rec,
                           Work& w, T* grad) {
  const Index Z = cfg_.z_dim, D = cfg_.x_dim, R = S * B;
  const T* p = params_.data();
  // 1. reconstruction: ∂J/∂logp[r] = c_rec for every row
  w.dout.resize(R, D);
  if (lik_ == Likelihood::Bernoulli) {
    bernoulli_logpdf_backward(w.dout.data(), c_rec, x, w.sig.data(), R, B, D);
  } else {
    const Vec<T> lvx = clamped_logvar();
    T* dlvx = nullptr;
    Vec<T> dlv_raw;
    if (dec_lv_ >= 0) {
      dlv_raw = Vec<T>::Zero(D);
      dlvx = dlv_raw.data();
    }
    gaussian_logpdf_backward(w.dout.data(), dlvx, c_rec, x, w.out, lvx.data(), R, B, D);
    if (dlvx)  // the clamp passes the gradient only inside [min, max]
      for (Index j = 0; j < D; ++j) {
        const double raw = double(p[dec_lv_ + j]);
        if (raw >= kDecoderLogvarMin && raw <= kDecoderLogvarMax) grad[dec_lv_ + j] += dlv_raw[j];
      }
  }
  // 2. decoder, down to dz (S·B, Z)
  w.dz.setZero(R, Z);
  dec_->backward(p, grad, w.z.data(), nullptr, R, w.dec, w.dout.data(), w.dz.data());
  // 3. through the sample to (mu, lv) (B, Z), then the KL term's own gradient
  w.dmu.setZero(B, Z);
  w.dlv.setZero(B, Z);
  reparam_backward(w.dmu.data(), w.dlv.data(), w.dz.data(), eps, w.sigma.data(), S, B, Z);
  if (kl == KLMode::Analytic)
    kl_std_normal_backward(w.dmu.data(), w.dlv.data(), coef, w.mu.data(), w.lv.data(), B, Z);
  else
    kl_mc_backward(w.dmu.data(), w.dlv.data(), coef, w.z.data(), eps, w.sigma.data(), S, B, Z);
  // 4. encoder: both heads, then the trunk (no gradient with respect to x)
  encoder_backward_raw(x, B, w.dmu.data(), w.dlv.data(), w, grad);
}

template <class T>
double VAE<T>::objective_grad(CMatRef<T> x, CMatRef<T> eps, Index S, KLMode kl, double beta, double free_bits,
                              double scale, T* grad, ElboTerms* terms) {
  check_cols("x", x.rows(), x.cols(), cfg_.x_dim);
  if (S <= 0) fail("n_samples must be a positive integer, got " + std::to_string(S));
  const Index B = x.rows(), Z = cfg_.z_dim, D = cfg_.x_dim, R = S * B;
  check_shape("eps", eps.rows(), eps.cols(), R, Z);
  std::lock_guard<std::mutex> lock(mutex_);
  const Index P = layout_.total;
  // A small step runs as two halves of rows, one per thread (common.hpp: RowHalves).
  const RowHalves hv(B, R, P, enc_->split_rows() || dec_->split_rows());
  const int halves = hv.count;
  const Index* lo = hv.lo;
  Mat<T> eps_h[2];  // S > 1: the half's rows of eps, (S·n_h, Z), row s·n_h + b
  const T* e_h[2] = {eps.data(), eps.data()};
  for (int h = 0; h < halves; ++h) {
    const Index n = hv.size(h);
    if (S == 1) {
      e_h[h] = eps.data() + lo[h] * Z;
    } else if (halves == 2) {
      eps_h[h].resize(S * n, Z);
      for (Index s = 0; s < S; ++s) eps_h[h].middleRows(s * n, n) = eps.middleRows(s * B + lo[h], n);
      e_h[h] = eps_h[h].data();
    }
  }
  Work* w_h[2] = {&work_, &work2_};
  ElboTerms t, t_h[2];
  if (halves == 1) {
    forward(x.data(), B, eps.data(), S, kl, work_, t, true);
  } else {
    RowHalves::run([&](int h) { forward(x.data() + lo[h] * D, hv.size(h), e_h[h], S, kl, *w_h[h], t_h[h], true); });
    t.reconstruction.resize(B);
    t.kl.resize(B);
    t.kl_per_dim.resize(B, Z);
    for (int h = 0; h < 2; ++h) {
      const Index n = hv.size(h);
      t.reconstruction.segment(lo[h], n) = t_h[h].reconstruction;
      t.kl.segment(lo[h], n) = t_h[h].kl;
      t.kl_per_dim.middleRows(lo[h], n) = t_h[h].kl_per_dim;
    }
  }

  // The objective and the coefficient of each dimension's KL (vae.hpp: kl_objective).
  const Vec<double> kbar = t.kl_per_dim.colwise().mean().transpose();  // (Z)
  std::vector<double> coef;
  const double J = kl_objective(t.reconstruction.mean(), kbar, beta, free_bits, scale, B, coef);
  const double c_rec = scale / double(R);  // ∂J/∂logp[r] = 1/(S·B) for every row
  if (halves == 1) {
    backward_rows(x.data(), B, eps.data(), S, kl, coef.data(), c_rec, work_, grad);
  } else {
    RowHalves::run([&](int h) {
      grad_h_[h].setZero(P);
      backward_rows(x.data() + lo[h] * D, hv.size(h), e_h[h], S, kl, coef.data(), c_rec, *w_h[h], grad_h_[h].data());
    });
    RowHalves::add(grad, grad_h_[0].data(), grad_h_[1].data(), P);
  }
  if (terms) *terms = std::move(t);
  return J;
}

template <class T>
Vec<double> VAE<T>::log_likelihood(CMatRef<T> x, Index K, uint64_t seed, Index row0) {
  check_cols("x", x.rows(), x.cols(), cfg_.x_dim);
  if (K <= 0) fail("k must be a positive integer, got " + std::to_string(K));
  std::lock_guard<std::mutex> lock(mutex_);
  const Index N = x.rows(), Z = cfg_.z_dim, D = cfg_.x_dim;
  const T* p = params_.data();
  // A task takes Bc examples and all their K samples, on one thread (common.hpp: row-chunk
  // pipelines), decoding them kc samples at a time: about kPipelineRows decoder rows per pass.
  const Index Bc = std::max<Index>(1, std::min(N, kPipelineRows / K));
  const Index Kc = ceil_div(K, ceil_div(K, std::max<Index>(1, kPipelineRows / Bc)));
  const Vec<T> lvx = lik_ == Likelihood::Gaussian ? clamped_logvar() : Vec<T>();
  Vec<double> out(N);
  pool_.resize(size_t(max_threads()));
  for_row_chunks(N, Bc, [&](Index b0, Index bc, int slot) {
    Scratch& sc = pool_[size_t(slot)];
    Work& w = sc.w;
    encode_raw(x.data() + b0 * D, bc, w);
    sc.mu = w.mu;
    sc.lv = w.lv;
    sc.sigma = (sc.lv.array() * T(0.5)).exp().matrix();
    sc.logw.resize(bc, K);
    for (Index k0 = 0; k0 < K; k0 += Kc) {
      const Index kc = std::min(Kc, K - k0), R = kc * bc;
      // Rows r = kk·bc + bb hold sample k0 + kk of example b0 + bb.
      sc.eps.resize(R, Z);
      sc.z.resize(R, Z);
      for (Index r = 0; r < R; ++r) {
        const Index kk = r / bc, bb = r % bc;
        const uint64_t first = (uint64_t(row0 + b0 + bb) * uint64_t(K) + uint64_t(k0 + kk)) * uint64_t(Z);
        fill_normal_serial(sc.eps.row(r).data(), Z, seed, streams::kLogLikelihood, first);
        sc.z.row(r) = sc.mu.row(bb) + sc.sigma.row(bb).cwiseProduct(sc.eps.row(r));
      }
      const T* dec_out = dec_->forward(p, sc.z.data(), nullptr, R, w.dec);  // (R, D)
      sc.logp.resize(R);
      if (lik_ == Likelihood::Bernoulli)
        bernoulli_logpdf_forward(sc.logp.data(), x.data() + b0 * D, dec_out, R, bc, D);
      else
        gaussian_logpdf_forward(sc.logp.data(), x.data() + b0 * D, dec_out, lvx.data(), R, bc, D);
      // log w = log p(x|z) + log p(z) − log q(z|x) = log p(x|z) + ½ Σ_j (lv + ε² − z²)
      for (Index r = 0; r < R; ++r) {
        const Index kk = r / bc, bb = r % bc;
        double a = 0;
        for (Index j = 0; j < Z; ++j) {
          const double zz = double(sc.z(r, j)), e = double(sc.eps(r, j));
          a += 0.5 * (double(sc.lv(bb, j)) + e * e - zz * zz);
        }
        sc.logw(bb, k0 + kk) = sc.logp[r] + a;
      }
    }
    for (Index bb = 0; bb < bc; ++bb) out[b0 + bb] = log_mean_exp(sc.logw.row(bb).data(), K);  // L_K (MATH.md §3)
  });
  return out;
}

template <class T>
StepResult VAE<T>::train_step(const T* x, Index B, const Shard& sh, const FitOptions& o, uint64_t step, double beta,
                              T* grad) {
  const Index S = o.n_samples, Z = cfg_.z_dim;
  Mat<T> eps(S * B, Z);  // noise of this step: (seed, kTrainNoise + step), layout (S, B_global, Z), our rows
  fill_normal_rows(eps.data(), S, B, Z, sh.offset, sh.global(B), o.seed, streams::kTrainNoise + step);
  ElboTerms t;
  const double J = objective_grad(CMatMap<T>(x, B, cfg_.x_dim), eps, S, kl_from_string(o.kl), beta, o.free_bits,
                                  -sh.weight(B), grad, &t);
  StepResult r;
  r.loss = -J;
  r.reconstruction = t.reconstruction.mean();
  r.kl = t.kl.mean();
  r.elbo = r.reconstruction - r.kl;
  const Vec<double> kbar = t.kl_per_dim.colwise().mean().transpose();
  r.kl_terms.assign(kbar.data(), kbar.data() + Z);
  return r;
}

template <class T>
EvalResult VAE<T>::evaluate(const T* x, Index N, const Shard& sh, const FitOptions& o) {
  const Index S = o.n_samples, Z = cfg_.z_dim;
  Mat<T> eps(S * N, Z);  // (seed, kValidation), layout (S, N_all, Z), our rows
  fill_normal_rows(eps.data(), S, N, Z, sh.offset, sh.global(N), o.seed, streams::kValidation);
  const ElboTerms t = elbo(CMatMap<T>(x, N, cfg_.x_dim), eps, S, kl_from_string(o.kl));
  EvalResult r;
  r.reconstruction = t.reconstruction.mean();
  r.kl = t.kl.mean();
  r.elbo = r.reconstruction - r.kl;
  return r;
}

// Active units (MATH.md §2): latent dimensions whose encoder mean varies over x with variance > 0.01.
template <class T>
std::vector<Index> VAE<T>::active_units(const T* x, Index N) {
  Mat<T> mu, lv;
  encode(CMatMap<T>(x, N, cfg_.x_dim), mu, lv);
  const Mat<double> m = mu.template cast<double>();
  const Eigen::RowVectorXd mean = m.colwise().mean();
  const Eigen::RowVectorXd var = (m.rowwise() - mean).array().square().colwise().mean();
  Index active = 0;
  for (Index j = 0; j < var.size(); ++j) active += var[j] > 0.01;
  return {active};
}

template class VAE<float>;
template class VAE<double>;

}  // namespace elbokit
