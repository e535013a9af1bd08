"""PyTorch equivalents of elbokit's models for the benchmark suite (benchmarks/run.py).

Written the way a PyTorch user would write them (``nn.Linear`` layers, autograd,
``torch.optim.Adam``, the fused ``binary_cross_entropy_with_logits``), in float32, with the
``state_dict()`` keys of ``elbokit.VAE.parameters()`` so that the same initial weights load
with ``load_state_dict(strict=True)``:

    encoder.{i}.weight/bias, encoder.mu.*, encoder.logvar.*   (hidden widths in order)
    decoder.{i}.weight/bias, decoder.out.*                    (hidden widths reversed)

Also :class:`TorchHVAE` (``elbokit.HVAE``, structure "markov": ``encoder.{l}.*``,
``decoder.0.*`` for p(x|z_1), ``decoder.{l}.*`` for p(z_l|z_{l+1})) and :class:`TorchDiffusion`
(``elbokit.Diffusion`` with epsilon prediction: ``net.{i}.*``, ``net.out.*`` on
concat(x_t, emb(t))).

Every function takes its noise (and, for training, its shuffling) as arguments: the benchmark
hands it the engine's own noise, precomputed outside the timed region, so both frameworks do
exactly the same arithmetic and their outputs can be compared; any cost of drawing random
numbers is then counted against elbokit only.

Only the Bernoulli likelihood with analytic KL is implemented for the VAEs (what the benchmark
cases use): log p(x|z) = sum_d x_d l_d - softplus(l_d) = -BCEWithLogits(l, x), and
KL(q || N(0, I)) = -1/2 sum_j (1 + logvar_j - mu_j^2 - exp(logvar_j)).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TorchVAE", "TorchHVAE", "TorchDiffusion", "make_adam", "train_loop", "train_epochs", "vae_loss",
           "elbo_terms", "log_likelihood", "hvae_loss", "hvae_elbo", "diffusion_loss", "ddpm_sample"]

ACTIVATIONS = {"relu": F.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "softplus": F.softplus,
               "elu": F.elu, "silu": F.silu, "leaky_relu": lambda t: F.leaky_relu(t, 0.01)}


def _linears(in_dim: int, sizes: tuple, dtype) -> dict:
    """The trunk "0", "1", ...: Linear layers in_dim -> sizes[0] -> sizes[1] ..."""
    dims = [in_dim, *sizes]
    return {str(i): nn.Linear(dims[i], dims[i + 1], dtype=dtype) for i in range(len(sizes))}


def _mlp(h, trunk, act):
    """Applies the trunk's layers, each followed by the activation."""
    for layer in trunk:
        h = act(layer(h))
    return h


class _Net(nn.Module):
    """A trunk "0", "1", ... and named heads (e.g. "out", or "mu" and "logvar"), each a Linear
    from the trunk's last width."""

    def __init__(self, in_dim: int, sizes: tuple, out_dim: int, heads: tuple, dtype):
        super().__init__()
        for name, layer in _linears(in_dim, sizes, dtype).items():
            self.add_module(name, layer)
        width = sizes[-1] if sizes else in_dim
        for name in heads:
            self.add_module(name, nn.Linear(width, out_dim, dtype=dtype))
        self.trunk = [getattr(self, str(i)) for i in range(len(sizes))]


class _Decoder(_Net):
    def __init__(self, z_dim: int, x_dim: int, sizes: tuple, dtype):
        super().__init__(z_dim, sizes, x_dim, ("out",), dtype)


class _GaussNet(_Net):
    """A Gaussian's mean and log-variance: heads "mu" and "logvar"."""

    def __init__(self, in_dim: int, sizes: tuple, z_dim: int, dtype):
        super().__init__(in_dim, sizes, z_dim, ("mu", "logvar"), dtype)


class _ElbokitModule(nn.Module):
    def load_elbokit(self, params: dict):
        """Loads elbokit's parameters (its names are this module's state_dict keys), strictly."""
        dtype = next(self.parameters()).dtype
        self.load_state_dict({k: torch.as_tensor(np.asarray(v)).to(dtype) for k, v in params.items()},
                             strict=True)
        return self


class TorchVAE(_ElbokitModule):
    """elbokit.VAE (Bernoulli decoder) in PyTorch; state_dict keys are elbokit's parameter names."""

    def __init__(self, x_dim: int, z_dim: int, hidden=(400,), activation: str = "relu",
                 dtype=torch.float32):
        super().__init__()
        self.x_dim, self.z_dim, self.hidden = int(x_dim), int(z_dim), tuple(hidden)
        self.act = ACTIVATIONS[activation]
        self.encoder = _GaussNet(self.x_dim, self.hidden, self.z_dim, dtype)
        self.decoder = _Decoder(self.z_dim, self.x_dim, self.hidden[::-1], dtype)

    @classmethod
    def from_elbokit(cls, vae, dtype=torch.float32) -> "TorchVAE":
        """A TorchVAE with the architecture and current weights of an elbokit.VAE."""
        if vae.likelihood != "bernoulli":
            raise ValueError("the benchmark's TorchVAE implements the Bernoulli likelihood only")
        model = cls(vae.x_dim, vae.z_dim, vae.hidden, vae.config["activation"], dtype=dtype)
        return model.load_elbokit(vae.parameters())

    def encode(self, x):
        h = _mlp(x, self.encoder.trunk, self.act)
        return self.encoder.mu(h), self.encoder.logvar(h)

    def decode(self, z):
        """Bernoulli logits."""
        return self.decoder.out(_mlp(z, self.decoder.trunk, self.act))


class TorchHVAE(_ElbokitModule):
    """elbokit.HVAE with structure="markov" and a Bernoulli decoder, L >= 2 levels:
    encoder.{l} is q(z_{l+1}|z_l) (z_0 = x), decoder.0 is p(x|z_1) (logits "out"), decoder.{l} is
    p(z_l|z_{l+1}) for l = 1 ... L-1; hidden for the encoders, reversed for the decoders."""

    def __init__(self, x_dim: int, z_dims=(16, 8, 4), hidden=(128,), activation: str = "relu",
                 dtype=torch.float32):
        super().__init__()
        self.x_dim, self.z_dims, self.hidden = int(x_dim), tuple(z_dims), tuple(hidden)
        if len(self.z_dims) < 2:
            raise ValueError("TorchHVAE needs at least 2 levels (one level is TorchVAE)")
        self.act = ACTIVATIONS[activation]
        ins = [self.x_dim, *self.z_dims[:-1]]
        self.encoder = nn.ModuleList(_GaussNet(i, self.hidden, z, dtype) for i, z in zip(ins, self.z_dims))
        rev = self.hidden[::-1]
        self.decoder = nn.ModuleList([_Decoder(self.z_dims[0], self.x_dim, rev, dtype)] +
                                     [_GaussNet(self.z_dims[l], rev, self.z_dims[l - 1], dtype)
                                      for l in range(1, len(self.z_dims))])

    @classmethod
    def from_elbokit(cls, hvae, dtype=torch.float32) -> "TorchHVAE":
        if hvae.structure != "markov" or hvae.likelihood != "bernoulli":
            raise ValueError("the benchmark's TorchHVAE implements structure='markov' with the Bernoulli likelihood")
        model = cls(hvae.x_dim, hvae.z_dims, hvae.hidden, hvae.activation, dtype=dtype)
        return model.load_elbokit(hvae.parameters())

    def _gauss(self, net: _GaussNet, h):
        h = _mlp(h, net.trunk, self.act)
        return net.mu(h), net.logvar(h)

    def terms(self, x, eps):
        """(Bernoulli logits of p(x|z_1) (n, x_dim), the per-example sum of the level terms (n,))
        along one ancestral sample of q's chain with noise eps[l] (n, z_l): the top level's analytic
        KL(q(z_L|z_{L-1}) || N(0, I)) plus log q(z_l|z_{l-1}) - log p(z_l|z_{l+1}) at the sample for
        l < L (log q written with eps: -1/2 (log 2 pi + logvar + eps^2) per coordinate)."""
        h, zs, logvars = x, [], []
        for net, e in zip(self.encoder, eps):
            mu, lv = self._gauss(net, h)
            h = mu + torch.exp(0.5 * lv) * e
            zs.append(h)
            logvars.append(lv)
        kl = _kl(mu, lv)
        for l in range(len(self.z_dims) - 1):
            pm, plv = self._gauss(self.decoder[l + 1], zs[l + 1])
            kl = kl + 0.5 * (plv - logvars[l] + (zs[l] - pm) ** 2 * torch.exp(-plv) - eps[l] * eps[l]).sum(-1)
        dec = self.decoder[0]
        return dec.out(_mlp(zs[0], dec.trunk, self.act)), kl


def hvae_loss(model: TorchHVAE, xb, eps):
    """-batch-mean ELBO of the HVAE for noise eps [(b, z_l)]."""
    logits, kl = model.terms(xb, eps)
    return (F.binary_cross_entropy_with_logits(logits, xb, reduction="sum") + kl.sum()) / xb.shape[0]


def hvae_elbo(model: TorchHVAE, x, eps):
    """Per-example ELBO (n,) of the HVAE for noise eps [(n, z_l)]."""
    logits, kl = model.terms(x, eps)
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1) - kl


class TorchDiffusion(_ElbokitModule):
    """elbokit.Diffusion with prediction="epsilon" in PyTorch: the eps-network is net.{i} (Linear +
    activation) and net.out on concat(x_t, emb(t)). The schedule and the sinusoidal embedding
    emb(t)_k = sin(t f_k), emb(t)_{half+k} = cos(t f_k), f_k = 10000^(-k/(half-1)), are tabulated
    once in float64 for t = 0 ... T (as the engine computes them) and kept in the module's dtype."""

    def __init__(self, x_dim: int, betas, sigmas2, hidden=(256, 256, 256), emb_dim: int = 32,
                 activation: str = "silu", dtype=torch.float32):
        super().__init__()
        self.x_dim, self.T = int(x_dim), len(betas)
        self.act = ACTIVATIONS[activation]
        layers = _linears(self.x_dim + emb_dim, tuple(hidden), dtype)
        layers["out"] = nn.Linear(hidden[-1] if hidden else self.x_dim + emb_dim, self.x_dim, dtype=dtype)
        self.net = nn.ModuleDict(layers)
        self.trunk = [self.net[str(i)] for i in range(len(hidden))]
        beta = np.concatenate([[0.0], np.asarray(betas, dtype=np.float64)])   # index t = step t
        alpha = 1.0 - beta
        abar = np.cumprod(alpha)
        half = emb_dim // 2
        f = np.exp(-math.log(10000.0) * np.arange(half) / (half - 1)) if half > 1 else np.ones(1)
        a = np.arange(self.T + 1, dtype=np.float64)[:, None] * f[None, :]
        tab = lambda v: torch.tensor(v, dtype=dtype)  # noqa: E731
        self.register_buffer("emb", tab(np.concatenate([np.sin(a), np.cos(a)], 1)), persistent=False)
        self.register_buffer("sqrt_ab", tab(np.sqrt(abar)), persistent=False)
        self.register_buffer("sqrt_1m_ab", tab(np.sqrt(1.0 - abar)), persistent=False)
        # ancestral step t: x_{t-1} = (x_t - c_t eps_hat) r_t + s_t z, c_t = beta_t / sqrt(1 - abar_t),
        # r_t = 1 / sqrt(alpha_t), s_t = sigma_t (index t; 0 unused), as Python floats
        c, r, s = beta[1:] / np.sqrt(1.0 - abar[1:]), 1.0 / np.sqrt(alpha[1:]), np.sqrt(sigmas2)
        self.step_coefs = [None] + [(float(ci), float(ri), float(si)) for ci, ri, si in zip(c, r, s)]

    @classmethod
    def from_elbokit(cls, model, dtype=torch.float32) -> "TorchDiffusion":
        c = model.config
        if c["prediction"] != "epsilon" or c["data"] != "continuous":
            raise ValueError("the benchmark's TorchDiffusion implements prediction='epsilon', data='continuous'")
        m = cls(c["x_dim"], model.betas, model.sigmas2, tuple(c["hidden"]), c["emb_dim"], c["activation"], dtype)
        return m.load_elbokit(model.parameters())

    def eps_hat(self, xt, emb):
        """The network on concat(x_t, emb) (B, D + E)."""
        return self.net["out"](_mlp(torch.cat([xt, emb], 1), self.trunk, self.act))


def diffusion_losses(model: TorchDiffusion, x0, t, eps):
    """Per-example simple loss ||eps - eps_hat(x_t, t)||^2, x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps;
    t (B,) int64 steps in 1 ... T."""
    xt = model.sqrt_ab[t][:, None] * x0 + model.sqrt_1m_ab[t][:, None] * eps
    return ((eps - model.eps_hat(xt, model.emb[t])) ** 2).sum(1)


def diffusion_loss(model: TorchDiffusion, x0, noise):
    """fit's loss="simple" on a batch: the batch mean of diffusion_losses, noise = (t, eps)."""
    return diffusion_losses(model, x0, *noise).mean()


@torch.no_grad()
def ddpm_sample(model: TorchDiffusion, noise):
    """Ancestral sampling over all T steps, all points through the network together at each step:
    noise (T, n, D), noise[0] = x_T and noise[k] the z of sampling step k (t = T - k + 1),
    k = 1 ... T - 1 (the engine's layout; the last step, t = 1, adds no noise)."""
    x = noise[0]
    n = x.shape[0]
    for k in range(1, model.T + 1):
        t = model.T - k + 1
        c, r, sd = model.step_coefs[t]
        x = (x - c * model.eps_hat(x, model.emb[t].expand(n, -1))) * r
        if t > 1:
            x = x + sd * noise[k]
    return x


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


def train_loop(model: nn.Module, opt, x, perms, noise, batch_size: int, loss_fn) -> float:
    """Minibatch steps exactly as elbokit's fit takes them: epoch e visits rows
    perms[e][k*B:(k+1)*B] (the last batch may be smaller); global step t computes
    loss = loss_fn(model, x_batch, noise[t]) (a batch mean), then backward and opt.step().
    Returns the last epoch's mean loss, each step's loss weighted by b / n (fit's ``train_loss``)."""
    t = 0
    epoch_loss = torch.zeros((), dtype=torch.float64)
    for perm in perms:
        n = perm.shape[0]
        epoch_loss = torch.zeros((), dtype=torch.float64)
        for start in range(0, n, batch_size):
            xb = x.index_select(0, perm[start:start + batch_size])
            loss = loss_fn(model, xb, noise[t])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            epoch_loss += loss.detach().double() * (xb.shape[0] / n)
            t += 1
    return float(epoch_loss)


def vae_loss(model: TorchVAE, xb, eps):
    """-batch-mean ELBO (analytic KL, Bernoulli likelihood) for noise eps (1, b, z_dim):
    (sum_b,d BCE + sum_b KL_b) / b."""
    mu, logvar = model.encode(xb)
    z = mu + torch.exp(0.5 * logvar) * eps[0]
    logits = model.decode(z)
    return (F.binary_cross_entropy_with_logits(logits, xb, reduction="sum") + _kl(mu, logvar).sum()) / xb.shape[0]


def train_epochs(model: TorchVAE, opt, x, perms, noise, batch_size: int) -> float:
    """The VAE's fit (train_loop with vae_loss, global step t using noise[t] (1, b, z_dim)).
    Returns the last epoch's mean ELBO (fit's ``train_elbo``)."""
    return -train_loop(model, opt, x, perms, noise, batch_size, vae_loss)


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


# ---- image models (cases 10-12) ---------------------------------------------------------------
class TorchConvVAE(TorchVAE):
    """elbokit.VAE(net="conv") (Bernoulli decoder) in PyTorch: encoder.{i} Conv2d(c_{i-1}, c_i, 4, 2, 1)
    + activation, heads encoder.mu / encoder.logvar on the flattened features; decoder.fc Linear to
    (c_last, H/2^n, W/2^n) + activation, decoder.{j} ConvTranspose2d(4, 2, 1) + activation over the
    channels reversed, decoder.out ConvTranspose2d to the image's channels."""

    def __init__(self, image_shape, channels, z_dim: int, activation: str = "relu", dtype=torch.float32):
        nn.Module.__init__(self)
        C, H, W = image_shape
        self.x_dim, self.z_dim, self.image_shape, self.channels = C * H * W, int(z_dim), tuple(image_shape), tuple(channels)
        self.act = ACTIVATIONS[activation]
        f = 2 ** len(channels)
        self.h, self.w = H // f, W // f
        enc = {}
        prev = C
        for i, c in enumerate(channels):
            enc[str(i)] = nn.Conv2d(prev, c, 4, stride=2, padding=1, dtype=dtype)
            prev = c
        feat = prev * self.h * self.w
        enc["mu"], enc["logvar"] = nn.Linear(feat, z_dim, dtype=dtype), nn.Linear(feat, z_dim, dtype=dtype)
        self.encoder = nn.ModuleDict(enc)
        rev = list(channels[::-1])
        dec = {"fc": nn.Linear(z_dim, rev[0] * self.h * self.w, dtype=dtype)}
        for j in range(len(rev) - 1):
            dec[str(j)] = nn.ConvTranspose2d(rev[j], rev[j + 1], 4, stride=2, padding=1, dtype=dtype)
        dec["out"] = nn.ConvTranspose2d(rev[-1], C, 4, stride=2, padding=1, dtype=dtype)
        self.decoder = nn.ModuleDict(dec)

    @classmethod
    def from_elbokit(cls, vae, dtype=torch.float32) -> "TorchConvVAE":
        c = vae.config
        return cls(c["image_shape"], c["channels"], c["z_dim"], c["activation"], dtype).load_elbokit(vae.parameters())

    def encode(self, x):
        h = x.reshape(-1, *self.image_shape)
        for i in range(len(self.channels)):
            h = self.act(self.encoder[str(i)](h))
        h = h.reshape(x.shape[0], -1)
        return self.encoder["mu"](h), self.encoder["logvar"](h)

    def decode(self, z):
        h = self.act(self.decoder["fc"](z)).reshape(-1, self.channels[-1], self.h, self.w)
        for j in range(len(self.channels) - 1):
            h = self.act(self.decoder[str(j)](h))
        return self.decoder["out"](h).reshape(z.shape[0], -1)


class _ResBlock(nn.Module):
    def __init__(self, cin, cout, tdim, groups, act, dtype):
        super().__init__()
        self.act = act
        self.norm1 = nn.GroupNorm(groups, cin, dtype=dtype)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, dtype=dtype)
        self.temb = nn.Linear(tdim, cout, dtype=dtype)
        self.norm2 = nn.GroupNorm(groups, cout, dtype=dtype)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, dtype=dtype)
        self.skip = nn.Conv2d(cin, cout, 1, dtype=dtype) if cin != cout else None

    def forward(self, x, st):
        h = self.conv1(self.act(self.norm1(x))) + self.temb(st)[:, :, None, None]
        h = self.conv2(self.act(self.norm2(h)))
        return h + (x if self.skip is None else self.skip(x))


class _Level(nn.Module):
    pass


class TorchUNet(nn.Module):
    """elbokit's U-Net (cpp/include/elbokit/unet.hpp), state_dict keys as its parameter names under
    "net." (the same module as tests/torch_unet.py, in the benchmark's dtype)."""

    def __init__(self, image_shape, channels, emb_dim, groups, activation="silu", dtype=torch.float32):
        super().__init__()
        self.image_shape, self.n = tuple(image_shape), len(channels)
        act = self.act = ACTIVATIONS[activation]
        ch, tdim = list(channels), 4 * channels[0]
        self.time = nn.ModuleDict({"0": nn.Linear(emb_dim, tdim, dtype=dtype), "1": nn.Linear(tdim, tdim, dtype=dtype)})
        self.conv_in = nn.Conv2d(image_shape[0], ch[0], 3, padding=1, dtype=dtype)
        self.down, prev = nn.ModuleDict(), ch[0]
        for i in range(self.n):
            lv = _Level()
            lv.res = _ResBlock(prev, ch[i], tdim, groups, act, dtype)
            if i < self.n - 1:
                lv.down = nn.Conv2d(ch[i], ch[i], 3, stride=2, padding=1, dtype=dtype)
            self.down[str(i)], prev = lv, ch[i]
        self.mid = _ResBlock(prev, prev, tdim, groups, act, dtype)
        self.up = nn.ModuleDict()
        for i in reversed(range(self.n)):
            lv = _Level()
            lv.res = _ResBlock(prev + ch[i], ch[i], tdim, groups, act, dtype)
            prev = ch[i]
            if i > 0:
                lv.up = nn.Conv2d(ch[i], ch[i - 1], 3, padding=1, dtype=dtype)
                prev = ch[i - 1]
            self.up[str(i)] = lv
        self.norm_out = nn.GroupNorm(groups, prev, dtype=dtype)
        self.out = nn.Conv2d(prev, image_shape[0], 3, padding=1, dtype=dtype)

    def forward(self, x, emb):
        B = x.shape[0]
        st = self.act(self.time["1"](self.act(self.time["0"](emb))))
        h = self.conv_in(x.reshape(B, *self.image_shape))
        skips = []
        for i in range(self.n):
            lv = self.down[str(i)]
            h = lv.res(h, st)
            skips.append(h)
            if i < self.n - 1:
                h = lv.down(h)
        h = self.mid(h, st)
        for i in reversed(range(self.n)):
            lv = self.up[str(i)]
            h = lv.res(torch.cat([h, skips[i]], 1), st)
            if i > 0:
                h = lv.up(F.interpolate(h, scale_factor=2, mode="nearest"))
        return self.out(self.act(self.norm_out(h))).reshape(B, -1)


class TorchUNetDiffusion(TorchDiffusion):
    """elbokit.Diffusion(net="unet") with prediction="epsilon": TorchDiffusion's schedule and
    embedding tables with the U-Net as the eps-network."""

    def __init__(self, model, dtype=torch.float32):
        c = model.config
        super().__init__(c["x_dim"], model.betas, model.sigmas2, (), c["emb_dim"], c["activation"], dtype)
        self.net = TorchUNet(c["image_shape"], c["channels"], c["emb_dim"], c["groups"], c["activation"], dtype)
        self.trunk = None

    @classmethod
    def from_elbokit(cls, model, dtype=torch.float32) -> "TorchUNetDiffusion":
        if model.config["prediction"] != "epsilon" or model.config["data"] != "continuous":
            raise ValueError("the benchmark's TorchUNetDiffusion implements prediction='epsilon', data='continuous'")
        return cls(model, dtype).load_elbokit(model.parameters())

    def eps_hat(self, xt, emb):
        return self.net(xt, emb)


@torch.no_grad()
def ddim_sample(model: TorchDiffusion, x, tau, abar):
    """Deterministic DDIM (eta = 0) from x = x_T over the ascending steps tau, all points together:
    x_s = sqrt(abar_s / abar_t) x_t + (sqrt(1 - abar_s) - sqrt(abar_s (1 - abar_t) / abar_t)) eps_hat
    (the engine's update); abar (T + 1) in float64 with abar[0] = 1, the step after the last."""
    n = x.shape[0]
    ab = list(abar)
    for k in range(len(tau) - 1, -1, -1):
        t, s = tau[k], (tau[k - 1] if k > 0 else 0)
        c0 = math.sqrt(ab[s]) / math.sqrt(ab[t])
        ce = math.sqrt(max(0.0, 1.0 - ab[s])) - math.sqrt(ab[s]) * math.sqrt(1.0 - ab[t]) / math.sqrt(ab[t])
        x = c0 * x + ce * model.eps_hat(x, model.emb[t].expand(n, -1))
    return x
