"""Autoencoders without probabilities (MATH.md §9): plain, denoising and contractive.

    code  y = s(W_c · net(x̃) + b_c),  reconstruction x̂ = decoder(y)
    loss  = mean_b [ ‖x_b − x̂_b‖² + λ ‖∂y/∂x (x_b)‖_F² ]

plain: x̃ = x; denoising: x̃ = x + δ, δ ~ N(0, noise_std² I) drawn afresh every step; contractive:
λ = ``contraction`` > 0, supported for the classic one-layer encoder (hidden=() and a sigmoid, tanh
or identity code), whose penalty Σ_i s'(a_i)² ‖W_i‖² and its gradient are written by hand in C++.
Codes are deterministic: there is no ELBO and no principled way to sample, which is what
:func:`interpolate` (for an autoencoder or a VAE) lets one see.
"""
from __future__ import annotations


import numpy as np

from . import _core
from . import io as _io
from ._fit import optimizer_options, run_fit
from ._validation import DTYPES, as_array, as_matrix, check_choice, check_float, check_int
from ._validation import MAX_ELEMENTS, check_count, check_num_params, check_widths, mlp_params  # noqa: F401
from .vae import ACTIVATIONS, _check_nan, _ParamModel

__all__ = ["Autoencoder", "interpolate", "KINDS"]

KINDS = ("plain", "denoising", "contractive")
CODE_ACTIVATIONS = ("identity", "sigmoid", "tanh")


@_io.register
class Autoencoder(_ParamModel):
    """A deterministic autoencoder (see the module docstring).

    Parameters
    ----------
    x_dim, code_dim : data and code dimensions.
    hidden : encoder hidden widths (decoder: reversed); must be () for kind="contractive".
    kind : "plain", "denoising" or "contractive".
    activation : hidden activation; code_activation : "identity", "sigmoid" or "tanh".
    noise_std : the denoising corruption's standard deviation (default 0.3 for "denoising").
    contraction : λ of the contractive penalty (default 0.1 for "contractive").
    """

    def __init__(self, x_dim: int, code_dim: int, hidden=(64,), kind: str = "plain", activation: str = "relu",
                 code_activation: str = "identity", noise_std=None, contraction=None, dtype: str = "float32",
                 seed: int = 0):
        x_dim, code_dim = check_int("x_dim", x_dim, 1), check_int("code_dim", code_dim, 1)
        hidden = check_widths("hidden", hidden)
        check_num_params("x_dim, code_dim and hidden", mlp_params([x_dim, *hidden, code_dim]) +
                         mlp_params([code_dim, *hidden[::-1], x_dim]))
        check_choice("kind", kind, KINDS)
        check_choice("activation", activation, ACTIVATIONS)
        check_choice("code_activation", code_activation, CODE_ACTIVATIONS)
        check_choice("dtype", dtype, tuple(DTYPES))
        seed = check_int("seed", seed, 0)
        if kind == "denoising":
            noise_std = 0.3 if noise_std is None else check_float("noise_std", noise_std, positive=True)
        elif noise_std is not None:
            raise ValueError(f"noise_std is used by kind='denoising' only, got noise_std={noise_std!r} with kind={kind!r}")
        if kind == "contractive":
            contraction = 0.1 if contraction is None else check_float("contraction", contraction, positive=True)
            if hidden:
                raise ValueError(f"hidden must be () for kind='contractive' (the penalty is written for the "
                                 f"one-layer encoder), got {hidden}")
        elif contraction is not None:
            raise ValueError(f"contraction is used by kind='contractive' only, got contraction={contraction!r} "
                             f"with kind={kind!r}")
        self.config = dict(x_dim=x_dim, code_dim=code_dim, hidden=list(hidden), kind=kind, activation=activation,
                           code_activation=code_activation, noise_std=noise_std, contraction=contraction,
                           dtype=dtype, seed=seed)
        self._np_dtype = DTYPES[dtype]
        cls = _core.Autoencoder_f32 if dtype == "float32" else _core.Autoencoder_f64
        self._core = cls(x_dim, code_dim, list(hidden), activation, code_activation, kind, noise_std or 0.0,
                         contraction or 0.0, seed)
        self._init_layout()

    x_dim = property(lambda self: self.config["x_dim"])
    code_dim = property(lambda self: self.config["code_dim"])
    kind = property(lambda self: self.config["kind"])

    def __repr__(self) -> str:
        c = self.config
        return (f"Autoencoder(x_dim={c['x_dim']}, code_dim={c['code_dim']}, hidden={tuple(c['hidden'])}, "
                f"kind={c['kind']!r}, dtype={c['dtype']!r}) with {self.num_parameters} parameters")

    def _x(self, x, name="x"):
        return as_matrix(name, x, self.x_dim, self._np_dtype)

    def encode(self, x) -> np.ndarray:
        """The deterministic code y (n, code_dim)."""
        out = self._core.encode(self._x(x))
        _check_nan("encode", out)
        return out

    def decode(self, code) -> np.ndarray:
        """The reconstruction (n, x_dim) of codes (n, code_dim)."""
        out = self._core.decode(as_matrix("code", code, self.code_dim, self._np_dtype))
        _check_nan("decode", out, args="code")
        return out

    def reconstruct(self, x) -> np.ndarray:
        return self.decode(self.encode(x))

    def _noise(self, x, noise):
        return None if noise is None else as_array("noise", noise, self._np_dtype, ndim=2, shape=x.shape)

    def loss(self, x, noise=None) -> dict:
        """{'loss': mean objective, 'reconstruction': Σ_j (x − x̂)² (n,), 'penalty': ‖∂y/∂x‖_F² (n,)}
        with the encoder fed x + noise (noise (n, x_dim) or None)."""
        x = self._x(x)
        J, rec, pen, _ = self._core.loss_grad(x, self._noise(x, noise), 1.0, False)
        _check_nan("loss", np.asarray(J), rec, pen)
        return {"loss": J, "reconstruction": rec, "penalty": pen}

    def loss_grad(self, x, noise=None):
        """(loss, grads) by the hand-written backward pass."""
        x = self._x(x)
        J, _, _, g = self._core.loss_grad(x, self._noise(x, noise), 1.0, True)
        _check_nan("loss_grad", np.asarray(J), g)
        return J, self._grad_dict(g)

    def fit(self, x, epochs: int = 50, batch_size: int = 128, lr: float = 1e-3, optimizer: str = "adam",
            validation=None, seed: int = 0, progress: bool = True, momentum: float = 0.9,
            weight_decay: float = 0.0, clip_norm: float | None = None, distributed: bool = False, checkpoint=None):
        """Minimizes the loss with the shared C++ loop. Step t's denoising noise is
        ``noise_std * ek.random.normal((batch, x_dim), seed, STREAMS['train_noise'] + t)``. History:
        ``train_loss``; ``train_reconstruction`` the squared error, ``train_kl`` the penalty term
        λ‖J‖² (an autoencoder has no ELBO: ``train_elbo`` = −loss).

        ``checkpoint`` and ``distributed``: as in ``VAE.fit`` (a checkpoint at each epoch's end;
        data-parallel over MPI processes, see elbokit.distributed).
        """
        x = self._x(x)
        xv = None if validation is None else self._x(validation, "validation")
        opts = optimizer_options(epochs, batch_size, lr, optimizer, seed, momentum, weight_decay, clip_norm)
        return run_fit(self._core, x, xv, opts, progress, desc="Autoencoder", distributed=distributed,
                       checkpoint=checkpoint, save=self.save)


def interpolate(model, x0, x1, n_steps: int = 8):
    """Decodes the straight line between the codes of x0 and x1 (each one example, shape (x_dim,)):
    for an Autoencoder its code, for a VAE the posterior mean. Returns (codes (n_steps, C),
    decoded (n_steps, x_dim))."""
    n_steps = check_int("n_steps", n_steps, 2)
    xs = np.stack([np.asarray(x0), np.asarray(x1)])
    if isinstance(model, Autoencoder):
        c = np.asarray(model.encode(xs), dtype=np.float64)
    elif hasattr(model, "encode") and hasattr(model, "decode"):
        c = np.asarray(model.encode(xs)[0], dtype=np.float64)
    else:
        raise ValueError(f"model must be an Autoencoder or a VAE, got {type(model).__name__}")
    t = np.linspace(0.0, 1.0, n_steps)[:, None]
    codes = (1 - t) * c[0] + t * c[1]
    return codes, np.asarray(model.decode(codes), dtype=np.float64)
