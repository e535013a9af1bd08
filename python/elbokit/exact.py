"""Exactly solvable latent-variable models (MATH.md §5): references for every estimator.

* :class:`Gaussian1D` -- p(z) = N(0, 1), p(x|z) = N(cz + d, v), q(z|x) = N(ax + b, w): the ELBO,
  log p(x), the exact posterior and the gap KL(q || p(z|x)) in closed form, for any parameters.
* :class:`LinearGaussian` -- probabilistic PCA: maximum likelihood in closed form, the exact
  posterior, and the closed-form ELBO of a linear VAE (linear encoder, diagonal q).
* :class:`GaussianMixture` -- a VAE with a discrete latent: EM (the ELBO equals log p(x) right after
  the E-step; the log-likelihood never decreases) and variational EM (q takes gradient steps).

Everything here is a few lines of dense linear algebra in float64 NumPy.
"""
from __future__ import annotations

import math

import numpy as np

from . import random as _random
from ._validation import as_array, check_float, check_int

__all__ = ["Gaussian1D", "LinearGaussian", "GaussianMixture"]

LOG_2PI = math.log(2.0 * math.pi)


def _logsumexp(a: np.ndarray, axis: int = -1) -> np.ndarray:
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return np.squeeze(m, axis=axis) + np.log(np.sum(np.exp(a - m), axis=axis))


def _x1d(x) -> np.ndarray:
    """Data of the one-dimensional model: a number or a 1-D array."""
    a = np.atleast_1d(np.asarray(x))
    return as_array("x", a, np.float64, ndim=1)


# ------------------------------------------------------------------------------------------------
class Gaussian1D:
    """The one-dimensional Gaussian model (MATH.md §5).

    p(z) = N(0, 1), decoder p(x|z) = N(c z + d, v), encoder q(z|x) = N(a x + b, w).
    Then p(x) = N(d, c² + v) and p(z|x) = N(c (x − d)/(c² + v), v/(c² + v)), and for every x:
    ``log_marginal(x) == elbo(x) + gap(x)`` with gap = KL(q(z|x) ‖ p(z|x)) >= 0.
    """

    def __init__(self, a: float = 1.0, b: float = 0.0, c: float = 1.0, d: float = 0.0, v: float = 1.0,
                 w: float = 1.0):
        # |a|, |b|, |c|, |d| <= 1e100 and v, w in [1e-100, 1e100]: the closed forms square them
        self.a, self.b = check_float("a", a, minimum=-1e100, maximum=1e100), check_float("b", b, minimum=-1e100, maximum=1e100)
        self.c, self.d = check_float("c", c, minimum=-1e100, maximum=1e100), check_float("d", d, minimum=-1e100, maximum=1e100)
        self.v = check_float("v", v, positive=True, minimum=1e-100, maximum=1e100)
        self.w = check_float("w", w, positive=True, minimum=1e-100, maximum=1e100)

    @classmethod
    def with_exact_posterior(cls, c: float, d: float, v: float) -> "Gaussian1D":
        """The decoder (c, d, v) with the encoder set to its exact posterior: the gap is 0 for every x
        (a = c/(c² + v), b = −c d/(c² + v), w = v/(c² + v))."""
        c, d, v = check_float("c", c), check_float("d", d), check_float("v", v, positive=True)
        s2 = c * c + v
        return cls(a=c / s2, b=-c * d / s2, c=c, d=d, v=v, w=v / s2)

    def __repr__(self) -> str:
        return f"Gaussian1D(a={self.a:.4g}, b={self.b:.4g}, c={self.c:.4g}, d={self.d:.4g}, v={self.v:.4g}, w={self.w:.4g})"

    # closed forms
    def log_marginal(self, x) -> np.ndarray:
        """log p(x) = log N(x; d, c² + v)."""
        x = _x1d(x)
        s2 = self.c ** 2 + self.v
        return -0.5 * (LOG_2PI + math.log(s2) + (x - self.d) ** 2 / s2)

    def posterior(self, x):
        """(mean, variance) of the exact posterior p(z|x) = N(c (x − d)/(c² + v), v/(c² + v))."""
        x = _x1d(x)
        s2 = self.c ** 2 + self.v
        return self.c * (x - self.d) / s2, np.full_like(x, self.v / s2)

    def encoder(self, x):
        """(mean, variance) of q(z|x) = N(a x + b, w)."""
        x = _x1d(x)
        return self.a * x + self.b, np.full_like(x, self.w)

    def reconstruction(self, x) -> np.ndarray:
        """E_q[log p(x|z)] = −½ [log 2πv + ((x − c m − d)² + c² w)/v], m = a x + b."""
        x = _x1d(x)
        m = self.a * x + self.b
        return -0.5 * (LOG_2PI + math.log(self.v) + ((x - self.c * m - self.d) ** 2 + self.c ** 2 * self.w) / self.v)

    def kl_prior(self, x) -> np.ndarray:
        """KL(q(z|x) ‖ N(0, 1)) = ½ (m² + w − 1 − log w)."""
        x = _x1d(x)
        m = self.a * x + self.b
        return 0.5 * (m * m + self.w - 1.0 - math.log(self.w))

    def elbo(self, x) -> np.ndarray:
        """ELBO(x) = reconstruction − KL to the prior (MATH.md §2)."""
        return self.reconstruction(x) - self.kl_prior(x)

    def gap(self, x) -> np.ndarray:
        """KL(q(z|x) ‖ p(z|x)), between two Gaussians in closed form."""
        m, w = self.encoder(x)
        pm, pv = self.posterior(x)
        return 0.5 * (np.log(pv / w) + (w + (m - pm) ** 2) / pv - 1.0)

    def elbo_mc(self, x, n_samples: int = 1000, seed: int = 0):
        """Monte-Carlo ELBO per x with z ~ q(z|x): (estimate (n,), standard error (n,))."""
        x = _x1d(x)
        S = check_int("n_samples", n_samples, 2)
        eps = _random.normal((S, x.shape[0]), seed=check_int("seed", seed, 0))
        m = self.a * x + self.b
        z = m + math.sqrt(self.w) * eps
        logpxz = -0.5 * (LOG_2PI + math.log(self.v) + (x - self.c * z - self.d) ** 2 / self.v)
        logpz = -0.5 * (LOG_2PI + z * z)
        logq = -0.5 * (LOG_2PI + math.log(self.w) + eps * eps)
        t = logpxz + logpz - logq
        return t.mean(axis=0), t.std(axis=0, ddof=1) / math.sqrt(S)

    def expected(self, m: float, s: float) -> dict:
        """Averages over data x ~ N(m, s²): {'log_marginal', 'elbo', 'gap'}, each in closed form
        (every term is quadratic in x, so E[x] = m and E[x²] = m² + s² suffice)."""
        m, s = check_float("m", m), check_float("s", s, positive=True)
        ex, ex2 = m, m * m + s * s
        s2 = self.c ** 2 + self.v
        lm = -0.5 * (LOG_2PI + math.log(s2) + (ex2 - 2 * self.d * ex + self.d ** 2) / s2)
        # reconstruction: (x − c(ax + b) − d)² = ((1 − ca) x − (cb + d))²
        k1, k0 = 1.0 - self.c * self.a, self.c * self.b + self.d
        rec = -0.5 * (LOG_2PI + math.log(self.v) + (k1 * k1 * ex2 - 2 * k1 * k0 * ex + k0 * k0 + self.c ** 2 * self.w) / self.v)
        em2 = self.a ** 2 * ex2 + 2 * self.a * self.b * ex + self.b ** 2
        kl = 0.5 * (em2 + self.w - 1.0 - math.log(self.w))
        return {"log_marginal": lm, "elbo": rec - kl, "gap": lm - (rec - kl)}


# ------------------------------------------------------------------------------------------------
class LinearGaussian:
    """Probabilistic PCA (MATH.md §5): p(z) = N(0, I_k), p(x|z) = N(W z + mu, v I).

    ``fit(x)`` sets the maximum-likelihood parameters in closed form (Tipping & Bishop 1999):
    mu = mean, W = U_k (Λ_k − v I)^{1/2} (top-k eigenvectors of the sample covariance with divisor
    n), v = mean of the discarded eigenvalues.
    """

    def __init__(self, latent_dim: int):
        self.latent_dim = check_int("latent_dim", latent_dim, 1)
        self.mean = self.weight = self.variance = None

    def _check_fitted(self):
        if self.weight is None:
            raise ValueError("the model is not fitted: call fit(x) or set_parameters(weight, mean, variance) first")

    def set_parameters(self, weight, mean, variance) -> "LinearGaussian":
        """Sets W (D, k), mu (D) and v > 0 directly."""
        W = as_array("weight", weight, np.float64, ndim=2, shape=(None, self.latent_dim))
        mu = as_array("mean", mean, np.float64, ndim=1, shape=(W.shape[0],))
        self.weight, self.mean = W, mu
        self.variance = check_float("variance", variance, positive=True)
        return self

    def fit(self, x) -> "LinearGaussian":
        x = as_array("x", x, np.float64, ndim=2)
        n, D = x.shape
        if D <= self.latent_dim:
            raise ValueError(f"latent_dim must be smaller than the data dimension {D}, got {self.latent_dim}")
        if n < 2:
            raise ValueError(f"x must have at least 2 rows, got {n}")
        mu = x.mean(axis=0)
        S = (x - mu).T @ (x - mu) / n
        lam, U = np.linalg.eigh(S)
        lam, U = lam[::-1], U[:, ::-1]
        k = self.latent_dim
        v = float(lam[k:].mean())
        if not v > 0:
            raise ValueError("x has rank <= latent_dim: the maximum-likelihood noise variance is 0")
        self.mean = mu
        self.weight = U[:, :k] * np.sqrt(np.maximum(lam[:k] - v, 0.0))
        self.variance = v
        self.eigenvalues = lam
        return self

    def covariance(self) -> np.ndarray:
        """The marginal covariance W Wᵀ + v I (D, D)."""
        self._check_fitted()
        return self.weight @ self.weight.T + self.variance * np.eye(self.weight.shape[0])

    def _x(self, x) -> np.ndarray:
        self._check_fitted()
        return as_array("x", x, np.float64, ndim=2, shape=(None, self.weight.shape[0]))

    def log_likelihood(self, x) -> np.ndarray:
        """Per-example log p(x) = log N(x; mu, W Wᵀ + v I) (n,)."""
        x = self._x(x)
        L = np.linalg.cholesky(self.covariance())
        r = np.linalg.solve(L, (x - self.mean).T)
        return -0.5 * (x.shape[1] * LOG_2PI + 2 * np.log(np.diag(L)).sum() + (r * r).sum(axis=0))

    def posterior(self, x):
        """(mean (n, k), covariance (k, k)) of p(z|x) = N(M⁻¹Wᵀ(x − mu), v M⁻¹), M = WᵀW + v I."""
        x = self._x(x)
        M = self.weight.T @ self.weight + self.variance * np.eye(self.latent_dim)
        Minv = np.linalg.inv(M)
        return (x - self.mean) @ self.weight @ Minv.T, self.variance * Minv

    def vae_parameters(self) -> dict:
        """The parameters of ``ek.VAE(x_dim, latent_dim, hidden=(), likelihood="gaussian",
        decoder_var=v)`` that carry this model: decoder W, mu; encoder the posterior mean map and
        the posterior variances diag(v M⁻¹) (exact when M is diagonal, as at the maximum likelihood)."""
        self._check_fitted()
        W, k = self.weight, self.latent_dim
        M = W.T @ W + self.variance * np.eye(k)
        A = np.linalg.solve(M, W.T)  # (k, D)
        return {"encoder.mu.weight": A, "encoder.mu.bias": -A @ self.mean,
                "encoder.logvar.weight": np.zeros_like(A),
                "encoder.logvar.bias": np.log(np.diag(self.variance * np.linalg.inv(M))),
                "decoder.out.weight": W.copy(), "decoder.out.bias": self.mean.copy()}

    @staticmethod
    def linear_vae_elbo(x, enc_weight, enc_bias, enc_logvar, weight, mean, variance):
        """Closed-form ELBO of a linear VAE (MATH.md §5), per example (n,).

        q(z|x) = N(E x + e, diag exp(logvar)) with enc_weight E (k, D), enc_bias e (k), enc_logvar
        (k) or (n, k); p(x|z) = N(W z + mu, diag(v)) with v a scalar or (D,):
        E_q[log p(x|z)] = −½ Σ_j [log 2π v_j + ((x − mu − W m)_j² + Σ_i W_ji² s_i²)/v_j],
        KL = ½ Σ_i (m_i² + s_i² − 1 − log s_i²).
        Returns (elbo, reconstruction, kl).
        """
        W = as_array("weight", weight, np.float64, ndim=2)
        D, k = W.shape
        x = as_array("x", x, np.float64, ndim=2, shape=(None, D))
        E = as_array("enc_weight", enc_weight, np.float64, ndim=2, shape=(k, D))
        e = as_array("enc_bias", enc_bias, np.float64, ndim=1, shape=(k,))
        lv = as_array("enc_logvar", enc_logvar, np.float64)
        if lv.shape not in ((k,), (x.shape[0], k)):
            raise ValueError(f"enc_logvar must have shape ({k},) or ({x.shape[0]}, {k}), got {lv.shape}")
        mu = as_array("mean", mean, np.float64, ndim=1, shape=(D,))
        v = np.broadcast_to(as_array("variance", variance, np.float64), (D,))
        if (v <= 0).any():
            raise ValueError(f"variance must be positive, got minimum {v.min()}")
        m = x @ E.T + e
        s2 = np.broadcast_to(np.exp(lv), m.shape)
        r = x - mu - m @ W.T
        rec = -0.5 * (np.log(2 * np.pi * v).sum() + (r * r / v).sum(axis=1) + (s2 @ (W * W / v[:, None]).T).sum(axis=1))
        kl = 0.5 * (m * m + s2 - 1.0 - np.log(s2)).sum(axis=1)
        return rec - kl, rec, kl

    @staticmethod
    def vae_elbo(vae, x):
        """The exact ELBO (elbo, reconstruction, kl), each (n,), of an ``ek.VAE`` with hidden=()
        and a Gaussian likelihood (learned per-dimension or fixed variance)."""
        if tuple(vae.hidden) != () or vae.likelihood != "gaussian":
            raise ValueError(f"vae must be linear with a Gaussian likelihood (hidden=(), likelihood='gaussian'), "
                             f"got hidden={tuple(vae.hidden)} and likelihood={vae.likelihood!r}")
        p = {n: a.astype(np.float64) for n, a in vae.parameters().items()}
        x = as_array("x", x, np.float64, ndim=2, shape=(None, vae.x_dim))
        lv = x @ p["encoder.logvar.weight"].T + p["encoder.logvar.bias"]
        v = np.exp(np.asarray(vae._core.decoder_logvar(), dtype=np.float64))
        return LinearGaussian.linear_vae_elbo(x, p["encoder.mu.weight"], p["encoder.mu.bias"], lv,
                                              p["decoder.out.weight"], p["decoder.out.bias"], v)


# ------------------------------------------------------------------------------------------------
class GaussianMixture:
    """A mixture of Gaussians with full covariances, fitted by EM (MATH.md §5).

    The discrete latent k has the exact posterior r_ik ∝ π_k N(x_i; μ_k, Σ_k) (the
    responsibilities). With q = r the ELBO Σ_k q_k [log π_k N(x; μ_k, Σ_k) − log q_k] equals
    log p(x); EM alternates that E-step with the closed-form M-step, so the log-likelihood never
    decreases. ``reg_covar`` is added to every covariance's diagonal (as scikit-learn does).
    Initialization: means at n_components data points drawn by ``ek.random.permutation(n, seed)``,
    every covariance the data covariance, equal weights.
    """

    def __init__(self, n_components: int, seed: int = 0, reg_covar: float = 1e-6):
        self.n_components = check_int("n_components", n_components, 1)
        self.seed = check_int("seed", seed, 0)
        self.reg_covar = check_float("reg_covar", reg_covar, minimum=0.0)
        self.weights_ = self.means_ = self.covariances_ = None
        self.history = []

    # -- densities ------------------------------------------------------------------------------
    def _check_fitted(self):
        if self.means_ is None:
            raise ValueError("the mixture is not fitted: call fit(x) or init(x) first")

    def _x(self, x) -> np.ndarray:
        self._check_fitted()
        return as_array("x", x, np.float64, ndim=2, shape=(None, self.means_.shape[1]))

    def _log_joint(self, x: np.ndarray) -> np.ndarray:
        """(n, K): log π_k + log N(x_i; μ_k, Σ_k), by Cholesky factors."""
        n, D = x.shape
        out = np.empty((n, self.n_components))
        for k in range(self.n_components):
            L = np.linalg.cholesky(self.covariances_[k])
            r = np.linalg.solve(L, (x - self.means_[k]).T)
            out[:, k] = (math.log(self.weights_[k]) if self.weights_[k] > 0 else -np.inf) - 0.5 * (
                D * LOG_2PI + 2 * np.log(np.diag(L)).sum() + (r * r).sum(axis=0))
        return out

    def log_joint(self, x) -> np.ndarray:
        """log p(x_i, k) = log π_k + log N(x_i; μ_k, Σ_k) (n, K)."""
        return self._log_joint(self._x(x))

    def log_likelihood(self, x) -> np.ndarray:
        """Per-example log p(x) (n,) by log-sum-exp over the components."""
        return _logsumexp(self._log_joint(self._x(x)), axis=1)

    def responsibilities(self, x) -> np.ndarray:
        """The exact posterior p(k|x_i) (n, K): the E-step."""
        a = self._log_joint(self._x(x))
        return np.exp(a - _logsumexp(a, axis=1)[:, None])

    def elbo(self, x, q=None) -> np.ndarray:
        """Per-example ELBO Σ_k q_ik [log p(x_i, k) − log q_ik] (0 log 0 = 0) for q (n, K) rows on
        the simplex; q=None uses the responsibilities, where the ELBO equals log p(x)."""
        a = self._log_joint(self._x(x))
        if q is None:
            q = np.exp(a - _logsumexp(a, axis=1)[:, None])
        q = as_array("q", q, np.float64, ndim=2, shape=(a.shape[0], self.n_components))
        if (q < 0).any() or not np.allclose(q.sum(axis=1), 1.0, atol=1e-8):
            raise ValueError("q must have non-negative rows that sum to 1, got row sums in "
                             f"[{q.sum(axis=1).min():.6g}, {q.sum(axis=1).max():.6g}]")
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(q > 0, q * (a - np.log(np.where(q > 0, q, 1.0))), 0.0)
        return t.sum(axis=1)

    # -- EM -------------------------------------------------------------------------------------
    def init(self, x) -> "GaussianMixture":
        """The initial parameters (see the class docstring)."""
        x = as_array("x", x, np.float64, ndim=2)
        n, D = x.shape
        if n < self.n_components:
            raise ValueError(f"x must have at least n_components = {self.n_components} rows, got {n}")
        idx = _random.permutation(n, seed=self.seed)[: self.n_components]
        self.means_ = x[idx].copy()
        cov = np.atleast_2d(np.cov(x.T, bias=True)) + self.reg_covar * np.eye(D)
        self.covariances_ = np.repeat(cov[None], self.n_components, axis=0)
        self.weights_ = np.full(self.n_components, 1.0 / self.n_components)
        return self

    def m_step(self, x, q) -> None:
        """Maximizes the ELBO over (π, μ, Σ) for fixed q (n, K), in closed form."""
        x = self._x(x)
        n, D = x.shape
        nk = q.sum(axis=0) + 10 * np.finfo(float).eps
        self.weights_ = nk / n
        self.means_ = (q.T @ x) / nk[:, None]
        cov = np.empty((self.n_components, D, D))
        for k in range(self.n_components):
            d = x - self.means_[k]
            cov[k] = (q[:, k, None] * d).T @ d / nk[k] + self.reg_covar * np.eye(D)
        self.covariances_ = cov

    def fit(self, x, iterations: int = 100, init: bool = True) -> "GaussianMixture":
        """EM for ``iterations`` rounds (E-step, then M-step). ``history`` holds the mean
        log-likelihood after every round (non-decreasing), ``initial_log_likelihood`` the one
        before the first; ``elbo_after_e_step`` the mean ELBO right after every E-step (equal to
        the log-likelihood of the parameters it was computed for)."""
        iterations = check_int("iterations", iterations, 1)
        if init or self.means_ is None:
            self.init(x)
        x = self._x(x)
        a = self._log_joint(x)
        self.initial_log_likelihood = float(_logsumexp(a, axis=1).mean())
        self.history, self.elbo_after_e_step = [], []
        for _ in range(iterations):
            r = np.exp(a - _logsumexp(a, axis=1)[:, None])            # E-step: q = p(k|x)
            self.elbo_after_e_step.append(float(self.elbo(x, r).mean()))
            self.m_step(x, r)                                          # M-step
            a = self._log_joint(x)
            self.history.append(float(_logsumexp(a, axis=1).mean()))
        return self

    def fit_variational(self, x, iterations: int = 100, steps: int = 1, lr: float = 1.0) -> "GaussianMixture":
        """Variational EM (MATH.md §5): q_i = softmax(ℓ_i) is not set to the posterior but takes
        ``steps`` gradient-ascent steps on the ELBO in its logits ℓ (∂ELBO_i/∂ℓ_ik =
        q_ik (a_ik − log q_ik − ELBO_i), a = log p(x_i, k)), each step halved until the ELBO of that
        example does not decrease; then the closed-form M-step. ``elbo_history`` holds the mean
        ELBO after every round (non-decreasing), ``history`` the mean log-likelihood (>= it)."""
        iterations = check_int("iterations", iterations, 1)
        steps = check_int("steps", steps, 1)
        lr = check_float("lr", lr, positive=True)
        self.init(x)
        x = self._x(x)
        logits = np.zeros((x.shape[0], self.n_components))

        def per_example(a, lg):
            lq = lg - _logsumexp(lg, axis=1)[:, None]
            q = np.exp(lq)
            return (q * (a - lq)).sum(axis=1), q, lq

        self.history, self.elbo_history = [], []
        for _ in range(iterations):
            a = self._log_joint(x)
            for _ in range(steps):
                f0, q, lq = per_example(a, logits)
                g = q * (a - lq - f0[:, None])
                eta = np.full(x.shape[0], lr)
                for _ in range(40):  # backtracking per example
                    cand = logits + eta[:, None] * g
                    f1 = per_example(a, cand)[0]
                    bad = f1 < f0
                    if not bad.any():
                        break
                    eta[bad] *= 0.5
                logits = np.where(bad[:, None], logits, cand)
            q = per_example(a, logits)[1]
            self.m_step(x, q)
            a = self._log_joint(x)
            self.elbo_history.append(float(per_example(a, logits)[0].mean()))
            self.history.append(float(_logsumexp(a, axis=1).mean()))
        self.q_ = per_example(a, logits)[1]
        return self
