"""JAX equivalents of elbokit's models for the benchmark suite (benchmarks/run.py), the second peer
beside benchmarks/torch_models.py.

Written the way a JAX user would write them for speed on CPU: pure functions of a parameter dict,
``jax.value_and_grad``, one ``jax.jit``-compiled training step (loss, gradient and Adam; the
minibatch gather inside the step; the parameter state donated), a compiled whole-batch ELBO, L_K
over example chunks with ``lax.map`` in one compiled call, and DDPM sampling as one compiled
``lax.fori_loop`` over the T steps. float32 throughout. Adam is written by hand with
torch.optim.Adam's semantics (the engine's: betas (0.9, 0.999), eps 1e-8,
p -= lr/(1-b1^t) m / (sqrt(v)/sqrt(1-b2^t) + eps)), so no optax dependency.

The parameters are elbokit's ``model.parameters()`` under the same names; a linear layer's weight
is stored transposed, (in, out), so a layer is ``h @ W + b``. Every function takes its noise (and
its minibatch indices) as arguments: run.py hands it the engine's own noise, precomputed outside
the timed region, as it does for PyTorch.

Only what the benchmark's cases use: the Bernoulli likelihood with analytic KL for the VAEs
(log p(x|z) = sum_d x_d l_d - softplus(l_d); KL = -1/2 sum_j (1 + logvar_j - mu_j^2 - exp(logvar_j))),
the Markov HVAE, the epsilon-prediction diffusion model (MATH.md's simple loss and ancestral
sampling), as in torch_models.py; for the image cases (10-12) the conv VAE (JaxConvVAE), the U-Net
eps-network (JaxUNetDiffusion) and deterministic DDIM sampling (ddim_step_fn, ddim_sample), with
lax.conv_general_dilated on NCHW images and torch's kernel layouts (Conv2d OIHW, ConvTranspose2d
(in, out, kH, kW)).

jax is imported by run.py after it has set XLA_FLAGS and the thread limit; this module imports it
at its own import (run.py imports it only then).
"""
from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["JaxVAE", "JaxHVAE", "JaxDiffusion", "JaxConvVAE", "JaxUNetDiffusion", "compile_fn", "Trainer",
           "vae_loss", "hvae_loss", "diffusion_loss", "elbo_fn", "log_likelihood_fn", "hvae_elbo_fn",
           "diffusion_losses_fn", "ddpm_sample_fn", "ddim_schedule", "ddim_step_fn", "ddim_sample"]

ACTIVATIONS = {"relu": jax.nn.relu, "tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid, "softplus": jax.nn.softplus,
               "elu": jax.nn.elu, "silu": jax.nn.silu, "leaky_relu": lambda t: jax.nn.leaky_relu(t, 0.01)}


def to_params(params: dict) -> dict:
    """elbokit's parameters as float32 device arrays, a linear layer's (out, in) weight transposed to
    (in, out); conv kernels (4-D, torch's layouts) and GroupNorm's affine vectors (1-D) as they are."""
    out = {}
    for k, v in params.items():
        a = np.asarray(v, dtype=np.float32)
        out[k] = jnp.asarray(np.ascontiguousarray(a.T) if k.endswith(".weight") and a.ndim == 2 else a)
    return out


def _dense(p, name, h):
    return h @ p[name + ".weight"] + p[name + ".bias"]


def _trunk(p, prefix, n, h, act):
    """Layers prefix.0 ... prefix.{n-1}, each followed by the activation."""
    for i in range(n):
        h = act(_dense(p, f"{prefix}.{i}", h))
    return h


def _kl(mu, logvar):
    """Per-example analytic KL(N(mu, exp(logvar)) || N(0, I))."""
    return -0.5 * jnp.sum(1.0 + logvar - mu * mu - jnp.exp(logvar), -1)


def _log_bernoulli(logits, x):
    """Per-example sum_d x_d l_d - softplus(l_d)."""
    return jnp.sum(x * logits - jax.nn.softplus(logits), -1)


class JaxVAE:
    """elbokit.VAE (Bernoulli decoder): encoder.{i}, encoder.mu/logvar, decoder.{i}, decoder.out."""

    def __init__(self, x_dim, z_dim, hidden, activation, params):
        self.x_dim, self.z_dim, self.n_hidden = int(x_dim), int(z_dim), len(hidden)
        self.act = ACTIVATIONS[activation]
        self.params = to_params(params)

    @classmethod
    def from_elbokit(cls, vae):
        if vae.likelihood != "bernoulli":
            raise ValueError("the benchmark's JaxVAE implements the Bernoulli likelihood only")
        return cls(vae.x_dim, vae.z_dim, vae.hidden, vae.config["activation"], vae.parameters())

    def encode(self, p, x):
        h = _trunk(p, "encoder", self.n_hidden, x, self.act)
        return _dense(p, "encoder.mu", h), _dense(p, "encoder.logvar", h)

    def decode(self, p, z):
        """Bernoulli logits."""
        return _dense(p, "decoder.out", _trunk(p, "decoder", self.n_hidden, z, self.act))


def vae_loss(model: JaxVAE):
    """loss(p, xb, eps (b, z)): -batch-mean ELBO (analytic KL, Bernoulli)."""
    def loss(p, xb, eps):
        mu, logvar = model.encode(p, xb)
        z = mu + jnp.exp(0.5 * logvar) * eps
        return -jnp.mean(_log_bernoulli(model.decode(p, z), xb) - _kl(mu, logvar))
    return loss


def elbo_fn(model: JaxVAE):
    """elbo(p, x (n, D), eps (n, Z)) -> per-example ELBO (n,), one sample."""
    def elbo(p, x, eps):
        mu, logvar = model.encode(p, x)
        z = mu + jnp.exp(0.5 * logvar) * eps
        return _log_bernoulli(model.decode(p, z), x) - _kl(mu, logvar)
    return elbo


def log_likelihood_fn(model: JaxVAE, chunk_examples: int):
    """ll(p, x (n, D), eps (n, K, Z)) -> per-example L_K (n,), n a multiple of chunk_examples:
    the encoder once on all rows, the decoder over chunks of chunk_examples*K rows with lax.map
    (so that, as in the engine and the torch version, ~8192 decoder rows are live), the
    log-sum-exp over K in float32 (max-shifted)."""
    def ll(p, x, eps):
        n, K, Z = eps.shape
        mu, logvar = model.encode(p, x)
        sigma = jnp.exp(0.5 * logvar)
        c = chunk_examples

        def chunk(args):
            xb, mb, sb, lvb, e = args                          # (c, D), (c, Z) x3, (c, K, Z)
            z = mb[:, None, :] + sb[:, None, :] * e            # (c, K, Z)
            logits = model.decode(p, z.reshape(-1, Z)).reshape(c, K, -1)
            log_px = _log_bernoulli(logits, xb[:, None, :])     # (c, K)
            # log p(z) - log q(z|x) = 1/2 sum_j (logvar_j + eps_j^2 - z_j^2)
            log_w = log_px + 0.5 * jnp.sum(lvb[:, None, :] + e * e - z * z, -1)
            return jax.scipy.special.logsumexp(log_w, axis=1) - math.log(K)

        split = lambda a: a.reshape(n // c, c, *a.shape[1:])  # noqa: E731
        return lax.map(chunk, (split(x), split(mu), split(sigma), split(logvar), split(eps))).reshape(n)
    return ll


class JaxHVAE:
    """elbokit.HVAE, structure "markov", Bernoulli: encoder.{l}.* is q(z_{l+1}|z_l) (z_0 = x),
    decoder.0.* p(x|z_1) (head "out"), decoder.{l}.* p(z_l|z_{l+1}) (heads mu, logvar)."""

    def __init__(self, x_dim, z_dims, hidden, activation, params):
        self.x_dim, self.z_dims, self.n_hidden = int(x_dim), tuple(z_dims), len(hidden)
        self.act = ACTIVATIONS[activation]
        self.params = to_params(params)

    @classmethod
    def from_elbokit(cls, hvae):
        if hvae.structure != "markov" or hvae.likelihood != "bernoulli":
            raise ValueError("the benchmark's JaxHVAE implements structure='markov' with the Bernoulli likelihood")
        return cls(hvae.x_dim, hvae.z_dims, hvae.hidden, hvae.activation, hvae.parameters())

    def _gauss(self, p, prefix, h):
        h = _trunk(p, prefix, self.n_hidden, h, self.act)
        return _dense(p, prefix + ".mu", h), _dense(p, prefix + ".logvar", h)

    def terms(self, p, x, eps):
        """(logits of p(x|z_1), per-example sum of the level terms), as TorchHVAE.terms: the top
        level's analytic KL plus log q(z_l|z_{l-1}) - log p(z_l|z_{l+1}) at the sample for l < L."""
        h, zs, logvars = x, [], []
        for l, e in enumerate(eps):
            mu, lv = self._gauss(p, f"encoder.{l}", h)
            h = mu + jnp.exp(0.5 * lv) * e
            zs.append(h)
            logvars.append(lv)
        kl = _kl(mu, lv)
        for l in range(len(self.z_dims) - 1):
            pm, plv = self._gauss(p, f"decoder.{l + 1}", zs[l + 1])
            kl = kl + 0.5 * jnp.sum(plv - logvars[l] + (zs[l] - pm) ** 2 * jnp.exp(-plv) - eps[l] * eps[l], -1)
        logits = _dense(p, "decoder.0.out", _trunk(p, "decoder.0", self.n_hidden, zs[0], self.act))
        return logits, kl


def hvae_loss(model: JaxHVAE):
    """loss(p, xb, eps [(b, z_l)]): -batch-mean ELBO."""
    def loss(p, xb, eps):
        logits, kl = model.terms(p, xb, eps)
        return -jnp.mean(_log_bernoulli(logits, xb) - kl)
    return loss


def hvae_elbo_fn(model: JaxHVAE):
    def elbo(p, x, eps):
        logits, kl = model.terms(p, x, eps)
        return _log_bernoulli(logits, x) - kl
    return elbo


class JaxDiffusion:
    """elbokit.Diffusion, epsilon prediction: net.{i}.*, net.out.* on concat(x_t, emb(t)); the
    schedule and the sinusoidal embedding tabulated in float64 for t = 0 ... T (as TorchDiffusion
    does) and kept in float32."""

    def __init__(self, x_dim, betas, sigmas2, hidden, emb_dim, activation, params):
        self.x_dim, self.T, self.n_hidden = int(x_dim), len(betas), len(hidden)
        self.act = ACTIVATIONS[activation]
        self.params = to_params(params)
        beta = np.concatenate([[0.0], np.asarray(betas, dtype=np.float64)])   # index t = step t
        alpha = 1.0 - beta
        abar = np.cumprod(alpha)
        half = emb_dim // 2
        f = np.exp(-math.log(10000.0) * np.arange(half) / (half - 1)) if half > 1 else np.ones(1)
        a = np.arange(self.T + 1, dtype=np.float64)[:, None] * f[None, :]
        tab = lambda v: jnp.asarray(np.asarray(v, dtype=np.float32))  # noqa: E731
        self.emb = tab(np.concatenate([np.sin(a), np.cos(a)], 1))          # (T+1, E)
        self.sqrt_ab, self.sqrt_1m_ab = tab(np.sqrt(abar)), tab(np.sqrt(1.0 - abar))
        # ancestral step t: x_{t-1} = (x_t - c_t eps_hat) r_t + s_t z (index t; 0 unused)
        zero = np.zeros(1)
        self.c = tab(np.concatenate([zero, beta[1:] / np.sqrt(1.0 - abar[1:])]))
        self.r = tab(np.concatenate([zero, 1.0 / np.sqrt(alpha[1:])]))
        self.s = tab(np.concatenate([zero, np.sqrt(np.asarray(sigmas2, dtype=np.float64))]))

    @classmethod
    def from_elbokit(cls, model):
        c = model.config
        if c["prediction"] != "epsilon" or c["data"] != "continuous":
            raise ValueError("the benchmark's JaxDiffusion implements prediction='epsilon', data='continuous'")
        return cls(c["x_dim"], model.betas, model.sigmas2, tuple(c["hidden"]), c["emb_dim"], c["activation"],
                   model.parameters())

    def eps_hat(self, p, xt, emb):
        """The network on concat(x_t, emb) (B, D + E)."""
        h = _trunk(p, "net", self.n_hidden, jnp.concatenate([xt, emb], 1), self.act)
        return _dense(p, "net.out", h)


def diffusion_losses_fn(model: JaxDiffusion):
    """losses(p, x0, t (B,) int32, eps (B, D)) -> per-example ||eps - eps_hat(x_t, t)||^2."""
    def losses(p, x0, t, eps):
        xt = model.sqrt_ab[t][:, None] * x0 + model.sqrt_1m_ab[t][:, None] * eps
        return jnp.sum((eps - model.eps_hat(p, xt, model.emb[t])) ** 2, 1)
    return losses


def diffusion_loss(model: JaxDiffusion):
    """loss(p, x0, (t, eps)): fit's loss="simple", the batch mean."""
    losses = diffusion_losses_fn(model)
    return lambda p, x0, noise: jnp.mean(losses(p, x0, *noise))


def ddpm_sample_fn(model: JaxDiffusion):
    """sample(p, noise (T, n, D)) -> x_0: noise[0] = x_T, noise[k] the z of sampling step k
    (t = T - k + 1), k = 1 ... T-1; the last step (t = 1) adds no noise. One lax.fori_loop."""
    T = model.T

    def step(p, x, t):
        n = x.shape[0]
        e = model.eps_hat(p, x, jnp.broadcast_to(model.emb[t], (n, model.emb.shape[1])))
        return (x - model.c[t] * e) * model.r[t]

    def sample(p, noise):
        def body(k, x):
            t = T - k + 1
            return step(p, x, t) + model.s[t] * noise[k]
        x = lax.fori_loop(1, T, body, noise[0])
        return step(p, x, 1)
    return sample


# ---- image models (cases 10-12) ---------------------------------------------------------------
# Images are NCHW: B batch, C channels, H x W sides; kernels as torch stores them (Conv2d (O, I, k, k),
# ConvTranspose2d (I, O, k, k)), so elbokit's parameters load unchanged.
_NCHW = ("NCHW", "OIHW", "NCHW")


def _conv(p, name, h, stride=1, padding=None):
    """torch.nn.Conv2d(stride, padding) on h (B, I, H, W): padding defaults to k // 2 (k = 3: 1, k = 1: 0)."""
    w = p[name + ".weight"]                                    # (O, I, k, k)
    pad = w.shape[2] // 2 if padding is None else padding
    out = lax.conv_general_dilated(h, w, (stride, stride), [(pad, pad), (pad, pad)], dimension_numbers=_NCHW)
    return out + p[name + ".bias"][None, :, None, None]


def _conv_transpose(p, name, h, stride=2, padding=1):
    """torch.nn.ConvTranspose2d(k, stride, padding) on h (B, I, H, W) -> (B, O, (H-1) s - 2 pad + k, ...):
    the gradient of a strided conv, i.e. a stride-1 conv of the input dilated by s (lhs_dilation),
    padded by k - 1 - pad, with the kernel flipped in space and its (I, O) axes swapped to OIHW."""
    w = p[name + ".weight"]                                    # (I, O, k, k)
    k = w.shape[2]
    w = jnp.flip(w, (2, 3)).transpose(1, 0, 2, 3)              # (O, I, k, k)
    q = k - 1 - padding
    out = lax.conv_general_dilated(h, w, (1, 1), [(q, q), (q, q)], lhs_dilation=(stride, stride),
                                   dimension_numbers=_NCHW)
    return out + p[name + ".bias"][None, :, None, None]


def _group_norm(p, name, h, groups, eps=1e-5):
    """torch.nn.GroupNorm(groups, C, eps=1e-5) on h (B, C, H, W): per example and group the mean and
    the biased variance over (C / G, H, W), then the per-channel affine."""
    B, C, H, W = h.shape
    g = h.reshape(B, groups, -1)
    mean = jnp.mean(g, -1, keepdims=True)
    var = jnp.mean(jnp.square(g - mean), -1, keepdims=True)
    g = ((g - mean) * lax.rsqrt(var + eps)).reshape(B, C, H, W)
    return g * p[name + ".weight"][None, :, None, None] + p[name + ".bias"][None, :, None, None]


def _upsample2(h):
    """Nearest x2 (torch's F.interpolate(scale_factor=2, mode="nearest")): (B, C, H, W) -> (B, C, 2H, 2W)."""
    B, C, H, W = h.shape
    return jnp.broadcast_to(h[:, :, :, None, :, None], (B, C, H, 2, W, 2)).reshape(B, C, 2 * H, 2 * W)


class JaxConvVAE(JaxVAE):
    """elbokit.VAE(net="conv") (Bernoulli), as TorchConvVAE: encoder.{i} Conv2d(4, 2, 1) + activation,
    heads encoder.mu / encoder.logvar on the flattened features (B, c_last h w); decoder.fc to
    (c_last, h, w) + activation, decoder.{j} ConvTranspose2d(4, 2, 1) + activation over the channels
    reversed, decoder.out ConvTranspose2d to the image's channels (logits, flattened to (B, D))."""

    def __init__(self, image_shape, channels, z_dim, activation, params):
        C, H, W = (int(v) for v in image_shape)
        self.image_shape, self.channels = (C, H, W), tuple(int(c) for c in channels)
        self.x_dim, self.z_dim = C * H * W, int(z_dim)
        f = 2 ** len(self.channels)
        self.h, self.w = H // f, W // f
        self.act = ACTIVATIONS[activation]
        self.params = to_params(params)

    @classmethod
    def from_elbokit(cls, vae):
        c = vae.config
        if c.get("net") != "conv" or vae.likelihood != "bernoulli":
            raise ValueError("the benchmark's JaxConvVAE implements net='conv' with the Bernoulli likelihood only")
        return cls(c["image_shape"], c["channels"], c["z_dim"], c["activation"], vae.parameters())

    def encode(self, p, x):
        h = x.reshape(-1, *self.image_shape)                              # (B, C, H, W)
        for i in range(len(self.channels)):
            h = self.act(_conv(p, f"encoder.{i}", h, stride=2, padding=1))  # (B, c_i, H/2^(i+1), W/2^(i+1))
        h = h.reshape(x.shape[0], -1)                                     # (B, c_last h w)
        return _dense(p, "encoder.mu", h), _dense(p, "encoder.logvar", h)

    def decode(self, p, z):
        """Bernoulli logits (B, D)."""
        h = self.act(_dense(p, "decoder.fc", z)).reshape(-1, self.channels[-1], self.h, self.w)
        for j in range(len(self.channels) - 1):
            h = self.act(_conv_transpose(p, f"decoder.{j}", h))
        return _conv_transpose(p, "decoder.out", h).reshape(z.shape[0], -1)


class JaxUNetDiffusion(JaxDiffusion):
    """elbokit.Diffusion(net="unet"), prediction="epsilon": JaxDiffusion's schedule and embedding
    tables with elbokit's U-Net (cpp/include/elbokit/unet.hpp, TorchUNet) as the eps-network, its
    parameters under "net.": time.0/1 (emb -> 4 c_0 -> 4 c_0, activation after each), conv_in, per
    level down.i.res (ResBlock) and down.i.down (3x3 stride 2) but the last, mid, per level (from the
    bottom) up.i.res on cat(h, skip_i) and up.i.up (nearest x2, 3x3 conv to c_{i-1}) but level 0,
    norm_out + activation, out."""

    def __init__(self, model):
        c = model.config
        super().__init__(c["x_dim"], model.betas, model.sigmas2, (), c["emb_dim"], c["activation"],
                         model.parameters())
        self.image_shape, self.channels, self.groups = tuple(c["image_shape"]), tuple(c["channels"]), int(c["groups"])

    @classmethod
    def from_elbokit(cls, model):
        c = model.config
        if c.get("net") != "unet" or c["prediction"] != "epsilon" or c["data"] != "continuous":
            raise ValueError("the benchmark's JaxUNetDiffusion implements net='unet', prediction='epsilon', "
                             "data='continuous'")
        return cls(model)

    def _res(self, p, name, h, st):
        """ResBlock: conv2(act(norm2(conv1(act(norm1(h))) + temb(st)))) + (h or skip(h))."""
        a = _conv(p, name + ".conv1", self.act(_group_norm(p, name + ".norm1", h, self.groups)))
        a = a + _dense(p, name + ".temb", st)[:, :, None, None]
        a = _conv(p, name + ".conv2", self.act(_group_norm(p, name + ".norm2", a, self.groups)))
        return a + (_conv(p, name + ".skip", h) if name + ".skip.weight" in p else h)

    def eps_hat(self, p, xt, emb):
        """The U-Net on x_t (B, D) at embeddings emb (B, E) -> eps_hat (B, D)."""
        B, n = xt.shape[0], len(self.channels)
        st = self.act(_dense(p, "net.time.1", self.act(_dense(p, "net.time.0", emb))))   # (B, 4 c_0)
        h = _conv(p, "net.conv_in", xt.reshape(B, *self.image_shape))                    # (B, c_0, H, W)
        skips = []
        for i in range(n):
            h = self._res(p, f"net.down.{i}.res", h, st)
            skips.append(h)
            if i < n - 1:
                h = _conv(p, f"net.down.{i}.down", h, stride=2, padding=1)
        h = self._res(p, "net.mid", h, st)
        for i in reversed(range(n)):
            h = self._res(p, f"net.up.{i}.res", jnp.concatenate([h, skips[i]], 1), st)
            if i > 0:
                h = _conv(p, f"net.up.{i}.up", _upsample2(h))
        h = self.act(_group_norm(p, "net.norm_out", h, self.groups))
        return _conv(p, "net.out", h).reshape(B, -1)


def ddim_schedule(tau, abar):
    """The DDIM (eta = 0) steps over the ascending steps tau, in sampling order, as torch_models.ddim_sample
    (the engine's update): [(t, c0, ce)] with
        x_s = c0 x_t + ce eps_hat(x_t, t),  c0 = sqrt(abar_s / abar_t),
        ce = sqrt(1 - abar_s) - sqrt(abar_s (1 - abar_t) / abar_t),
    s the step before t in tau (0 after the first), abar (T + 1) in float64 with abar[0] = 1; the
    coefficients computed in float64, handed over as float32 device scalars (t as int32)."""
    ab = [float(a) for a in abar]
    out = []
    for k in range(len(tau) - 1, -1, -1):
        t, s = int(tau[k]), (int(tau[k - 1]) if k > 0 else 0)
        c0 = math.sqrt(ab[s]) / math.sqrt(ab[t])
        ce = math.sqrt(max(0.0, 1.0 - ab[s])) - math.sqrt(ab[s]) * math.sqrt(1.0 - ab[t]) / math.sqrt(ab[t])
        out.append((jnp.int32(t), jnp.float32(c0), jnp.float32(ce)))
    return out


def ddim_step_fn(model: JaxDiffusion):
    """step(p, x (n, D), t, c0, ce) -> c0 x + ce eps_hat(x, t): one DDIM step, compiled once for all
    steps (t and the coefficients are arguments). ddim_sample calls it once per step: XLA's CPU
    backend runs the U-Net's convolutions about 20x slower per step inside a lax.scan / fori_loop
    body than in a top-level computation (267 ms against 12.4 ms a step for 8 images, 2 threads,
    jax 0.10.2), and unrolling the 50 steps into one jit compiles a 50-fold graph."""
    def step(p, x, t, c0, ce):
        n = x.shape[0]
        return c0 * x + ce * model.eps_hat(p, x, jnp.broadcast_to(model.emb[t], (n, model.emb.shape[1])))
    return step


def ddim_sample(step, p, x, schedule):
    """x_0 from x = x_T (n, D): the compiled step over ddim_schedule's steps (asynchronous dispatch:
    block on the result to time it)."""
    for t, c0, ce in schedule:
        x = step(p, x, t, c0, ce)
    return x


def compile_fn(fn, *args, donate_argnums=()):
    """(compiled fn, seconds to trace and compile it) for these argument shapes (ahead of time:
    the timed calls never compile)."""
    t0 = time.perf_counter()
    c = jax.jit(fn, donate_argnums=donate_argnums).lower(*args).compile()
    return c, time.perf_counter() - t0


class Trainer:
    """Minibatch Adam training as elbokit's fit takes its steps, with one compiled step
    (loss, gradient, Adam; the minibatch gathered inside from the whole training array):

        state = (params, m, v, t); step(state, x, idx (b,), noise) -> (state, loss)

    run(idx_per_step, noise_per_step, sizes, n) trains from self.params with a fresh Adam (as a
    fresh torch.optim.Adam / fit's optimizer), keeps the trained params, and returns the last
    epoch's mean loss, each step's loss weighted by b / n. The per-step inputs are device arrays
    prepared outside the timed region."""

    def __init__(self, params, loss, x, lr, b1=0.9, b2=0.999, eps=1e-8):
        self.params, self.x = params, jnp.asarray(x)
        self.lr, self.b1, self.b2, self.eps = lr, b1, b2, eps
        self.loss = loss
        self._compiled = {}
        self.compile_seconds = 0.0

        def step(state, x, idx, noise):
            p, m, v, t = state
            value, g = jax.value_and_grad(loss)(p, x[idx], noise)
            t = t + 1.0
            m = jax.tree_util.tree_map(lambda m_, g_: b1 * m_ + (1.0 - b1) * g_, m, g)
            v = jax.tree_util.tree_map(lambda v_, g_: b2 * v_ + (1.0 - b2) * g_ * g_, v, g)
            step_size = lr / (1.0 - b1 ** t)
            inv_sqrt_bc2 = 1.0 / jnp.sqrt(1.0 - b2 ** t)
            p = jax.tree_util.tree_map(lambda p_, m_, v_: p_ - step_size * m_ / (jnp.sqrt(v_) * inv_sqrt_bc2 + eps),
                                       p, m, v)
            return (p, m, v, t), value
        self._step = step

    def fresh_state(self, params):
        zeros = lambda: jax.tree_util.tree_map(jnp.zeros_like, params)  # noqa: E731
        return (params, zeros(), zeros(), jnp.zeros((), jnp.float32))

    def compiled(self, idx, noise):
        """The step compiled for this batch's shapes (once per batch size)."""
        key = int(idx.shape[0])
        if key not in self._compiled:
            state = self.fresh_state(jax.tree_util.tree_map(jnp.copy, self.params))
            self._compiled[key], s = compile_fn(self._step, state, self.x, idx, noise, donate_argnums=(0,))
            self.compile_seconds += s
        return self._compiled[key]

    def prepare(self, idx_per_step, noise_per_step):
        """Compiles the step for every batch size (outside any timed region)."""
        for idx, noise in zip(idx_per_step, noise_per_step):
            self.compiled(idx, noise)

    def run(self, idx_per_step, noise_per_step, sizes, n):
        state = self.fresh_state(self.params)
        losses, steps_per_epoch = [], -(-n // max(sizes))
        for idx, noise in zip(idx_per_step, noise_per_step):
            state, loss = self.compiled(idx, noise)(state, self.x, idx, noise)
            losses.append(loss)
        self.params = state[0]
        last = losses[-steps_per_epoch:]
        w = np.asarray(sizes[-steps_per_epoch:], dtype=np.float64) / n
        return float(np.dot(np.asarray(jnp.stack(last), dtype=np.float64), w))
