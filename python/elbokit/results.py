"""Result containers: every term of a bound, per example, with its Monte-Carlo standard error."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["ElboResult", "History", "mean_stderr"]


def mean_stderr(values) -> tuple[float, float]:
    """Mean of per-example values and its standard error (sample std / sqrt(n))."""
    v = np.asarray(values, dtype=np.float64)
    n = v.shape[0]
    se = float(v.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return float(v.mean()), se


@dataclass
class ElboResult:
    """Per-example ELBO terms in nats (MATH.md §2): ``elbo = reconstruction - kl``.

    Attributes: ``elbo``, ``reconstruction``, ``kl`` (n,); ``kl_per_dim`` (n, z_dim);
    ``n_samples`` Monte-Carlo samples per example; ``kl_method`` "analytic" or "mc".
    """

    reconstruction: np.ndarray
    kl: np.ndarray
    kl_per_dim: np.ndarray
    n_samples: int = 1
    kl_method: str = "analytic"
    x_dim: int = 0
    elbo: np.ndarray = field(init=False)

    def __post_init__(self):
        self.elbo = self.reconstruction - self.kl

    def _term(self, term: str) -> np.ndarray:
        if term not in ("elbo", "reconstruction", "kl"):
            raise ValueError(f"term must be one of 'elbo', 'reconstruction', 'kl', got {term!r}")
        return getattr(self, term)

    def mean(self, term: str = "elbo") -> float:
        """Mean over examples of a term (nats)."""
        return float(np.mean(self._term(term)))

    def stderr(self, term: str = "elbo") -> float:
        """Standard error of that mean: spread over examples and Monte-Carlo noise together."""
        return mean_stderr(self._term(term))[1]

    def bits_per_dim(self) -> float:
        """Negative mean ELBO in bits per dimension: -elbo / (d ln 2)."""
        return -self.mean() / (self.x_dim * math.log(2.0))

    def summary(self) -> dict:
        """{term: (mean, stderr)} for elbo, reconstruction and kl."""
        return {t: mean_stderr(self._term(t)) for t in ("elbo", "reconstruction", "kl")}

    def __repr__(self) -> str:
        rows = [f"{t:>15s}: {m:11.4f} ± {s:.4f}" for t, (m, s) in self.summary().items()]
        head = f"ElboResult(n={self.elbo.shape[0]}, n_samples={self.n_samples}, kl={self.kl_method!r}) [nats, mean ± s.e.]"
        return "\n".join([head] + rows)


class History(dict):
    """What fit recorded, one entry per epoch (``step_loss``: one per step). Keys are also
    attributes: ``hist.val_elbo``. Keys: train_loss (the minimized objective), train_elbo,
    train_reconstruction, train_kl, beta, grad_norm (mean before clipping), val_elbo,
    val_reconstruction, val_kl (when validation data is given), kl_terms (epochs, K: KL per latent
    dimension or level), active_units (epochs, groups; on the validation data, else on the first
    2048 training rows; empty when fit(active_units=False)), step_loss (one per step), steps (steps done),
    stopped_early, diverged (whether a non-finite loss or gradient stopped training) and
    diverged_at_step (that step, numbered from 0, or None; also ``divergence``: the message). The objective is a bound only when beta == 1 and free_bits == 0;
    ``train_elbo`` is always the true ELBO of the training minibatches."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def epochs(self) -> int:
        return len(self.get("train_loss", ()))
