"""PyTorch equivalents of elbokit's models for the benchmark suite (benchmarks/run.py).

Written the way a PyTorch user would write them (``nn.Linear`` layers, autograd,
``torch.optim.Adam``, the fused ``binary_cross_entropy_with_logits``), in float32, with the
``state_dict()`` keys of ``elbokit.VAE.parameters()`` so that the same initial weights load
with ``load_state_dict(strict=True)``:

    encoder.{i}.weight/bias, encoder.mu.*, encoder.logvar.*   (hidden widths in order)
    decoder.{i}.weight/bias, decoder.out.*                    (hidden widths reversed)

Every function takes its noise (and, for training, its shuffling) as arguments: the benchmark
hands it the engine's own noise, precomputed outside the timed region, so both frameworks do
exactly the same arithmetic and their outputs can be compared; any cost of drawing random
numbers is then counted against elbokit only.

Only the Bernoulli likelihood with analytic KL is implemented here (what the benchmark cases
use): log p(x|z) = sum_d x_d l_d - softplus(l_d) = -BCEWithLogits(l, x), and
KL(q || N(0, I)) = -1/2 sum_j (1 + logvar_j - mu_j^2 - exp(logvar_j)).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TorchVAE", "make_adam", "train_epochs", "elbo_terms", "log_likelihood"]

ACTIVATIONS = {"relu": F.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "softplus": F.softplus,
               "elu": F.elu, "silu": F.silu, "leaky_relu": lambda t: F.leaky_relu(t, 0.01)}


class _Decoder(nn.Module):
    def __init__(self, z_dim: int, x_dim: int, sizes: tuple, dtype):
        super().__init__()
        dims = [z_dim, *sizes]
        for i in range(len(sizes)):
            self.add_module(str(i), nn.Linear(dims[i], dims[i + 1], dtype=dtype))
        self.out = nn.Linear(dims[-1], x_dim, dtype=dtype)


class TorchVAE(nn.Module):
    """elbokit.VAE (Bernoulli decoder) in PyTorch; state_dict keys are elbokit's parameter names."""

    def __init__(self, x_dim: int, z_dim: int, hidden=(400,), activation: str = "relu",
                 dtype=torch.float32):
        super().__init__()
        self.x_dim, self.z_dim, self.hidden = int(x_dim), int(z_dim), tuple(hidden)
        self.act = ACTIVATIONS[activation]
        dims = [self.x_dim, *self.hidden]
        enc = {str(i): nn.Linear(dims[i], dims[i + 1], dtype=dtype) for i in range(len(self.hidden))}
        enc["mu"] = nn.Linear(dims[-1], self.z_dim, dtype=dtype)
        enc["logvar"] = nn.Linear(dims[-1], self.z_dim, dtype=dtype)
        self.encoder = nn.ModuleDict(enc)
        self.decoder = _Decoder(self.z_dim, self.x_dim, self.hidden[::-1], dtype)
        self._enc_trunk = [self.encoder[str(i)] for i in range(len(self.hidden))]
        self._dec_trunk = [getattr(self.decoder, str(i)) for i in range(len(self.hidden))]

    @classmethod
    def from_elbokit(cls, vae, dtype=torch.float32) -> "TorchVAE":
        """A TorchVAE with the architecture and current weights of an elbokit.VAE."""
        if vae.likelihood != "bernoulli":
            raise ValueError("the benchmark's TorchVAE implements the Bernoulli likelihood only")
        model = cls(vae.x_dim, vae.z_dim, vae.hidden, vae.config["activation"], dtype=dtype)
        model.load_elbokit(vae.parameters())
        return model

    def load_elbokit(self, params: dict) -> "TorchVAE":
        dtype = next(self.parameters()).dtype
        self.load_state_dict({k: torch.as_tensor(np.asarray(v)).to(dtype) for k, v in params.items()},
                             strict=True)
        return self

    def encode(self, x):
        h = x
        for layer in self._enc_trunk:
            h = self.act(layer(h))
        return self.encoder["mu"](h), self.encoder["logvar"](h)

    def decode(self, z):
        """Bernoulli logits."""
        h = z
        for layer in self._dec_trunk:
            h = self.act(layer(h))
        return self.decoder.out(h)


def _kl(mu, logvar):
    """Per-example analytic KL(N(mu, exp(logvar)) || N(0, I))."""
    return -0.5 * (1.0 + logvar - mu * mu - logvar.exp()).sum(-1)


def elbo_terms(model: TorchVAE, x, eps):
    """(elbo, reconstruction, kl) per example, eps (S, n, z_dim); reconstruction averaged over S."""
    mu, logvar = model.encode(x)
    z = mu + torch.exp(0.5 * logvar) * eps                       # (S, n, Z)
    logits = model.decode(z.reshape(-1, model.z_dim))            # (S*n, D)
    S, n = eps.shape[0], x.shape[0]
    xs = x if S == 1 else x.expand(S, n, model.x_dim).reshape(S * n, model.x_dim)
    rec = -F.binary_cross_entropy_with_logits(logits, xs, reduction="none").sum(-1)
    rec = rec.reshape(S, n).mean(0)
    kl = _kl(mu, logvar)
    return rec - kl, rec, kl


def make_adam(model: TorchVAE, lr: float = 1e-3, impl: str = "fused"):
    """torch.optim.Adam; impl "fused", "foreach" or "default" (the single-tensor loop)."""
    kw = {"fused": dict(fused=True), "foreach": dict(foreach=True), "default": {}}[impl]
    return torch.optim.Adam(model.parameters(), lr=lr, **kw)


def train_epochs(model: TorchVAE, opt, x, perms, noise, batch_size: int) -> float:
    """Minibatch Adam steps exactly as elbokit's fit takes them: epoch e visits rows
    perms[e][k*B:(k+1)*B] (the last batch may be smaller); global step t uses noise[t]
    (1, b, z_dim); loss = -batch-mean ELBO (analytic KL, Bernoulli likelihood), then
    backward and opt.step(). Returns the last epoch's mean ELBO, each step's batch-mean ELBO
    weighted by b / n (fit's ``train_elbo``)."""
    t = 0
    epoch_elbo = torch.zeros((), dtype=torch.float64)
    for perm in perms:
        n = perm.shape[0]
        epoch_elbo = torch.zeros((), dtype=torch.float64)
        for start in range(0, n, batch_size):
            rows = perm[start:start + batch_size]
            xb = x.index_select(0, rows)
            b = xb.shape[0]
            mu, logvar = model.encode(xb)
            z = mu + torch.exp(0.5 * logvar) * noise[t][0]
            logits = model.decode(z)
            # -mean_b ELBO_b = (sum_b,d BCE + sum_b KL_b) / b
            loss = (F.binary_cross_entropy_with_logits(logits, xb, reduction="sum")
                    + _kl(mu, logvar).sum()) / b
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            epoch_elbo -= loss.detach().double() * (b / n)
            t += 1
    return float(epoch_elbo)


def log_likelihood(model: TorchVAE, x, eps, chunk_rows: int = 8192):
    """Per-example L_K = log (1/K) sum_k p(x, z_k) / q(z_k | x) with eps (n, K, z_dim) (the
    engine's layout), chunked over examples so that at most ~chunk_rows decoder rows are live;
    log-sum-exp in float64."""
    n, K, Z = eps.shape
    with torch.no_grad():
        mu, logvar = model.encode(x)
        sigma = torch.exp(0.5 * logvar)
        bc = max(1, min(n, chunk_rows // K))
        out = torch.empty(n, dtype=torch.float64)
        for b0 in range(0, n, bc):
            b1 = min(n, b0 + bc)
            e = eps[b0:b1]                                            # (bc, K, Z)
            z = mu[b0:b1, None, :] + sigma[b0:b1, None, :] * e        # (bc, K, Z)
            logits = model.decode(z.reshape(-1, Z)).reshape(b1 - b0, K, model.x_dim)
            xb = x[b0:b1, None, :].expand_as(logits)
            log_px = -F.binary_cross_entropy_with_logits(logits, xb, reduction="none").sum(-1)
            # log p(z) - log q(z|x) = 1/2 sum_j (logvar_j + eps_j^2 - z_j^2)
            log_w = log_px + 0.5 * (logvar[b0:b1, None, :] + e * e - z * z).sum(-1)
            out[b0:b1] = torch.logsumexp(log_w.double(), dim=1) - math.log(K)
    return out
