// elbokit/distributions.hpp: log-densities, KL divergences and the reparameterized sample, each a
// forward/backward pair (MATH.md §1, §2).
//
// Shapes: B batch, D data, Z latent, S samples, R = S·B rows with row r = s·B + b (sample-major),
// so that x's row for sample row r is r % B. Per-row sums are accumulated in double.
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
  using A = Eigen::Array<T, Eigen::Dynamic, 1>;
#pragma omp parallel for schedule(static) if (R * D > 32768)
  for (Index r = 0; r < R; ++r) {
    Eigen::Map<const A> xr(x + (r % B) * D, D), l(logits + r * D, D);
    const A e = (-l.abs()).exp();
    logp[r] = (xr * l - l.max(T(0)) - log1p_vec(e)).template cast<double>().sum();
    if (sig) Eigen::Map<A>(sig + r * D, D) = (l >= T(0)).select(T(1) / (T(1) + e), e / (T(1) + e));
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
  for (Index j = 0; j < D; ++j) const_part += kLog2Pi + double(logvar[j]);
#pragma omp parallel for schedule(static) if (R * D > 32768)
  for (Index r = 0; r < R; ++r) {
    const T* xr = x + (r % B) * D;
    const T* mr = mean + r * D;
    double acc = 0;
    for (Index j = 0; j < D; ++j) {
      const T e = xr[j] - mr[j];
      acc += double(e * e * std::exp(-logvar[j]));
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
#pragma omp parallel for schedule(static) if (R * D > 32768)
  for (Index r = 0; r < R; ++r) {
    const T* xr = x + (r % B) * D;
    const T* mr = mean + r * D;
    T* dr = dmean + r * D;
    for (Index j = 0; j < D; ++j) dr[j] = c * (xr[j] - mr[j]) * std::exp(-logvar[j]);
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
