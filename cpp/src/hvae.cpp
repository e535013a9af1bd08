// hvae.cpp: the hierarchical VAE's forward pass, its hand-written backward pass and its
// importance-weighted bound (MATH.md §3, §6). Shapes and names as in hvae.hpp: B batch, D data,
// Z level width, H hidden, S samples, R = S·B rows (r = s·B + b), K importance samples, L levels.
#include "elbokit/hvae.hpp"

#include <algorithm>
#include <limits>

namespace elbokit {

template <class T>
HVAE<T>::HVAE(const HVAEConfig& cfg, uint64_t seed) : cfg_(cfg) {
  if (cfg.x_dim <= 0) fail("x_dim must be a positive integer, got " + std::to_string(cfg.x_dim));
  if (cfg.z_dims.empty()) fail("z_dims must hold at least one latent width, got an empty list");
  for (size_t l = 0; l < cfg.z_dims.size(); ++l)
    if (cfg.z_dims[l] <= 0)
      fail("z_dims must hold positive latent widths, got " + std::to_string(cfg.z_dims[l]) + " at position " +
           std::to_string(l));
  check_net_spec(cfg.encoder);
  check_net_spec(cfg.decoder);
  check_net_spec(cfg.encoder_at(0));
  check_net_spec(cfg.decoder_at(0));
  structure_ = structure_from_string(cfg.structure);
  if (cfg.likelihood == "bernoulli")
    lik_ = Likelihood::Bernoulli;
  else if (cfg.likelihood == "gaussian")
    lik_ = Likelihood::Gaussian;
  else
    fail("likelihood must be one of 'bernoulli', 'gaussian', got '" + cfg.likelihood + "'");
  if (lik_ == Likelihood::Gaussian && !cfg.learned_var && !(cfg.fixed_var > 0 && std::isfinite(cfg.fixed_var)))
    fail("decoder_var must be 'learned' or a positive finite variance, got " + std::to_string(cfg.fixed_var));
  L_ = Index(cfg.z_dims.size());
  zoff_.assign(size_t(L_ + 1), 0);
  for (Index l = 0; l < L_; ++l) zoff_[size_t(l + 1)] = zoff_[size_t(l)] + cfg.z_dims[size_t(l)];
  ztot_ = zoff_.back();
  // With one level the names are the VAE's (no level index).
  auto name = [&](const char* net, Index l) { return L_ == 1 ? std::string(net) : std::string(net) + "." + std::to_string(l); };

  // 1. encoder.l: markov q(z_{l+1}|z_l) on z_l (z_0 = x); topdown: bottom-up block l on d_l (d_0 = x)
  Index in = cfg.x_dim;
  for (Index l = 0; l < L_; ++l) {
    enc_.push_back(make_gaussian_net<T>(layout_, name("encoder", l), cfg.encoder_at(l), in, cfg.z_dims[size_t(l)]));
    in = structure_ == Structure::Markov ? cfg.z_dims[size_t(l)] : enc_.back().body->out_dim();
  }
  // 2. decoder.0: p(x|z_1), its output layer decoder.0.out
  dec_ = make_net<T>(layout_, name("decoder", 0), cfg.decoder_at(0), cfg.z_dims[0], 0, cfg.x_dim);
  if (lik_ == Likelihood::Gaussian && cfg.learned_var) dec_lv_ = layout_.add(name("decoder", 0) + ".logvar", {cfg.x_dim});
  // 3. decoder.l, l ≥ 1: p(z_l|z_{l+1}) (1-based), i.e. level l's z to level l−1's prior (0-based)
  prior_.resize(size_t(L_));
  for (Index l = 1; l < L_; ++l)
    prior_[size_t(l)] = make_gaussian_net<T>(layout_, name("decoder", l), cfg.decoder, cfg.z_dims[size_t(l)],
                                             cfg.z_dims[size_t(l - 1)]);

  // torch.nn.Linear's default initialization, keyed by offset (with L = 1: the VAE's weights).
  params_ = Vec<T>::Zero(layout_.total);
  for (const GaussianNet<T>& n : enc_) n.init(params_.data(), seed);
  for (Index l = 1; l < L_; ++l) prior_[size_t(l)].init(params_.data(), seed);
  dec_->init(params_.data(), seed);
}

template <class T>
Vec<T> HVAE<T>::clamped_logvar() const {
  return clamped_decoder_logvar(dec_lv_ >= 0 ? params_.data() + dec_lv_ : nullptr, cfg_.fixed_var, cfg_.x_dim);
}

template <class T>
Vec<T> HVAE<T>::decoder_logvar() const {
  if (lik_ != Likelihood::Gaussian) fail("decoder_logvar: the likelihood is 'bernoulli', which has no variance");
  return clamped_logvar();
}

// forward: for x (B, D) and eps (S·B·Σ Z_l), leaves in w: every level's q Gaussian (mu, lv, sigma),
// sample z (R, Z), prior Gaussian (pm, plv) and per-row term krow; p(x|z_1)'s output (R, D) and
// log-density logp (R).
template <class T>
void HVAE<T>::forward(const T* x, Index B, const T* eps, Index S, KLMode kl, Work& w, bool posterior_only) {
  const Index R = S * B, D = cfg_.x_dim;
  const T* p = params_.data();
  w.lv.resize(size_t(L_));
  auto sample = [&](Level& v, Index l) {  // z = μ + σ ⊙ ε (MATH.md §2)
    const Index Z = cfg_.z_dims[size_t(l)];
    v.sigma.resize(v.qrows, Z);
    v.z.resize(R, Z);
    reparam_forward(v.z.data(), v.sigma.data(), v.mu.data(), v.lv.data(), level_eps(eps, R, l), R / v.qrows, v.qrows, Z);
  };
  auto prior = [&](Index l) {  // p(z_l|z_{l+1}) (MATH.md §6), level l < L−1, on the R samples of level l+1
    Level& v = w.lv[size_t(l)];
    const Index Z = cfg_.z_dims[size_t(l)];
    v.pm.resize(R, Z);
    v.plv.resize(R, Z);
    prior_[size_t(l + 1)].forward(p, w.lv[size_t(l + 1)].z.data(), R, v.dec, v.pm.data(), v.plv.data());
  };
  // 1. the approximate posterior, one ancestral sample of the chain per draw
  if (structure_ == Structure::Markov) {
    // q(z_1|x) Π q(z_l|z_{l−1}): bottom to top
    for (Index l = 0; l < L_; ++l) {
      Level& v = w.lv[size_t(l)];
      v.qrows = q_shared(l) ? B : R;
      v.in = l == 0 ? x : w.lv[size_t(l - 1)].z.data();
      v.mu.resize(v.qrows, cfg_.z_dims[size_t(l)]);
      v.lv.resize(v.qrows, cfg_.z_dims[size_t(l)]);
      enc_[size_t(l)].forward(p, v.in, v.qrows, v.enc, v.mu.data(), v.lv.data());
      sample(v, l);
    }
    if (posterior_only) return;
    for (Index l = 0; l + 1 < L_; ++l) prior(l);
  } else {
    // 1a. bottom-up: d_{l+1} = trunk_l(d_l), Gaussian N(mud, e^{lvd}) (B, Z) from d_{l+1}
    const T* d = x;
    for (Index l = 0; l < L_; ++l) {
      Level& v = w.lv[size_t(l)];
      v.in = d;
      v.mud.resize(B, cfg_.z_dims[size_t(l)]);
      v.lvd.resize(B, cfg_.z_dims[size_t(l)]);
      d = enc_[size_t(l)].forward(p, v.in, B, v.enc, v.mud.data(), v.lvd.data());
    }
    // 1b. top-down: q(z_L|x) = the top bottom-up Gaussian; below it the precision-weighted
    // combination of the bottom-up Gaussian with the prior p(z_l|z_{l+1}) at the sampled z_{l+1}
    for (Index l = L_ - 1; l >= 0; --l) {
      Level& v = w.lv[size_t(l)];
      if (l == L_ - 1) {
        v.qrows = B;
        v.mu = v.mud;
        v.lv = v.lvd;
      } else {
        v.qrows = R;
        prior(l);
        v.mu.resize(R, cfg_.z_dims[size_t(l)]);
        v.lv.resize(R, cfg_.z_dims[size_t(l)]);
        gaussian_precision_product_forward(v.mu.data(), v.lv.data(), v.mud.data(), v.lvd.data(), v.pm.data(),
                                           v.plv.data(), R, B, cfg_.z_dims[size_t(l)]);
      }
      sample(v, l);
    }
    if (posterior_only) return;
  }
  // 2. reconstruction term log p(x|z_1) per row
  w.out = dec_->forward(p, w.lv[0].z.data(), nullptr, R, w.dec0);
  w.logp.resize(R);
  if (lik_ == Likelihood::Bernoulli) {
    w.sig.resize(R, D);
    bernoulli_logpdf_forward(w.logp.data(), x, w.out, R, B, D, w.sig.data());
  } else {
    const Vec<T> lvx = clamped_logvar();
    gaussian_logpdf_forward(w.logp.data(), x, w.out, lvx.data(), R, B, D);
  }
  // 3. each level's term (hvae.hpp): analytic KLs or log q − log p at the samples
  Vec<double> lp;
  Mat<double> kd;
  for (Index l = 0; l < L_; ++l) {
    Level& v = w.lv[size_t(l)];
    const Index Z = cfg_.z_dims[size_t(l)];
    const bool top = l == L_ - 1;
    if (kl == KLMode::Analytic && top) {  // KL(q(z_L|·) ‖ N(0, I)) (MATH.md §1)
      kd.resize(v.qrows, Z);
      kl_std_normal_forward(kd.data(), v.mu.data(), v.lv.data(), v.qrows, Z);
      v.krow = kd.rowwise().sum();
    } else if (kl == KLMode::Analytic && structure_ == Structure::TopDown) {  // KL(q ‖ p(z_l|z_{l+1})) (§6)
      kd.resize(R, Z);
      kl_gaussian_forward(kd.data(), v.mu.data(), v.lv.data(), v.pm.data(), v.plv.data(), R * Z);
      v.krow = kd.rowwise().sum();
    } else {  // log q(z_l|·) − log p(z_l|·) at the sample (MATH.md §6: consistency / prior matching)
      v.krow.resize(R);
      lp.resize(R);
      gaussian_logpdf_at_sample_forward(v.krow.data(), v.lv.data(), level_eps(eps, R, l), R, v.qrows, Z);
      gaussian_logpdf_diag_forward(lp.data(), v.z.data(), top ? nullptr : v.pm.data(), top ? nullptr : v.plv.data(), R,
                                   R, Z);
      v.krow -= lp;
    }
  }
}

template <class T>
void HVAE<T>::collect(Index B, Index S, const Work& w, HElboTerms& t) const {
  t.reconstruction.setZero(B);
  for (Index s = 0; s < S; ++s)
    for (Index b = 0; b < B; ++b) t.reconstruction[b] += w.logp[s * B + b];
  t.reconstruction /= double(S);
  t.kl_levels.setZero(B, L_);
  for (Index l = 0; l < L_; ++l) {
    const Vec<double>& k = w.lv[size_t(l)].krow;
    if (k.size() == B) {  // a shared analytic KL: one value per example
      t.kl_levels.col(l) = k;
      continue;
    }
    for (Index s = 0; s < S; ++s)
      for (Index b = 0; b < B; ++b) t.kl_levels(b, l) += k[s * B + b];
    t.kl_levels.col(l) /= double(S);
  }
}

// Checks and copies of the chunk [b0, b0 + bc) of eps (S·N·Σ Z_l) into the same layout for bc rows.
namespace {
template <class T>
void eps_chunk(Mat<T>& out, const T* eps, Index S, Index N, Index b0, Index bc, const std::vector<Index>& zoff) {
  const Index L = Index(zoff.size()) - 1;
  out.resize(S * bc * zoff.back(), 1);
  for (Index l = 0; l < L; ++l) {
    const Index Z = zoff[size_t(l + 1)] - zoff[size_t(l)];
    const T* src = eps + S * N * zoff[size_t(l)];
    T* dst = out.data() + S * bc * zoff[size_t(l)];
    for (Index s = 0; s < S; ++s) std::copy(src + (s * N + b0) * Z, src + (s * N + b0 + bc) * Z, dst + s * bc * Z);
  }
}
}  // namespace

template <class T>
HElboTerms HVAE<T>::elbo(CMatRef<T> x, const T* eps, Index S, KLMode kl) {
  check_cols("x", x.rows(), x.cols(), cfg_.x_dim);
  if (S <= 0) fail("n_samples must be a positive integer, got " + std::to_string(S));
  std::lock_guard<std::mutex> lock(mutex_);
  const Index N = x.rows();
  HElboTerms out;
  out.reconstruction.resize(N);
  out.kl_levels.resize(N, L_);
  // Chunks of about kPipelineRows decoder rows, each through every network on one thread
  // (common.hpp: row-chunk pipelines).
  pool_.resize(size_t(max_threads()));
  for_row_chunks(N, std::max<Index>(1, kPipelineRows / S), [&](Index b0, Index bc, int slot) {
    Scratch& sc = pool_[size_t(slot)];
    HElboTerms t;
    eps_chunk(sc.eps, eps, S, N, b0, bc, zoff_);
    forward(x.data() + b0 * cfg_.x_dim, bc, sc.eps.data(), S, kl, sc.w);
    collect(bc, S, sc.w, t);
    out.reconstruction.segment(b0, bc) = t.reconstruction;
    out.kl_levels.middleRows(b0, bc) = t.kl_levels;
  });
  return out;
}

// The rows' share of the backward (steps 1-3 of objective_grad) for x (B, D), eps (level-blocked,
// S·B rows) and the activations of forward(x, ...) in w: accumulates into grad (P) with the
// reconstruction weight c_rec per row and the level coefficients c (L) of the whole minibatch.
template <class T>
void HVAE<T>::backward_rows(const T* x, Index B, const T* eps, Index S, KLMode kl, const std::vector<double>& c,
                            double c_rec, Work& w, T* grad) {
  const Index D = cfg_.x_dim, R = S * B;
  const T* p = params_.data();
  // 1. reconstruction: ∂J/∂logp[r] = c_rec; back through p(x|z_1) to dz of level 0
  w.dout.resize(R, D);
  if (lik_ == Likelihood::Bernoulli) {
    bernoulli_logpdf_backward(w.dout.data(), c_rec, x, w.sig.data(), R, B, D);
  } else {
    const Vec<T> lvx = clamped_logvar();
    Vec<T> dlv_raw = Vec<T>::Zero(D);
    gaussian_logpdf_backward(w.dout.data(), dec_lv_ >= 0 ? dlv_raw.data() : nullptr, c_rec, x, w.out,
                             lvx.data(), R, B, D);
    if (dec_lv_ >= 0)  // the clamp passes the gradient only inside [min, max]
      for (Index j = 0; j < D; ++j) {
        const double raw = double(p[dec_lv_ + j]);
        if (raw >= kDecoderLogvarMin && raw <= kDecoderLogvarMax) grad[dec_lv_ + j] += dlv_raw[j];
      }
  }
  for (Index l = 0; l < L_; ++l) w.lv[size_t(l)].dz.setZero(R, cfg_.z_dims[size_t(l)]);
  dec_->backward(p, grad, w.lv[0].z.data(), nullptr, R, w.dec0, w.dout.data(), w.lv[0].dz.data());

  // 2. each level's term, partial derivatives with respect to q's (mu, lv), z and the prior's (pm, plv)
  std::vector<double> coef;
  for (Index l = 0; l < L_; ++l) {
    Level& v = w.lv[size_t(l)];
    const Index Z = cfg_.z_dims[size_t(l)];
    const bool top = l == L_ - 1;
    v.dmu.setZero(v.qrows, Z);
    v.dlv.setZero(v.qrows, Z);
    if (!top) {
      v.dpm.setZero(R, Z);
      v.dplv.setZero(R, Z);
    }
    // per term row: c[l] for a shared analytic KL (one row per example), c[l]/S per sample row
    const double cr = v.krow.size() == B && R != B ? c[size_t(l)] : c[size_t(l)] / double(S);
    if (kl == KLMode::Analytic && top) {
      coef.assign(size_t(Z), cr);
      kl_std_normal_backward(v.dmu.data(), v.dlv.data(), coef.data(), v.mu.data(), v.lv.data(), v.qrows, Z);
    } else if (kl == KLMode::Analytic && structure_ == Structure::TopDown) {
      coef.assign(size_t(R * Z), cr);
      kl_gaussian_backward(v.dmu.data(), v.dlv.data(), v.dpm.data(), v.dplv.data(), coef.data(), v.mu.data(),
                           v.lv.data(), v.pm.data(), v.plv.data(), R * Z);
    } else {  // + log q at its sample, − log p
      coef.assign(size_t(R), cr);
      gaussian_logpdf_at_sample_backward(v.dlv.data(), coef.data(), R, v.qrows, Z);
      coef.assign(size_t(R), -cr);
      gaussian_logpdf_diag_backward(v.dz.data(), top ? nullptr : v.dpm.data(), top ? nullptr : v.dplv.data(),
                                    coef.data(), v.z.data(), top ? nullptr : v.pm.data(),
                                    top ? nullptr : v.plv.data(), R, R, Z);
    }
  }

  // 3. through the chain
  auto prior_backward = [&](Index l) {  // p(z_l|z_{l+1}): dpm, dplv -> parameters and dz of level l+1
    Level& v = w.lv[size_t(l)];
    const GaussianNet<T>& n = prior_[size_t(l + 1)];
    v.dhp.setZero(R, n.mu.in);
    n.backward(p, grad, w.lv[size_t(l + 1)].z.data(), R, v.dec, v.dpm.data(), v.dplv.data(), v.dhp.data(),
               w.lv[size_t(l + 1)].dz.data());
  };
  auto reparam_back = [&](Level& v, Index l) {  // ∂/∂μ = ∂/∂z, ∂/∂lv = ∂/∂z ⊙ ε ⊙ σ/2 (MATH.md §2)
    reparam_backward(v.dmu.data(), v.dlv.data(), v.dz.data(), level_eps(eps, R, l), v.sigma.data(), R / v.qrows,
                     v.qrows, cfg_.z_dims[size_t(l)]);
  };
  if (structure_ == Structure::Markov) {
    // every prior's input is a sample of the level above: its gradient joins dz there
    for (Index l = 0; l + 1 < L_; ++l) prior_backward(l);
    // top to bottom: dz of level l is complete once the encoder of level l+1 has run backward
    for (Index l = L_ - 1; l >= 0; --l) {
      Level& v = w.lv[size_t(l)];
      reparam_back(v, l);
      v.dh.setZero(v.qrows, enc_[size_t(l)].mu.in);
      enc_[size_t(l)].backward(p, grad, v.in, v.qrows, v.enc, v.dmu.data(), v.dlv.data(), v.dh.data(),
                               l == 0 ? nullptr : w.lv[size_t(l - 1)].dz.data());
    }
  } else {
    // bottom to top along the top-down path: dz of level l is complete once the prior of level
    // l−1 (whose input it is) has run backward
    for (Index l = 0; l < L_; ++l) {
      Level& v = w.lv[size_t(l)];
      const Index Z = cfg_.z_dims[size_t(l)];
      reparam_back(v, l);
      if (l == L_ - 1) {
        v.dmud = v.dmu;
        v.dlvd = v.dlv;
      } else {
        v.dmud.setZero(B, Z);
        v.dlvd.setZero(B, Z);
        gaussian_precision_product_backward(v.dmud.data(), v.dlvd.data(), v.dpm.data(), v.dplv.data(), v.dmu.data(),
                                            v.dlv.data(), v.mud.data(), v.lvd.data(), v.pm.data(), v.plv.data(), R, B,
                                            Z);
        prior_backward(l);
      }
    }
    // the bottom-up blocks, top to bottom: block l's input d_l is block l−1's trunk output
    for (Index l = 0; l < L_; ++l) w.lv[size_t(l)].dh.setZero(B, enc_[size_t(l)].mu.in);
    for (Index l = L_ - 1; l >= 0; --l) {
      Level& v = w.lv[size_t(l)];
      enc_[size_t(l)].backward(p, grad, v.in, B, v.enc, v.dmud.data(), v.dlvd.data(), v.dh.data(),
                               l == 0 ? nullptr : w.lv[size_t(l - 1)].dh.data());
    }
  }
}

template <class T>
double HVAE<T>::objective_grad(CMatRef<T> x, const T* eps, Index S, KLMode kl, double beta, double free_bits,
                               double scale, T* grad, HElboTerms* terms) {
  check_cols("x", x.rows(), x.cols(), cfg_.x_dim);
  if (S <= 0) fail("n_samples must be a positive integer, got " + std::to_string(S));
  std::lock_guard<std::mutex> lock(mutex_);
  const Index B = x.rows(), D = cfg_.x_dim, R = S * B;
  const Index P = layout_.total;
  // A small step runs as two halves of rows, one per thread, each with its own noise (common.hpp:
  // RowHalves).
  const RowHalves hv(B, R, P, dec_->split_rows() || (!enc_.empty() && enc_[0].body->split_rows()));
  const int halves = hv.count;
  const Index* lo = hv.lo;
  Mat<T> eps_h[2];
  Work* w_h[2] = {&work_, &work2_};
  HElboTerms t;
  if (halves == 1) {
    forward(x.data(), B, eps, S, kl, work_);
    collect(B, S, work_, t);
  } else {
    HElboTerms t_h[2];
    for (int h = 0; h < 2; ++h) eps_chunk(eps_h[h], eps, S, B, lo[h], hv.size(h), zoff_);
    RowHalves::run([&](int h) {
      forward(x.data() + lo[h] * D, hv.size(h), eps_h[h].data(), S, kl, *w_h[h]);
      collect(hv.size(h), S, *w_h[h], t_h[h]);
    });
    t.reconstruction.resize(B);
    t.kl_levels.resize(B, L_);
    for (int h = 0; h < 2; ++h) {
      t.reconstruction.segment(lo[h], hv.size(h)) = t_h[h].reconstruction;
      t.kl_levels.middleRows(lo[h], hv.size(h)) = t_h[h].kl_levels;
    }
  }

  // The objective and ∂(scale·J)/∂kl_levels[b, l] = c[l] (vae.hpp: kl_objective).
  const Vec<double> kbar = t.kl_levels.colwise().mean().transpose();  // (L)
  std::vector<double> c;
  const double J = kl_objective(t.reconstruction.mean(), kbar, beta, free_bits, scale, B, c);

  const double c_rec = scale / double(R);  // ∂J/∂logp[r] = 1/(S·B) for every row
  if (halves == 1) {
    backward_rows(x.data(), B, eps, S, kl, c, c_rec, work_, grad);
  } else {
    RowHalves::run([&](int h) {
      grad_h_[h].setZero(P);
      backward_rows(x.data() + lo[h] * D, hv.size(h), eps_h[h].data(), S, kl, c, c_rec, *w_h[h], grad_h_[h].data());
    });
    RowHalves::add(grad, grad_h_[0].data(), grad_h_[1].data(), P);
  }
  if (terms) *terms = std::move(t);
  return J;
}

template <class T>
Vec<double> HVAE<T>::log_likelihood(CMatRef<T> x, Index K, uint64_t seed, Index row0) {
  check_cols("x", x.rows(), x.cols(), cfg_.x_dim);
  if (K <= 0) fail("k must be a positive integer, got " + std::to_string(K));
  std::lock_guard<std::mutex> lock(mutex_);
  const Index N = x.rows(), D = cfg_.x_dim;
  // A task takes Bc examples and all their K samples, on one thread (common.hpp: row-chunk
  // pipelines), kc samples at a time: about kPipelineRows rows per pass.
  const Index Bc = std::max<Index>(1, std::min(N, kPipelineRows / K));
  const Index Kc = ceil_div(K, ceil_div(K, std::max<Index>(1, kPipelineRows / Bc)));
  Vec<double> out(N);
  pool_.resize(size_t(max_threads()));
  for_row_chunks(N, Bc, [&](Index b0, Index bc, int slot) {
    Scratch& sc = pool_[size_t(slot)];
    Mat<T>& eps = sc.eps;
    Mat<double>& logw = sc.logw;  // (bc, K) log importance weights
    logw.resize(bc, K);
    for (Index k0 = 0; k0 < K; k0 += Kc) {
      const Index kc = std::min(Kc, K - k0), R = kc * bc;
      // Rows r = kk·bc + bb hold sample k0 + kk of example b0 + bb, level-blocked (hvae.hpp).
      eps.resize(R * ztot_, 1);
      for (Index l = 0; l < L_; ++l) {
        const Index Z = cfg_.z_dims[size_t(l)];
        T* e = eps.data() + R * zoff_[size_t(l)];
        for (Index r = 0; r < R; ++r) {
          const uint64_t b = uint64_t(row0 + b0 + r % bc), k = uint64_t(k0 + r / bc);
          fill_normal_serial(e + r * Z, Z, seed, streams::kLogLikelihood,
                             (b * uint64_t(K) + k) * uint64_t(ztot_) + uint64_t(zoff_[size_t(l)]));
        }
      }
      // log w = log p(x|z_1) − Σ_l [log q(z_l|·) − log p(z_l|·)]: the per-row Monte-Carlo terms
      forward(x.data() + b0 * D, bc, eps.data(), kc, KLMode::MonteCarlo, sc.w);
      for (Index r = 0; r < R; ++r) {
        double a = sc.w.logp[r];
        for (Index l = 0; l < L_; ++l) a -= sc.w.lv[size_t(l)].krow[r];
        logw(r % bc, k0 + r / bc) = a;
      }
    }
    for (Index bb = 0; bb < bc; ++bb) out[b0 + bb] = log_mean_exp(logw.row(bb).data(), K);  // L_K (MATH.md §3)
  });
  return out;
}

template <class T>
void HVAE<T>::encode(CMatRef<T> x, const T* eps, std::vector<Mat<T>>& mu, std::vector<Mat<T>>& logvar) {
  check_cols("x", x.rows(), x.cols(), cfg_.x_dim);
  std::lock_guard<std::mutex> lock(mutex_);
  const Index N = x.rows();
  mu.resize(size_t(L_));
  logvar.resize(size_t(L_));
  for (Index l = 0; l < L_; ++l) {
    mu[size_t(l)].resize(N, cfg_.z_dims[size_t(l)]);
    logvar[size_t(l)].resize(N, cfg_.z_dims[size_t(l)]);
  }
  // Chunks of kPipelineRows rows, each through q's networks on one thread (common.hpp: row-chunk
  // pipelines): the activations held are one chunk's per thread, not all N rows'.
  pool_.resize(size_t(max_threads()));
  for_row_chunks(N, kPipelineRows, [&](Index b0, Index bc, int slot) {
    Scratch& sc = pool_[size_t(slot)];
    if (eps) eps_chunk(sc.eps, eps, 1, N, b0, bc, zoff_);
    else sc.eps.setZero(bc * ztot_, 1);
    forward(x.data() + b0 * cfg_.x_dim, bc, sc.eps.data(), 1, KLMode::Analytic, sc.w, /*posterior_only=*/true);
    for (Index l = 0; l < L_; ++l) {
      mu[size_t(l)].middleRows(b0, bc) = sc.w.lv[size_t(l)].mu;
      logvar[size_t(l)].middleRows(b0, bc) = sc.w.lv[size_t(l)].lv;
    }
  });
}

template <class T>
Mat<T> HVAE<T>::decode(CMatRef<T> z, Index level, bool mean) {
  if (level < 1 || level > L_)
    fail("level must be an integer in [1, " + std::to_string(L_) + "], got " + std::to_string(level));
  check_cols("z", z.rows(), z.cols(), cfg_.z_dims[size_t(level - 1)]);
  std::lock_guard<std::mutex> lock(mutex_);
  const T* p = params_.data();
  const Index N = z.rows(), D = cfg_.x_dim;
  Mat<T> out(N, D);
  // Chunks of kPipelineRows rows, one per thread at a time, as encode.
  std::vector<GaussianNetCache<T>> pc(static_cast<size_t>(max_threads()));
  std::vector<Cache> dc(pc.size());
  for_row_chunks(N, kPipelineRows, [&](Index b0, Index B, int slot) {
    Mat<T> cur = z.middleRows(b0, B), pm, plv;
    for (Index l = level - 1; l >= 1; --l) {  // z of level l -> the prior's mean at level l−1
      pm.resize(B, cfg_.z_dims[size_t(l - 1)]);
      plv.resize(B, cfg_.z_dims[size_t(l - 1)]);
      prior_[size_t(l)].forward(p, cur.data(), B, pc[size_t(slot)], pm.data(), plv.data());
      cur = pm;
    }
    out.middleRows(b0, B) = CMatMap<T>(dec_->forward(p, cur.data(), nullptr, B, dc[size_t(slot)]), B, D);
  });
  if (mean && lik_ == Likelihood::Bernoulli) out = out.unaryExpr([](T a) { return sigmoid(a); });
  return out;
}

template <class T>
void HVAE<T>::prior(CMatRef<T> z, Index level, Mat<T>& mu, Mat<T>& logvar) {
  if (level < 2 || level > L_)
    fail("level must be an integer in [2, " + std::to_string(L_) + "] (the prior of level 1 is conditioned on level 2), got " +
         std::to_string(level));
  check_cols("z", z.rows(), z.cols(), cfg_.z_dims[size_t(level - 1)]);
  std::lock_guard<std::mutex> lock(mutex_);
  const Index B = z.rows(), Z = cfg_.z_dims[size_t(level - 2)];
  mu.resize(B, Z);
  logvar.resize(B, Z);
  GaussianNetCache<T> c;
  prior_[size_t(level - 1)].forward(params_.data(), z.data(), B, c, mu.data(), logvar.data());
}

template <class T>
Mat<T> HVAE<T>::generate(Index B, const T* eps, std::vector<Mat<T>>& z) {
  if (B <= 0) fail("n must be a positive integer, got " + std::to_string(B));
  std::lock_guard<std::mutex> lock(mutex_);
  const T* p = params_.data();
  z.resize(size_t(L_));
  const Index top = L_ - 1;
  z[size_t(top)] = CMatMap<T>(eps + B * zoff_[size_t(top)], B, cfg_.z_dims[size_t(top)]);  // z_L ~ N(0, I)
  Mat<T> pm, plv, sigma;
  GaussianNetCache<T> c;
  for (Index l = top; l >= 1; --l) {  // z_{l−1} = μ_p + σ_p ε ~ p(·|z_l) (0-based levels)
    const Index Z = cfg_.z_dims[size_t(l - 1)];
    pm.resize(B, Z);
    plv.resize(B, Z);
    prior_[size_t(l)].forward(p, z[size_t(l)].data(), B, c, pm.data(), plv.data());
    sigma.resize(B, Z);
    z[size_t(l - 1)].resize(B, Z);
    reparam_forward(z[size_t(l - 1)].data(), sigma.data(), pm.data(), plv.data(), eps + B * zoff_[size_t(l - 1)], 1, B,
                    Z);
  }
  Cache dc;
  Mat<T> out = CMatMap<T>(dec_->forward(p, z[0].data(), nullptr, B, dc), B, cfg_.x_dim);
  if (lik_ == Likelihood::Bernoulli) out = out.unaryExpr([](T a) { return sigmoid(a); });
  return out;
}

template <class T>
StepResult HVAE<T>::train_step(const T* x, Index B, const Shard& sh, const FitOptions& o, uint64_t step, double beta,
                               T* grad) {
  const Index S = o.n_samples, G = sh.global(B);
  // noise of this step: (seed, kTrainNoise + step), level-blocked (S, B_global, Z_l), our rows of each block
  Mat<T> eps(S * B * ztot_, 1);
  for (Index l = 0; l < L_; ++l)
    fill_normal_rows(eps.data() + S * B * zoff_[size_t(l)], S, B, cfg_.z_dims[size_t(l)], sh.offset, G, o.seed,
                     streams::kTrainNoise + step, uint64_t(S * G * zoff_[size_t(l)]));
  HElboTerms t;
  const double J = objective_grad(CMatMap<T>(x, B, cfg_.x_dim), eps.data(), S, kl_from_string(o.kl), beta, o.free_bits,
                                  -sh.weight(B), grad, &t);
  StepResult r;
  r.loss = -J;
  r.reconstruction = t.reconstruction.mean();
  const Vec<double> kbar = t.kl_levels.colwise().mean().transpose();
  r.kl = kbar.sum();
  r.elbo = r.reconstruction - r.kl;
  r.kl_terms.assign(kbar.data(), kbar.data() + L_);
  return r;
}

template <class T>
EvalResult HVAE<T>::evaluate(const T* x, Index N, const Shard& sh, const FitOptions& o) {
  const Index S = o.n_samples, G = sh.global(N);
  Mat<T> eps(S * N * ztot_, 1);  // (seed, kValidation), level-blocked (S, N_all, Z_l), our rows of each block
  for (Index l = 0; l < L_; ++l)
    fill_normal_rows(eps.data() + S * N * zoff_[size_t(l)], S, N, cfg_.z_dims[size_t(l)], sh.offset, G, o.seed,
                     streams::kValidation, uint64_t(S * G * zoff_[size_t(l)]));
  const HElboTerms t = elbo(CMatMap<T>(x, N, cfg_.x_dim), eps.data(), S, kl_from_string(o.kl));
  EvalResult r;
  r.reconstruction = t.reconstruction.mean();
  r.kl = t.kl_levels.rowwise().sum().mean();
  r.elbo = r.reconstruction - r.kl;
  return r;
}

// Active units per level (MATH.md §2): dimensions of the level's posterior mean, along the chain's
// mean path (every ε = 0), whose variance over x exceeds 0.01.
template <class T>
std::vector<Index> HVAE<T>::active_units(const T* x, Index N) {
  std::vector<Mat<T>> mu, lv;
  encode(CMatMap<T>(x, N, cfg_.x_dim), nullptr, mu, lv);
  std::vector<Index> out;
  for (const Mat<T>& m_ : mu) {
    const Mat<double> m = m_.template cast<double>();
    const Eigen::RowVectorXd mean = m.colwise().mean();
    const Eigen::RowVectorXd var = (m.rowwise() - mean).array().square().colwise().mean();
    Index active = 0;
    for (Index j = 0; j < var.size(); ++j) active += var[j] > 0.01;
    out.push_back(active);
  }
  return out;
}

template class HVAE<float>;
template class HVAE<double>;

}  // namespace elbokit
