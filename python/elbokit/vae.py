"""The variational autoencoder (MATH.md §2) with its importance-weighted bound (§3).

Encoder q(z|x) = N(mu(x), diag exp(logvar(x))): an MLP with two linear heads. Prior N(0, I).
Decoder p(x|z): an MLP giving Bernoulli logits, or Gaussian means with one learned log-variance per
dimension (clamped to [-10, 10]) or a fixed variance. "bernoulli" evaluates the Bernoulli
log-likelihood x*l - softplus(l) also for grey levels in [0, 1]; it is not the continuous Bernoulli.
"""
from __future__ import annotations


import numpy as np

from . import _core
from . import io as _io
from . import random as _random
from ._fit import fit_options, run_fit
from .distributed import sharded
from ._validation import (DTYPES, as_array, as_matrix, check_bool, check_choice, check_count, check_float, check_int,
                          check_num_params, check_widths, mlp_params)
from .results import ElboResult, History

__all__ = ["VAE", "ACTIVATIONS", "LIKELIHOODS"]

ACTIVATIONS = ("relu", "tanh", "sigmoid", "softplus", "elu", "silu", "leaky_relu")
LIKELIHOODS = ("bernoulli", "gaussian")
KL_METHODS = ("analytic", "mc")
NETS = ("mlp", "conv")


def _conv_spec(x_dim, hidden, image_shape, channels, activation, arg="channels"):
    """The conv network's description (cpp/include/elbokit/conv_nets.hpp: Conv2d(4, 2, 1) levels in
    the encoder, ConvTranspose2d(4, 2, 1) in the decoder); returns (spec, image_shape, channels, x_dim).
    x_dim may be None (then C·H·W) or must equal C·H·W; `hidden` does not apply to a conv network."""
    if hidden is not None:
        raise ValueError(f"hidden is for net='mlp'; net='conv' takes channels (per level), got hidden={hidden!r}")
    if image_shape is None:
        raise ValueError("image_shape must be given as (C, H, W) with net='conv', got None")
    try:
        ok = len(image_shape) == 3 and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1
                                           for v in image_shape)
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"image_shape must be three positive integers (C, H, W), got {image_shape!r}")
    image_shape = tuple(int(v) for v in image_shape)
    channels = check_widths(arg, (32, 64) if channels is None else channels, allow_empty=False)
    D = image_shape[0] * image_shape[1] * image_shape[2]
    if x_dim is None:
        x_dim = D
    elif check_int("x_dim", x_dim, 1) != D:
        raise ValueError(f"x_dim must equal C·H·W = {D} for image_shape {image_shape}, got {x_dim} "
                         f"(or pass x_dim=None)")
    spec = _core.NetSpec("conv", list(channels), activation, arg, list(image_shape))
    spec.check()  # the sides must halve len(channels) times
    return spec, image_shape, channels, x_dim


def _check_model_options(likelihood, activation, dtype, seed, decoder_var):
    """Checks the options a VAE and an HVAE share; returns (seed, learned variance?, fixed variance)."""
    check_choice("likelihood", likelihood, LIKELIHOODS)
    check_choice("activation", activation, ACTIVATIONS)
    check_choice("dtype", dtype, tuple(DTYPES))
    seed = check_int("seed", seed, 0)
    if isinstance(decoder_var, str):
        check_choice("decoder_var", decoder_var, ("learned",))
        return seed, True, 1.0
    return seed, False, check_float("decoder_var", decoder_var, positive=True)


class NonFiniteResultError(FloatingPointError, ValueError):
    """A result that came out NaN: the inputs' magnitude or the model's parameters overflow the
    computation. Both a FloatingPointError and a ValueError (the inputs are out of the model's range)."""


def _check_nan(what: str, *arrays, args: str = "x") -> None:
    """No silent NaN: a NaN result means the computation overflows, from the inputs' magnitude (for
    example |x| ~ 1e300) or the parameters (an encoder log-variance beyond ~700); infinities are
    honest results and pass."""
    for a in arrays:
        if np.isnan(a).any():
            raise NonFiniteResultError(f"{what} produced NaN: the computation overflows for these values of {args} "
                                       f"or these parameters (check the scale of {args}, encoder.logvar and the "
                                       f"decoder's outputs)")


def _log_likelihood(model, x, k, seed, distributed):
    """core.log_likelihood over x, or sharded over the MPI processes (row0: each row's own samples)."""
    if not check_bool("distributed", distributed):
        return model._core.log_likelihood(x, k, seed)
    return sharded(f"{type(model).__name__}.log_likelihood", x.shape[0],
                   lambda lo, hi: np.asarray(model._core.log_likelihood(x[lo:hi], k, seed, lo)))


class _ParamModel:
    """Parameters as a dict of arrays named like the equivalent PyTorch module's state_dict."""

    def _init_layout(self):
        self._layout = [(n, tuple(s), o, k) for n, s, o, k in self._core.param_layout()]

    @property
    def num_parameters(self) -> int:
        return sum(k for *_, k in self._layout)

    def parameters(self) -> dict:
        """name -> array (a copy), PyTorch names and shapes (weights (out, in))."""
        flat = self._core.get_flat()
        return {n: flat[o:o + k].reshape(s).copy() for n, s, o, k in self._layout}

    def set_parameters(self, params: dict) -> None:
        """Sets every parameter; names and shapes must match parameters() exactly."""
        if not isinstance(params, dict):
            raise ValueError(f"params must be a dict name -> array, got {type(params).__name__}")
        names = [n for n, *_ in self._layout]
        missing = [n for n in names if n not in params]
        extra = [n for n in params if n not in names]
        if missing or extra:
            raise ValueError(f"params must have exactly the names {names}; missing {missing}, unexpected {extra}")
        flat = np.empty(self.num_parameters, dtype=self._np_dtype)
        for n, s, o, k in self._layout:
            a = np.asarray(params[n])
            if hasattr(params[n], "detach"):  # a torch tensor
                a = params[n].detach().cpu().numpy()
            a = as_array(f"params[{n!r}]", a, self._np_dtype, ndim=len(s), shape=s)
            flat[o:o + k] = a.reshape(-1)
        self._core.set_flat(flat)

    def _grad_dict(self, flat: np.ndarray) -> dict:
        return {n: flat[o:o + k].reshape(s).copy() for n, s, o, k in self._layout}

    @property
    def dtype(self) -> str:
        return self.config["dtype"]

    def save(self, path) -> str:
        """Writes the model atomically to path (see elbokit.load)."""
        return _io.save(self, path)


@_io.register
class VAE(_ParamModel):
    """A VAE with a Gaussian encoder, a standard normal prior and a Bernoulli or Gaussian decoder.

    Parameters
    ----------
    x_dim, z_dim : data and latent dimensions (x_dim may be None with net="conv": C·H·W).
    hidden : net="mlp": widths of the encoder's hidden layers (default (128, 128)); the decoder
        uses them reversed. () is linear. Not accepted with net="conv".
    net : "mlp", or "conv" for images: the encoder is Conv2d(c_{i-1}, c_i, 4, stride 2,
        padding 1) + activation per level (``encoder.{i}``), the decoder a Linear ``decoder.fc``
        to (c_last, H/2^n, W/2^n) + activation, then ConvTranspose2d(4, 2, 1) + activation per level
        reversed (``decoder.{j}``) and the last one to C channels (``decoder.out``); layouts as
        torch.nn.Conv2d / ConvTranspose2d, so their weights load by name. Rows of x are the images
        flattened in C, H, W order (``x.reshape(n, -1)`` of an (n, C, H, W) array).
    image_shape : net="conv": (C, H, W); H and W must be divisible by 2^len(channels).
    channels : net="conv": channels per level (default (32, 64)).
    likelihood : "bernoulli" (logits) or "gaussian".
    activation : one of ACTIVATIONS.
    dtype : "float32" (speed) or "float64" (verification).
    seed : initial weights, as torch.nn.Linear's default initialization.
    decoder_var : "gaussian" only: "learned" (a log-variance per dimension, parameter
        ``decoder.logvar``, clamped to [-10, 10]) or a positive fixed variance.
    """

    def __init__(self, x_dim, z_dim: int, hidden=None, likelihood: str = "bernoulli",
                 activation: str = "relu", dtype: str = "float32", seed: int = 0, decoder_var="learned",
                 net: str = "mlp", image_shape=None, channels=None):
        check_choice("net", net, NETS)
        z_dim = check_int("z_dim", z_dim, 1)
        seed, learned, fixed = _check_model_options(likelihood, activation, dtype, seed, decoder_var)
        if net == "conv":
            encoder, image_shape, channels, x_dim = _conv_spec(x_dim, hidden, image_shape, channels, activation)
            decoder = encoder  # the decoder runs the channels reversed (conv_nets.hpp)
            self.config = dict(x_dim=x_dim, z_dim=z_dim, net="conv", image_shape=list(image_shape),
                               channels=list(channels))
        else:
            for name, v in (("image_shape", image_shape), ("channels", channels)):
                if v is not None:
                    raise ValueError(f"{name} is for net='conv', got {name}={v!r} with net='mlp'")
            x_dim = check_int("x_dim", x_dim, 1)
            hidden = check_widths("hidden", (128, 128) if hidden is None else hidden)
            check_num_params("x_dim, z_dim and hidden", mlp_params([x_dim, *hidden, 2 * z_dim]) +
                             mlp_params([z_dim, *hidden[::-1], x_dim]) + x_dim)
            encoder = _core.NetSpec("mlp", list(hidden), activation, "hidden")
            decoder = encoder.mirrored()
            self.config = dict(x_dim=x_dim, z_dim=z_dim, hidden=list(hidden))
        self.config.update(likelihood=likelihood, activation=activation, dtype=dtype, seed=seed,
                           decoder_var="learned" if learned else fixed)
        self._np_dtype = DTYPES[dtype]
        cls = _core.VAE_f32 if dtype == "float32" else _core.VAE_f64
        self._core = cls(x_dim, z_dim, encoder, decoder, likelihood, learned, fixed, seed)
        self._init_layout()

    # -- configuration --------------------------------------------------------------------------
    x_dim = property(lambda self: self.config["x_dim"])
    z_dim = property(lambda self: self.config["z_dim"])
    hidden = property(lambda self: tuple(self.config["hidden"]) if "hidden" in self.config else None)
    net = property(lambda self: self.config.get("net", "mlp"))
    image_shape = property(lambda self: tuple(self.config["image_shape"]) if "image_shape" in self.config else None)
    channels = property(lambda self: tuple(self.config["channels"]) if "channels" in self.config else None)
    likelihood = property(lambda self: self.config["likelihood"])
    activation = property(lambda self: self.config["activation"])
    decoder_var = property(lambda self: self.config["decoder_var"])

    def __repr__(self) -> str:
        c = self.config
        net = (f"net='conv', image_shape={tuple(c['image_shape'])}, channels={tuple(c['channels'])}"
               if self.net == "conv" else f"hidden={tuple(c['hidden'])}")
        return (f"VAE(x_dim={c['x_dim']}, z_dim={c['z_dim']}, {net}, "
                f"likelihood={c['likelihood']!r}, activation={c['activation']!r}, dtype={c['dtype']!r}"
                + (f", decoder_var={c['decoder_var']!r}" if c["likelihood"] == "gaussian" else "") + ") "
                f"with {self.num_parameters} parameters")

    # -- inputs ---------------------------------------------------------------------------------
    def _x(self, x, name="x") -> np.ndarray:
        a, lo, hi = as_array(name, x, self._np_dtype, ndim=2, shape=(None, self.x_dim), return_range=True)
        if self.likelihood == "bernoulli" and (lo < 0 or hi > 1):
            raise ValueError(f"{name} must lie in [0, 1] for a Bernoulli likelihood, got values in "
                             f"[{lo:.4g}, {hi:.4g}]")
        return a

    def _eps(self, n: int, n_samples, eps, seed) -> tuple[np.ndarray, int]:
        """Noise (S*n, Z) in the engine's layout from eps (S, n, Z) or from the seed."""
        if eps is None:
            S = 1 if n_samples is None else check_count("n_samples", n_samples, n * self.z_dim)
            seed = check_int("seed", seed, 0)
            e = _random.normal((S, n, self.z_dim), seed=seed)
        else:
            e = as_array("eps", eps, np.float64, ndim=3, shape=(None, n, self.z_dim))
            S = e.shape[0]
            if n_samples is not None and check_int("n_samples", n_samples, 1) != S:
                raise ValueError(f"n_samples must equal eps.shape[0] when eps is given, got n_samples={n_samples} "
                                 f"and eps of shape {e.shape}")
        return np.ascontiguousarray(e.reshape(S * n, self.z_dim), dtype=self._np_dtype), S

    # -- the bound ------------------------------------------------------------------------------
    def elbo(self, x, n_samples: int | None = None, kl: str = "analytic", seed: int = 0, eps=None,
             distributed: bool = False) -> ElboResult:
        """Per-example ELBO, reconstruction and KL (nats) with n_samples reparameterized samples
        per example, the noise drawn from ``seed`` or given as eps (n_samples, n, z_dim). The KL is
        analytic or Monte Carlo at the same samples; both are unbiased, the analytic one has lower
        variance. distributed=True: each MPI process computes its shard of the rows (with the noise
        those rows have in the whole draw) and every process receives the whole result."""
        x = self._x(x)
        check_choice("kl", kl, KL_METHODS)
        e, S = self._eps(x.shape[0], n_samples, eps, seed)
        if check_bool("distributed", distributed):
            n, Z = x.shape[0], self.z_dim
            e3 = e.reshape(S, n, Z)

            def part(lo, hi):
                es = np.ascontiguousarray(e3[:, lo:hi].reshape(S * (hi - lo), Z))
                return tuple(np.asarray(a) for a in self._core.elbo(x[lo:hi], es, S, kl))

            rec, klv, kpd = sharded("VAE.elbo", n, part)
        else:
            rec, klv, kpd = self._core.elbo(x, e, S, kl)
        _check_nan("elbo", rec, klv)
        return ElboResult(rec, klv, kpd, n_samples=S, kl_method=kl, x_dim=self.x_dim)

    def elbo_grad(self, x, n_samples: int | None = None, kl: str = "analytic", seed: int = 0, eps=None):
        """(ElboResult, grads): grads[name] is the gradient of the batch-mean ELBO with respect to
        that parameter, by the hand-written backward pass."""
        x = self._x(x)
        check_choice("kl", kl, KL_METHODS)
        e, S = self._eps(x.shape[0], n_samples, eps, seed)
        _, rec, klv, kpd, g = self._core.objective_grad(x, e, S, kl, 1.0, 0.0, 1.0)
        _check_nan("elbo_grad", rec, klv, g)
        return ElboResult(rec, klv, kpd, n_samples=S, kl_method=kl, x_dim=self.x_dim), self._grad_dict(g)

    def objective_grad(self, x, eps=None, n_samples=None, kl="analytic", beta=1.0, free_bits=0.0, seed=0):
        """(objective, grads) of the training objective mean_b rec_b - beta * sum_j F(mean_b KL_bj),
        F(k) = max(free_bits, k) when free_bits > 0. Not a bound when beta != 1 or free_bits > 0."""
        x = self._x(x)
        check_choice("kl", kl, KL_METHODS)
        beta = check_float("beta", beta, minimum=0.0)
        free_bits = check_float("free_bits", free_bits, minimum=0.0)
        e, S = self._eps(x.shape[0], n_samples, eps, seed)
        J, *_, g = self._core.objective_grad(x, e, S, kl, beta, free_bits, 1.0)
        _check_nan("objective_grad", np.asarray(J), g)
        return J, self._grad_dict(g)

    def log_likelihood(self, x, k: int = 5000, seed: int = 0, distributed: bool = False) -> np.ndarray:
        """Per-example importance-weighted bound L_K = log (1/K) sum_k p(x, z_k)/q(z_k|x) (MATH.md §3),
        z_k ~ q(z|x), by log-sum-exp in float64, chunked so that any K fits in memory.
        L_1 = ELBO <= L_K <= log p(x); L_K -> log p(x) as K grows. distributed=True: the rows are
        sharded over the MPI processes (each row keeps its samples) and gathered on every process."""
        x = self._x(x)
        k = check_int("k", k, 1)
        seed = check_int("seed", seed, 0)
        out = _log_likelihood(self, x, k, seed, distributed)
        _check_nan("log_likelihood", out)
        return out

    # -- the networks ---------------------------------------------------------------------------
    def encode(self, x):
        """(mu, logvar), each (n, z_dim), of q(z|x)."""
        mu, logvar = self._core.encode(self._x(x))
        _check_nan("encode", mu, logvar)
        return mu, logvar

    def decode(self, z, logits: bool = False) -> np.ndarray:
        """The mean of p(x|z) (n, x_dim): probabilities (Bernoulli) or means (Gaussian);
        Bernoulli logits when logits=True."""
        z = as_matrix("z", z, self.z_dim, self._np_dtype)
        out = self._core.decode(z, not logits)
        _check_nan("decode", out, args="z")
        return out

    def reconstruct(self, x, sample: bool = False, seed: int = 0) -> np.ndarray:
        """Decoder mean at z = mu(x), or at one sample z ~ q(z|x) when sample=True."""
        mu, logvar = self.encode(x)
        z = mu
        if sample:
            z = mu + np.exp(0.5 * logvar) * _random.normal(mu.shape, seed=check_int("seed", seed, 0)).astype(mu.dtype)
        return self.decode(z)

    def sample(self, n: int, seed: int = 0, return_latent: bool = False):
        """n draws z ~ N(0, I) decoded to the mean of p(x|z) (n, x_dim); with return_latent, (x, z)."""
        n = check_count("n", n, max(self.x_dim, self.z_dim))
        seed = check_int("seed", seed, 0)
        z = _random.normal((n, self.z_dim), seed=seed, stream=_random.STREAMS["sample"]).astype(self._np_dtype)
        x = self.decode(z)
        return (x, z) if return_latent else x

    def active_units(self, x) -> int:
        """Number of latent dimensions whose encoder mean varies over x with variance above 0.01
        (MATH.md §2: the others carry no information, a sign of posterior collapse)."""
        return int(self._core.active_units(self._x(x)))

    def decoder_variance(self) -> np.ndarray:
        """Gaussian decoder: the variance of p(x|z) per dimension (x_dim,), after the clamp of its
        log-variance to [-10, 10]."""
        if self.likelihood != "gaussian":
            raise ValueError("decoder_variance needs likelihood='gaussian', got 'bernoulli'")
        return np.exp(np.asarray(self._core.decoder_logvar(), dtype=np.float64))

    # -- training -------------------------------------------------------------------------------
    def fit(self, x, epochs: int = 20, batch_size: int = 128, lr: float = 1e-3, optimizer: str = "adam",
            beta: float = 1.0, warmup_steps: int = 0, free_bits: float = 0.0, n_samples: int = 1,
            kl: str = "analytic", validation=None, seed: int = 0, progress: bool = True,
            momentum: float = 0.9, weight_decay: float = 0.0, clip_norm: float | None = None,
            active_units: bool = True, distributed: bool = False, checkpoint=None) -> History:
        """Trains by minibatch gradient ascent on the objective (the ELBO when beta = 1, no
        warm-up and no free bits; otherwise not a bound, and ``train_elbo`` reports the true ELBO
        beside it). The C++ loop runs with the GIL released.

        Shuffling of epoch e uses ``ek.random.permutation(n, seed, STREAMS['shuffle'] + e)``; step t
        draws its noise from ``ek.random.normal((n_samples, batch, z_dim), seed,
        STREAMS['train_noise'] + t)``. KL warm-up: beta_t = beta * min(1, t / warmup_steps). Free
        bits: each dimension's batch-mean KL is replaced by max(free_bits, KL_j). ``momentum`` is
        used by optimizer="sgd" only. A non-finite loss or gradient stops training with an
        ek.DivergenceWarning naming the step; the parameters stay those of the last finite step
        and the History records it (``diverged``, ``diverged_at_step``).
        ``active_units``: count the active units at each epoch's end (an encoder pass over the
        validation data, else over the first 2048 training rows); False skips that pass, and the
        history's ``active_units`` is then empty.

        ``checkpoint``: a path the model is saved to (atomically, ``save``) at each epoch's end.
        ``distributed=True``: data-parallel over the MPI processes of ``mpirun -n R`` (see
        elbokit.distributed): each process computes its share of every minibatch and the gradients
        are summed before each step; every process ends with the same weights, equal to one
        process's run up to floating-point summation order. Process 0 alone shows the bar and writes
        the checkpoint.
        """
        x = self._x(x)
        xv = None if validation is None else self._x(validation, "validation")
        opts = fit_options(epochs, batch_size, lr, optimizer, beta, warmup_steps, free_bits, n_samples, kl, seed,
                           momentum, weight_decay, clip_norm)
        opts["active_units"] = check_bool("active_units", active_units)
        return run_fit(self._core, x, xv, opts, progress, desc="VAE", distributed=distributed,
                       checkpoint=checkpoint, save=self.save)
