"""A float64 PyTorch reference of elbokit's hierarchical VAE, used only by the cross-check tests.

Written the plain PyTorch way (``nn.Linear``, autograd, the textbook formulas: the precision-weighted
posterior as precisions and a division, every log-density evaluated at the sample) so that it is an
independent statement of MATH.md §6:

* :class:`TorchHVAE` -- the module layout documented in ``elbokit.hvae`` (``encoder.{l}``,
  ``decoder.0`` for p(x|z_1), ``decoder.{l}`` for p(z_l|z_{l+1}); no level index with one level), so
  ``load_state_dict(hvae.parameters(), strict=True)`` checks every name and shape.
* :meth:`TorchHVAE.elbo_terms` -- (elbo, reconstruction, kl_levels) for noise [(S, n, z_l)].
* :meth:`TorchHVAE.log_weights` -- log p(x, z) - log q(z|x) per sample, from the joint and the
  posterior (not from the level terms); :meth:`TorchHVAE.log_likelihood` -- L_K.
* :func:`train_like_elbokit` -- ``HVAE.fit`` replayed with torch.optim and the engine's streams.
"""
import math

import numpy as np
import torch
from torch import nn

from torch_reference import ACTIVATIONS, DTYPE, LOG_2PI, as_tensor, softplus  # noqa: F401


def log_normal(z, mu, logvar):
    """Elementwise log N(z; mu, exp(logvar)), autograd through z, mu and logvar."""
    return -0.5 * (LOG_2PI + logvar + (z - mu) ** 2 * torch.exp(-logvar))


class GaussNet(nn.Module):
    """Trunk ``0, 1, ...`` (Linear + activation), heads ``mu`` and ``logvar``."""

    def __init__(self, in_dim, sizes, z_dim, act):
        super().__init__()
        dims = [in_dim, *sizes]
        for i in range(len(sizes)):
            self.add_module(str(i), nn.Linear(dims[i], dims[i + 1], dtype=DTYPE))
        self.mu = nn.Linear(dims[-1], z_dim, dtype=DTYPE)
        self.logvar = nn.Linear(dims[-1], z_dim, dtype=DTYPE)
        self.n, self.act, self.out_dim = len(sizes), act, dims[-1]

    def trunk(self, h):
        for i in range(self.n):
            h = self.act(getattr(self, str(i))(h))
        return h

    def forward(self, h):
        h = self.trunk(h)
        return h, self.mu(h), self.logvar(h)


class XDecoder(nn.Module):
    """p(x|z_1): trunk ``0, 1, ...``, output ``out``, learned ``logvar`` (Gaussian)."""

    def __init__(self, z_dim, x_dim, sizes, learned_logvar, act):
        super().__init__()
        dims = [z_dim, *sizes]
        for i in range(len(sizes)):
            self.add_module(str(i), nn.Linear(dims[i], dims[i + 1], dtype=DTYPE))
        self.out = nn.Linear(dims[-1], x_dim, dtype=DTYPE)
        if learned_logvar:
            self.logvar = nn.Parameter(torch.zeros(x_dim, dtype=DTYPE))
        self.n, self.act = len(sizes), act

    def forward(self, z):
        h = z
        for i in range(self.n):
            h = self.act(getattr(self, str(i))(h))
        return self.out(h)


class TorchHVAE(nn.Module):
    def __init__(self, x_dim, z_dims, hidden=(), structure="markov", likelihood="bernoulli", activation="relu",
                 decoder_var="learned"):
        super().__init__()
        self.x_dim, self.z_dims, self.hidden = int(x_dim), tuple(z_dims), tuple(hidden)
        self.structure, self.likelihood, self.decoder_var = structure, likelihood, decoder_var
        act = ACTIVATIONS[activation]
        L = len(self.z_dims)
        learned = likelihood == "gaussian" and decoder_var == "learned"
        if likelihood == "gaussian" and not learned:
            self.fixed_logvar = math.log(float(decoder_var))
        enc, in_dim = [], self.x_dim
        for z in self.z_dims:
            enc.append(GaussNet(in_dim, self.hidden, z, act))
            in_dim = z if structure == "markov" else enc[-1].out_dim
        dec = [XDecoder(self.z_dims[0], self.x_dim, self.hidden[::-1], learned, act)]
        dec += [GaussNet(self.z_dims[l], self.hidden[::-1], self.z_dims[l - 1], act) for l in range(1, L)]
        if L == 1:  # the VAE's names: no level index
            self.encoder, self.decoder = enc[0], dec[0]
            self._enc, self._dec = [enc[0]], [dec[0]]
        else:
            self.encoder, self.decoder = nn.ModuleList(enc), nn.ModuleList(dec)
            self._enc, self._dec = list(self.encoder), list(self.decoder)

    @classmethod
    def from_elbokit(cls, hvae):
        c = hvae.config
        model = cls(c["x_dim"], c["z_dims"], c["hidden"], c["structure"], c["likelihood"], c["activation"],
                    c["decoder_var"])
        return model.load_elbokit_parameters(hvae.parameters())

    def load_elbokit_parameters(self, params):
        self.load_state_dict({k: as_tensor(v) for k, v in params.items()}, strict=True)
        return self

    def numpy_parameters(self):
        return {k: v.detach().numpy().copy() for k, v in self.state_dict().items()}

    def _as(self, a):
        """Tensors pass unchanged (any dtype); arrays become tensors of the module's dtype."""
        if isinstance(a, torch.Tensor):
            return a
        return torch.from_numpy(np.array(a, dtype=np.float64)).to(next(self.parameters()).dtype)

    def log_px(self, x, out):
        if self.likelihood == "bernoulli":
            return (x * out - softplus(out)).sum(-1)
        if hasattr(self._dec[0], "logvar"):
            lv = torch.clamp(self._dec[0].logvar, -10.0, 10.0)
        else:
            lv = torch.full((self.x_dim,), self.fixed_logvar, dtype=out.dtype)
        return -0.5 * (LOG_2PI + lv + (x - out) ** 2 * torch.exp(-lv)).sum(-1)

    def _chain(self, x, eps):
        """The sampled chain: per level (z, q_mu, q_logvar, p_mu, p_logvar) with p_* None at the top
        (N(0, I)); shapes (S, n, z_l) or (n, z_l) for a Gaussian shared by the samples."""
        L = len(self.z_dims)
        levels = [None] * L
        if self.structure == "markov":
            h = x
            for l in range(L):
                _, mu, lv = self._enc[l](h)
                z = mu + torch.exp(0.5 * lv) * eps[l]
                levels[l] = [z, mu, lv, None, None]
                h = z
            for l in range(L - 1):
                _, pm, plv = self._dec[l + 1](levels[l + 1][0])
                levels[l][3:] = [pm, plv]
        else:
            d, bu = x, []
            for l in range(L):
                d, mud, lvd = self._enc[l](d)
                bu.append((mud, lvd))
            mu, lv = bu[-1]
            levels[-1] = [mu + torch.exp(0.5 * lv) * eps[-1], mu, lv, None, None]
            for l in range(L - 2, -1, -1):
                _, pm, plv = self._dec[l + 1](levels[l + 1][0])
                mud, lvd = bu[l]
                prec_d, prec_p = torch.exp(-lvd), torch.exp(-plv)   # precision weighting (MATH.md §6)
                var_q = 1.0 / (prec_d + prec_p)
                mu = var_q * (mud * prec_d + pm * prec_p)
                lv = torch.log(var_q)
                levels[l] = [mu + torch.sqrt(var_q) * eps[l], mu, lv, pm, plv]
        return levels

    def elbo_terms(self, x, eps, kl="analytic"):
        """(elbo, reconstruction, kl_levels (n, L)) for noise eps [(S, n, z_l)]."""
        x = self._as(x)
        eps = [self._as(e) for e in eps]
        S = eps[0].shape[0]
        levels = self._chain(x, eps)
        rec = self.log_px(x, self._dec[0](levels[0][0])).mean(0)
        terms = []
        for l, (z, mu, lv, pm, plv) in enumerate(levels):
            top = pm is None
            if kl == "analytic" and top:
                k = (-0.5 * (1.0 + lv - mu ** 2 - torch.exp(lv))).sum(-1)
            elif kl == "analytic" and self.structure == "topdown":
                k = (0.5 * (plv - lv + (torch.exp(lv) + (mu - pm) ** 2) * torch.exp(-plv) - 1.0)).sum(-1)
            else:
                lp = log_normal(z, torch.zeros_like(z), torch.zeros_like(z)) if top else log_normal(z, pm, plv)
                k = (log_normal(z, mu, lv) - lp).sum(-1)
            if k.dim() == 1:
                k = k.expand(S, -1)
            terms.append(k.mean(0))
        kl_levels = torch.stack(terms, dim=1)
        return rec - kl_levels.sum(1), rec, kl_levels

    def log_weights(self, x, eps):
        """log w = log p(x, z_1..z_L) - log q(z_1..z_L|x) per sample (S, n): the joint and the
        posterior, summed density by density (no level grouping)."""
        x = self._as(x)
        eps = [self._as(e) for e in eps]
        levels = self._chain(x, eps)
        log_joint = self.log_px(x, self._dec[0](levels[0][0]))
        log_q = 0.0
        for z, mu, lv, pm, plv in levels:
            if pm is None:
                log_joint = log_joint + log_normal(z, torch.zeros_like(z), torch.zeros_like(z)).sum(-1)
            else:
                log_joint = log_joint + log_normal(z, pm, plv).sum(-1)
            log_q = log_q + log_normal(z, mu, lv).sum(-1)
        return log_joint - log_q

    def log_likelihood(self, x, eps_k):
        """L_K per example for noise eps_k [(K, n, z_l)]."""
        lw = self.log_weights(x, eps_k)
        return torch.logsumexp(lw, dim=0) - math.log(lw.shape[0])


def engine_noise(z_dims, shape_sn, seed, stream):
    """The engine's level-blocked noise: one ek.random.normal vector of S*n*sum(z_dims) numbers,
    level l being the block (S, n, z_l)."""
    import elbokit as ek

    S, n = shape_sn
    flat = ek.random.normal(S * n * sum(z_dims), seed, stream=stream)
    out, off = [], 0
    for z in z_dims:
        out.append(flat[off:off + S * n * z].reshape(S, n, z))
        off += S * n * z
    return out


def train_like_elbokit(model, x, epochs, batch_size, lr, seed=0, n_samples=1, kl="analytic", beta=1.0,
                       warmup_steps=0, free_bits=0.0):
    """Replay ``HVAE.fit`` with Adam: epoch e's order ek.random.permutation(n, seed, 2**32 + e),
    step t's noise engine_noise(z_dims, (n_samples, b), seed, 2**33 + t); free bits per level."""
    import elbokit as ek

    x = as_tensor(x)
    n = x.shape[0]
    opt = torch.optim.Adam(list(model.parameters()), lr=lr)
    step = 0
    for epoch in range(epochs):
        order = np.asarray(ek.random.permutation(n, seed, stream=2 ** 32 + epoch), dtype=np.int64)
        for start in range(0, n, batch_size):
            rows = torch.from_numpy(order[start:start + batch_size])
            eps = engine_noise(model.z_dims, (n_samples, len(rows)), seed, 2 ** 33 + step)
            beta_t = beta * min(1.0, step / warmup_steps) if warmup_steps > 0 else beta
            _, rec, kl_levels = model.elbo_terms(x[rows], eps, kl)
            k = kl_levels.mean(0)
            if free_bits > 0:
                k = torch.clamp(k, min=free_bits)
            loss = -(rec.mean() - beta_t * k.sum())
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
