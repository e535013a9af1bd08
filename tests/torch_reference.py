"""A float64 PyTorch reference of elbokit's VAE, used only by the cross-check tests.

Everything here is written the plain PyTorch way (``nn.Linear`` layers, autograd,
``torch.optim``) so that it is an independent statement of the math elbokit's C++
engine implements:

* :class:`TorchVAE` -- same architecture and ``state_dict()`` names as
  ``elbokit.VAE.parameters()``; :meth:`TorchVAE.from_elbokit` loads them.
* :meth:`TorchVAE.elbo_terms`, :meth:`TorchVAE.objective`,
  :meth:`TorchVAE.log_likelihood` -- the ELBO, fit's per-step objective and the
  importance-weighted bound L_K, each for given noise.
* :func:`train_like_elbokit` -- ``VAE.fit`` replayed step by step with the
  engine's shuffling and noise streams.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LOG_2PI = math.log(2.0 * math.pi)
DTYPE = torch.float64


def softplus(t):
    """log(1 + e^t) without a threshold and without overflow (exact for every t)."""
    return torch.clamp(t, min=0) + torch.log1p(torch.exp(-t.abs()))


ACTIVATIONS = {
    "relu": torch.relu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "softplus": softplus,
    "elu": F.elu,
    "silu": F.silu,
    "leaky_relu": lambda t: F.leaky_relu(t, 0.01),
}


def as_tensor(a):
    """A float64 tensor from an array-like (tensors pass through, cast to float64)."""
    if isinstance(a, torch.Tensor):
        return a.to(DTYPE)
    return torch.from_numpy(np.array(a, dtype=np.float64))


class _Decoder(nn.Module):
    """Decoder trunk ``0, 1, ...``, output layer ``out`` and (learned variance) ``logvar``."""

    def __init__(self, z_dim, x_dim, sizes, learned_logvar):
        super().__init__()
        dims = [z_dim, *sizes]
        for i in range(len(sizes)):
            self.add_module(str(i), nn.Linear(dims[i], dims[i + 1], dtype=DTYPE))
        self.out = nn.Linear(dims[-1], x_dim, dtype=DTYPE)
        if learned_logvar:
            self.logvar = nn.Parameter(torch.zeros(x_dim, dtype=DTYPE))


class TorchVAE(nn.Module):
    """elbokit's VAE in PyTorch float64; ``state_dict()`` keys are elbokit's parameter names."""

    def __init__(self, x_dim, z_dim, hidden=(), likelihood="bernoulli", activation="relu",
                 decoder_var="learned"):
        super().__init__()
        if likelihood not in ("bernoulli", "gaussian"):
            raise ValueError(f"unknown likelihood {likelihood!r}")
        self.x_dim, self.z_dim, self.hidden = int(x_dim), int(z_dim), tuple(hidden)
        self.likelihood, self.activation, self.decoder_var = likelihood, activation, decoder_var
        self.act = ACTIVATIONS[activation]
        learned = likelihood == "gaussian" and decoder_var == "learned"
        if likelihood == "gaussian" and not learned:
            self.fixed_logvar = math.log(float(decoder_var))

        dims = [self.x_dim, *self.hidden]
        encoder = {str(i): nn.Linear(dims[i], dims[i + 1], dtype=DTYPE)
                   for i in range(len(self.hidden))}
        encoder["mu"] = nn.Linear(dims[-1], self.z_dim, dtype=DTYPE)
        encoder["logvar"] = nn.Linear(dims[-1], self.z_dim, dtype=DTYPE)
        self.encoder = nn.ModuleDict(encoder)
        self.decoder = _Decoder(self.z_dim, self.x_dim, self.hidden[::-1], learned)

    # ------------------------------------------------------------ loading
    @classmethod
    def from_elbokit(cls, vae, **config):
        """A TorchVAE holding ``vae.parameters()`` (as float64).

        Sizes are read off the parameter shapes; ``likelihood``, ``activation`` and
        ``decoder_var`` come from `config`, else from ``vae.config`` (a dict).
        """
        params = vae.parameters()
        n_hidden = sum(1 for k in params if k.startswith("encoder.") and k.endswith(".weight")
                       and k.split(".")[1].isdigit())
        sizes = dict(
            x_dim=params["decoder.out.weight"].shape[0],
            z_dim=params["encoder.mu.weight"].shape[0],
            hidden=tuple(params[f"encoder.{i}.weight"].shape[0] for i in range(n_hidden)),
        )
        saved = getattr(vae, "config", None) or {}
        for key in ("likelihood", "activation", "decoder_var"):
            if key not in config and key in saved:
                config[key] = saved[key]
        model = cls(**sizes, **config)
        model.load_elbokit_parameters(params)
        return model

    def load_elbokit_parameters(self, params):
        """Copy a name -> array dict (elbokit's ``parameters()``) in; names must match exactly."""
        self.load_state_dict({k: as_tensor(v) for k, v in params.items()}, strict=True)
        return self

    def numpy_parameters(self):
        """Name -> float64 ndarray copy, like ``elbokit.VAE.parameters()``."""
        return {k: v.detach().numpy().copy() for k, v in self.state_dict().items()}

    # ------------------------------------------------------------ networks
    def _trunk(self, net, n_layers, h):
        for i in range(n_layers):
            h = self.act(getattr(net, str(i))(h))
        return h

    def encode(self, x):
        h = self._trunk(self.encoder, len(self.hidden), x)
        return self.encoder["mu"](h), self.encoder["logvar"](h)

    def decode(self, z):
        return self.decoder.out(self._trunk(self.decoder, len(self.hidden), z))

    def decoder_logvar(self):
        """Per-pixel log-variance of the Gaussian decoder: clamped learned or fixed."""
        if hasattr(self.decoder, "logvar"):
            return torch.clamp(self.decoder.logvar, -10.0, 10.0)
        return torch.full((self.x_dim,), self.fixed_logvar, dtype=DTYPE)

    def log_px(self, x, out):
        """log p(x | z) summed over pixels; `out` (..., n, x_dim) are logits or means."""
        if self.likelihood == "bernoulli":
            return (x * out - softplus(out)).sum(-1)
        lv = self.decoder_logvar()
        return -0.5 * (LOG_2PI + lv + (x - out) ** 2 * torch.exp(-lv)).sum(-1)

    @staticmethod
    def log_normal(z, mu, logvar):
        """Elementwise log N(z; mu, exp(logvar)) -- autograd flows through z, mu and logvar."""
        return -0.5 * (LOG_2PI + logvar + (z - mu) ** 2 * torch.exp(-logvar))

    # ------------------------------------------------------------ bounds
    def elbo_terms(self, x, eps, kl="analytic"):
        """(elbo, reconstruction, kl, kl_per_dim) for noise `eps` of shape (S, n, z_dim)."""
        x, eps = as_tensor(x), as_tensor(eps)
        mu, logvar = self.encode(x)
        z = mu + torch.exp(0.5 * logvar) * eps
        rec = self.log_px(x, self.decode(z)).mean(0)
        if kl == "analytic":
            kl_per_dim = -0.5 * (1.0 + logvar - mu ** 2 - torch.exp(logvar))
        elif kl == "mc":
            zeros = torch.zeros_like(z)
            kl_per_dim = (self.log_normal(z, mu, logvar) - self.log_normal(z, zeros, zeros)).mean(0)
        else:
            raise ValueError(f"unknown kl {kl!r}")
        kl_total = kl_per_dim.sum(-1)
        return rec - kl_total, rec, kl_total, kl_per_dim

    def objective(self, x, eps, kl="analytic", beta=1.0, free_bits=0.0):
        """fit's per-step objective: mean rec - beta * sum_j F(mean_b kl_per_dim[b, j])."""
        _, rec, _, kl_per_dim = self.elbo_terms(x, eps, kl)
        kl_dim = kl_per_dim.mean(0)
        if free_bits > 0:
            kl_dim = torch.clamp(kl_dim, min=free_bits)
        return rec.mean() - beta * kl_dim.sum()

    def log_likelihood(self, x, eps_k):
        """Per-example L_K = log mean_k p(x, z_k) / q(z_k | x) for noise `eps_k` (K, n, z_dim)."""
        x, eps_k = as_tensor(x), as_tensor(eps_k)
        mu, logvar = self.encode(x)
        z = mu + torch.exp(0.5 * logvar) * eps_k
        zeros = torch.zeros_like(z)
        log_w = (self.log_px(x, self.decode(z))
                 + self.log_normal(z, zeros, zeros).sum(-1)
                 - self.log_normal(z, mu, logvar).sum(-1))
        return torch.logsumexp(log_w, dim=0) - math.log(eps_k.shape[0])


def train_like_elbokit(model, x, epochs, batch_size, lr, optimizer="adam", seed=0, n_samples=1,
                       kl="analytic", beta=1.0, warmup_steps=0, free_bits=0.0, clip_norm=None,
                       momentum=0.9):
    """Replay ``elbokit.VAE.fit`` on `model` in place with torch.optim.

    Epoch e visits rows in the order ``ek.random.permutation(n, seed, stream=2**32 + e)``
    in consecutive minibatches (the last one partial); global step t draws its noise from
    ``ek.random.normal((n_samples, b_t, z_dim), seed, stream=2**33 + t)``.
    Returns per epoch a list of (loss, batch size) per step, loss = -objective.
    """
    import elbokit as ek

    x = as_tensor(x)
    n = x.shape[0]
    params = list(model.parameters())
    if optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum)
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}")
    step, history = 0, []
    for epoch in range(epochs):
        order = np.asarray(ek.random.permutation(n, seed, stream=2 ** 32 + epoch), dtype=np.int64)
        losses = []
        for start in range(0, n, batch_size):
            rows = torch.from_numpy(order[start:start + batch_size])
            eps = ek.random.normal((n_samples, len(rows), model.z_dim), seed, stream=2 ** 33 + step)
            beta_t = beta * min(1.0, step / warmup_steps) if warmup_steps > 0 else beta
            loss = -model.objective(x[rows], eps, kl, beta_t, free_bits)
            opt.zero_grad()
            loss.backward()
            if clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, clip_norm)
            opt.step()
            losses.append((loss.item(), len(rows)))
            step += 1
        history.append(losses)
    return history
