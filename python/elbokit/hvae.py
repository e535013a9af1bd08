"""Hierarchical VAEs with L stochastic levels (MATH.md §6), every level's term visible.

Two structures share one generative model
``p(x, z_1..z_L) = p(z_L) p(x|z_1) prod_{l<L} p(z_l|z_{l+1})`` with ``p(z_L) = N(0, I)`` and Gaussian
conditionals given by MLPs (two linear heads: mean and log-variance):

* ``structure="markov"``: ``q(z_1..z_L|x) = q(z_1|x) prod_{l>1} q(z_l|z_{l-1})``. The ELBO splits
  into the reconstruction ``log p(x|z_1)``, the prior-matching term at the top and one consistency
  term ``log q(z_l|z_{l-1}) - log p(z_l|z_{l+1})`` per lower level, Monte Carlo over one ancestral
  sample of the chain per draw (the top term is analytic given the sampled z_{L-1} when
  kl="analytic", Monte Carlo when kl="mc").
* ``structure="topdown"`` (the ladder VAE): a deterministic bottom-up pass gives a Gaussian
  ``N(mu_d,l, sigma_d,l^2)`` per level from features ``d_l(x)``; ``q(z_L|x)`` is the top one and
  below it ``q(z_l|z_{l+1}, x)`` combines the bottom-up Gaussian with the prior ``p(z_l|z_{l+1})``
  by **precision weighting**: ``1/sigma_q^2 = 1/sigma_d^2 + 1/sigma_p^2``,
  ``mu_q = sigma_q^2 (mu_d/sigma_d^2 + mu_p/sigma_p^2)``. Each level's term is
  ``KL(q(z_l|z_{l+1}, x) || p(z_l|z_{l+1}))``, analytic given the sampled upper latents (or its
  Monte-Carlo form with kl="mc"). The top-down path conditions on z_{l+1} (a special case of the
  ``z_{>l}`` of MATH.md §6).

With one level both structures are exactly ``ek.VAE`` (same parameter names, initial weights for a
seed, ELBO and gradients). Parameter names follow this PyTorch module layout (weights (out, in)):

================================  ===============================================================
``encoder.{l}.{i}.*``,             markov: q(z_{l+1}|z_l) (z_0 = x), trunk on z_l;
``encoder.{l}.mu.*``,              topdown: bottom-up block l, trunk on d_l (d_0 = x) giving
``encoder.{l}.logvar.*``           d_{l+1}, heads for level l+1's bottom-up Gaussian (l = 0..L-1)
``decoder.0.{i}.*``,               p(x|z_1)
``decoder.0.out.*``,
``decoder.0.logvar``
``decoder.{l}.{i}.*``,             p(z_l|z_{l+1}), l = 1..L-1
``decoder.{l}.mu.*``,
``decoder.{l}.logvar.*``
================================  ===============================================================

Encoder trunks use ``hidden``, decoder trunks ``hidden`` reversed. With L = 1 the level index is
dropped (``encoder.mu.weight``, ``decoder.out.weight``): the VAE's names.

Noise: ``eps`` is a list of one array per level, ``eps[l]`` of shape (n_samples, n, z_dims[l]).
Drawn from a seed, the levels are consecutive blocks of one ``ek.random.normal`` vector of
n_samples * n * sum(z_dims) numbers (with one level: the VAE's noise).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from . import _core
from . import io as _io
from . import random as _random
from ._fit import fit_options, run_fit
from ._validation import DTYPES, as_array, as_matrix, check_bool, check_choice, check_float, check_int, check_widths
from ._validation import MAX_ELEMENTS, check_count, check_num_params, mlp_params  # noqa: F401
from .results import History, mean_stderr
from .distributed import sharded
from .vae import KL_METHODS, NETS, VAE, _check_model_options, _check_nan, _conv_spec, _log_likelihood, _ParamModel

__all__ = ["HVAE", "HElboResult", "STRUCTURES"]

STRUCTURES = ("markov", "topdown")


@dataclass
class HElboResult:
    """Per-example terms of a hierarchical ELBO in nats:
    ``elbo = reconstruction - kl_levels.sum(axis=1)``.

    Attributes: ``reconstruction``, ``kl``, ``elbo`` (n,); ``kl_levels`` (n, L), column l the term of
    level l + 1 (z_{l+1}; the last column is the prior-matching term at the top); ``n_samples``;
    ``kl_method``; ``structure``.
    """

    reconstruction: np.ndarray
    kl_levels: np.ndarray
    n_samples: int = 1
    kl_method: str = "analytic"
    structure: str = "markov"
    x_dim: int = 0
    kl: np.ndarray = field(init=False)
    elbo: np.ndarray = field(init=False)

    def __post_init__(self):
        self.kl = self.kl_levels.sum(axis=1)
        self.elbo = self.reconstruction - self.kl

    @property
    def levels(self) -> int:
        return self.kl_levels.shape[1]

    def _term(self, term: str) -> np.ndarray:
        names = ("elbo", "reconstruction", "kl") + tuple(f"kl_{l + 1}" for l in range(self.levels))
        if term not in names:
            raise ValueError(f"term must be one of {', '.join(repr(n) for n in names)}, got {term!r}")
        if term.startswith("kl_"):
            return self.kl_levels[:, int(term[3:]) - 1]
        return getattr(self, term)

    def mean(self, term: str = "elbo") -> float:
        """Mean over examples of a term: 'elbo', 'reconstruction', 'kl' or 'kl_1'..'kl_L' (nats)."""
        return float(np.mean(self._term(term)))

    def stderr(self, term: str = "elbo") -> float:
        """Standard error of that mean (spread over examples and Monte-Carlo noise together)."""
        return mean_stderr(self._term(term))[1]

    def level_means(self) -> np.ndarray:
        """(L,) mean term of each level, bottom to top."""
        return self.kl_levels.mean(axis=0)

    def bits_per_dim(self) -> float:
        """Negative mean ELBO in bits per dimension: -elbo / (d ln 2)."""
        return -self.mean() / (self.x_dim * math.log(2.0))

    def summary(self) -> dict:
        """{term: (mean, stderr)} for elbo, reconstruction, kl and every level's kl_l."""
        names = ("elbo", "reconstruction", "kl") + tuple(f"kl_{l + 1}" for l in range(self.levels))
        return {t: mean_stderr(self._term(t)) for t in names}

    def __repr__(self) -> str:
        rows = [f"{t:>15s}: {m:11.4f} ± {s:.4f}" for t, (m, s) in self.summary().items()]
        head = (f"HElboResult(n={self.elbo.shape[0]}, levels={self.levels}, structure={self.structure!r}, "
                f"n_samples={self.n_samples}, kl={self.kl_method!r}) [nats, mean ± s.e.]")
        return "\n".join([head] + rows)


@_io.register
class HVAE(_ParamModel):
    """A hierarchical VAE with L = len(z_dims) Gaussian latent levels (module docstring).

    Parameters
    ----------
    x_dim : data dimension.
    z_dims : latent widths bottom to top, (z_1, ..., z_L).
    hidden : widths of every network's hidden layers (encoders; decoders use them reversed);
        with net="conv", of the levels above the first.
    net : "mlp", or "conv" for images: p(x|z_1) (``decoder.0``) and q's first network (``encoder.0``:
        q(z_1|x), or the bottom-up block 0) are the conv networks of ``ek.VAE(net="conv")``; the
        upper levels stay MLPs with ``hidden``.
    image_shape, channels : net="conv": (C, H, W) and the channels per level, as ``ek.VAE``.
    structure : "markov" or "topdown".
    likelihood, activation, dtype, seed, decoder_var : as ``ek.VAE``.
    """

    def __init__(self, x_dim, z_dims=(16, 8, 4), hidden=(128,), structure: str = "markov",
                 likelihood: str = "bernoulli", activation: str = "relu", dtype: str = "float32", seed: int = 0,
                 decoder_var="learned", net: str = "mlp", image_shape=None, channels=None):
        check_choice("net", net, NETS)
        z_dims = check_widths("z_dims", z_dims, allow_empty=False)
        hidden = check_widths("hidden", hidden)
        check_choice("structure", structure, STRUCTURES)
        seed, learned, fixed = _check_model_options(likelihood, activation, dtype, seed, decoder_var)
        level0, extra = None, {}
        if net == "conv":  # level 0's networks (encoder.0, decoder.0) convolutional; the others MLPs
            level0, image_shape, channels, x_dim = _conv_spec(x_dim, None, image_shape, channels, activation)
            extra = dict(net="conv", image_shape=list(image_shape), channels=list(channels))
        else:
            for name, v in (("image_shape", image_shape), ("channels", channels)):
                if v is not None:
                    raise ValueError(f"{name} is for net='conv', got {name}={v!r} with net='mlp'")
            x_dim = check_int("x_dim", x_dim, 1)
        ins = [x_dim, *z_dims[:-1]]
        check_num_params("x_dim, z_dims and hidden", sum(2 * mlp_params([a, *hidden, 2 * z]) + a
                                                          for a, z in zip(ins, z_dims)))
        self.config = dict(x_dim=x_dim, z_dims=list(z_dims), hidden=list(hidden), structure=structure,
                           likelihood=likelihood, activation=activation, dtype=dtype, seed=seed,
                           decoder_var="learned" if learned else fixed, **extra)
        self._np_dtype = DTYPES[dtype]
        cls = _core.HVAE_f32 if dtype == "float32" else _core.HVAE_f64
        self._core = cls(x_dim, list(z_dims), list(hidden), structure, activation, likelihood, learned, fixed, seed,
                         level0)
        self._init_layout()

    # -- configuration --------------------------------------------------------------------------
    x_dim = property(lambda self: self.config["x_dim"])
    z_dims = property(lambda self: tuple(self.config["z_dims"]))
    levels = property(lambda self: len(self.config["z_dims"]))
    hidden = property(lambda self: tuple(self.config["hidden"]))
    structure = property(lambda self: self.config["structure"])
    likelihood = property(lambda self: self.config["likelihood"])
    activation = property(lambda self: self.config["activation"])
    decoder_var = property(lambda self: self.config["decoder_var"])

    def __repr__(self) -> str:
        c = self.config
        conv = (f"net='conv', image_shape={tuple(c['image_shape'])}, channels={tuple(c['channels'])}, "
                if c.get("net") == "conv" else "")
        return (f"HVAE(x_dim={c['x_dim']}, z_dims={tuple(c['z_dims'])}, hidden={tuple(c['hidden'])}, {conv}"
                f"structure={c['structure']!r}, likelihood={c['likelihood']!r}, activation={c['activation']!r}, "
                f"dtype={c['dtype']!r}) with {self.num_parameters} parameters")

    # -- inputs ---------------------------------------------------------------------------------
    _x = VAE._x

    def _eps(self, n: int, n_samples, eps, seed, name: str = "eps") -> tuple[list, int]:
        """One (S*n, z_l) array per level from eps [(S, n, z_l)] or from the seed (level-blocked)."""
        L, zd = self.levels, self.z_dims
        if eps is None:
            S = 1 if n_samples is None else check_count("n_samples", n_samples, n * sum(zd))
            seed = check_int("seed", seed, 0)
            flat = _random.normal(S * n * sum(zd), seed=seed)
            out, off = [], 0
            for z in zd:
                out.append(flat[off:off + S * n * z].reshape(S * n, z))
                off += S * n * z
        else:
            if isinstance(eps, np.ndarray) or not isinstance(eps, (list, tuple)):
                raise ValueError(f"{name} must be a list of {L} arrays, one per level, of shapes "
                                 f"{[('n_samples', n, z) for z in zd]}, got {type(eps).__name__}")
            if len(eps) != L:
                raise ValueError(f"{name} must be a list of {L} arrays, one per level, got a list of {len(eps)}")
            arrays = [as_array(f"{name}[{l}]", e, np.float64, ndim=3, shape=(None, n, z))
                      for l, (e, z) in enumerate(zip(eps, zd))]
            S = arrays[0].shape[0]
            for l, a in enumerate(arrays):
                if a.shape[0] != S:
                    raise ValueError(f"{name}[{l}] must have the same number of samples as {name}[0] ({S}), "
                                     f"got shape {a.shape}")
            if n_samples is not None and check_int("n_samples", n_samples, 1) != S:
                raise ValueError(f"n_samples must equal eps[l].shape[0] when eps is given, got n_samples={n_samples} "
                                 f"and eps[0] of shape {arrays[0].shape}")
            out = [a.reshape(S * n, z) for a, z in zip(arrays, zd)]
        return [np.ascontiguousarray(e, dtype=self._np_dtype) for e in out], S

    # -- the bound ------------------------------------------------------------------------------
    def elbo(self, x, n_samples: int | None = None, kl: str = "analytic", seed: int = 0, eps=None,
             distributed: bool = False) -> HElboResult:
        """Per-example reconstruction, level terms kl_levels (n, L) and ELBO (nats), with n_samples
        ancestral samples of the chain per example; noise from ``seed`` or eps (a list of
        (n_samples, n, z_l) arrays). kl="analytic": analytic KLs where the structure allows (the top
        level; every level of "topdown"), "mc": log q - log p at the samples everywhere.
        distributed=True: sharded over the MPI processes as ``VAE.elbo``."""
        x = self._x(x)
        check_choice("kl", kl, KL_METHODS)
        e, S = self._eps(x.shape[0], n_samples, eps, seed)
        if check_bool("distributed", distributed):
            n = x.shape[0]

            def part(lo, hi):
                es = [np.ascontiguousarray(a.reshape(S, n, -1)[:, lo:hi].reshape(S * (hi - lo), -1)) for a in e]
                return tuple(np.asarray(a) for a in self._core.elbo(x[lo:hi], es, S, kl))

            rec, klv = sharded("HVAE.elbo", n, part)
        else:
            rec, klv = self._core.elbo(x, e, S, kl)
        _check_nan("elbo", rec, klv)
        return HElboResult(rec, klv, n_samples=S, kl_method=kl, structure=self.structure, x_dim=self.x_dim)

    def elbo_grad(self, x, n_samples: int | None = None, kl: str = "analytic", seed: int = 0, eps=None):
        """(HElboResult, grads): grads[name] is the gradient of the batch-mean ELBO with respect to
        that parameter, by the hand-written backward pass."""
        x = self._x(x)
        check_choice("kl", kl, KL_METHODS)
        e, S = self._eps(x.shape[0], n_samples, eps, seed)
        _, rec, klv, g = self._core.objective_grad(x, e, S, kl, 1.0, 0.0, 1.0)
        _check_nan("elbo_grad", rec, klv, g)
        res = HElboResult(rec, klv, n_samples=S, kl_method=kl, structure=self.structure, x_dim=self.x_dim)
        return res, self._grad_dict(g)

    def objective_grad(self, x, eps=None, n_samples=None, kl="analytic", beta=1.0, free_bits=0.0, seed=0):
        """(objective, grads) of the training objective mean_b rec_b - beta * sum_l F(mean_b kl_levels[b, l]),
        F(k) = max(free_bits, k) when free_bits > 0 (free bits per level). Not a bound when beta != 1
        or free_bits > 0."""
        x = self._x(x)
        check_choice("kl", kl, KL_METHODS)
        beta = check_float("beta", beta, minimum=0.0)
        free_bits = check_float("free_bits", free_bits, minimum=0.0)
        e, S = self._eps(x.shape[0], n_samples, eps, seed)
        J, *_, g = self._core.objective_grad(x, e, S, kl, beta, free_bits, 1.0)
        return J, self._grad_dict(g)

    def log_likelihood(self, x, k: int = 5000, seed: int = 0, distributed: bool = False) -> np.ndarray:
        """Per-example L_K (MATH.md §3) with K importance samples of the whole chain z_1..z_L ~ q,
        log w = log p(x, z_1..z_L) - log q(z_1..z_L|x), by log-sum-exp in float64, chunked so that any
        K fits in memory. Sample k of example b, level l, coordinate j uses
        ``ek.random.normal((n, K, sum(z_dims)), seed, STREAMS['log_likelihood'])[b, k, off_l + j]``,
        off_l = z_1 + ... + z_{l-1}. L_1 <= L_K <= log p(x). distributed=True: sharded over the MPI
        processes as ``VAE.log_likelihood``."""
        x = self._x(x)
        k = check_int("k", k, 1)
        seed = check_int("seed", seed, 0)
        out = _log_likelihood(self, x, k, seed, distributed)
        _check_nan("log_likelihood", out)
        return out

    # -- the networks ---------------------------------------------------------------------------
    def encode(self, x, eps=None) -> list:
        """[(mu_l, logvar_l)] per level, bottom to top, each (n, z_l): q's Gaussian of every level
        along the chain's mean path (every upper/lower latent at its mean) or, with eps (a list of
        (n, z_l) arrays), along the chain sampled with that noise (z_l = mu_l + exp(logvar_l/2) eps_l)."""
        x = self._x(x)
        e = None
        if eps is not None:
            if isinstance(eps, (list, tuple)):
                eps = [np.asarray(a)[None] if np.ndim(a) == 2 else a for a in eps]
            e, _ = self._eps(x.shape[0], 1, eps, 0)
        out = [tuple(p) for p in self._core.encode(x, e)]
        _check_nan("encode", *[a for p in out for a in p])
        return out

    def encode_top(self, x):
        """(mu, logvar) (n, z_L) of the top level's Gaussian, as ek.surgery uses it: exactly q(z_L|x)
        for structure="topdown"; for "markov", q(z_L|z_{L-1}) along the chain's mean path (the
        marginal q(z_L|x) of a Markov chain of Gaussians is not Gaussian). The surgery identity holds
        for either; with p(z_L) = N(0, I) it splits the top level's KL."""
        return self.encode(x)[-1]

    def decode(self, z, level: int = 1, logits: bool = False) -> np.ndarray:
        """The mean of p(x|...) (n, x_dim) from z (n, z_dims[level-1]) at `level` (1 = the bottom),
        passed down through the prior's conditional means; Bernoulli logits when logits=True."""
        level = check_int("level", level, 1)
        if level > self.levels:
            raise ValueError(f"level must be an integer in [1, {self.levels}], got {level}")
        z = as_matrix("z", z, self.z_dims[level - 1], self._np_dtype)
        out = self._core.decode(z, level, not logits)
        _check_nan("decode", out, args="z")
        return out

    def prior(self, z, level: int):
        """(mu, logvar), each (n, z_dims[level-2]): the Gaussian of p(z_{level-1} | z_level) for z
        (n, z_dims[level-1]), level in 2..L (levels counted from 1 at the bottom; p(z_L) = N(0, I))."""
        level = check_int("level", level, 2)
        if level > self.levels:
            raise ValueError(f"level must be an integer in [2, {self.levels}], got {level}")
        z = as_matrix("z", z, self.z_dims[level - 1], self._np_dtype)
        mu, logvar = self._core.prior(z, level)
        _check_nan("prior", mu, logvar, args="z")
        return mu, logvar

    def reconstruct(self, x, sample: bool = False, seed: int = 0) -> np.ndarray:
        """Decoder mean at z_1 on the chain's mean path, or at one sample of the chain when sample=True."""
        x = self._x(x)
        if not sample:
            mu, _ = self.encode(x)[0]
            return self.decode(mu)
        n = x.shape[0]
        e, _ = self._eps(n, 1, None, check_int("seed", seed, 0))
        mu, lv = self._core.encode(x, e)[0]
        return self.decode(mu + np.exp(0.5 * lv) * e[0])

    def sample(self, n: int, seed: int = 0, return_latent: bool = False):
        """n ancestral samples of p: z_L ~ N(0, I), z_l ~ p(z_l|z_{l+1}), decoded to the mean of
        p(x|z_1) (n, x_dim); with return_latent, (x, [z_1, ..., z_L]). The noise is
        ``ek.random.normal(n * sum(z_dims), seed, STREAMS['sample'])`` in level blocks (n, z_l)."""
        n = check_count("n", n, max(self.x_dim, sum(self.z_dims)))
        seed = check_int("seed", seed, 0)
        flat = _random.normal(n * sum(self.z_dims), seed=seed, stream=_random.STREAMS["sample"])
        eps, off = [], 0
        for z in self.z_dims:
            eps.append(np.ascontiguousarray(flat[off:off + n * z].reshape(n, z), dtype=self._np_dtype))
            off += n * z
        x, zs = self._core.generate(eps, n)
        return (x, list(zs)) if return_latent else x

    def active_units(self, x) -> np.ndarray:
        """(L,) per level, bottom to top: dimensions of q's mean along the chain's mean path whose
        variance over x exceeds 0.01 (MATH.md §2). In the top-down model a level's mean also moves
        with the level above, so a level whose KL is ~0 can still count units here."""
        x = self._x(x)
        return np.array([int((np.var(mu.astype(np.float64), axis=0) > 0.01).sum()) for mu, _ in self.encode(x)])

    decoder_variance = VAE.decoder_variance

    # -- training -------------------------------------------------------------------------------
    def fit(self, x, epochs: int = 20, batch_size: int = 128, lr: float = 1e-3, optimizer: str = "adam",
            beta: float = 1.0, warmup_steps: int = 0, free_bits: float = 0.0, n_samples: int = 1,
            kl: str = "analytic", validation=None, seed: int = 0, progress: bool = True,
            momentum: float = 0.9, weight_decay: float = 0.0, clip_norm: float | None = None,
            active_units: bool = True, distributed: bool = False, checkpoint=None) -> History:
        """Trains by minibatch gradient ascent through the shared C++ loop (GIL released), as
        ``VAE.fit``. KL warm-up scales every level's term by beta_t = beta * min(1, t / warmup_steps);
        free bits act per level: each level's batch-mean term is replaced by max(free_bits, KL_l).
        With beta != 1 or free_bits > 0 the objective is not a bound; ``train_elbo`` is the true ELBO.
        The history's ``kl_terms`` (epochs, L) holds the per-level terms and ``active_units``
        (epochs, L) the active units per level (empty with ``active_units=False``). Step t's noise is
        ``ek.random.normal(n_samples * batch * sum(z_dims), seed, STREAMS['train_noise'] + t)`` in
        level blocks (n_samples, batch, z_l).

        ``checkpoint`` and ``distributed``: as in ``VAE.fit`` (a checkpoint at each epoch's end;
        data-parallel over MPI processes, see elbokit.distributed).
        """
        x = self._x(x)
        xv = None if validation is None else self._x(validation, "validation")
        opts = fit_options(epochs, batch_size, lr, optimizer, beta, warmup_steps, free_bits, n_samples, kl, seed,
                           momentum, weight_decay, clip_norm)
        opts["active_units"] = check_bool("active_units", active_units)
        return run_fit(self._core, x, xv, opts, progress, desc="HVAE", distributed=distributed,
                       checkpoint=checkpoint, save=self.save)
