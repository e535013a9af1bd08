"""ELBO surgery (MATH.md §4; Hoffman & Johnson 2016): the average KL to the prior splits into the
marginal KL and the mutual information,

    (1/n) Σ_i KL(q(z|x_i) ‖ p(z)) = KL(q_agg(z) ‖ p(z)) + I_q[x; z],   q_agg = (1/n) Σ_i q(z|x_i),

with 0 <= I_q <= log n. ``surgery(model, x, seed)`` estimates both terms with samples
z ~ q(z|x_i) and log q_agg(z) by log-sum-exp over the n encodings (a C++ kernel, O(n² S Z),
OpenMP, deterministic), and checks the identity against the analytic average KL.

The model: anything that gives the (top-level) diagonal Gaussian posterior of each x, as
``(mu, logvar)`` arrays of shape (n, Z), through
  * ``model.encode_top(x)`` (a hierarchical VAE's top level), else
  * a callable ``model(x)``, else
  * ``model.encode(x)`` (``ek.VAE``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import _core
from . import random as _random
from ._validation import as_array, check_count, check_int
from .results import mean_stderr

__all__ = ["surgery", "SurgeryResult", "log_aggregate_posterior"]

LOG_2PI = math.log(2.0 * math.pi)
#: Stream of the surgery's samples z ~ q(z|x_i) (index (s·n + i)·Z + j) and of its subset choice.
STREAM = 11
STREAM_SUBSET = 12


def log_aggregate_posterior(z, mu, logvar) -> np.ndarray:
    """log q_agg(z) = log (1/N) Σ_i N(z; mu_i, diag exp(logvar_i)) for z (M, Z), mu/logvar (N, Z)."""
    mu = as_array("mu", mu, np.float64, ndim=2)
    lv = as_array("logvar", logvar, np.float64, ndim=2, shape=mu.shape)
    z = as_array("z", z, np.float64, ndim=2, shape=(None, mu.shape[1]))
    return _core.log_aggregate_posterior(z, mu, lv)


def _posterior(model, x):
    if hasattr(model, "encode_top"):
        out, how = model.encode_top(x), "encode_top(x)"
    elif callable(model):
        out, how = model(x), "model(x)"
    elif hasattr(model, "encode"):
        out, how = model.encode(x), "encode(x)"
    else:
        raise ValueError(f"model must have encode_top(x) or encode(x), or be a callable x -> (mu, logvar), "
                         f"got {type(model).__name__}")
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise ValueError(f"model's {how} must return (mu, logvar), got {type(out).__name__}")
    mu = as_array("mu", out[0], np.float64, ndim=2)
    lv = as_array("logvar", out[1], np.float64, ndim=2, shape=mu.shape)
    return mu, lv


@dataclass
class SurgeryResult:
    """Terms of the ELBO surgery in nats, averaged over the n data points.

    ``average_kl``: (1/n) Σ KL(q(z|x_i) ‖ p(z)), analytic. ``marginal_kl``: KL(q_agg ‖ p) and
    ``mutual_information``: I_q[x; z], Monte-Carlo estimates, each with its standard error
    (``*_stderr``). ``residual`` = average_kl − (marginal_kl + mutual_information), which is 0 up
    to Monte-Carlo error (``residual_stderr``); ``log_n`` bounds the mutual information.
    """
    average_kl: float
    marginal_kl: float
    marginal_kl_stderr: float
    mutual_information: float
    mutual_information_stderr: float
    residual: float
    residual_stderr: float
    log_n: float
    n: int
    n_samples: int
    n_aggregate: int

    def __repr__(self) -> str:
        return (f"SurgeryResult(n={self.n}, n_samples={self.n_samples}, n_aggregate={self.n_aggregate}) [nats]\n"
                f"  average KL(q(z|x) ‖ p(z)) = {self.average_kl:.4f}\n"
                f"  KL(q_agg ‖ p)             = {self.marginal_kl:.4f} ± {self.marginal_kl_stderr:.4f}\n"
                f"  I_q[x; z]                 = {self.mutual_information:.4f} ± {self.mutual_information_stderr:.4f}"
                f"   (log n = {self.log_n:.4f})\n"
                f"  residual                  = {self.residual:.2e} ± {self.residual_stderr:.2e}")


def surgery(model, x, seed: int = 0, n_samples: int = 1, n_aggregate: int | None = None) -> SurgeryResult:
    """The ELBO surgery of ``model``'s posterior on the data x (see the module docstring).

    n_samples draws z ~ q(z|x_i) per point (noise ``ek.random.normal((n_samples, n, Z), seed,
    stream=STREAM)``). log q_agg(z) sums over all n encodings (exact for the data set's q_agg), or,
    with n_aggregate < n, over that many points drawn without replacement (a biased estimate of
    the log, for very large n).
    """
    seed = check_int("seed", seed, 0)
    mu, lv = _posterior(model, x)
    n, Z = mu.shape
    S = check_count("n_samples", n_samples, n * Z)
    if n < 2:
        raise ValueError(f"x must hold at least 2 points for the surgery, got {n}")
    if n_aggregate is None:
        agg = np.arange(n)
    else:
        m = check_int("n_aggregate", n_aggregate, 1)
        if m > n:
            raise ValueError(f"n_aggregate must be <= the number of points {n}, got {m}")
        agg = np.sort(_random.permutation(n, seed=seed, stream=STREAM_SUBSET)[:m])
    eps = _random.normal((S, n, Z), seed=seed, stream=STREAM)
    z = mu + np.exp(0.5 * lv) * eps                                      # (S, n, Z)
    logq = -0.5 * (Z * LOG_2PI + lv.sum(axis=1) + (eps * eps).sum(axis=2))  # (S, n)
    logp = -0.5 * (Z * LOG_2PI + (z * z).sum(axis=2))
    logagg = log_aggregate_posterior(z.reshape(S * n, Z), mu[agg], lv[agg]).reshape(S, n)
    kl_i = 0.5 * (mu * mu + np.exp(lv) - 1.0 - lv).sum(axis=1)            # analytic, (n,)
    marg = (logagg - logp).mean(axis=0)                                   # per point, averaged over samples
    mi = (logq - logagg).mean(axis=0)
    mk, mk_se = mean_stderr(marg)
    mi_m, mi_se = mean_stderr(mi)
    res, res_se = mean_stderr(kl_i - marg - mi)
    return SurgeryResult(float(kl_i.mean()), mk, mk_se, mi_m, mi_se, res, res_se, math.log(len(agg)), n, S, len(agg))
