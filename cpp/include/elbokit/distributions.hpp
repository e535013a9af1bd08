// elbokit/distributions.hpp: log-densities, KL divergences and the reparameterized sample, each a
// forward/backward pair (MATH.md §1, §2).
//
// Shapes: B batch, D data, Z latent, S samples, R = S·B rows with row r = s·B + b (sample-major),
// so that x's row for sample row r is r % B. Per-row sums are accumulated in double (the Bernoulli
// likelihood's in T over runs of 4 SIMD packets, then in double).
// Backward functions accumulate (+=) into their gradient outputs except where they say "writes".
#pragma once

#include <limits>
#include <vector>

#include "elbokit/layers.hpp"

namespace elbokit {

constexpr double kLog2Pi = 1.8378770664093453;

// ---- Bernoulli with logits ℓ: log p(x) = x·ℓ − softplus(ℓ) (MATH.md §1). x in [0, 1] is allowed:
// this is the Bernoulli log-likelihood evaluated at grey levels, not the continuous Bernoulli.

// bernoulli_logpdf_forward: logp (R) = Σ_j x[r % B, j]·ℓ[r, j] − softplus(ℓ[r, j]); when sig is not
// null it also writes sig (R,D) = sigmoid(ℓ), which the backward needs (one exp serves both).
// softplus(ℓ) = max(ℓ, 0) + log1p(e), sigmoid(ℓ) = 1/(1+e) or e/(1+e) by the sign of ℓ, e = exp(−|ℓ|).
template <class T>
void bernoulli_logpdf_forward(double* logp, const T* x, const T* logits, Index R, Index B, Index D, T* sig = nullptr) {
  using P = simd::Packet<T>;
  namespace ei = simd::ei;
  constexpr Index W = simd::lanes<T>();
#pragma omp parallel for schedule(static) if (R * D > 32768)
  for (Index r = 0; r < R; ++r) {
    const T* xr = x + (r % B) * D;
    const T* l = logits + r * D;
    T* s = sig ? sig + r * D : nullptr;
    // The row's terms x·ℓ − softplus(ℓ) on packets: added in T over 4 packets, then in double.
    double total = 0;
    P acc = simd::zero<P>();
    auto terms = [&](const P& xv, const P& lv, T* sout) {
      const SigmoidParts<P> q(lv);
      if (sout) ei::pstoreu(sout, q.sigmoid());
      return ei::psub(ei::pmul(xv, lv), q.softplus(lv));
    };
    Index j = 0, k = 0;
    for (; j + W <= D; j += W) {
      acc = ei::padd(acc, terms(ei::ploadu<P>(xr + j), ei::ploadu<P>(l + j), s ? s + j : nullptr));
      if (++k % 4 == 0) {
        total += double(ei::predux(acc));
        acc = simd::zero<P>();
      }
    }
    total += double(ei::predux(acc));
    if (j < D) {  // the last partial packet, padded
      alignas(64) T bx[W], bl[W], bs[W], bt[W];
      const Index m = D - j;
      for (Index i = 0; i < W; ++i) {
        bx[i] = i < m ? xr[j + i] : T(0);
        bl[i] = i < m ? l[j + i] : T(0);
      }
      ei::pstoreu(bt, terms(ei::ploadu<P>(bx), ei::ploadu<P>(bl), bs));
      for (Index i = 0; i < m; ++i) {
        total += double(bt[i]);
        if (s) s[j + i] = bs[i];
      }
    }
    logp[r] = total;
  }
}

// bernoulli_logpdf_backward: writes dlogits (R,D) = coef · (x − sigmoid(ℓ)), coef = ∂J/∂logp[r], with
// sig (R,D) = sigmoid(ℓ) as saved by the forward.
template <class T>
void bernoulli_logpdf_backward(T* dlogits, double coef, const T* x, const T* sig, Index R, Index B, Index D) {
  using A = Eigen::Array<T, Eigen::Dynamic, 1>;
  const T c = T(coef);
#pragma omp parallel for schedule(static) if (R * D > 32768)
  for (Index r = 0; r < R; ++r) {
    Eigen::Map<const A> xr(x + (r % B) * D, D), s(sig + r * D, D);
    Eigen::Map<A>(dlogits + r * D, D) = c * (xr - s);
  }
}

// ---- Gaussian with a mean per row and one log-variance per dimension:
// log N(x; m, e^{lv}) = −½ Σ_j [log 2π + lv_j + (x_j − m_j)² e^{−lv_j}]   (MATH.md §1)
template <class T>
void gaussian_logpdf_forward(double* logp, const T* x, const T* mean, const T* logvar, Index R, Index B, Index D) {
  double const_part = 0;
  std::vector<T> ivar(static_cast<size_t>(D));  // e^{−lv} (D)
  for (Index j = 0; j < D; ++j) {
    const_part += kLog2Pi + double(logvar[j]);
    ivar[size_t(j)] = std::exp(-logvar[j]);
  }
#pragma omp parallel for schedule(static) if (R * D > 32768)
  for (Index r = 0; r < R; ++r) {
    const T* xr = x + (r % B) * D;
    const T* mr = mean + r * D;
    double acc = 0;
    for (Index j = 0; j < D; ++j) {
      const T e = xr[j] - mr[j];
      acc += double(e * e * ivar[size_t(j)]);
    }
    logp[r] = -0.5 * (const_part + acc);
  }
}

// gaussian_logpdf_backward: writes dmean (R,D) = coef·(x − m)·e^{−lv};
// dlogvar (D) += coef · Σ_r ½[(x − m)² e^{−lv} − 1] (only when dlogvar is not null).
template <class T>
void gaussian_logpdf_backward(T* dmean, T* dlogvar, double coef, const T* x, const T* mean, const T* logvar,
                              Index R, Index B, Index D) {
  const T c = T(coef);
  std::vector<T> ivar(static_cast<size_t>(D));  // e^{−lv} (D)
  for (Index j = 0; j < D; ++j) ivar[size_t(j)] = std::exp(-logvar[j]);
#pragma omp parallel for schedule(static) if (R * D > 32768)
  for (Index r = 0; r < R; ++r) {
    const T* xr = x + (r % B) * D;
    const T* mr = mean + r * D;
    T* dr = dmean + r * D;
    for (Index j = 0; j < D; ++j) dr[j] = c * (xr[j] - mr[j]) * ivar[size_t(j)];
  }
  if (dlogvar) {
    std::vector<double> acc(size_t(D), 0.0);
    for (Index r = 0; r < R; ++r) {  // serial: a fixed summation order
      const T* xr = x + (r % B) * D;
      const T* mr = mean + r * D;
      for (Index j = 0; j < D; ++j) {
        const double e = double(xr[j] - mr[j]);
        acc[size_t(j)] += 0.5 * (e * e * std::exp(-double(logvar[j])) - 1.0);
      }
    }
    for (Index j = 0; j < D; ++j) dlogvar[j] += T(coef * acc[size_t(j)]);
  }
}

// ---- KL(N(μ, e^{lv}) ‖ N(0, I)) per dimension: −½ (1 + lv − μ² − e^{lv})   (MATH.md §1)

// kl_std_normal_forward: writes kl (B,Z)
template <class T>
void kl_std_normal_forward(double* kl, const T* mu, const T* logvar, Index B, Index Z) {
  for (Index i = 0; i < B * Z; ++i) {
    const double m = double(mu[i]), lv = double(logvar[i]);
    kl[i] = -0.5 * (1.0 + lv - m * m - std::exp(lv));
  }
}

// kl_std_normal_backward: dmu (B,Z) += coef_j·μ; dlogvar (B,Z) += coef_j·½(e^{lv} − 1); coef (Z) = ∂J/∂kl[:, j]
template <class T>
void kl_std_normal_backward(T* dmu, T* dlogvar, const double* coef, const T* mu, const T* logvar, Index B, Index Z) {
  for (Index b = 0; b < B; ++b)
    for (Index j = 0; j < Z; ++j) {
      const Index i = b * Z + j;
      dmu[i] += T(coef[j]) * mu[i];
      dlogvar[i] += T(coef[j] * 0.5) * (std::exp(logvar[i]) - T(1));
    }
}

// ---- KL between diagonal Gaussians, per dimension (MATH.md §1):
// ½ [lv₂ − lv₁ + (e^{lv₁} + (μ₁ − μ₂)²) e^{−lv₂} − 1]
template <class T>
void kl_gaussian_forward(double* kl, const T* mu1, const T* lv1, const T* mu2, const T* lv2, Index n) {
  for (Index i = 0; i < n; ++i) {
    const double d = double(mu1[i]) - double(mu2[i]);
    kl[i] = 0.5 * (double(lv2[i]) - double(lv1[i]) + (std::exp(double(lv1[i])) + d * d) * std::exp(-double(lv2[i])) - 1.0);
  }
}

// kl_gaussian_backward: accumulates coef[i] times the partial derivatives into dmu1, dlv1, dmu2, dlv2 (n).
template <class T>
void kl_gaussian_backward(T* dmu1, T* dlv1, T* dmu2, T* dlv2, const double* coef, const T* mu1, const T* lv1,
                          const T* mu2, const T* lv2, Index n) {
  for (Index i = 0; i < n; ++i) {
    const double c = coef[i], d = double(mu1[i]) - double(mu2[i]), iv2 = std::exp(-double(lv2[i]));
    const double v1 = std::exp(double(lv1[i]));
    dmu1[i] += T(c * d * iv2);
    dmu2[i] -= T(c * d * iv2);
    dlv1[i] += T(c * 0.5 * (v1 * iv2 - 1.0));
    dlv2[i] += T(c * 0.5 * (1.0 - (v1 + d * d) * iv2));
  }
}

// ---- Diagonal Gaussian log-density with a mean and log-variance per row (MATH.md §1):
// logp[r] = −½ Σ_j [log 2π + lv[m, j] + (z[r, j] − μ[m, j])² e^{−lv[m, j]}], m = r % M.
// M = R: one Gaussian per row; M = B < R: the Gaussian of example b is shared by its S samples.
// mean = logvar = nullptr: the standard normal N(0, I).
template <class T>
void gaussian_logpdf_diag_forward(double* logp, const T* z, const T* mean, const T* logvar, Index R, Index M, Index Z) {
#pragma omp parallel for schedule(static) if (R * Z > 32768)
  for (Index r = 0; r < R; ++r) {
    const T* zr = z + r * Z;
    const Index m = (r % M) * Z;
    double acc = 0;
    for (Index j = 0; j < Z; ++j) {
      const double mu = mean ? double(mean[m + j]) : 0.0, lv = logvar ? double(logvar[m + j]) : 0.0;
      const double e = double(zr[j]) - mu;
      acc += kLog2Pi + lv + e * e * std::exp(-lv);
    }
    logp[r] = -0.5 * acc;
  }
}

// gaussian_logpdf_diag_backward, coef (R) = ∂J/∂logp[r]; each output may be null:
//   dz (R,Z) += coef·(μ − z)e^{−lv};  dmean (M,Z) += Σ_{r ≡ m} coef·(z − μ)e^{−lv};
//   dlogvar (M,Z) += Σ_{r ≡ m} coef·½[(z − μ)² e^{−lv} − 1].
// Parallel over the M Gaussians, samples summed in order: no two threads write the same entry.
template <class T>
void gaussian_logpdf_diag_backward(T* dz, T* dmean, T* dlogvar, const double* coef, const T* z, const T* mean,
                                   const T* logvar, Index R, Index M, Index Z) {
#pragma omp parallel for schedule(static) if (R * Z > 32768)
  for (Index m = 0; m < M; ++m)
    for (Index r = m; r < R; r += M)
      for (Index j = 0; j < Z; ++j) {
        const double mu = mean ? double(mean[m * Z + j]) : 0.0, lv = logvar ? double(logvar[m * Z + j]) : 0.0;
        const double e = double(z[r * Z + j]) - mu, iv = std::exp(-lv), c = coef[r];
        if (dz) dz[r * Z + j] -= T(c * e * iv);
        if (dmean) dmean[m * Z + j] += T(c * e * iv);
        if (dlogvar) dlogvar[m * Z + j] += T(c * 0.5 * (e * e * iv - 1.0));
      }
}

// ---- A Gaussian's log-density at its own reparameterized sample z = μ + σ ⊙ ε (MATH.md §2):
// log N(z; μ, σ²) = −½ Σ_j [log 2π + lv_j + ε_j²]. As a function of (μ, lv) through z it does not
// depend on μ, and ∂/∂lv = −½ (the total derivative; nothing flows to z).
// logp (R), logvar (M,Z) with row r % M as above, eps (R,Z).
template <class T>
void gaussian_logpdf_at_sample_forward(double* logp, const T* logvar, const T* eps, Index R, Index M, Index Z) {
  for (Index r = 0; r < R; ++r) {
    const T* lv = logvar + (r % M) * Z;
    const T* er = eps + r * Z;
    double acc = 0;
    for (Index j = 0; j < Z; ++j) acc += kLog2Pi + double(lv[j]) + double(er[j]) * double(er[j]);
    logp[r] = -0.5 * acc;
  }
}

// gaussian_logpdf_at_sample_backward: dlogvar (M,Z) += Σ_{r ≡ m} coef[r]·(−½).
template <class T>
void gaussian_logpdf_at_sample_backward(T* dlogvar, const double* coef, Index R, Index M, Index Z) {
  for (Index m = 0; m < M; ++m) {
    double c = 0;
    for (Index r = m; r < R; r += M) c += coef[r];
    for (Index j = 0; j < Z; ++j) dlogvar[m * Z + j] += T(-0.5 * c);
  }
}

// ---- Precision-weighted combination of two diagonal Gaussians (MATH.md §6, ladder VAE):
// σ_q^{-2} = σ_d^{-2} + σ_p^{-2}, μ_q = σ_q² (μ_d σ_d^{-2} + μ_p σ_p^{-2}). Computed stably with the
// weights w_d = σ_d^{-2}/(σ_d^{-2} + σ_p^{-2}) = sigmoid(lv_p − lv_d), w_p = 1 − w_d:
//   μ_q = w_d μ_d + w_p μ_p,  lv_q = −log(e^{−lv_d} + e^{−lv_p}) = lv_d − softplus(lv_d − lv_p).
// mu_d, lv_d (M,Z) with row r % M (the bottom-up Gaussian of example b, shared by its samples);
// mu_p, lv_p, mu_q, lv_q (R,Z).
template <class T>
void gaussian_precision_product_forward(T* mu_q, T* lv_q, const T* mu_d, const T* lv_d, const T* mu_p, const T* lv_p,
                                        Index R, Index M, Index Z) {
#pragma omp parallel for schedule(static) if (R * Z > 32768)
  for (Index r = 0; r < R; ++r)
    for (Index j = 0; j < Z; ++j) {
      const Index i = r * Z + j, k = (r % M) * Z + j;
      const T a = lv_d[k] - lv_p[i];  // w_d = sigmoid(−a)
      const T wd = sigmoid(-a);
      mu_q[i] = wd * mu_d[k] + (T(1) - wd) * mu_p[i];
      lv_q[i] = lv_d[k] - softplus(a);
    }
}

// gaussian_precision_product_backward, given dmu_q, dlv_q (R,Z):
//   ∂μ_q/∂μ_d = w_d, ∂μ_q/∂μ_p = w_p, ∂μ_q/∂lv_d = −(μ_d − μ_p) w_d w_p = −∂μ_q/∂lv_p,
//   ∂lv_q/∂lv_d = w_d, ∂lv_q/∂lv_p = w_p.
// Accumulates into dmu_d, dlv_d (M,Z) (summed over the rows r ≡ m in order) and dmu_p, dlv_p (R,Z).
template <class T>
void gaussian_precision_product_backward(T* dmu_d, T* dlv_d, T* dmu_p, T* dlv_p, const T* dmu_q, const T* dlv_q,
                                         const T* mu_d, const T* lv_d, const T* mu_p, const T* lv_p, Index R,
                                         Index M, Index Z) {
#pragma omp parallel for schedule(static) if (R * Z > 32768)
  for (Index m = 0; m < M; ++m)
    for (Index r = m; r < R; r += M)
      for (Index j = 0; j < Z; ++j) {
        const Index i = r * Z + j, k = m * Z + j;
        const T wd = sigmoid(lv_p[i] - lv_d[k]), wp = T(1) - wd;
        const T gm = dmu_q[i], gl = dlv_q[i];
        const T cross = (mu_d[k] - mu_p[i]) * wd * wp * gm;
        dmu_d[k] += wd * gm;
        dmu_p[i] += wp * gm;
        dlv_d[k] += wd * gl - cross;
        dlv_p[i] += wp * gl + cross;
      }
}

// ---- Reparameterization z = μ + σ ⊙ ε, σ = e^{lv/2}   (MATH.md §2)

// reparam_forward: z (S·B, Z) row s·B+b = μ[b] + σ[b] ⊙ ε[s·B+b]; writes sigma (B,Z)
template <class T>
void reparam_forward(T* z, T* sigma, const T* mu, const T* logvar, const T* eps, Index S, Index B, Index Z) {
  for (Index i = 0; i < B * Z; ++i) sigma[i] = std::exp(T(0.5) * logvar[i]);
#pragma omp parallel for schedule(static) if (S * B * Z > 32768)
  for (Index r = 0; r < S * B; ++r) {
    const Index b = r % B;
    for (Index j = 0; j < Z; ++j) z[r * Z + j] = mu[b * Z + j] + sigma[b * Z + j] * eps[r * Z + j];
  }
}

// reparam_backward: ∂f/∂μ = ∂f/∂z, ∂f/∂lv = ∂f/∂z ⊙ ε ⊙ σ/2 (MATH.md §2), summed over samples:
// dmu (B,Z) += Σ_s dz[s·B+b]; dlogvar (B,Z) += Σ_s dz[s·B+b] ⊙ ε ⊙ σ/2
template <class T>
void reparam_backward(T* dmu, T* dlogvar, const T* dz, const T* eps, const T* sigma, Index S, Index B, Index Z) {
  for (Index s = 0; s < S; ++s)
    for (Index b = 0; b < B; ++b)
      for (Index j = 0; j < Z; ++j) {
        const Index r = (s * B + b) * Z + j, i = b * Z + j;
        dmu[i] += dz[r];
        dlogvar[i] += dz[r] * eps[r] * sigma[i] * T(0.5);
      }
}

// ---- Monte-Carlo KL per dimension at the reparameterized samples (MATH.md §2):
// kl[b,j] = (1/S) Σ_s [log N(z; μ, σ²) − log N(z; 0, 1)] = (1/S) Σ_s ½ (z² − lv − ε²)
template <class T>
void kl_mc_forward(double* kl, const T* z, const T* logvar, const T* eps, Index S, Index B, Index Z) {
  for (Index i = 0; i < B * Z; ++i) kl[i] = 0;
  for (Index s = 0; s < S; ++s)
    for (Index b = 0; b < B; ++b)
      for (Index j = 0; j < Z; ++j) {
        const Index r = (s * B + b) * Z + j;
        const double zz = double(z[r]), e = double(eps[r]);
        kl[b * Z + j] += 0.5 * (zz * zz - double(logvar[b * Z + j]) - e * e);
      }
  for (Index i = 0; i < B * Z; ++i) kl[i] /= double(S);
}

// kl_mc_backward: total derivative through z = μ + σε and through the density's own (μ, lv):
// ∂/∂μ = (1/S) Σ_s z;  ∂/∂lv = (1/S) Σ_s (−½ + z·ε·σ/2). Scaled by coef (Z) and accumulated.
template <class T>
void kl_mc_backward(T* dmu, T* dlogvar, const double* coef, const T* z, const T* eps, const T* sigma, Index S,
                    Index B, Index Z) {
  for (Index s = 0; s < S; ++s)
    for (Index b = 0; b < B; ++b)
      for (Index j = 0; j < Z; ++j) {
        const Index r = (s * B + b) * Z + j, i = b * Z + j;
        const T c = T(coef[j] / double(S));
        dmu[i] += c * z[r];
        dlogvar[i] += c * (T(-0.5) + z[r] * eps[r] * sigma[i] * T(0.5));
      }
}

// ---- Discretized Gaussian on 256 levels scaled to [−1, 1] (MATH.md §7, reconstruction term):
// P(x_j) = Φ((x_j + δ − μ_j)/σ) − Φ((x_j − δ − μ_j)/σ), δ = 1/255, with the outer edges at ±∞
// (x_j = −1: lower edge −∞; x_j = +1: upper edge +∞). One σ per row. Logs are computed stably
// (log Φ by erfc and its asymptotic series; differences of Φ in the tail where both lie).

constexpr double kBinHalfWidth = 1.0 / 255.0;

// log Φ(z) for every real z (no underflow: the asymptotic series takes over below z = −20).
inline double log_ndtr(double z) {
  if (z >= 0) return std::log1p(-0.5 * std::erfc(z / std::sqrt(2.0)));
  if (z > -20) return std::log(0.5 * std::erfc(-z / std::sqrt(2.0)));
  const double r = 1.0 / (z * z);  // log Φ(z) = −z²/2 − log(−z) − ½ log 2π + log(1 − r + 3r² − 15r³ + 105r⁴)
  return -0.5 * z * z - std::log(-z) - 0.5 * kLog2Pi + std::log1p(r * (-1.0 + r * (3.0 + r * (-15.0 + 105.0 * r))));
}

// log(1 − e^a) for a < 0 (Mächler 2012).
inline double log1mexp(double a) { return a > -0.6931471805599453 ? std::log(-std::expm1(a)) : std::log1p(-std::exp(a)); }

// log (Φ(hi) − Φ(lo)) for lo < hi (lo may be −∞, hi may be +∞), using the tail both lie in.
inline double log_ndtr_diff(double lo, double hi) {
  if (std::isinf(lo)) return log_ndtr(hi);
  if (std::isinf(hi)) return log_ndtr(-lo);
  if (lo >= 0) {  // upper tail: Φ(hi) − Φ(lo) = Φ(−lo) − Φ(−hi)
    const double a = log_ndtr(-lo);
    return a + log1mexp(log_ndtr(-hi) - a);
  }
  const double b = log_ndtr(hi);
  return b + log1mexp(log_ndtr(lo) - b);
}

// The bin edges of level x in units of σ around μ.
inline void discretized_edges(double x, double mu, double sd, double& lo, double& hi) {
  constexpr double inf = std::numeric_limits<double>::infinity();
  lo = x < -1.0 + 0.5 * kBinHalfWidth ? -inf : (x - kBinHalfWidth - mu) / sd;
  hi = x > 1.0 - 0.5 * kBinHalfWidth ? inf : (x + kBinHalfWidth - mu) / sd;
}

// discretized_gaussian_logpmf_forward: logp (B) = Σ_j log P(x[b, j]; mean[b, j], sd[b]).
template <class T>
void discretized_gaussian_logpmf_forward(double* logp, const T* x, const T* mean, const double* sd, Index B, Index D) {
#pragma omp parallel for schedule(static) if (B * D > 8192)
  for (Index b = 0; b < B; ++b) {
    double acc = 0, lo, hi;
    for (Index j = 0; j < D; ++j) {
      discretized_edges(double(x[b * D + j]), double(mean[b * D + j]), sd[b], lo, hi);
      acc += log_ndtr_diff(lo, hi);
    }
    logp[b] = acc;
  }
}

// discretized_gaussian_logpmf_backward: dmean (B,D) += coef[b] · ∂logp[b]/∂mean[b, j]
//   = coef[b] · (φ(lo) − φ(hi)) / (σ P), with φ(±∞) = 0; coef (B) = ∂J/∂logp[b].
template <class T>
void discretized_gaussian_logpmf_backward(T* dmean, const double* coef, const T* x, const T* mean, const double* sd,
                                          Index B, Index D) {
#pragma omp parallel for schedule(static) if (B * D > 8192)
  for (Index b = 0; b < B; ++b) {
    if (coef[b] == 0) continue;
    double lo, hi;
    for (Index j = 0; j < D; ++j) {
      discretized_edges(double(x[b * D + j]), double(mean[b * D + j]), sd[b], lo, hi);
      const double lp = log_ndtr_diff(lo, hi);
      const double plo = std::isinf(lo) ? 0.0 : std::exp(-0.5 * lo * lo - 0.5 * kLog2Pi - lp);
      const double phi = std::isinf(hi) ? 0.0 : std::exp(-0.5 * hi * hi - 0.5 * kLog2Pi - lp);
      dmean[b * D + j] += T(coef[b] * (plo - phi) / sd[b]);
    }
  }
}

// The same with one σ per element (a learned variance per dimension): logsd (B, D) = log σ[b, j].
// discretized_gaussian_logpmf_pd_forward: logp (B) = Σ_j log P(x[b, j]; mean[b, j], exp(logsd[b, j])).
template <class T>
void discretized_gaussian_logpmf_pd_forward(double* logp, const T* x, const T* mean, const double* logsd, Index B,
                                            Index D) {
#pragma omp parallel for schedule(static) if (B * D > 8192)
  for (Index b = 0; b < B; ++b) {
    double acc = 0, lo, hi;
    for (Index j = 0; j < D; ++j) {
      discretized_edges(double(x[b * D + j]), double(mean[b * D + j]), std::exp(logsd[b * D + j]), lo, hi);
      acc += log_ndtr_diff(lo, hi);
    }
    logp[b] = acc;
  }
}

// discretized_gaussian_logpmf_pd_backward, coef (B) = ∂J/∂logp[b]; either output may be nullptr:
//   dmean (B, D) += coef[b]·(φ(lo) − φ(hi))/(σ P),
//   dlogsd (B, D) += coef[b]·∂logp[b]/∂log σ[b, j] = coef[b]·(lo φ(lo) − hi φ(hi))/P
// (lo, hi the edges in units of σ, ∂lo/∂log σ = −lo; φ(±∞) = ±∞·φ(±∞) = 0).
template <class T>
void discretized_gaussian_logpmf_pd_backward(T* dmean, double* dlogsd, const double* coef, const T* x, const T* mean,
                                             const double* logsd, Index B, Index D) {
#pragma omp parallel for schedule(static) if (B * D > 8192)
  for (Index b = 0; b < B; ++b) {
    if (coef[b] == 0) continue;
    double lo, hi;
    for (Index j = 0; j < D; ++j) {
      const double sd = std::exp(logsd[b * D + j]);
      discretized_edges(double(x[b * D + j]), double(mean[b * D + j]), sd, lo, hi);
      const double lp = log_ndtr_diff(lo, hi);
      const double plo = std::isinf(lo) ? 0.0 : std::exp(-0.5 * lo * lo - 0.5 * kLog2Pi - lp);
      const double phi = std::isinf(hi) ? 0.0 : std::exp(-0.5 * hi * hi - 0.5 * kLog2Pi - lp);
      if (dmean) dmean[b * D + j] += T(coef[b] * (plo - phi) / sd);
      if (dlogsd) dlogsd[b * D + j] += coef[b] * ((std::isinf(lo) ? 0.0 : lo * plo) - (std::isinf(hi) ? 0.0 : hi * phi));
    }
  }
}

// ---- The importance-weighted bound from log weights (MATH.md §3): L_K = log (1/K) Σ_k w_k by
// log-sum-exp in double, for logw (K); −inf when every weight is 0, NaN passes through.
inline double log_mean_exp(const double* logw, Index K) {
  double m = -std::numeric_limits<double>::infinity();
  for (Index k = 0; k < K; ++k) {
    if (std::isnan(logw[k])) return logw[k];
    m = std::max(m, logw[k]);
  }
  if (!std::isfinite(m)) return m;
  double s = 0;
  for (Index k = 0; k < K; ++k) s += std::exp(logw[k] - m);
  return m + std::log(s) - std::log(double(K));
}

// ---- Aggregate posterior q_agg(z) = (1/N) Σ_i N(z; μ_i, diag e^{lv_i}) (MATH.md §4), the log-density
// at M points by log-sum-exp over all N encodings: O(M·N·Z), parallel over points (each row's sum
// in a fixed order, so results do not depend on the number of threads). Forward only: the ELBO
// surgery evaluates it, nothing differentiates through it.

// log_aggregate_forward: writes out (M) = log q_agg(z[m]) for z (M, Z), mu and logvar (N, Z).
template <class T>
void log_aggregate_forward(double* out, const T* z, Index M, const T* mu, const T* logvar, Index N, Index Z) {
  std::vector<double> base(static_cast<size_t>(N)), ivar(static_cast<size_t>(N * Z));  // −½ Σ_j (log 2π + lv_ij); e^{−lv_ij}
  for (Index i = 0; i < N; ++i) {
    double acc = 0;
    for (Index j = 0; j < Z; ++j) {
      acc += kLog2Pi + double(logvar[i * Z + j]);
      ivar[size_t(i * Z + j)] = std::exp(-double(logvar[i * Z + j]));
    }
    base[size_t(i)] = -0.5 * acc;
  }
  const double log_n = std::log(double(N));
#pragma omp parallel for schedule(static) if (double(M) * double(N) * double(Z) > kParallelFlops)
  for (Index m = 0; m < M; ++m) {
    std::vector<double> lp(static_cast<size_t>(N));
    const T* zm = z + m * Z;
    double mx = -std::numeric_limits<double>::infinity();
    for (Index i = 0; i < N; ++i) {
      double q = 0;
      for (Index j = 0; j < Z; ++j) {
        const double e = double(zm[j]) - double(mu[i * Z + j]);
        q += e * e * ivar[size_t(i * Z + j)];
      }
      lp[size_t(i)] = base[size_t(i)] - 0.5 * q;
      mx = std::max(mx, lp[size_t(i)]);
    }
    double s = 0;
    for (Index i = 0; i < N; ++i) s += std::exp(lp[size_t(i)] - mx);
    out[m] = mx + std::log(s) - log_n;
  }
}

}  // namespace elbokit
