"""The tracer's estimates: a line's value with its Monte-Carlo standard error (:class:`Estimate`,
:func:`mc`, :func:`exact`, :func:`log_mean`) and the check of a relation between two lines
(the package docstring of ``elbokit.derivations`` states the rules)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..exact import _logsumexp

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
