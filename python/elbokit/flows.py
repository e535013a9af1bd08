"""Normalizing flows as VAEs (MATH.md §8).

A flow is a VAE whose encoder z = f(x) is deterministic and invertible and whose decoder is
x = f⁻¹(z). Its ELBO equals its exact log-likelihood,

    log p(x) = log N(f(x); 0, I) + log |det ∂f/∂x|,

because q(z|x) = δ(z − f(x)) is the exact posterior (the gap is 0). ``Flow.elbo_smoothed`` shows
the limit: with the Gaussian encoder q(z|x) = N(f(x), σ² J Jᵀ) (J = ∂f/∂x) and decoder
p(x|z) = N(f⁻¹(z), σ² I), the ordinary ELBO tends to log p(x) as σ → 0.

Layers (forward, inverse, log-determinant and backward in C++): affine coupling (RealNVP, tanh-
bounded log-scales, alternating halves) and planar (Rezende & Mohamed, with the invertibility
reparameterization of u). See ``cpp/include/elbokit/flows.hpp``.
"""
from __future__ import annotations

import math

import numpy as np

from . import _core
from . import io as _io
from . import random as _random
from ._fit import optimizer_options, run_fit
from ._validation import DTYPES, as_array, as_matrix, check_choice, check_float, check_int
from ._validation import MAX_ELEMENTS, check_count, check_num_params, check_widths, mlp_params  # noqa: F401
from .vae import ACTIVATIONS, _check_nan, _ParamModel

__all__ = ["Flow", "LAYERS"]

LAYERS = ("coupling", "planar")
LOG_2PI = math.log(2.0 * math.pi)


@_io.register
class Flow(_ParamModel):
    """A normalizing flow z = f(x) with a standard normal base distribution.

    Parameters
    ----------
    dim : data (= latent) dimension.
    layers : names of the layers from x to z, each "coupling" or "planar"
        (coupling layers alternate which half they keep; they need dim >= 2).
    hidden, activation : the coupling layers' conditioner MLP.
    dtype : "float64" (default: verification) or "float32".
    seed : initial weights (torch.nn.Linear's default initialization for the conditioners).
    """

    def __init__(self, dim: int, layers=("coupling",) * 4, hidden=(32, 32), activation: str = "relu",
                 dtype: str = "float64", seed: int = 0):
        dim = check_int("dim", dim, 1)
        if isinstance(layers, str):
            layers = (layers,)
        try:
            layers = tuple(layers)
        except TypeError:
            raise ValueError(f"layers must be a tuple of layer names ('coupling' or 'planar'), got {layers!r}") from None
        if not layers:
            raise ValueError("layers must name at least one layer ('coupling' or 'planar'), got ()")
        for i, l in enumerate(layers):
            check_choice(f"layers[{i}]", l, LAYERS)
        hidden = check_widths("hidden", hidden)
        check_choice("activation", activation, ACTIVATIONS)
        check_choice("dtype", dtype, tuple(DTYPES))
        seed = check_int("seed", seed, 0)
        check_num_params("dim, layers and hidden", len(layers) * (mlp_params([dim, *hidden, 2 * dim]) + 2 * dim + 1))
        if dim < 2 and "coupling" in layers:
            raise ValueError(f"dim must be >= 2 for coupling layers, got {dim}")
        self.config = dict(dim=dim, layers=list(layers), hidden=list(hidden), activation=activation, dtype=dtype,
                           seed=seed)
        self._np_dtype = DTYPES[dtype]
        cls = _core.Flow_f32 if dtype == "float32" else _core.Flow_f64
        self._core = cls(dim, list(layers), list(hidden), activation, seed)
        self._init_layout()

    dim = property(lambda self: self.config["dim"])

    def __repr__(self) -> str:
        c = self.config
        return (f"Flow(dim={c['dim']}, layers={tuple(c['layers'])}, hidden={tuple(c['hidden'])}, "
                f"activation={c['activation']!r}, dtype={c['dtype']!r}) with {self.num_parameters} parameters")

    def _x(self, x, name="x"):
        return as_matrix(name, x, self.dim, self._np_dtype)

    # -- the map and the density ----------------------------------------------------------------
    def forward(self, x):
        """(z = f(x) (n, D), log|det ∂f/∂x| (n,))."""
        z, _, logdet = self._core.forward(self._x(x))
        _check_nan("forward", z, logdet)
        return z, logdet

    def inverse(self, z) -> np.ndarray:
        """x = f⁻¹(z) (n, D): closed form for coupling layers, a bracketed Newton solve for planar ones."""
        x = self._core.inverse(self._x(z, "z"))
        _check_nan("inverse", x)
        return x

    def log_prob(self, x) -> np.ndarray:
        """Exact per-example log p(x) = log N(f(x); 0, I) + log|det ∂f/∂x| (n,)."""
        _, prior, logdet = self._core.forward(self._x(x))
        _check_nan("log_prob", prior, logdet)
        return prior + logdet

    def elbo(self, x) -> dict:
        """The ELBO of the flow seen as a VAE with the deterministic encoder δ(z − f(x)): the
        'prior' term log p(f(x)), the 'logdet' term (reconstruction − log q, for a bijection), and
        their sum 'elbo', which equals log_prob(x) exactly (gap 0). Each (n,)."""
        _, prior, logdet = self._core.forward(self._x(x))
        _check_nan("elbo", prior, logdet)
        return {"prior": prior, "logdet": logdet, "elbo": prior + logdet}

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """n draws x = f⁻¹(z), z ~ N(0, I) from ``ek.random.normal((n, D), seed, STREAMS['sample'])``."""
        n, seed = check_count("n", n, self.dim), check_int("seed", seed, 0)
        z = _random.normal((n, self.dim), seed=seed, stream=_random.STREAMS["sample"])
        return self.inverse(z)

    # -- gradients ------------------------------------------------------------------------------
    def vjp(self, x, dz, dlogdet=None):
        """For J = Σ dz ⊙ f(x) + Σ_b dlogdet_b log|det|_b: (grads dict, dJ/dx (n, D))."""
        x = self._x(x)
        dz = as_array("dz", dz, self._np_dtype, ndim=2, shape=x.shape)
        dld = np.zeros(x.shape[0]) if dlogdet is None else as_array("dlogdet", dlogdet, np.float64, ndim=1,
                                                                     shape=(x.shape[0],))
        g, dx = self._core.vjp(x, dz, dld)
        _check_nan("vjp", g, dx, args="x and dz")
        return self._grad_dict(g), dx

    def log_prob_grad(self, x):
        """(mean log p(x), grads): the gradient of the batch-mean log-likelihood per parameter."""
        J, *_, g = self._core.objective_grad(self._x(x), 1.0)
        _check_nan("log_prob_grad", np.asarray(J), g)
        return J, self._grad_dict(g)

    def jacobian(self, x) -> np.ndarray:
        """J[b] = ∂f/∂x at x_b (n, D, D), row i by a vector-Jacobian product with e_i."""
        x = self._x(x)
        n, D = x.shape
        out = np.empty((n, D, D))
        zero = np.zeros(n)
        for i in range(D):
            dz = np.zeros((n, D), dtype=self._np_dtype)
            dz[:, i] = 1
            out[:, i, :] = self._core.vjp(x, dz, zero)[1]
        return out

    def elbo_smoothed(self, x, sigma: float, n_samples: int = 1000, seed: int = 0):
        """The ordinary Monte-Carlo ELBO of the Gaussian VAE around the flow: q(z|x) =
        N(f(x), σ² J Jᵀ), p(x|z) = N(f⁻¹(z), σ² I), p(z) = N(0, I). Returns (estimate (n,), standard
        error (n,)). As σ → 0 it tends to log_prob(x) (the deterministic VAE's ELBO)."""
        x = as_matrix("x", x, self.dim, np.float64)
        sigma = check_float("sigma", sigma, positive=True)
        n, D = x.shape
        S = check_count("n_samples", n_samples, n * D * D, minimum=2)
        z0, _ = self.forward(x)
        J = self.jacobian(x)
        _, logabsdet = np.linalg.slogdet(J)
        eps = _random.normal((S, n, D), seed=check_int("seed", seed, 0))
        z = z0 + sigma * np.einsum("bij,sbj->sbi", J, eps)                           # (S, n, D)
        if not np.isfinite(z).all():
            raise ValueError(f"sigma = {sigma} with these x puts q(z|x)'s samples beyond float64; use a smaller sigma")
        xr = self.inverse(z.reshape(S * n, D)).reshape(S, n, D)
        logpx = -0.5 * (D * (LOG_2PI + 2 * math.log(sigma)) + ((x - xr) ** 2).sum(-1) / np.float64(sigma) ** 2)
        logpz = -0.5 * (D * LOG_2PI + (z * z).sum(-1))
        logq = -0.5 * (D * (LOG_2PI + 2 * math.log(sigma)) + (eps * eps).sum(-1)) - logabsdet
        t = logpx + logpz - logq
        with np.errstate(invalid="ignore", over="ignore"):
            mean, se = t.mean(axis=0), t.std(axis=0, ddof=1) / math.sqrt(S)
        _check_nan("elbo_smoothed", mean, se, args="x and sigma")
        return mean, se

    # -- training -------------------------------------------------------------------------------
    def fit(self, x, epochs: int = 100, batch_size: int = 256, lr: float = 1e-3, optimizer: str = "adam",
            validation=None, seed: int = 0, progress: bool = True, momentum: float = 0.9,
            weight_decay: float = 0.0, clip_norm: float | None = None, distributed: bool = False, checkpoint=None):
        """Maximum likelihood by minibatch gradient ascent on mean log p(x) (the shared C++ loop).
        History: ``train_elbo`` = mean log p(x) (exact), ``train_reconstruction`` the mean log|det|,
        ``train_kl`` the mean −log p(f(x)).

        ``checkpoint`` and ``distributed``: as in ``VAE.fit`` (a checkpoint at each epoch's end;
        data-parallel over MPI processes, see elbokit.distributed).
        """
        x = self._x(x)
        xv = None if validation is None else self._x(validation, "validation")
        opts = optimizer_options(epochs, batch_size, lr, optimizer, seed, momentum, weight_decay, clip_norm)
        return run_fit(self._core, x, xv, opts, progress, desc="Flow", distributed=distributed,
                       checkpoint=checkpoint, save=self.save)
