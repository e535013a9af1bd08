"""The lessons: :func:`naive_vs_importance` (prior sampling against importance sampling as K
grows), :func:`amortization_gap` (a per-point optimized q against the encoder's) and
:func:`learned_prior` (the KL term under N(0, I), a fitted MoG and the aggregate posterior)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import random as _random
from .._validation import check_float, check_int
from ..exact import GaussianMixture, _logsumexp
from ..hvae import HVAE
from ..surgery import log_aggregate_posterior
from ..vae import VAE
from .contexts import LatentContext
from .estimates import LOG_2PI, STREAMS, mc


# ---- the lessons -------------------------------------------------------------------------------
@dataclass
class SamplingComparison:
    """log p(x) by naive Monte Carlo, log (1/K) Σ p(x|z_k), z_k ~ p(z), against importance sampling,
    log (1/K) Σ p(x, z_k)/q(z_k|x), z_k ~ q(z|x) (MATH.md §3), for each K: the mean over repeats and
    points, and the spread (standard deviation over repeats, averaged over the points). ``log_p``:
    the closed form (mean over the points) where the model has one."""
    ks: list
    naive_mean: np.ndarray
    naive_std: np.ndarray
    importance_mean: np.ndarray
    importance_std: np.ndarray
    log_p: float | None
    n_repeats: int

    def __repr__(self) -> str:
        rows = [f"{'K':>7s} {'naive mean':>12s} {'naive sd':>10s} {'IS mean':>12s} {'IS sd':>10s}"]
        rows += [f"{k:7d} {a:12.4f} {b:10.4f} {c:12.4f} {d:10.4f}" for k, a, b, c, d in
                 zip(self.ks, self.naive_mean, self.naive_std, self.importance_mean, self.importance_std)]
        tail = f"exact log p(x) = {self.log_p:.4f}" if self.log_p is not None else "no closed form"
        return f"SamplingComparison over {self.n_repeats} repeats [nats]\n" + "\n".join(rows) + "\n" + tail


def naive_vs_importance(model, x, ks=(1, 10, 100, 1000), n_repeats: int = 10, seed: int = 0) -> SamplingComparison:
    """The lesson "why importance sampling": both estimators of log p(x) for every K in ks on a
    Gaussian1D, LinearGaussian or VAE. The naive one samples the prior, where p(x|z) is almost
    always tiny: its spread falls slowly with K and its mean sits far below log p(x)."""
    try:
        ks = sorted({check_int("ks[i]", k, 1) for k in ks})
    except TypeError:
        raise ValueError(f"ks must be an iterable of positive integers, got {ks!r}") from None
    if not ks:
        raise ValueError("ks must hold at least one positive integer, got none")
    R = check_int("n_repeats", n_repeats, 2)
    seed = check_int("seed", seed, 0)
    c = LatentContext(model, x, 2, seed)
    K = ks[-1]
    naive, imp = np.empty((R, len(ks), c.n)), np.empty((R, len(ks), c.n))
    for r in range(R):
        zp = _random.normal((K, c.n, c.Z), seed=seed, stream=STREAMS["lesson"] * 1000 + 2 * r)
        eps = _random.normal((K, c.n, c.Z), seed=seed, stream=STREAMS["lesson"] * 1000 + 2 * r + 1)
        z = c.mu + np.exp(0.5 * c.lv) * eps
        lxp = c.log_lik(zp)
        lw = c.log_lik(z) - 0.5 * (LOG_2PI + z * z).sum(axis=2) + 0.5 * (LOG_2PI + c.lv + eps * eps).sum(axis=2)
        for j, k in enumerate(ks):
            naive[r, j] = _logsumexp(lxp[:k], axis=0) - math.log(k)
            imp[r, j] = _logsumexp(lw[:k], axis=0) - math.log(k)
    lp = None if c.log_marginal is None else float(np.mean(c.log_marginal))
    return SamplingComparison(ks, naive.mean(axis=(0, 2)), naive.std(axis=0, ddof=1).mean(axis=1),
                              imp.mean(axis=(0, 2)), imp.std(axis=0, ddof=1).mean(axis=1), lp, R)


@dataclass
class AmortizationResult:
    """Per point (n,): ``log_p`` (L_K with large K), ``elbo_optimized`` (the ELBO of a q(z|x_i)
    optimized for that point alone), ``elbo_encoder`` (the encoder's q). The inference gap
    log p − ELBO_encoder splits into the approximation gap log p − ELBO_optimized (the Gaussian
    family's limit) and the amortization gap ELBO_optimized − ELBO_encoder (Cremer et al. 2018)."""
    log_p: np.ndarray
    elbo_optimized: np.ndarray
    elbo_encoder: np.ndarray
    steps: int

    @property
    def approximation_gap(self) -> float:
        return float(np.mean(self.log_p - self.elbo_optimized))

    @property
    def amortization_gap(self) -> float:
        return float(np.mean(self.elbo_optimized - self.elbo_encoder))

    def __repr__(self) -> str:
        f = lambda a: f"{np.mean(a):10.4f}"  # noqa: E731
        return (f"AmortizationResult(n={self.log_p.shape[0]}, steps={self.steps}) [nats, mean over the points]\n"
                f"{'log p(x) (L_K)':>28s}: {f(self.log_p)}\n{'ELBO, optimized q':>28s}: {f(self.elbo_optimized)}\n"
                f"{'ELBO, encoder q':>28s}: {f(self.elbo_encoder)}\n"
                f"{'approximation gap':>28s}: {self.approximation_gap:10.4f}\n"
                f"{'amortization gap':>28s}: {self.amortization_gap:10.4f}")


def amortization_gap(vae, x, steps: int = 200, lr: float = 0.05, n_samples: int = 16, n_eval: int = 1000,
                     k: int = 5000, seed: int = 0) -> AmortizationResult:
    """The amortization gap of a trained ek.VAE on the points x (n, D): for each point, a copy of the
    VAE whose encoder heads ignore x (weights 0) and output free biases (mu, logvar), started at the
    encoder's q(z|x_i) and moved by Adam on that point's ELBO (the engine's gradient with respect to
    the two biases, n_samples samples a step, fresh noise each step); then the ELBO of both q's with
    n_eval samples and L_K."""
    if not isinstance(vae, VAE):
        raise ValueError(f"vae must be an ek.VAE, got {type(vae).__name__}")
    xx = vae._x(x)
    steps = check_int("steps", steps, 1)
    lr = check_float("lr", lr, positive=True)
    S = check_int("n_samples", n_samples, 1)
    n_eval = check_int("n_eval", n_eval, 2)
    k = check_int("k", k, 1)
    seed = check_int("seed", seed, 0)
    c = vae.config
    free = VAE(c["x_dim"], c["z_dim"], hidden=c["hidden"], likelihood=c["likelihood"], activation=c["activation"],
               dtype=c["dtype"], seed=c["seed"], decoder_var=c["decoder_var"])
    params = vae.parameters()
    params["encoder.mu.weight"] = np.zeros_like(params["encoder.mu.weight"])
    params["encoder.logvar.weight"] = np.zeros_like(params["encoder.logvar.weight"])
    mu, lv = vae.encode(xx)
    names_ = ("encoder.mu.bias", "encoder.logvar.bias")
    opt = np.empty(xx.shape[0])
    for i in range(xx.shape[0]):
        theta = [np.asarray(mu[i], np.float64).copy(), np.asarray(lv[i], np.float64).copy()]
        m1, m2 = [np.zeros_like(t) for t in theta], [np.zeros_like(t) for t in theta]
        for s in range(steps):
            params[names_[0]], params[names_[1]] = theta
            free.set_parameters(params)
            _, g = free.elbo_grad(xx[i:i + 1], n_samples=S, seed=seed * 100003 + s + 1)
            for j, nm in enumerate(names_):  # Adam ascent on the ELBO
                gj = np.asarray(g[nm], np.float64)
                m1[j] = 0.9 * m1[j] + 0.1 * gj
                m2[j] = 0.999 * m2[j] + 0.001 * gj * gj
                theta[j] = theta[j] + lr * (m1[j] / (1 - 0.9 ** (s + 1))) / (np.sqrt(m2[j] / (1 - 0.999 ** (s + 1))) + 1e-8)
        params[names_[0]], params[names_[1]] = theta
        free.set_parameters(params)
        opt[i] = free.elbo(xx[i:i + 1], n_samples=n_eval, seed=seed).elbo[0]
    enc = np.asarray(vae.elbo(xx, n_samples=n_eval, seed=seed).elbo, np.float64)
    return AmortizationResult(np.asarray(vae.log_likelihood(xx, k=k, seed=seed), np.float64), opt, enc, steps)


@dataclass
class LearnedPriorResult:
    """The average KL term (1/n) Σ_i KL(q(z|x_i) ‖ p(z)) (nats, ± Monte-Carlo s.e.) for three priors
    p(z): N(0, I), a mixture of Gaussians fitted by EM to samples of the aggregate posterior, and
    the aggregate posterior q_agg itself (of ``x_prior``'s encodings). With the encoder and decoder
    fixed, the ELBO rises by exactly the drop of the KL term; when x_prior is x, q_agg is the optimal
    prior and its KL term is the mutual information I_q (MATH.md §4)."""
    kl: dict
    reconstruction: tuple | None

    def __repr__(self) -> str:
        rows = [f"{name:>22s}: KL {m:9.4f} ± {s:.4f}" for name, (m, s) in self.kl.items()]
        if self.reconstruction is not None:
            r = self.reconstruction[0]
            rows += [f"{'ELBO with ' + name:>34s}: {r - m:10.4f}" for name, (m, s) in self.kl.items()]
        return "LearnedPriorResult [nats, mean over the points]\n" + "\n".join(rows)


def learned_prior(model, x, x_prior=None, n_components: int = 10, n_samples: int = 16, seed: int = 0) -> LearnedPriorResult:
    """The lesson "a learned prior": the KL term of a Gaussian1D, LinearGaussian, VAE or HVAE (its
    top level) under N(0, I), a MoG (``ek.exact.GaussianMixture`` with n_components, EM on 4096
    samples of q_agg) and the aggregate posterior, all of ``x_prior``'s encodings (default x)."""
    S = check_int("n_samples", n_samples, 2)
    seed = check_int("seed", seed, 0)
    Kc = check_int("n_components", n_components, 1)

    def enc(data):
        if isinstance(model, HVAE):
            m, v = model.encode_top(model._x(data))
            return np.asarray(m, np.float64), np.asarray(v, np.float64), None
        lc = LatentContext(model, data, S, seed)
        r = mc(lc.engine[0], "q")
        return lc.mu, lc.lv, (r.value, r.se)

    mu, lv, rec = enc(x)
    mp, lp_ = (mu, lv) if x_prior is None else enc(x_prior)[:2]
    n, Z = mu.shape
    eps = _random.normal((S, n, Z), seed=seed, stream=STREAMS["q"])
    z = mu + np.exp(0.5 * lv) * eps
    lq = -0.5 * (LOG_2PI + lv + eps * eps).sum(axis=2)
    lstd = -0.5 * (LOG_2PI + z * z).sum(axis=2)
    zf = z.reshape(S * n, Z)
    lagg = log_aggregate_posterior(zf, mp, lp_).reshape(S, n)
    m_fit = mp.shape[0]
    e2 = _random.normal((max(1, 4096 // m_fit), m_fit, Z), seed=seed, stream=STREAMS["lesson"])
    zs = (mp + np.exp(0.5 * lp_) * e2).reshape(-1, Z)
    mog = GaussianMixture(min(Kc, zs.shape[0]), seed=seed, reg_covar=1e-4).fit(zs, iterations=100)
    lmog = mog.log_likelihood(zf).reshape(S, n)
    kl = {}
    for name, lpz in (("N(0, I)", lstd), (f"MoG ({Kc} components)", lmog), ("aggregate posterior", lagg)):
        e = mc(lq - lpz, "q")
        kl[name] = (e.value, e.se)
    return LearnedPriorResult(kl, rec)
