"""Gradient estimators of E_q[f(z)] (MATH.md §2): reparameterization against the score function.

For q = N(μ, diag σ²), σ² = exp(logvar), and z = μ + σ ⊙ ε:

* reparameterization: ∇_μ = E[∇f(z)], ∇_logvar = E[∇f(z) ⊙ ε ⊙ σ/2]  (needs ∇f);
* score function (REINFORCE): ∇ = E[f(z) ∇ log q(z)], ∇_μ log q = ε/σ, ∇_logvar log q = (ε² − 1)/2
  (needs only f; unbiased, far higher variance). ``baseline="mean"`` subtracts the leave-one-out
  mean of f over the other samples of the same repetition (still unbiased, needs n_samples >= 2).

:func:`compare` repeats both estimators and reports means, variances and the closed-form gradient
when the test function has one (:func:`quadratic`, :func:`exponential`). :func:`vae_encoder`
makes the same comparison for the gradient of a VAE's reconstruction term with respect to its
encoder's parameters.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import random as _random
from ._validation import as_array, check_choice, check_int

__all__ = ["TestFunction", "quadratic", "exponential", "reparam_gradient", "score_gradient", "compare",
           "Comparison", "vae_encoder", "EncoderComparison"]

BASELINES = ("none", "mean")


@dataclass
class TestFunction:
    """f(z) (S, Z) -> (S,), its gradient df (S, Z) -> (S, Z), and E_q[f] with its gradient in closed
    form: value(mu, logvar) -> float, grad(mu, logvar) -> (d/dmu (Z,), d/dlogvar (Z,))."""
    f: object
    df: object
    value: object = None
    grad: object = None
    dim: int | None = None  # the dimension f is defined on, when fixed


def quadratic(target) -> TestFunction:
    """f(z) = Σ_j (z_j − c_j)²: E_q f = Σ (μ − c)² + σ²; ∇_μ = 2(μ − c), ∇_logvar = σ²."""
    c = as_array("target", target, np.float64, ndim=1)
    return TestFunction(f=lambda z: ((z - c) ** 2).sum(axis=-1), df=lambda z: 2.0 * (z - c),
                        value=lambda mu, lv: float(((mu - c) ** 2 + np.exp(lv)).sum()),
                        grad=lambda mu, lv: (2.0 * (mu - c), np.exp(lv)), dim=c.shape[0])


def exponential(a) -> TestFunction:
    """f(z) = exp(aᵀz): E_q f = exp(aᵀμ + ½ Σ a²σ²) = F; ∇_μ = a F, ∇_logvar = ½ a² σ² F."""
    a = as_array("a", a, np.float64, ndim=1)

    def value(mu, lv):
        return float(np.exp(a @ mu + 0.5 * (a * a * np.exp(lv)).sum()))

    return TestFunction(f=lambda z: np.exp(z @ a), df=lambda z: np.exp(z @ a)[..., None] * a, value=value,
                        grad=lambda mu, lv: (a * value(mu, lv), 0.5 * a * a * np.exp(lv) * value(mu, lv)),
                        dim=a.shape[0])


def _q(mu, logvar):
    mu = as_array("mu", mu, np.float64, ndim=1)
    lv = as_array("logvar", logvar, np.float64, ndim=1, shape=mu.shape)
    return mu, lv


def reparam_gradient(df, mu, logvar, eps):
    """Reparameterization estimates from eps (R, S, Z): (d/dmu (R, Z), d/dlogvar (R, Z)), each the
    mean over the S samples of one repetition."""
    mu, lv = _q(mu, logvar)
    eps = as_array("eps", eps, np.float64, ndim=3, shape=(None, None, mu.shape[0]))
    sig = np.exp(0.5 * lv)
    g = np.asarray(df(mu + sig * eps), dtype=np.float64)
    return g.mean(axis=1), (g * eps * sig * 0.5).mean(axis=1)


def score_gradient(f, mu, logvar, eps, baseline: str = "none"):
    """Score-function estimates from eps (R, S, Z): (d/dmu (R, Z), d/dlogvar (R, Z))."""
    mu, lv = _q(mu, logvar)
    eps = as_array("eps", eps, np.float64, ndim=3, shape=(None, None, mu.shape[0]))
    check_choice("baseline", baseline, BASELINES)
    S = eps.shape[1]
    sig = np.exp(0.5 * lv)
    fz = np.asarray(f(mu + sig * eps), dtype=np.float64)  # (R, S)
    if baseline == "mean":
        if S < 2:
            raise ValueError(f"n_samples must be >= 2 for baseline='mean', got {S}")
        fz = fz - (fz.sum(axis=1, keepdims=True) - fz) / (S - 1)
    return (fz[..., None] * eps / sig).mean(axis=1), (fz[..., None] * 0.5 * (eps * eps - 1.0)).mean(axis=1)


@dataclass
class Comparison:
    """Per-repetition estimates (R, Z) of both estimators, and the exact gradient when known."""
    reparam_mu: np.ndarray
    reparam_logvar: np.ndarray
    score_mu: np.ndarray
    score_logvar: np.ndarray
    exact_mu: np.ndarray | None = None
    exact_logvar: np.ndarray | None = None

    def summary(self) -> dict:
        """{estimator: {'mean_mu', 'mean_logvar', 'var_mu', 'var_logvar'}} (variances per coordinate
        over repetitions), plus 'variance_ratio' = score / reparam total variance."""
        out = {}
        for name in ("reparam", "score"):
            gm, gl = getattr(self, name + "_mu"), getattr(self, name + "_logvar")
            out[name] = dict(mean_mu=gm.mean(0), mean_logvar=gl.mean(0), var_mu=gm.var(0, ddof=1),
                             var_logvar=gl.var(0, ddof=1))
        tot = {k: out[k]["var_mu"].sum() + out[k]["var_logvar"].sum() for k in out}
        out["variance_ratio"] = float(tot["score"] / tot["reparam"]) if tot["reparam"] > 0 else math.inf
        return out


def compare(fn: TestFunction, mu, logvar, n_samples: int = 1, n_repeats: int = 1000, seed: int = 0,
            baseline: str = "none") -> Comparison:
    """Both estimators n_repeats times with n_samples samples each, on the same noise
    (``ek.random.normal((n_repeats, n_samples, Z), seed)``)."""
    mu, lv = _q(mu, logvar)
    if fn.dim is not None and fn.dim != mu.shape[0]:
        raise ValueError(f"fn is defined on {fn.dim} dimensions, but mu has {mu.shape[0]}")
    S, R = check_int("n_samples", n_samples, 1), check_int("n_repeats", n_repeats, 2)
    eps = _random.normal((R, S, mu.shape[0]), seed=check_int("seed", seed, 0))
    rm, rl = reparam_gradient(fn.df, mu, lv, eps)
    sm, sl = score_gradient(fn.f, mu, lv, eps, baseline)
    em, el = fn.grad(mu, lv) if fn.grad is not None else (None, None)
    return Comparison(rm, rl, sm, sl, em, el)


@dataclass
class EncoderComparison:
    """Per-repetition gradient estimates (R, P_enc) of mean_b E_q[log p(x_b|z)] with respect to the
    encoder's parameters (flattened in the order of ``names``), by both estimators."""
    names: list
    reparam: np.ndarray
    score: np.ndarray

    def summary(self) -> dict:
        """Total variance (sum over coordinates) of each estimator, their ratio, and the largest
        standardized difference of their means (|Δ| / √(se_r² + se_s²)), which stays a few units
        when both are unbiased."""
        R = self.reparam.shape[0]
        vr, vs = self.reparam.var(0, ddof=1), self.score.var(0, ddof=1)
        z = np.abs(self.reparam.mean(0) - self.score.mean(0)) / np.sqrt((vr + vs) / R + 1e-300)
        return dict(reparam_variance=float(vr.sum()), score_variance=float(vs.sum()),
                    variance_ratio=float(vs.sum() / vr.sum()), max_z=float(z.max()), mean_abs_z=float(z.mean()))


def vae_encoder(vae, x, n_samples: int = 1, n_repeats: int = 100, seed: int = 0,
                baseline: str = "none") -> EncoderComparison:
    """The reconstruction term's gradient with respect to the encoder of ``vae`` (an ``ek.VAE``):
    reparameterization through the hand-written backward pass (``objective_grad`` with beta = 0)
    against the score function f(z) ∇_φ log q(z|x) with f = log p(x|z), pushed through the encoder
    by ``encoder_backward``. Repetition r uses eps = ``ek.random.normal((n_repeats, n_samples, n,
    z_dim), seed)[r]``."""
    x = vae._x(x)
    S, R = check_int("n_samples", n_samples, 1), check_int("n_repeats", n_repeats, 2)
    check_choice("baseline", baseline, BASELINES)
    if baseline == "mean" and S < 2:
        raise ValueError(f"n_samples must be >= 2 for baseline='mean', got {S}")
    n, Z = x.shape[0], vae.z_dim
    eps_all = _random.normal((R, S, n, Z), seed=check_int("seed", seed, 0))
    names = [nm for nm, *_ in vae._layout if nm.startswith("encoder.")]
    mu, lv = (np.asarray(a, dtype=np.float64) for a in vae.encode(x))
    sig = np.exp(0.5 * lv)
    rep, sco = [], []
    for r in range(R):
        eps = eps_all[r]
        _, g = vae.objective_grad(x, eps=eps, beta=0.0)
        rep.append(np.concatenate([g[nm].ravel() for nm in names]))
        f = np.stack([vae.elbo(x, eps=eps[s:s + 1]).reconstruction for s in range(S)])  # (S, n)
        if baseline == "mean":
            f = f - (f.sum(axis=0, keepdims=True) - f) / (S - 1)
        dmu = (f[..., None] * eps / sig).mean(axis=0) / n                 # (n, Z)
        dlv = (f[..., None] * 0.5 * (eps * eps - 1.0)).mean(axis=0) / n
        flat = vae._core.encoder_backward(x, dmu.astype(vae._np_dtype), dlv.astype(vae._np_dtype))
        gd = vae._grad_dict(flat)
        sco.append(np.concatenate([gd[nm].ravel() for nm in names]))
    return EncoderComparison(names, np.asarray(rep, dtype=np.float64), np.asarray(sco, dtype=np.float64))
