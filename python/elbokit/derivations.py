"""The derivation tracer: every line of the standard ELBO derivations evaluated on a model.

A :class:`Derivation` is data: a list of :class:`Step` s, each with its LaTeX, a function that
estimates its value on (model, x) with a Monte-Carlo standard error (and its closed form where the
model has one), and the relation to the next line (``=``, ``≥``, ``≤``) with its justification.
``trace(derivation, model, x, n_samples, seed)`` evaluates every line and checks every relation
(:class:`TraceResult`).

Estimates. Every line is a mean over the n data points of a per-point quantity. A Monte-Carlo
line carries ``units`` (S, n): per-sample contributions whose mean over samples is the per-point
estimate (for the log of a mean, the delta-method linearization
``log w̄ + w/w̄ − 1``). Its standard error is conditional on x (Monte-Carlo noise only):
``se² = Σ_i var_s(units[:, i]) / (S n²)``. Two lines drawn from the same samples (the same ``key``)
are compared by their paired differences, so the standard error of a difference is honest.

Relations (the lead's rule): ``=`` holds if |a − b| <= 4 s.e.(a − b), ``≥`` if a − b >= −4 s.e.,
``≤`` if a − b <= 4 s.e.; between two exact values the floor is 1e-9 relative (float64 code paths;
1e-5 where a float32 engine computed a line). A line with a closed form also agrees with it within
4 s.e. A log-mean estimate whose smallest effective sample size is below 5 is marked unreliable
(its delta-method s.e. is not trustworthy), and its relations read "?" rather than a verdict.

Derivations (``DERIVATIONS``; MATH.md sections in brackets): "jensen" (§2), "gap" (§2),
"reconstruction_kl" (§2), "hvae" (§6), "diffusion" (§7), "em" (§5), "surgery" (§4).
Models: ``ek.exact.Gaussian1D`` (closed forms everywhere), ``ek.exact.LinearGaussian`` (pPCA; q is
the mean-field q(z|x) = N(posterior mean, diag of the posterior covariance), the linear VAE of
``vae_parameters``), ``ek.exact.GaussianMixture`` (discrete latent, q = the responsibilities or a
given ``q``), ``ek.VAE``, ``ek.HVAE``, ``ek.Diffusion``.

The lessons: :func:`naive_vs_importance` (p(x) = E_{p(z)} p(x|z) against importance sampling with
q, the spread over repeats as K grows), :func:`amortization_gap` (a per-example optimized q against
the encoder's, both against log p) and :func:`learned_prior` (the KL term under N(0, I), a fitted
mixture of Gaussians and the aggregate posterior as p(z)).
"""
from __future__ import annotations

import copy
import html
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import numpy as np

from . import random as _random
from ._validation import as_array, check_float, check_int
from .diffusion import Diffusion
from .exact import GaussianMixture, Gaussian1D, LinearGaussian, _logsumexp
from .hvae import HVAE
from .surgery import log_aggregate_posterior
from .vae import VAE

__all__ = ["Step", "Derivation", "Estimate", "TraceResult", "trace", "DERIVATIONS", "get", "names",
           "naive_vs_importance", "amortization_gap", "learned_prior"]

LOG_2PI = math.log(2.0 * math.pi)
#: Streams of the tracer's samples (index (s·n + i)·Z + j): z ~ q, z ~ p(z), the large importance
#: sample for log p(x), the discrete latent k ~ q, the diffusion chain of the HVAE form.
STREAMS = {"q": 21, "prior": 22, "big": 23, "discrete": 24, "chain": 25, "lesson": 26}
Z_SIGMAS = 4.0   # the relation checks' width in standard errors
RTOL64, RTOL32 = 1e-9, 1e-5
MIN_ESS = 5.0


# ---- estimates ---------------------------------------------------------------------------------
@dataclass
class Estimate:
    """One line's value (the mean over the n points) with its Monte-Carlo s.e. (0 for an exact line),
    ``units`` (S, n) when Monte Carlo (see the module docstring), the sample set ``key``, the
    closed form ``exact`` where the model has one, the precision floor ``rtol``, and ``reliable``."""
    value: float
    se: float
    units: np.ndarray | None = None
    key: str | None = None
    exact: float | None = None
    rtol: float = RTOL64
    reliable: bool = True
    note: str = ""


def _se(units: np.ndarray) -> float:
    """Conditional-on-x standard error of the mean of units (S, n); S = 1 falls back to the spread
    over all entries (data spread included: conservative)."""
    S, n = units.shape
    if S >= 2:
        return float(math.sqrt(units.var(axis=0, ddof=1).sum() / S) / n)
    return float(units.std(ddof=1) / math.sqrt(units.size)) if units.size > 1 else float("nan")


def mc(units, key: str, exact=None, rtol: float = RTOL64, note: str = "") -> Estimate:
    """A Monte-Carlo line from per-sample values (S, n)."""
    u = np.asarray(units, dtype=np.float64)
    ex = None if exact is None else float(np.mean(exact))
    return Estimate(float(u.mean()), _se(u), u, key, ex, rtol, True, note)


def exact(values, rtol: float = RTOL64, note: str = "") -> Estimate:
    """An exact line: the mean over the points of a closed form (n,)."""
    v = float(np.mean(values))
    return Estimate(v, 0.0, None, None, v, rtol, True, note)


def log_mean(logw, key: str, exact=None, rtol: float = RTOL64, note: str = "") -> Estimate:
    """log of a Monte-Carlo mean per point, log (1/S) Σ_s w_s from logw (S, n), linearized (delta
    method) to units log w̄ + w/w̄ − 1; unreliable when the smallest effective sample size
    (Σw)²/Σw² is below MIN_ESS."""
    lw = np.asarray(logw, dtype=np.float64)
    S = lw.shape[0]
    lm = _logsumexp(lw, axis=0) - math.log(S)                   # (n,)
    r = np.exp(lw - lm)                                         # w / w̄, mean 1 over s
    ess = (r.sum(axis=0) ** 2 / (r * r).sum(axis=0)).min()
    e = mc(lm + r - 1.0, key, exact, rtol, note)
    e.reliable = bool(ess >= MIN_ESS)
    e.note = (note + "; " if note else "") + f"min ESS {ess:.3g} of {S}"
    return e


def _check(a: Estimate, b: Estimate, relation: str) -> tuple[float, float, bool | None]:
    """(difference a − b, its s.e., verdict) for the relation a {=, ≥, ≤} b."""
    d = a.value - b.value
    if a.units is not None and b.units is not None and a.key == b.key and a.units.shape == b.units.shape:
        se = _se(a.units - b.units)
    else:
        se = math.sqrt(a.se ** 2 + b.se ** 2)
    tol = max(a.rtol, b.rtol) * max(1.0, abs(a.value), abs(b.value))
    if relation == "=":
        ok = abs(d) <= Z_SIGMAS * se + tol
    elif relation == "≥":
        ok = d >= -Z_SIGMAS * se - tol
    else:
        ok = d <= Z_SIGMAS * se + tol
    if abs(d) <= tol and se <= tol:   # the same number: holds whatever the error bars' reliability
        return d, se, True
    return d, se, (bool(ok) if a.reliable and b.reliable else None)


# ---- derivations as data -----------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    """One line of a derivation: ``latex`` and a plain ``text``; ``estimate(ctx)`` -> Estimate (a
    line) or a list of (latex, text, Estimate) (the terms of the line above, shown, not chained);
    ``relation`` to the next line ("=", "≥", "≤"; None for the last) and ``why`` it holds."""
    latex: str
    text: str
    estimate: Callable
    relation: str | None = None
    why: str = ""
    terms: bool = False


@dataclass(frozen=True)
class Derivation:
    """A named derivation: its steps, the model kinds it is traced on and the MATH.md section."""
    name: str
    title: str
    steps: tuple
    models: tuple
    section: str
    context: str = "model"   # "model", "em" (one EM round) or "surgery" (the encodings of x)

    def __repr__(self) -> str:
        return f"Derivation({self.name!r}: {self.title}; {len(self.steps)} steps; models {', '.join(self.models)})"


# ---- model contexts ----------------------------------------------------------------------------
def _gauss_logpdf(z, mu, lv):
    """log N(z; mu, diag exp(lv)) summed over the last axis."""
    return -0.5 * (LOG_2PI + lv + (z - mu) ** 2 * np.exp(-lv)).sum(axis=-1)


def _linear_vae(enc_w, enc_b, enc_lv, dec_w, dec_b, v) -> VAE:
    """A float64 linear ek.VAE with a fixed decoder variance v and a constant q variance exp(enc_lv)."""
    k, D = enc_w.shape
    vae = VAE(D, k, hidden=(), likelihood="gaussian", decoder_var=float(v), dtype="float64")
    vae.set_parameters({"encoder.mu.weight": enc_w, "encoder.mu.bias": enc_b,
                        "encoder.logvar.weight": np.zeros((k, D)), "encoder.logvar.bias": enc_lv,
                        "decoder.out.weight": dec_w, "decoder.out.bias": dec_b})
    return vae


class LatentContext:
    """A model with a continuous Gaussian latent, q(z|x) = N(mu, diag exp(lv)) and p(z) = N(0, I),
    on data x (n, D): per-sample log-densities (S, n) under z ~ q and z ~ p(z), the engine's ELBO
    terms at the same noise, and the closed forms where the model has them (MATH.md §2, §5)."""

    def __init__(self, model, x, S: int, seed: int, big_k: int = 2000):
        self.model, self.S, self.seed, self.big_k = model, S, seed, big_k
        self.kind = type(model).__name__
        if isinstance(model, Gaussian1D):
            a = np.asarray(x)
            if a.ndim == 2 and a.shape[1] == 1:
                a = a[:, 0]
            if a.ndim != 1:
                raise ValueError(f"x must be a 1-D array of shape (n,) (or (n, 1)) for Gaussian1D, got shape {a.shape}")
            self.x1 = as_array("x", a, np.float64, ndim=1)
            self.x = self.x1[:, None]
            m = model
            self.vae = _linear_vae(np.array([[m.a]]), np.array([m.b]), np.array([math.log(m.w)]),
                                   np.array([[m.c]]), np.array([m.d]), m.v)
            self.rtol = RTOL64
        elif isinstance(model, LinearGaussian):
            model._check_fitted()
            self.x = model._x(x)
            p = model.vae_parameters()
            self.vae = _linear_vae(p["encoder.mu.weight"], p["encoder.mu.bias"], p["encoder.logvar.bias"],
                                   p["decoder.out.weight"], p["decoder.out.bias"], model.variance)
            self.rtol = RTOL64
        elif isinstance(model, VAE):
            self.vae = model
            self.x = model._x(x).astype(np.float64)
            self.rtol = RTOL64 if model.dtype == "float64" else RTOL32
        else:
            raise ValueError(f"model must be a Gaussian1D, LinearGaussian or VAE here, got {type(model).__name__}")
        self.n, self.D = self.x.shape
        self.Z = self.vae.z_dim
        mu, lv = self.vae.encode(self.x.astype(self.vae._np_dtype))
        self.mu, self.lv = np.asarray(mu, np.float64), np.asarray(lv, np.float64)

    # -- samples -------------------------------------------------------------------------------
    @cached_property
    def eps(self):
        return _random.normal((self.S, self.n, self.Z), seed=self.seed, stream=STREAMS["q"])

    @cached_property
    def z(self):
        return self.mu + np.exp(0.5 * self.lv) * self.eps                           # (S, n, Z)

    def log_lik(self, z):
        """log p(x|z) (S, n) for z (S, n, Z), from the decoder's outputs (MATH.md §1)."""
        S = z.shape[0]
        zf = z.reshape(S * self.n, self.Z).astype(self.vae._np_dtype)
        xt = np.tile(self.x, (S, 1))
        if self.vae.likelihood == "bernoulli":
            l = np.asarray(self.vae.decode(zf, logits=True), np.float64)
            out = (xt * l - (np.maximum(l, 0) + np.log1p(np.exp(-np.abs(l))))).sum(axis=1)
        else:
            m = np.asarray(self.vae.decode(zf), np.float64)
            v = self.vae.decoder_variance()
            out = -0.5 * (LOG_2PI + np.log(v) + (xt - m) ** 2 / v).sum(axis=1)
        return out.reshape(S, self.n)

    @cached_property
    def lx(self):            # log p(x|z), z ~ q
        return self.log_lik(self.z)

    @cached_property
    def lpz(self):           # log p(z)
        return -0.5 * (LOG_2PI + self.z ** 2).sum(axis=2)

    @cached_property
    def lq(self):            # log q(z|x)
        return -0.5 * (LOG_2PI + self.lv + self.eps ** 2).sum(axis=2)

    @cached_property
    def lj(self):            # log p(x, z)
        return self.lx + self.lpz

    @cached_property
    def lx_prior(self):      # log p(x|z'), z' ~ p(z)
        zp = _random.normal((self.S, self.n, self.Z), seed=self.seed, stream=STREAMS["prior"])
        return self.log_lik(zp)

    @cached_property
    def engine(self):
        """The engine's per-sample (reconstruction, KL Monte Carlo) (S, n) and analytic KL (n,) at
        the same noise: x tiled S times, one sample per row."""
        xt = np.tile(self.x, (self.S, 1)).astype(self.vae._np_dtype)
        e = self.eps.reshape(1, self.S * self.n, self.Z)
        r_mc = self.vae.elbo(xt, kl="mc", eps=e)
        r_an = self.vae.elbo(xt, kl="analytic", eps=e)
        sh = (self.S, self.n)
        return (np.asarray(r_mc.reconstruction, np.float64).reshape(sh), np.asarray(r_mc.kl, np.float64).reshape(sh),
                np.asarray(r_an.kl, np.float64).reshape(sh)[0])

    @cached_property
    def log_p_big(self):
        """log p(x) by importance sampling with big_k samples z ~ q (L_K, MATH.md §3) (K, n) log-weights."""
        K = self.big_k
        eps = _random.normal((K, self.n, self.Z), seed=self.seed, stream=STREAMS["big"])
        z = self.mu + np.exp(0.5 * self.lv) * eps
        return (self.log_lik(z) - 0.5 * (LOG_2PI + z * z).sum(axis=2)
                + 0.5 * (LOG_2PI + self.lv + eps * eps).sum(axis=2))

    @cached_property
    def lpost(self):
        """log p(z|x) (S, n) at z ~ q: the exact posterior (Gaussian1D, LinearGaussian)."""
        m = self.model
        if isinstance(m, Gaussian1D):
            pm, pv = m.posterior(self.x1)
            return -0.5 * (LOG_2PI + np.log(pv) + (self.z[..., 0] - pm) ** 2 / pv)
        pm, P = m.posterior(self.x)
        L = np.linalg.cholesky(P)
        r = np.linalg.solve(L, (self.z - pm).reshape(-1, self.Z).T).T.reshape(self.z.shape)
        return -0.5 * (self.Z * LOG_2PI + 2 * np.log(np.diag(L)).sum() + (r * r).sum(axis=2))

    # -- closed forms (n,) or None -------------------------------------------------------------
    @property
    def has_posterior(self) -> bool:
        return isinstance(self.model, (Gaussian1D, LinearGaussian))

    @cached_property
    def log_marginal(self):
        m = self.model
        if isinstance(m, Gaussian1D):
            return m.log_marginal(self.x1)
        if isinstance(m, LinearGaussian):
            return m.log_likelihood(self.x)
        return None

    @cached_property
    def elbo_terms(self):
        """(elbo, reconstruction, kl) (n,) in closed form (MATH.md §5), or None."""
        m = self.model
        if isinstance(m, Gaussian1D):
            return m.elbo(self.x1), m.reconstruction(self.x1), m.kl_prior(self.x1)
        if isinstance(m, LinearGaussian):
            return LinearGaussian.vae_elbo(self.vae, self.x)
        return None

    @cached_property
    def gap(self):
        """KL(q(z|x) ‖ p(z|x)) (n,) between Gaussians, closed form, or None."""
        m = self.model
        if isinstance(m, Gaussian1D):
            return m.gap(self.x1)
        if isinstance(m, LinearGaussian):
            pm, P = m.posterior(self.x)
            Pinv = np.linalg.inv(P)
            d = pm - self.mu
            s = np.exp(self.lv)
            return 0.5 * ((s * np.diag(Pinv)).sum(axis=1) + np.einsum("ni,ij,nj->n", d, Pinv, d) - self.Z
                          + np.linalg.slogdet(P)[1] - self.lv.sum(axis=1))
        return None


class MixtureContext:
    """A mixture of Gaussians (a discrete latent k, MATH.md §5) on x (n, D) with q (n, K): the
    responsibilities unless given. Samples k ~ q(k|x_i) (S, n) by inversion of uniforms."""

    def __init__(self, model: GaussianMixture, x, S: int, seed: int, q=None):
        model._check_fitted()
        self.model, self.S, self.seed = model, S, seed
        self.kind = "GaussianMixture"
        self.x = model._x(x)
        self.n = self.x.shape[0]
        self.a = model.log_joint(self.x)                                   # (n, K) log p(x, k)
        self.lpx = _logsumexp(self.a, axis=1)                              # (n,)
        self.post = np.exp(self.a - self.lpx[:, None])                     # (n, K)
        if q is None:
            self.q = self.post
        else:
            q = as_array("q", q, np.float64, ndim=2, shape=self.a.shape)
            if (q < 0).any() or not np.allclose(q.sum(axis=1), 1.0, atol=1e-8):
                raise ValueError("q must have non-negative rows that sum to 1")
            self.q = q
        self.rtol = RTOL64
        u = _random.uniform((S, self.n), seed=seed, stream=STREAMS["discrete"])
        cdf = np.cumsum(self.q, axis=1)
        self.k = np.minimum((u[..., None] > cdf[None]).sum(axis=2), self.q.shape[1] - 1)   # (S, n)
        rows = np.arange(self.n)[None, :]
        with np.errstate(divide="ignore"):
            self.lq = np.log(self.q[rows, self.k])
            self.lj = self.a[rows, self.k]
            self.lpost = np.log(self.post[rows, self.k])
            self.lpz = np.log(model.weights_)[self.k]
        self.lx = self.lj - self.lpz
        self.log_marginal = self.lpx
        with np.errstate(divide="ignore", invalid="ignore"):
            lq_all = np.where(self.q > 0, np.log(np.where(self.q > 0, self.q, 1.0)), 0.0)
            kl_prior = (self.q * (lq_all - np.log(model.weights_))).sum(axis=1)
            rec = (self.q * (self.a - np.log(model.weights_))).sum(axis=1)
            self.gap = (self.q * (lq_all - np.log(np.maximum(self.post, 1e-300)))).sum(axis=1)
        self.elbo_terms = (rec - kl_prior, rec, kl_prior)

    has_posterior = True


def _affine_sq(m, C, A, b):
    """E‖A Z + b‖² per point for Z ~ N(m (n, K), C (K, K)), elementwise over the rows of A:
    (n, d) of (A m + b)² + diag(A C Aᵀ)."""
    return (m @ A.T + b) ** 2 + np.einsum("ij,jk,ik->i", A, C, A)[None, :]


def hvae_linear_closed_form(model: HVAE):
    """The exact ELBO terms and log p(x) of a *linear* Gaussian HVAE (MATH.md §6), or None: every
    conditional is linear-Gaussian when hidden=(), likelihood="gaussian", L >= 2 and every
    log-variance head has zero weights (constant variances). Then q(z_{1:L}|x) is one Gaussian
    N(m(x), C) (propagated level by level in q's ancestral order: Markov bottom-up, top-down by
    precision weighting), every E_q[log density] is a quadratic expectation, and p(x) =
    N(W μ_1 + b, W Σ_1 Wᵀ + diag v) with (μ_1, Σ_1) the prior's marginal of z_1.
    Returns f(x) -> dict(reconstruction (n,), levels (n, L), elbo (n,), log_p (n,))."""
    if not isinstance(model, HVAE) or model.hidden != () or model.likelihood != "gaussian" or model.levels < 2:
        return None
    p = {k: np.asarray(v, np.float64) for k, v in model.parameters().items()}
    if any(np.any(v != 0) for k, v in p.items() if k.endswith("logvar.weight")):
        return None
    L, zd = model.levels, model.z_dims
    off = np.concatenate([[0], np.cumsum(zd)]).astype(int)
    K = int(off[-1])
    sl = [slice(off[l], off[l + 1]) for l in range(L)]                 # level l + 1's block of Z
    v = model.decoder_variance()
    W, w0 = p["decoder.0.out.weight"], p["decoder.0.out.bias"]
    F = {l: p[f"decoder.{l}.mu.weight"] for l in range(1, L)}         # p(z_l|z_{l+1}), l = 1..L-1 (0-based: level l)
    f = {l: p[f"decoder.{l}.mu.bias"] for l in range(1, L)}
    t = {l: np.exp(p[f"decoder.{l}.logvar.bias"]) for l in range(1, L)}
    Em = [p[f"encoder.{l}.mu.weight"] for l in range(L)]
    em = [p[f"encoder.{l}.mu.bias"] for l in range(L)]
    ev = [np.exp(p[f"encoder.{l}.logvar.bias"]) for l in range(L)]

    def fn(x):
        n = x.shape[0]
        m, C = np.zeros((n, K)), np.zeros((K, K))
        qvar = [None] * L

        def put(l, A, b, s):           # z_l = A Z + b + N(0, diag s), A touching set levels only
            m[:, sl[l]] = m @ A.T + b
            C[sl[l], :] = A @ C
            C[:, sl[l]] = C[sl[l], :].T
            C[sl[l], sl[l]] = A @ C @ A.T + np.diag(s)
            qvar[l] = s
        if model.structure == "markov":
            put(0, np.zeros((zd[0], K)), x @ Em[0].T + em[0], ev[0])
            for l in range(1, L):
                A = np.zeros((zd[l], K))
                A[:, sl[l - 1]] = Em[l]
                put(l, A, np.broadcast_to(em[l], (n, zd[l])), ev[l])
        else:
            put(L - 1, np.zeros((zd[L - 1], K)), x @ Em[L - 1].T + em[L - 1], ev[L - 1])
            for l in range(L - 2, -1, -1):   # precision weighting of the bottom-up N(mu_d, s_d) and p(z_l|z_{l+1})
                s = 1.0 / (1.0 / ev[l] + 1.0 / t[l + 1])
                A = np.zeros((zd[l], K))
                A[:, sl[l + 1]] = (s / t[l + 1])[:, None] * F[l + 1]
                put(l, A, s * ((x @ Em[l].T + em[l]) / ev[l] + f[l + 1] / t[l + 1]), s)
        # E_q[log p(x|z_1)]
        A = np.zeros((x.shape[1], K))
        A[:, sl[0]] = -W
        rec = -0.5 * (LOG_2PI + np.log(v) + _affine_sq(m, C, A, x - w0) / v).sum(axis=1)
        levels = np.empty((n, L))
        for l in range(L):
            ent = 0.5 * (LOG_2PI + np.log(qvar[l]) + 1.0).sum()         # −E log q(z_l|its parents)
            A = np.zeros((zd[l], K))
            A[:, sl[l]] = np.eye(zd[l])
            if l == L - 1:
                lp = -0.5 * (LOG_2PI + _affine_sq(m, C, A, 0.0)).sum(axis=1)
            else:
                A[:, sl[l + 1]] = -F[l + 1]
                lp = -0.5 * (LOG_2PI + np.log(t[l + 1]) + _affine_sq(m, C, A, -f[l + 1]) / t[l + 1]).sum(axis=1)
            levels[:, l] = -ent - lp
        # log p(x): the prior's marginal of z_1, then x
        mu, S = np.zeros(zd[L - 1]), np.eye(zd[L - 1])
        for l in range(L - 2, -1, -1):
            mu, S = F[l + 1] @ mu + f[l + 1], F[l + 1] @ S @ F[l + 1].T + np.diag(t[l + 1])
        cov = W @ S @ W.T + np.diag(v)
        Lc = np.linalg.cholesky(cov)
        r = np.linalg.solve(Lc, (x - (W @ mu + w0)).T)
        logp = -0.5 * (x.shape[1] * LOG_2PI + 2 * np.log(np.diag(Lc)).sum() + (r * r).sum(axis=0))
        return {"reconstruction": rec, "levels": levels, "elbo": rec - levels.sum(axis=1), "log_p": logp}
    return fn


class HVAEContext:
    """An ek.HVAE on x (n, D): per-sample level terms at one noise, Monte Carlo and analytic, log p(x)
    by importance sampling with big_k samples of the chain, and the closed forms of a linear
    Gaussian HVAE (:func:`hvae_linear_closed_form`) (MATH.md §6)."""

    def __init__(self, model: HVAE, x, S: int, seed: int, big_k: int = 1000):
        self.model, self.S, self.seed, self.kind, self.big_k = model, S, seed, "HVAE", big_k
        self.x = model._x(x)
        self.n = self.x.shape[0]
        self.rtol = RTOL64 if model.dtype == "float64" else RTOL32
        self.rec, self.kl_mc, self.kl_an, self.rec_an = self._draw(S, STREAMS["q"])
        cf = hvae_linear_closed_form(model)
        self.closed = None if cf is None else cf(np.asarray(self.x, np.float64))

    def _draw(self, S, stream):
        zd, n = self.model.z_dims, self.n
        flat = _random.normal(S * n * sum(zd), seed=self.seed, stream=stream)
        eps, off = [], 0
        for z in zd:
            eps.append(flat[off:off + S * n * z].reshape(1, S * n, z))
            off += S * n * z
        xt = np.tile(self.x, (S, 1))
        r_mc, r_an = self.model.elbo(xt, kl="mc", eps=eps), self.model.elbo(xt, kl="analytic", eps=eps)
        return (np.asarray(r_mc.reconstruction, np.float64).reshape(S, n),
                np.asarray(r_mc.kl_levels, np.float64).reshape(S, n, -1),
                np.asarray(r_an.kl_levels, np.float64).reshape(S, n, -1),
                np.asarray(r_an.reconstruction, np.float64).reshape(S, n))

    @cached_property
    def log_p_big(self):
        rec, kl, _, _ = self._draw(self.big_k, STREAMS["big"])
        return rec - kl.sum(axis=2)                                         # log w (K, n)

    def exact(self, key, level=None):
        if self.closed is None:
            return None
        v = self.closed[key]
        return v if level is None else v[:, level]


def diffusion_linear_closed_form(model: Diffusion):
    """The exact ELBO terms of a diffusion model whose network is affine in x_t (hidden=(),
    prediction="epsilon", data="continuous"), or None (MATH.md §7). Then ε_θ(x_t, t) = A x_t + b_t
    (A and b_t read off the network by probing it at 0 and the unit vectors), μ_θ = P_t x_t + r_t,
    and with x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε every term is a Gaussian expectation of a quadratic:
    E‖μ̃_t − μ_θ‖² = ‖k_0 x_0 + G_t √ᾱ_t x_0 − r_t‖² + (1−ᾱ_t)‖G_t‖_F², G_t = k_1 I − P_t.
    Returns f(x) -> dict(reconstruction, prior, steps (n, T; column 0 is 0), elbo)."""
    if not isinstance(model, Diffusion) or tuple(model.config["hidden"]) != () or model.prediction != "epsilon" \
            or model.data != "continuous":
        return None
    T, D = model.timesteps, model.x_dim
    betas, alphas, ab = (np.asarray(a, np.float64) for a in (model.betas, model.alphas, model.alphas_cumprod))
    ab_prev = np.asarray(model.alphas_cumprod_prev, np.float64)
    bt, s2 = np.asarray(model.posterior_variance, np.float64), np.asarray(model.sigmas2, np.float64)
    probe = np.vstack([np.zeros((1, D)), np.eye(D)]).astype(model._np_dtype)
    maps = []
    for t in range(1, T + 1):
        e = np.asarray(model.predict(probe, t)["eps"], np.float64)
        b, A = e[0], (e[1:] - e[0]).T                                     # ε_θ = A x + b
        c = betas[t - 1] / math.sqrt(1 - ab[t - 1])
        P = (np.eye(D) - c * A) / math.sqrt(alphas[t - 1])
        maps.append((P, -c * b / math.sqrt(alphas[t - 1])))

    def fn(x0):
        n = x0.shape[0]
        steps = np.zeros((n, T))
        for t in range(2, T + 1):
            P, r = maps[t - 1]
            k0 = math.sqrt(ab_prev[t - 1]) * betas[t - 1] / (1 - ab[t - 1])
            k1 = math.sqrt(alphas[t - 1]) * (1 - ab_prev[t - 1]) / (1 - ab[t - 1])
            G = k1 * np.eye(D) - P
            mean = k0 * x0 + math.sqrt(ab[t - 1]) * x0 @ G.T - r
            e2 = (mean ** 2).sum(axis=1) + (1 - ab[t - 1]) * (G * G).sum()
            ratio = bt[t - 1] / s2[t - 1]
            steps[:, t - 1] = e2 / (2 * s2[t - 1]) + 0.5 * D * (ratio - 1 - math.log(ratio))
        P, r = maps[0]
        res = x0 - math.sqrt(ab[0]) * x0 @ P.T - r
        e2 = (res ** 2).sum(axis=1) + (1 - ab[0]) * (P * P).sum()
        rec = -0.5 * (D * (LOG_2PI + math.log(s2[0])) + e2 / s2[0])
        prior = 0.5 * (ab[-1] * x0 ** 2 + (1 - ab[-1]) - 1 - math.log(1 - ab[-1])).sum(axis=1)
        return {"reconstruction": rec, "prior": prior, "steps": steps, "elbo": rec - prior - steps.sum(axis=1)}
    return fn


class DiffusionContext:
    """An ek.Diffusion (data="continuous") on x (n, D): S draws per point of the forward chain
    (the HVAE form), of the engine's forms A and B (x tiled S times), and the step KLs of form B
    recomputed at the engine's own noise (MATH.md §7)."""

    def __init__(self, model: Diffusion, x, S: int, seed: int):
        if model.data != "continuous":
            raise ValueError(f"model must be a Diffusion with data='continuous' for the derivation tracer, "
                             f"got data={model.data!r}")
        self.model, self.S, self.seed, self.kind = model, S, seed, "Diffusion"
        self.x = model._x(x)
        self.n, self.D = self.x.shape
        self.T = model.timesteps
        self.rtol = RTOL64 if model.dtype == "float64" else RTOL32
        self.xt = np.tile(self.x, (S, 1))                                   # (S n, D)
        cf = diffusion_linear_closed_form(model)
        self.closed = None if cf is None else cf(np.asarray(self.x, np.float64))

    def exact(self, key):
        if self.closed is None:
            return None
        v = self.closed[key]
        return v.sum(axis=1) if v.ndim == 2 else v

    @cached_property
    def hvae_form(self):
        """log p(x_T) + Σ_t log p(x_{t−1}|x_t) − Σ_t log q(x_t|x_{t−1}) along one forward chain per
        draw (S, n): the Markovian HVAE's ELBO integrand with z_t = x_t."""
        m, T, D, N = self.model, self.T, self.D, self.S * self.n
        noise = _random.normal((T, N, D), seed=self.seed, stream=STREAMS["chain"])
        x_prev = self.xt.astype(np.float64)
        total = np.zeros(N)
        for t in range(1, T + 1):
            b = float(m.betas[t - 1])
            x_t = math.sqrt(1 - b) * x_prev + math.sqrt(b) * noise[t - 1]
            total -= -0.5 * (D * (LOG_2PI + math.log(b)) + (noise[t - 1] ** 2).sum(axis=1))   # log q(x_t|x_{t−1})
            mean, var = m.p_mean_variance(x_t.astype(m._np_dtype), t)
            mean, var = np.asarray(mean, np.float64), np.asarray(var, np.float64)[:, None]
            total += -0.5 * (LOG_2PI + np.log(var) + (x_prev - mean) ** 2 / var).sum(axis=1)  # log p(x_{t−1}|x_t)
            x_prev = x_t
        total += -0.5 * (LOG_2PI + x_prev ** 2).sum(axis=1)                                  # log p(x_T)
        return total.reshape(self.S, self.n)

    @cached_property
    def form_a(self):
        return self.model.elbo(self.xt, form="consistency", seed=self.seed)

    @cached_property
    def form_b(self):
        return self.model.elbo(self.xt, form="denoising", seed=self.seed)

    @cached_property
    def recomputed(self):
        """(Σ_{t>=2} closed-form Gaussian KL, Σ_{t>=2} weighted ε-MSE + variance terms) (S, n) at the
        noise of form B: ε of (row b, step t) at (b T + t − 1) D + j of STREAMS['diffusion_elbo']."""
        m, T, D = self.model, self.T, self.D
        N = self.S * self.n
        eps = _random.normal((N, T, D), seed=self.seed, stream=_random.STREAMS["diffusion_elbo"])
        x0 = self.xt.astype(m._np_dtype)
        kl = np.zeros(N)
        mse = np.zeros(N)
        for t in range(2, T + 1):
            e = eps[:, t - 1].astype(m._np_dtype)
            x_t = m.q_sample(x0, t, e)
            qm, qv = m.q_posterior(x0, x_t, t)
            pm, pv = m.p_mean_variance(x_t, t)
            qm, pm = np.asarray(qm, np.float64), np.asarray(pm, np.float64)
            qv, pv = float(np.asarray(qv)[0]), float(np.asarray(pv)[0])
            var_term = 0.5 * D * (qv / pv - 1.0 - math.log(qv / pv))
            kl += ((qm - pm) ** 2).sum(axis=1) / (2 * pv) + var_term
            b, a, ab = float(m.betas[t - 1]), float(m.alphas[t - 1]), float(m.alphas_cumprod[t - 1])
            eps_hat = np.asarray(m.predict(x_t, t)["eps"], np.float64)
            w = b * b / (2 * pv * a * (1 - ab))
            mse += w * ((eps[:, t - 1] - eps_hat) ** 2).sum(axis=1) + var_term
        return kl.reshape(self.S, self.n), mse.reshape(self.S, self.n)


class EMContext(MixtureContext):
    """One EM round from the mixture's parameters θ: q = p(k|x, θ) (E-step), θ' = the M-step's."""

    def __init__(self, model: GaussianMixture, x, S: int, seed: int):
        super().__init__(model, x, S, seed)
        self.new = copy.deepcopy(model)
        self.new.m_step(self.x, self.post)
        self.a_new = self.new.log_joint(self.x)
        rows = np.arange(self.n)[None, :]
        self.lj_new = self.a_new[rows, self.k]
        self.lpx_new = _logsumexp(self.a_new, axis=1)
        self.elbo_new = self.new.elbo(self.x, self.post)
        self.elbo_old = model.elbo(self.x, self.post)


class SurgeryContext:
    """ELBO surgery (MATH.md §4) of the encodings of x: Gaussian (mu, lv) (n, Z) with p(z) = N(0, I),
    or a mixture's responsibilities (n, K) with p(k) = π. Samples z ~ q(z|x_i) (S, n)."""

    def __init__(self, model, x, S: int, seed: int):
        self.model, self.S, self.seed = model, S, seed
        self.kind = type(model).__name__
        self.exact_split = None
        if isinstance(model, GaussianMixture):
            c = MixtureContext(model, x, S, seed)
            self.n, self.rtol = c.n, RTOL64
            q, pi = c.q, model.weights_
            qagg = q.mean(axis=0)
            with np.errstate(divide="ignore", invalid="ignore"):
                lq_all = np.where(q > 0, np.log(np.where(q > 0, q, 1.0)), 0.0)
                self.avg_kl = (q * (lq_all - np.log(pi))).sum(axis=1)                      # (n,)
                mi = (q * (lq_all - np.log(np.maximum(qagg, 1e-300)))).sum(axis=1).mean()
                mk = float((qagg * (np.log(np.maximum(qagg, 1e-300)) - np.log(pi))).sum())
            self.exact_split = (float(mi), mk)
            self.lq, self.lp = c.lq, np.log(pi)[c.k]
            self.lagg = np.log(qagg)[c.k]
            return
        if isinstance(model, HVAE):
            xx = model._x(x)
            mu, lv = model.encode_top(xx)
            self.rtol = RTOL64 if model.dtype == "float64" else RTOL32
        else:
            lc = LatentContext(model, x, 2, seed)
            mu, lv, self.rtol = lc.mu, lc.lv, lc.rtol
        mu, lv = np.asarray(mu, np.float64), np.asarray(lv, np.float64)
        self.n, Z = mu.shape
        if self.n < 2:
            raise ValueError(f"x must hold at least 2 points for the surgery, got {self.n}")
        eps = _random.normal((S, self.n, Z), seed=seed, stream=STREAMS["q"])
        z = mu + np.exp(0.5 * lv) * eps
        self.lq = -0.5 * (LOG_2PI + lv + eps * eps).sum(axis=2)
        self.lp = -0.5 * (LOG_2PI + z * z).sum(axis=2)
        self.lagg = log_aggregate_posterior(z.reshape(S * self.n, Z), mu, lv).reshape(S, self.n)
        self.avg_kl = 0.5 * (mu * mu + np.exp(lv) - 1.0 - lv).sum(axis=1)
        if Z == 1:
            self.exact_split = _surgery_quadrature(mu[:, 0], lv[:, 0])


def _surgery_quadrature(m, lv):
    """(I_q, KL(q_agg ‖ N(0, 1))) of a 1-D Gaussian encoder by the trapezoidal rule on a grid
    (spectrally accurate for these smooth, fast-decaying integrands), for the exact lines."""
    s = np.exp(0.5 * lv)
    lo, hi = min((m - 14 * s).min(), -14.0), max((m + 14 * s).max(), 14.0)
    g = np.linspace(lo, hi, int(min(60000, max(4000, (hi - lo) / (s.min() / 40)))))
    h = g[1] - g[0]
    lqi = -0.5 * (LOG_2PI + lv[:, None] + (g[None] - m[:, None]) ** 2 / np.exp(lv[:, None]))   # (n, G)
    lagg = _logsumexp(lqi, axis=0) - math.log(len(m))
    qi = np.exp(lqi)
    mi = float((qi * (lqi - lagg)).sum(axis=1).mean() * h)
    mk = float((np.exp(lagg) * (lagg + 0.5 * (LOG_2PI + g * g))).sum() * h)
    return mi, mk


# ---- the library -------------------------------------------------------------------------------
def _log_p(c) -> Estimate:
    if c.log_marginal is not None:
        return exact(c.log_marginal, c.rtol)
    return log_mean(c.log_p_big, "big", rtol=c.rtol, note=f"L_K, K = {c.big_k}")


def _elbo_exact(c):
    return None if c.elbo_terms is None else c.elbo_terms[0]


JENSEN = Derivation("jensen", "log p(x) ≥ ELBO by Jensen's inequality", (
    Step(r"\log p(x)", "log p(x)", _log_p, "=", "marginalization: p(x) = ∫ p(x, z) dz"),
    Step(r"\log \int p(x|z)\,p(z)\,dz = \log \mathbb{E}_{p(z)}[p(x|z)]", "log E_p(z)[p(x|z)]  (naive Monte Carlo)",
         lambda c: log_mean(c.lx_prior, "prior", c.log_marginal, c.rtol), "=",
         "multiply and divide by q(z|x) inside the integral"),
    Step(r"\log \int q(z|x)\,\frac{p(x,z)}{q(z|x)}\,dz", "log ∫ q(z|x) p(x,z)/q(z|x) dz  (importance sampling)",
         lambda c: log_mean(c.lj - c.lq, "q", c.log_marginal, c.rtol), "=",
         "an integral against the density q(z|x) is an expectation under q"),
    Step(r"\log \mathbb{E}_{q(z|x)}\!\left[\frac{p(x,z)}{q(z|x)}\right]", "log E_q[p(x,z)/q(z|x)]",
         lambda c: log_mean(c.lj - c.lq, "q", c.log_marginal, c.rtol), "≥",
         "Jensen: log is concave, log E[w] ≥ E[log w]"),
    Step(r"\mathbb{E}_{q(z|x)}\!\left[\log \frac{p(x,z)}{q(z|x)}\right]", "E_q[log p(x,z)/q(z|x)]",
         lambda c: mc(c.lj - c.lq, "q", _elbo_exact(c), c.rtol), "=", "definition of the ELBO (MATH.md §2)"),
    Step(r"\mathrm{ELBO}(x) = \mathbb{E}_q[\log p(x|z)] - \mathrm{KL}(q(z|x)\,\|\,p(z))",
         "ELBO(x)  (the engine: reconstruction − analytic KL)",
         lambda c: mc(c.engine[0] - c.engine[2][None, :], "q", _elbo_exact(c), c.rtol)),
), ("Gaussian1D", "LinearGaussian", "VAE"), "§2")


GAP = Derivation("gap", "log p(x) = ELBO + KL(q(z|x) ‖ p(z|x))", (
    Step(r"\log p(x)", "log p(x)", lambda c: exact(c.log_marginal, c.rtol), "=",
         "log p(x) does not depend on z, and q integrates to 1"),
    Step(r"\mathbb{E}_{q(z|x)}[\log p(x)]", "E_q[log p(x)]",
         lambda c: mc(np.broadcast_to(c.log_marginal, c.lq.shape), "q", c.log_marginal, c.rtol), "=",
         "Bayes' rule: p(x) = p(x, z) / p(z|x)"),
    Step(r"\mathbb{E}_{q}\!\left[\log \frac{p(x,z)}{p(z|x)}\right]", "E_q[log p(x,z)/p(z|x)]",
         lambda c: mc(c.lj - c.lpost, "q", c.log_marginal, c.rtol), "=", "multiply and divide by q(z|x)"),
    Step(r"\mathbb{E}_{q}\!\left[\log \frac{p(x,z)}{q(z|x)} + \log\frac{q(z|x)}{p(z|x)}\right]",
         "E_q[log p(x,z)/q(z|x) + log q(z|x)/p(z|x)]",
         lambda c: mc((c.lj - c.lq) + (c.lq - c.lpost), "q", c.log_marginal, c.rtol), "=",
         "linearity of expectation"),
    Step(r"\mathbb{E}_{q}\!\left[\log \frac{p(x,z)}{q(z|x)}\right] + \mathbb{E}_{q}\!\left[\log\frac{q(z|x)}{p(z|x)}\right]",
         "E_q[log p(x,z)/q] + E_q[log q/p(z|x)]",
         lambda c: mc((c.lj - c.lq) + (c.lq - c.lpost), "q", c.log_marginal, c.rtol), "=",
         "definitions of the ELBO and of the KL divergence"),
    Step(r"\mathrm{ELBO}(x) + \mathrm{KL}(q(z|x)\,\|\,p(z|x))", "ELBO(x) + KL(q(z|x) ‖ p(z|x))",
         lambda c: exact(c.elbo_terms[0] + c.gap, c.rtol), "≥", "KL ≥ 0 (Gibbs' inequality)"),
    Step("", "", lambda c: [(r"\mathrm{ELBO}(x)", "ELBO(x)", mc(c.lj - c.lq, "q", c.elbo_terms[0], c.rtol)),
                            (r"\mathrm{KL}(q(z|x)\,\|\,p(z|x))", "KL(q(z|x) ‖ p(z|x))  (the gap)",
                             mc(c.lq - c.lpost, "q", c.gap, c.rtol))], terms=True),
    Step(r"\mathrm{ELBO}(x)", "ELBO(x)", lambda c: exact(c.elbo_terms[0], c.rtol)),
), ("Gaussian1D", "LinearGaussian", "GaussianMixture"), "§2")


def _rec_kl_engine(c):
    """(reconstruction (S, n), Monte-Carlo KL (S, n), analytic KL (n,)): the engine's for a Gaussian
    latent, the sums for the mixture."""
    if isinstance(c, LatentContext):
        return c.engine
    return c.lx, c.lq - c.lpz, c.elbo_terms[2]


RECONSTRUCTION_KL = Derivation("reconstruction_kl", "ELBO = reconstruction − KL(q(z|x) ‖ p(z))", (
    Step(r"\mathrm{ELBO}(x) = \mathbb{E}_{q}[\log p(x,z) - \log q(z|x)]", "E_q[log p(x,z) − log q(z|x)]",
         lambda c: mc(c.lj - c.lq, "q", _elbo_exact(c), c.rtol), "=", "product rule: p(x, z) = p(x|z) p(z)"),
    Step(r"\mathbb{E}_{q}[\log p(x|z) + \log p(z) - \log q(z|x)]", "E_q[log p(x|z) + log p(z) − log q(z|x)]",
         lambda c: mc(_rec_kl_engine(c)[0] - _rec_kl_engine(c)[1], "q", _elbo_exact(c), c.rtol), "=",
         "linearity of expectation"),
    Step(r"\mathbb{E}_{q}[\log p(x|z)] - \mathbb{E}_{q}\!\left[\log \frac{q(z|x)}{p(z)}\right]",
         "E_q[log p(x|z)] − E_q[log q(z|x)/p(z)]",
         lambda c: mc(_rec_kl_engine(c)[0] - _rec_kl_engine(c)[1], "q", _elbo_exact(c), c.rtol), "=",
         "definition of KL; in closed form for Gaussians (MATH.md §1) or by a finite sum"),
    Step("", "", lambda c: [
        (r"\mathbb{E}_{q}[\log p(x|z)]", "reconstruction E_q[log p(x|z)]",
         mc(_rec_kl_engine(c)[0], "q", None if c.elbo_terms is None else c.elbo_terms[1], c.rtol)),
        (r"\mathbb{E}_{q}[\log q(z|x) - \log p(z)]", "KL by Monte Carlo",
         mc(_rec_kl_engine(c)[1], "q", None if c.elbo_terms is None else c.elbo_terms[2], c.rtol)),
        (r"\mathrm{KL}(q(z|x)\,\|\,p(z))", "KL in closed form",
         exact(_rec_kl_engine(c)[2], c.rtol))], terms=True),
    Step(r"\mathbb{E}_{q}[\log p(x|z)] - \mathrm{KL}(q(z|x)\,\|\,p(z))", "E_q[log p(x|z)] − KL(q(z|x) ‖ p(z))",
         lambda c: mc(_rec_kl_engine(c)[0] - _rec_kl_engine(c)[2][None, :], "q", _elbo_exact(c), c.rtol)),
), ("Gaussian1D", "LinearGaussian", "GaussianMixture", "VAE"), "§2")


def _level_terms(c, which):
    L = c.kl_mc.shape[2]
    src = c.kl_mc if which == "mc" else c.kl_an
    out = []
    for l in range(L):
        top = l == L - 1
        name = (r"\mathbb{E}_q[\log q(z_%d|\cdot) - \log p(z_%d|\cdot)]" if which == "mc"
                else r"\mathbb{E}_q[\mathrm{KL}(q(z_%d|\cdot)\,\|\,p(z_%d|\cdot))]") % (l + 1, l + 1)
        txt = f"level {l + 1}{' (prior matching, top)' if top else ''}: " + ("log q − log p" if which == "mc" else "KL term")
        out.append((name, txt, mc(src[:, :, l], "q", c.exact("levels", l), c.rtol)))
    return out


def _hvae_log_p(c) -> Estimate:
    if c.closed is not None:
        return exact(c.closed["log_p"], c.rtol)
    return log_mean(c.log_p_big, "big", rtol=c.rtol, note=f"L_K, K = {c.big_k}")


HVAE_LEVELS = Derivation("hvae", "the hierarchical ELBO split into per-level terms (Markov and top-down)", (
    Step(r"\log p(x) = \log \mathbb{E}_{q(z_{1:L}|x)}\!\left[\frac{p(x, z_{1:L})}{q(z_{1:L}|x)}\right]",
         "log p(x)  (closed form, or L_K)", _hvae_log_p, "≥", "Jensen, as for one level"),
    Step(r"\mathrm{ELBO}(x) = \mathbb{E}_{q(z_{1:L}|x)}[\log p(x, z_{1:L}) - \log q(z_{1:L}|x)]",
         "E_q[log p(x, z_1..L) − log q(z_1..L|x)]",
         lambda c: mc(c.rec - c.kl_mc.sum(axis=2), "q", c.exact("elbo"), c.rtol), "=",
         "factorization: Markov p(x|z_1) Π p(z_{l−1}|z_l) p(z_L), q(z_1|x) Π q(z_l|z_{l−1}); "
         "top-down p(z_L) Π p(z_l|z_{>l}), q(z_L|x) Π q(z_l|z_{>l}, x)"),
    Step(r"\mathbb{E}_q[\log p(x|z_1)] - \sum_{l=1}^{L} \mathbb{E}_q\!\left[\log \frac{q(z_l|\mathrm{pa}_q(z_l))}{p(z_l|\mathrm{pa}_p(z_l))}\right]",
         "E_q[log p(x|z_1)] − Σ_l E_q[log q(z_l|·) − log p(z_l|·)]",
         lambda c: mc(c.rec - c.kl_mc.sum(axis=2), "q", c.exact("elbo"), c.rtol), "=",
         "tower rule: the inner expectation over z_l given its parents is a Gaussian KL in closed form "
         "(the top level for Markov, every level for top-down, MATH.md §6)"),
    Step("", "", lambda c: [(r"\mathbb{E}_q[\log p(x|z_1)]", "reconstruction",
                             mc(c.rec, "q", c.exact("reconstruction"), c.rtol))]
         + _level_terms(c, "mc"), terms=True),
    Step(r"\mathbb{E}_q[\log p(x|z_1)] - \sum_{l=1}^{L} \mathbb{E}_q[\mathrm{KL}_l]",
         "E_q[log p(x|z_1)] − Σ_l E_q[KL_l]  (analytic where the structure allows)",
         lambda c: mc(c.rec_an - c.kl_an.sum(axis=2), "q", c.exact("elbo"), c.rtol)),
    Step("", "", lambda c: _level_terms(c, "analytic"), terms=True),
), ("HVAE",), "§6")


def _dsum(r):
    return np.asarray(r.steps, np.float64).sum(axis=1)


def _diff(c, arr):
    return np.asarray(arr, np.float64).reshape(c.S, c.n)


DIFFUSION = Derivation("diffusion", "the diffusion ELBO: HVAE form → consistency form → denoising form → ε-MSE", (
    Step(r"\mathbb{E}_{q(x_{1:T}|x_0)}\!\left[\log \frac{p(x_T)\prod_t p_\theta(x_{t-1}|x_t)}{\prod_t q(x_t|x_{t-1})}\right]",
         "E_q[log p(x_T) + Σ_t log p(x_{t−1}|x_t) − Σ_t log q(x_t|x_{t−1})]  (HVAE form)",
         lambda c: mc(c.hvae_form, "chain", c.exact("elbo"), c.rtol), "=",
         "regroup the product by level (Markov: z_t = x_t, fixed encoder)"),
    Step(r"\mathbb{E}[\log p_\theta(x_0|x_1)] - \mathbb{E}[\mathrm{KL}(q(x_T|x_{T-1})\|p(x_T))] - \sum_{t=1}^{T-1}\mathbb{E}[\mathrm{KL}(q(x_t|x_{t-1})\|p_\theta(x_t|x_{t+1}))]",
         "consistency form A (the engine)",
         lambda c: mc(_diff(c, c.form_a.elbo), "A", c.exact("elbo"), c.rtol), "=",
         "Bayes' rule on the encoder, q(x_t|x_{t−1}, x_0) = q(x_{t−1}|x_t, x_0) q(x_t|x_0)/q(x_{t−1}|x_0); the ratios telescope"),
    Step(r"\mathbb{E}[\log p_\theta(x_0|x_1)] - \mathrm{KL}(q(x_T|x_0)\|p(x_T)) - \sum_{t=2}^{T}\mathbb{E}_{q(x_t|x_0)}[\mathrm{KL}(q(x_{t-1}|x_t,x_0)\|p_\theta(x_{t-1}|x_t))]",
         "denoising form B (the engine)",
         lambda c: mc(_diff(c, c.form_b.elbo), "B", c.exact("elbo"), c.rtol), "=",
         "KL of two Gaussians with shared isotropic variances in closed form (MATH.md §1, §7)"),
    Step("", "", lambda c: [
        (r"\mathbb{E}[\log p_\theta(x_0|x_1)]", "reconstruction", mc(_diff(c, c.form_b.reconstruction), "B", c.exact("reconstruction"), c.rtol)),
        (r"\mathrm{KL}(q(x_T|x_0)\|p(x_T))", "prior matching", mc(_diff(c, c.form_b.prior), "B", c.exact("prior"), c.rtol)),
        (r"\sum_{t\ge2}\mathbb{E}[\mathrm{KL}_t]", "Σ denoising matching KLs", mc(_diff(c, _dsum(c.form_b)), "B", c.exact("steps"), c.rtol))],
        terms=True),
    Step(r"\ldots - \sum_{t=2}^{T}\mathbb{E}\!\left[\frac{\|\tilde\mu_t - \mu_\theta\|^2}{2\sigma_t^2} + \frac{d}{2}\!\left(\frac{\tilde\beta_t}{\sigma_t^2} - 1 - \log\frac{\tilde\beta_t}{\sigma_t^2}\right)\right]",
         "… − Σ_t [‖μ̃_t − μ_θ‖²/(2σ_t²) + (d/2)(β̃_t/σ_t² − 1 − log β̃_t/σ_t²)]  (recomputed)",
         lambda c: mc(_diff(c, c.form_b.reconstruction) - _diff(c, c.form_b.prior) - c.recomputed[0], "B", c.exact("elbo"), c.rtol),
         "=", "ε-parameterization: μ̃_t − μ_θ = β_t/(√α_t √(1−ᾱ_t)) (ε_θ − ε)"),
    Step(r"\ldots - \sum_{t=2}^{T}\mathbb{E}\!\left[\frac{\beta_t^2}{2\sigma_t^2\alpha_t(1-\bar\alpha_t)}\|\epsilon - \epsilon_\theta(x_t, t)\|^2 + \mathrm{const}_t\right]",
         "… − Σ_t [β_t²/(2σ_t² α_t (1−ᾱ_t)) ‖ε − ε_θ‖² + const_t]  (a weighted MSE)",
         lambda c: mc(_diff(c, c.form_b.reconstruction) - _diff(c, c.form_b.prior) - c.recomputed[1], "B", c.exact("elbo"), c.rtol)),
), ("Diffusion",), "§7")


EM = Derivation("em", "EM: log p = ELBO after the E-step; the M-step cannot decrease it", (
    Step(r"\log p(x|\theta')", "log p(x|θ')  (after the M-step)", lambda c: exact(c.lpx_new), "≥",
         "KL(q ‖ p(k|x, θ')) ≥ 0"),
    Step(r"\mathrm{ELBO}(q, \theta') = \mathbb{E}_q[\log p(x,k|\theta') - \log q(k)]", "ELBO(q, θ')",
         lambda c: mc(c.lj_new - c.lq, "k", c.elbo_new), "≥",
         "M-step: θ' = argmax_θ ELBO(q, θ) in closed form"),
    Step(r"\mathrm{ELBO}(q, \theta) = \mathbb{E}_q[\log p(x,k|\theta) - \log q(k)]", "ELBO(q, θ)",
         lambda c: mc(c.lj - c.lq, "k", c.elbo_old), "=",
         "E-step: q(k) = p(k|x, θ) makes KL(q ‖ p(k|x, θ)) = 0"),
    Step(r"\log p(x|\theta)", "log p(x|θ)  (before)", lambda c: exact(c.lpx)),
), ("GaussianMixture",), "§5", "em")


def _split(c, i):
    return None if c.exact_split is None else c.exact_split[i]


def _sum_split(c):
    return None if c.exact_split is None else sum(c.exact_split)


SURGERY = Derivation("surgery", "ELBO surgery: average KL = KL(q_agg ‖ p) + I_q[x; z]", (
    Step(r"\frac1n\sum_i \mathrm{KL}(q(z|x_i)\,\|\,p(z))", "average KL(q(z|x_i) ‖ p(z))  (closed form)",
         lambda c: exact(c.avg_kl, c.rtol), "=", "definition of the KL divergence"),
    Step(r"\frac1n\sum_i \mathbb{E}_{q(z|x_i)}[\log q(z|x_i) - \log p(z)]", "(1/n) Σ_i E_qi[log q_i − log p]",
         lambda c: mc(c.lq - c.lp, "q", c.avg_kl, c.rtol), "=", "add and subtract log q_agg(z)"),
    Step(r"\frac1n\sum_i \mathbb{E}_{q_i}[\log q(z|x_i) - \log q_{agg}(z)] + \frac1n\sum_i \mathbb{E}_{q_i}[\log q_{agg}(z) - \log p(z)]",
         "(1/n) Σ_i E_qi[log q_i − log q_agg] + (1/n) Σ_i E_qi[log q_agg − log p]",
         lambda c: mc((c.lq - c.lagg) + (c.lagg - c.lp), "q", c.avg_kl, c.rtol), "=",
         "(1/n) Σ_i q(z|x_i) = q_agg(z), so the second sum is an expectation under q_agg"),
    Step(r"I_q[x; z] + \mathrm{KL}(q_{agg}(z)\,\|\,p(z))", "I_q[x; z] + KL(q_agg ‖ p)",
         lambda c: mc(c.lq - c.lp, "q", _sum_split(c), c.rtol)),
    Step("", "", lambda c: [
        (r"I_q[x; z]", "mutual information", mc(c.lq - c.lagg, "q", _split(c, 0), c.rtol)),
        (r"\mathrm{KL}(q_{agg}\,\|\,p)", "marginal KL", mc(c.lagg - c.lp, "q", _split(c, 1), c.rtol)),
        (r"\log n", "log n (the bound on I_q)", exact(np.full(c.n, math.log(c.n))))], terms=True),
), ("Gaussian1D", "LinearGaussian", "GaussianMixture", "VAE", "HVAE"), "§4", "surgery")


DERIVATIONS = {d.name: d for d in (JENSEN, GAP, RECONSTRUCTION_KL, HVAE_LEVELS, DIFFUSION, EM, SURGERY)}


def names() -> list:
    """The derivations' names, in the order of the issue (1-7)."""
    return list(DERIVATIONS)


def get(name) -> Derivation:
    """The derivation called ``name`` (or the Derivation itself)."""
    if isinstance(name, Derivation):
        return name
    if not isinstance(name, str) or name not in DERIVATIONS:
        raise ValueError(f"derivation must be one of {', '.join(repr(n) for n in DERIVATIONS)} or a Derivation, got {name!r}")
    return DERIVATIONS[name]


def _context(d: Derivation, model, x, S: int, seed: int, q=None):
    kind = type(model).__name__
    if kind not in d.models:
        raise ValueError(f"model must be one of {', '.join(d.models)} for the derivation {d.name!r}, got {kind}")
    if d.context == "surgery":
        return SurgeryContext(model, x, S, seed)
    if d.context == "em":
        return EMContext(model, x, S, seed)
    if isinstance(model, GaussianMixture):
        return MixtureContext(model, x, S, seed, q)
    if isinstance(model, HVAE):
        return HVAEContext(model, x, S, seed)
    if isinstance(model, Diffusion):
        return DiffusionContext(model, x, S, seed)
    if isinstance(model, (Gaussian1D, LinearGaussian, VAE)):
        return LatentContext(model, x, S, seed)
    raise ValueError(f"model must be one of {', '.join(d.models)}, got {kind}")


# ---- the trace ---------------------------------------------------------------------------------
@dataclass
class Row:
    """One row of a trace: a line or a term, its estimate, and the check of its relation to the next line."""
    index: int
    latex: str
    text: str
    estimate: Estimate
    is_term: bool = False
    relation: str | None = None
    why: str = ""
    difference: float | None = None
    difference_se: float | None = None
    holds: bool | None = None

    @property
    def agrees(self) -> bool | None:
        """Whether a Monte-Carlo line agrees with its closed form within 4 s.e. (None without one)."""
        e = self.estimate
        if e.exact is None or e.units is None:
            return None
        tol = e.rtol * max(1.0, abs(e.exact))
        return bool(abs(e.value - e.exact) <= Z_SIGMAS * e.se + tol)


def _fmt(v, se=None):
    if v is None:
        return ""
    s = f"{v:.5f}" if abs(v) < 1e4 else f"{v:.5g}"
    return s if se is None or se == 0 else f"{s} ± {se:.2g}"


def _mark(b):
    return "" if b is None else ("✓" if b else "✗")


@dataclass
class TraceResult:
    """Every line of a traced derivation: value ± s.e. (nats, the mean over the n points), the closed
    form where there is one, and whether each relation holds within its error (see the module)."""
    derivation: Derivation
    rows: list
    model: str
    n: int
    n_samples: int
    seed: int

    @property
    def lines(self) -> list:
        return [r for r in self.rows if not r.is_term]

    @property
    def relations_hold(self) -> bool:
        """Every relation between lines holds (a "?" — an unreliable estimate — counts as not holding)."""
        return all(r.holds is True for r in self.lines if r.relation)

    @property
    def exact_agree(self) -> bool:
        """Every Monte-Carlo line and term with a closed form agrees with it within 4 s.e."""
        return all(r.agrees is not False for r in self.rows)

    @property
    def ok(self) -> bool:
        return self.relations_hold and self.exact_agree

    def undecided(self) -> list:
        """The relations left undecided ("?"): an estimate on either side has too few effective samples."""
        return [f"line {r.index} {r.relation} the next: difference {r.difference:.6g} ± {r.difference_se:.3g} "
                f"(unreliable estimate): {r.text}" for r in self.rows if r.relation and r.holds is None]

    def failures(self) -> list:
        """Plain-text descriptions of every relation that fails and every disagreement with a closed form."""
        out = []
        for r in self.rows:
            if r.relation and r.holds is False:
                out.append(f"line {r.index} {r.relation} the next: difference {r.difference:.6g} ± {r.difference_se:.3g} "
                           f"(fails): {r.text}")
            if r.agrees is False:
                out.append(f"line {r.index}: {r.estimate.value:.6g} ± {r.estimate.se:.3g} against the closed form "
                           f"{r.estimate.exact:.6g}: {r.text}")
        return out

    def values(self) -> list:
        """The lines' values (floats), in order."""
        return [r.estimate.value for r in self.lines]

    def __repr__(self) -> str:
        d = self.derivation
        head = (f"trace of {d.name!r}: {d.title} (MATH.md {d.section}) on {self.model}, n={self.n}, "
                f"n_samples={self.n_samples}, seed={self.seed} [nats, mean over the points; ± Monte-Carlo s.e.]")
        w = min(72, max(len(r.text) for r in self.rows) + 4)
        lines = [head, f"{'':3s} {'line':{w}s} {'value':>22s} {'exact':>12s} {'':2s}"]
        for r in self.rows:
            label = ("    · " + r.text) if r.is_term else r.text
            lines.append(f"{'' if r.is_term else r.index:>3} {label[:w]:{w}s} {_fmt(r.estimate.value, r.estimate.se):>22s} "
                         f"{_fmt(r.estimate.exact) if r.estimate.units is not None else '':>12s} {_mark(r.agrees):2s}")
            if r.relation:
                verdict = {True: "holds", False: "FAILS", None: "? (unreliable estimate)"}[r.holds]
                lines.append(f"{'':3s}   {r.relation}  [{r.why}]  difference {r.difference:.3g} ± {r.difference_se:.2g}: {verdict}")
        if self.ok:
            lines.append("all relations hold")
        if self.failures():
            lines.append("FAILING: " + "; ".join(self.failures()))
        if self.undecided():
            lines.append("undecided: " + "; ".join(self.undecided()))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        d = self.derivation
        e = html.escape
        out = [f"<p><b>{e(d.name)}</b>: {e(d.title)} (MATH.md {e(d.section)}) on {e(self.model)}, n={self.n}, "
               f"n_samples={self.n_samples}, seed={self.seed}. Nats, the mean over the points, ± Monte-Carlo s.e.</p>",
               "<table><tr><th>#</th><th>line</th><th>value</th><th>exact</th><th>relation to the next line</th>"
               "<th>difference</th><th>holds</th></tr>"]
        for r in self.rows:
            ex = _fmt(r.estimate.exact) + (" " + _mark(r.agrees) if r.agrees is not None else "")
            rel = f"{e(r.relation)} <small>({e(r.why)})</small>" if r.relation else ""
            diff = _fmt(r.difference, r.difference_se) if r.relation else ""
            verdict = {True: "✓", False: "<b style='color:#b00'>✗</b>", None: "?"}[r.holds] if r.relation else ""
            math_ = f"${e(r.latex)}$" if r.latex else e(r.text)
            style = " style='color:#555;font-size:90%'" if r.is_term else ""
            out.append(f"<tr{style}><td>{'' if r.is_term else r.index}</td><td style='text-align:left'>"
                       f"{'&nbsp;&nbsp;· ' if r.is_term else ''}{math_}</td>"
                       f"<td>{e(_fmt(r.estimate.value, r.estimate.se))}</td><td>{e(ex) if r.estimate.units is not None else ''}</td>"
                       f"<td style='text-align:left'>{rel}</td><td>{e(diff)}</td><td>{verdict}</td></tr>")
        out.append("</table>")
        return "".join(out)

    def to_latex(self) -> str:
        """The derivation as a LaTeX ``align*`` of its lines, each with its value ± s.e. and the
        verdict of its relation to the next (terms as comments)."""
        out = [r"\begin{align*}"]
        ln = self.lines
        for j, r in enumerate(ln):
            prefix = "&" if j == 0 else "&" + {"=": "=", "≥": r"\ge", "≤": r"\le"}[ln[j - 1].relation] + " "
            val = _fmt(r.estimate.value, r.estimate.se).replace("±", r"\pm")
            check = ""
            if r.relation:
                check = {True: r"\checkmark", False: r"\times", None: "?"}[r.holds]
                check = r" \quad \text{(" + r.why.replace("_", r"\_").replace("%", r"\%") + r")}\ " + check
            out.append(f"{prefix}{r.latex} && [{val}]{check}" + (r" \\" if j < len(ln) - 1 else ""))
        out.append(r"\end{align*}")
        return "\n".join(out)


def trace(derivation, model, x, n_samples: int = 64, seed: int = 0, q=None) -> TraceResult:
    """Evaluates every line of ``derivation`` (a name in DERIVATIONS or a Derivation) on (model, x)
    with n_samples Monte-Carlo samples per point from ``seed`` and checks every relation (module
    docstring). ``q`` (n, K): the variational distribution of a GaussianMixture (default its
    responsibilities)."""
    d = get(derivation)
    S = check_int("n_samples", n_samples, 2)
    seed = check_int("seed", seed, 0)
    ctx = _context(d, model, x, S, seed, q)
    rows, idx = [], 0
    for st in d.steps:
        got = st.estimate(ctx)
        if st.terms:
            rows.extend(Row(idx, lt, tx, e, is_term=True) for lt, tx, e in got)
        else:
            idx += 1
            rows.append(Row(idx, st.latex, st.text, got, relation=st.relation, why=st.why))
    lines = [r for r in rows if not r.is_term]
    for a, b in zip(lines, lines[1:]):
        if a.relation:
            a.difference, a.difference_se, a.holds = _check(a.estimate, b.estimate, a.relation)
    if lines[-1].relation:
        raise ValueError(f"derivation {d.name!r}: its last line must have no relation, got {lines[-1].relation!r}")
    label = repr(model).split(" with ")[0] if type(model).__repr__ is not object.__repr__ else type(model).__name__
    return TraceResult(d, rows, label, getattr(ctx, "n", 0), S, seed)


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
