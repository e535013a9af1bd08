"""KL divergences and their relatives (MATH.md §1).

* :func:`discrete`, :func:`entropy`, :func:`cross_entropy` -- for probability vectors, with
  0 log 0 = 0 and +inf where q = 0 < p; ``cross_entropy(p, q) == entropy(p) + discrete(p, q)``.
* :func:`gaussian` -- KL between diagonal Gaussians given as (mean, log-variance).
* :func:`fit_gaussian` -- the Gaussian closest to a one-dimensional mixture in forward KL(p‖q)
  (mass covering: moment matching) or reverse KL(q‖p) (mode seeking), and :func:`mixture_kl`,
  the divergence itself by Gauss-Hermite quadrature.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._validation import as_array, check_choice, check_float, check_int

__all__ = ["discrete", "entropy", "cross_entropy", "gaussian", "mixture_logpdf", "mixture_kl", "fit_gaussian",
           "GaussianFit"]

LOG_2PI = math.log(2.0 * math.pi)


def _prob(name: str, p, atol: float = 1e-6) -> np.ndarray:
    a = as_array(name, p, np.float64)
    if a.ndim == 0:
        raise ValueError(f"{name} must be a probability vector (1-D or batched along the last axis), got a scalar")
    if (a < 0).any():
        raise ValueError(f"{name} must be non-negative, got minimum {a.min():.6g}")
    s = a.sum(axis=-1)
    if not np.allclose(s, 1.0, atol=atol, rtol=0):
        raise ValueError(f"{name} must sum to 1 along its last axis, got sums in [{s.min():.6g}, {s.max():.6g}]")
    return a


def discrete(p, q) -> np.ndarray | float:
    """KL(P‖Q) = Σ P log(P/Q) along the last axis, 0 log 0 = 0, +inf where Q = 0 < P."""
    p, q = _prob("p", p), _prob("q", q)
    if p.shape[-1] != q.shape[-1]:
        raise ValueError(f"p and q must have the same number of outcomes, got {p.shape[-1]} and {q.shape[-1]}")
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(p > 0, p * (np.log(np.where(p > 0, p, 1.0)) - np.log(q)), 0.0)
    out = t.sum(axis=-1)
    return float(out) if out.ndim == 0 else out


def entropy(p) -> np.ndarray | float:
    """H(P) = −Σ P log P (nats), 0 log 0 = 0."""
    p = _prob("p", p)
    with np.errstate(divide="ignore"):
        out = -np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0).sum(axis=-1)
    return float(out) if out.ndim == 0 else out


def cross_entropy(p, q) -> np.ndarray | float:
    """H(P, Q) = −Σ P log Q = H(P) + KL(P‖Q); +inf where Q = 0 < P."""
    p, q = _prob("p", p), _prob("q", q)
    if p.shape[-1] != q.shape[-1]:
        raise ValueError(f"p and q must have the same number of outcomes, got {p.shape[-1]} and {q.shape[-1]}")
    with np.errstate(divide="ignore", invalid="ignore"):
        out = -np.where(p > 0, p * np.log(q), 0.0).sum(axis=-1)
    return float(out) if out.ndim == 0 else out


def gaussian(mu1, logvar1, mu2=0.0, logvar2=0.0) -> np.ndarray | float:
    """KL(N(μ₁, σ₁²) ‖ N(μ₂, σ₂²)) summed over the last axis of diagonal Gaussians:
    ½ Σ [lv₂ − lv₁ + (σ₁² + (μ₁ − μ₂)²)/σ₂² − 1]; defaults give the KL to N(0, I)."""
    m1, l1 = as_array("mu1", mu1, np.float64), as_array("logvar1", logvar1, np.float64)
    m2, l2 = as_array("mu2", mu2, np.float64), as_array("logvar2", logvar2, np.float64)
    try:
        m1, l1, m2, l2 = np.broadcast_arrays(m1, l1, m2, l2)
    except ValueError:
        raise ValueError(f"mu1, logvar1, mu2, logvar2 must broadcast together, got shapes "
                         f"{np.shape(mu1)}, {np.shape(logvar1)}, {np.shape(mu2)}, {np.shape(logvar2)}") from None
    t = 0.5 * (l2 - l1 + (np.exp(l1) + (m1 - m2) ** 2) * np.exp(-l2) - 1.0)
    out = t.sum(axis=-1) if t.ndim else t
    return float(out) if np.ndim(out) == 0 else out


# ---- one-dimensional mixtures ------------------------------------------------------------------
def _mixture(weights, means, stds):
    w = _prob("weights", weights)
    if w.ndim != 1:
        raise ValueError(f"weights must be 1-D, got shape {w.shape}")
    m = as_array("means", means, np.float64, ndim=1, shape=(w.shape[0],))
    s = as_array("stds", stds, np.float64, ndim=1, shape=(w.shape[0],))
    if (s <= 0).any():
        raise ValueError(f"stds must be positive, got minimum {s.min():.6g}")
    return w, m, s


def _mix_logpdf_and_dlog(z, w, m, s):
    """log p(z) and d log p/dz for the mixture, elementwise in z."""
    z = np.asarray(z, dtype=np.float64)[..., None]
    with np.errstate(divide="ignore"):
        a = np.log(w) - 0.5 * (LOG_2PI + 2 * np.log(s) + ((z - m) / s) ** 2)
    mx = a.max(axis=-1, keepdims=True)
    lp = mx[..., 0] + np.log(np.exp(a - mx).sum(axis=-1))
    r = np.exp(a - lp[..., None])
    return lp, (r * (-(z - m) / s ** 2)).sum(axis=-1)


def mixture_logpdf(z, weights, means, stds) -> np.ndarray:
    """log Σ_k π_k N(z; μ_k, σ_k²), elementwise in z."""
    w, m, s = _mixture(weights, means, stds)
    return _mix_logpdf_and_dlog(as_array("z", z, np.float64), w, m, s)[0]


# ∫ f(t) N(t; 0, 1) dt ≈ Σ_g w_g f(t_g): the trapezoidal rule on [−9, 9] (step 0.01). Gauss-Hermite
# converges slowly here: log p of a mixture bends sharply between its modes.
_GH_X = np.linspace(-9.0, 9.0, 1801)
_GH_W = np.exp(-0.5 * _GH_X ** 2) / math.sqrt(2 * math.pi) * (_GH_X[1] - _GH_X[0])


def mixture_kl(mean: float, std: float, weights, means, stds, direction: str = "forward") -> float:
    """KL between the Gaussian q = N(mean, std²) and the mixture p, by quadrature (a fine trapezoidal
    rule under each Gaussian, ±9 standard deviations): "forward" KL(p‖q) = Σ_k π_k E_{N_k}[log p − log q], "reverse" KL(q‖p)."""
    w, m, s = _mixture(weights, means, stds)
    mean, std = check_float("mean", mean), check_float("std", std, positive=True)
    check_choice("direction", direction, ("forward", "reverse"))

    def logq(z):
        return -0.5 * (LOG_2PI + 2 * math.log(std) + ((z - mean) / std) ** 2)

    if direction == "forward":
        z = m[:, None] + s[:, None] * _GH_X[None, :]                 # (K, G)
        lp = _mix_logpdf_and_dlog(z, w, m, s)[0]
        return float((w[:, None] * _GH_W[None, :] * (lp - logq(z))).sum())
    z = mean + std * _GH_X
    lp = _mix_logpdf_and_dlog(z, w, m, s)[0]
    return float((_GH_W * (logq(z) - lp)).sum())


@dataclass
class GaussianFit:
    """A Gaussian N(mean, std²) fitted to a mixture, and the divergence it minimizes."""
    mean: float
    std: float
    kl: float
    direction: str


def fit_gaussian(weights, means, stds, direction: str = "forward", init=None, iterations: int = 2000) -> GaussianFit:
    """The Gaussian q closest to the mixture p = Σ π_k N(μ_k, σ_k²) (MATH.md §1).

    forward, min_q KL(p‖q): moment matching in closed form (mean Σπμ, variance Σπ(σ² + μ²) − mean²);
    q covers every mode. reverse, min_q KL(q‖p) = −H(q) − E_q[log p]: gradient descent on
    (mean, log std) with quadrature expectations and backtracking, needing only log p; q
    seeks one mode. ``init`` = (mean, std) starts it there; None tries every component and keeps
    the best.
    """
    w, m, s = _mixture(weights, means, stds)
    check_choice("direction", direction, ("forward", "reverse"))
    iterations = check_int("iterations", iterations, 1)
    if direction == "forward":
        mean = float((w * m).sum())
        var = float((w * (s ** 2 + m ** 2)).sum() - mean ** 2)
        std = math.sqrt(var)
        return GaussianFit(mean, std, mixture_kl(mean, std, w, m, s, "forward"), "forward")
    if init is None:
        starts = [(float(mk), float(sk)) for mk, sk in zip(m, s)]
    else:
        init = as_array("init", init, np.float64, ndim=1, shape=(2,))
        if not init[1] > 0:
            raise ValueError(f"init must be (mean, std) with std > 0, got {tuple(init)}")
        starts = [(float(init[0]), float(init[1]))]

    def value_grad(mu, rho):
        sd = math.exp(rho)
        z = mu + sd * _GH_X
        lp, dlp = _mix_logpdf_and_dlog(z, w, m, s)
        f = -(0.5 * math.log(2 * math.pi * math.e) + rho) - float((_GH_W * lp).sum())
        return f, -float((_GH_W * dlp).sum()), -1.0 - float((_GH_W * dlp * _GH_X).sum()) * sd

    best = None
    for mu, sd in starts:
        rho = math.log(sd)
        f, gm, gr = value_grad(mu, rho)
        eta = 0.5
        for _ in range(iterations):
            while eta > 1e-12:
                f1, gm1, gr1 = value_grad(mu - eta * gm, rho - eta * gr)
                if f1 <= f - 1e-4 * eta * (gm * gm + gr * gr):
                    break
                eta *= 0.5
            if eta <= 1e-12 or abs(f - f1) < 1e-15:
                break
            mu, rho, f, gm, gr = mu - eta * gm, rho - eta * gr, f1, gm1, gr1
            eta = min(1.0, eta * 2)
        if best is None or f < best[2]:
            best = (mu, math.exp(rho), f)
    return GaussianFit(best[0], best[1], mixture_kl(best[0], best[1], w, m, s, "reverse"), "reverse")
