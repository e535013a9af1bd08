"""A float64 PyTorch reference of elbokit's diffusion model (MATH.md §7), used by the cross-checks.

Written the plain PyTorch way (nn.Linear in a ModuleDict, autograd) from the math, independently
of the engine: the sinusoidal embedding, the three predictions turned into eps_hat, the schedule,
the simple / ELBO / hybrid losses (with the discretized Gaussian at t = 1 for 256-level data) and
the denoising-form ELBO for given noise. variance="learned" (improved DDPM): net.out has 2 * x_dim
outputs, the prediction then v, log sigma^2 = v log beta_t + (1 - v) log beta~_t (beta~_1 -> beta~_2)
per example and dimension; the hybrid loss detaches the mean in its ELBO term.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from torch_unet import TorchUNet

DTYPE = torch.float64
LOG_2PI = math.log(2.0 * math.pi)
ACT = {"relu": torch.relu, "tanh": torch.tanh, "silu": F.silu, "softplus": F.softplus, "elu": F.elu,
       "sigmoid": torch.sigmoid, "leaky_relu": lambda t: F.leaky_relu(t, 0.01)}


def t64(a):
    return torch.as_tensor(np.array(a, dtype=np.float64))


def linear_betas(T):
    scale = 1000.0 / T
    return np.minimum(np.linspace(1e-4 * scale, 0.02 * scale, T), 0.999)


def cosine_betas(T, s=0.008):
    f = lambda t: np.cos((t / T + s) / (1 + s) * np.pi / 2) ** 2  # noqa: E731
    t = np.arange(T + 1, dtype=np.float64)
    abar = f(t) / f(0)
    return np.minimum(1 - abar[1:] / abar[:-1], 0.999)


def log1mexp(x):
    """log(1 - e^x), x < 0."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def log_bin(lo, hi):
    """log(Phi(hi) - Phi(lo)) elementwise, lo < hi, lo may be -inf and hi +inf; differences are
    taken in the tail where both lie (Phi(hi) - Phi(lo) = Phi(-lo) - Phi(-hi)), and every branch
    is evaluated at finite inputs so that autograd stays finite."""
    lo_inf, hi_inf = torch.isinf(lo), torch.isinf(hi)
    lo_s = torch.where(lo_inf, hi - 1, lo)
    hi_s = torch.where(hi_inf, lo_s + 1, hi)
    upper = lo_s >= 0
    a = torch.where(upper, -hi_s, lo_s)
    b = torch.where(upper, -lo_s, hi_s)
    lb = torch.special.log_ndtr(b)
    mid = lb + log1mexp(torch.special.log_ndtr(a) - lb)
    return torch.where(lo_inf, torch.special.log_ndtr(hi_s), torch.where(hi_inf, torch.special.log_ndtr(-lo_s), mid))


class TorchDiffusion(nn.Module):
    def __init__(self, x_dim, betas, hidden, emb_dim, activation="silu", prediction="epsilon", variance="small",
                 data="continuous", unet=None):
        super().__init__()
        self.D, self.E = x_dim, emb_dim
        self.unet = unet is not None
        out_dim = 2 * x_dim if variance == "learned" else x_dim
        if self.unet:  # unet: dict(image_shape, channels, groups): tests/torch_unet.py
            C = unet["image_shape"][0]
            self.net = TorchUNet(unet["image_shape"], unet["channels"], emb_dim, unet["groups"],
                                 out_channels=out_dim // x_dim * C, act=ACT[activation])
        else:
            dims = [x_dim + emb_dim, *hidden]
            layers = {str(i): nn.Linear(dims[i], dims[i + 1], dtype=DTYPE) for i in range(len(hidden))}
            layers["out"] = nn.Linear(dims[-1], out_dim, dtype=DTYPE)
            self.net = nn.ModuleDict(layers)
            self.n_hidden = len(hidden)
        self.act = ACT[activation]
        self.prediction, self.variance, self.data = prediction, variance, data
        b = t64(betas)
        self.T = b.shape[0]
        # index 0 = the data (beta_0 = 0, abar_0 = 1), index t = step t
        self.beta = torch.cat([torch.zeros(1, dtype=DTYPE), b])
        self.alpha = 1 - self.beta
        self.abar = torch.cumprod(self.alpha, 0)
        self.btilde = torch.zeros_like(self.beta)
        self.btilde[1:] = (1 - self.abar[:-1]) / (1 - self.abar[1:]) * self.beta[1:]

    def load(self, params):
        self.load_state_dict({k: t64(v) for k, v in params.items()}, strict=True)
        return self

    def sigma2(self, t):
        if self.variance == "large":
            return self.beta[t]
        return torch.where(t == 1, self.btilde[torch.full_like(t, 2)], self.btilde[t])

    def embed(self, t):
        half = self.E // 2
        k = torch.arange(half, dtype=DTYPE)
        f = torch.exp(-math.log(10000.0) * k / (half - 1)) if half > 1 else torch.ones(1, dtype=DTYPE)
        a = t.to(DTYPE)[:, None] * f[None, :]
        return torch.cat([torch.sin(a), torch.cos(a)], 1)

    def log_sigma2(self, t, v):
        """learned: v log beta_t + (1 - v) log beta~_t, beta~_1 clipped to beta~_2 (B, D)."""
        lmin = torch.log(self.btilde[torch.where(t == 1, torch.full_like(t, 2), t)])[:, None]
        return v * torch.log(self.beta[t])[:, None] + (1 - v) * lmin

    def net_out(self, xt, t):
        if self.unet:
            return self.net(xt, self.embed(t))
        h = torch.cat([xt, self.embed(t)], 1)
        for i in range(self.n_hidden):
            h = self.act(self.net[str(i)](h))
        return self.net["out"](h)

    def eps_hat(self, xt, t, out=None):
        out = self.net_out(xt, t) if out is None else out
        out = out[:, :self.D]
        ab = self.abar[t][:, None]
        if self.prediction == "epsilon":
            return out
        if self.prediction == "x0":  # x0_hat = out
            return (xt - ab.sqrt() * out) / (1 - ab).sqrt()
        return (1 - ab).sqrt() * xt + ab.sqrt() * out  # v: x0 = sqrt(ab) xt - sqrt(1-ab) v

    def mean(self, xt, t, eps_hat):
        return (xt - (self.beta[t] / (1 - self.abar[t]).sqrt())[:, None] * eps_hat) / self.alpha[t].sqrt()[:, None]

    def log_px0(self, x0, mu, s2):
        """log p(x_0|x_1): Gaussian or discretized Gaussian (bins of width 2/255, edges at ±inf);
        s2 (B,) or (B, D)."""
        s2 = s2[:, None] if s2.dim() == 1 else s2
        if self.data == "continuous":
            return -0.5 * (LOG_2PI + torch.log(s2) + (x0 - mu) ** 2 / s2).sum(1)
        sd = s2.sqrt()
        lo = torch.where(x0 < -0.999, torch.full_like(x0, -math.inf), (x0 - 1 / 255 - mu) / sd)
        hi = torch.where(x0 > 0.999, torch.full_like(x0, math.inf), (x0 + 1 / 255 - mu) / sd)
        return log_bin(lo, hi).sum(1)

    def prior_kl(self, x0):
        ab = self.abar[self.T]
        return 0.5 * (ab * x0 ** 2 + (1 - ab) - 1 - torch.log(1 - ab)).sum(1)

    def step_term(self, x0, t, eps, detach_mean=False, eps_hat_fixed=None):
        """L_t: -log p(x_0|x_1) at t = 1, KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) for t >= 2 —
        written as the KL of two Gaussians with means mu~ and mu_theta (MATH.md §1, §7).
        detach_mean: mu_theta as a constant (the hybrid loss's ELBO term); eps_hat_fixed (B, D):
        mu_theta from these eps_hat instead of the network's (the variance still from the network)."""
        ab = self.abar[t][:, None]
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
        out = self.net_out(xt, t)
        e = self.eps_hat(xt, t, out)
        if eps_hat_fixed is not None:
            e = eps_hat_fixed
        mu = self.mean(xt, t, e.detach() if detach_mean else e)
        if self.variance == "learned":
            s2 = torch.exp(self.log_sigma2(t, out[:, self.D:]))  # (B, D)
        else:
            s2 = self.sigma2(t)[:, None].expand_as(x0)
        abp = self.abar[t - 1][:, None]
        mu_q = (abp.sqrt() * self.beta[t][:, None] / (1 - ab)) * x0 + \
               (self.alpha[t].sqrt()[:, None] * (1 - abp) / (1 - ab)) * xt
        bt = self.btilde[t]
        kl = 0.5 * (torch.log(s2 / torch.where(t == 1, torch.ones_like(bt), bt)[:, None]) +
                    (bt[:, None] + (mu_q - mu) ** 2) / s2 - 1).sum(1)
        rec = -self.log_px0(x0, mu, s2)
        return torch.where(t == 1, rec, kl), ((eps - e) ** 2).sum(1)

    def loss(self, x0, t, eps, kind):
        x0, eps, t = t64(x0), t64(eps), torch.as_tensor(np.asarray(t, dtype=np.int64))
        detach = kind == "hybrid" and self.variance == "learned"
        step, sq = self.step_term(x0, t, eps, detach_mean=detach)
        elbo_loss = self.prior_kl(x0) + self.T * step
        if kind == "simple":
            return sq
        if kind == "elbo":
            return elbo_loss
        return sq + 1e-3 * elbo_loss

    def loss_grad(self, x0, t, eps, kind):
        self.zero_grad()
        per = self.loss(x0, t, eps, kind)
        J = per.mean()
        J.backward()
        return J.item(), per.detach().numpy(), {k: p.grad.detach().numpy().copy() for k, p in self.named_parameters()}


def from_elbokit(model):
    c = model.config
    betas = model.betas
    unet = None
    if c.get("net") == "unet":
        unet = dict(image_shape=c["image_shape"], channels=c["channels"], groups=c["groups"])
    return TorchDiffusion(c["x_dim"], betas, c["hidden"], c["emb_dim"], c["activation"], c["prediction"],
                          c["variance"], c["data"], unet=unet).load(model.parameters())


def denoising_terms(model, x, seed):
    """Form B's terms of an elbokit model at the engine's own noise (rng.hpp: kDiffusionElbo, ε of
    (example b, step t) at (b·T + t − 1)·D + j), recomputed by the PyTorch reference step by step:
    (step (n, T): −log p(x_0|x_1) in column 0, the step KLs after it; prior (n,); the rows it used:
    (x_0 (n·T, D), t (n·T,), ε (n·T, D)), row b·T + t − 1)."""
    import elbokit as ek

    n, D, T = x.shape[0], x.shape[1], model.timesteps
    eps = ek.random.normal((n * T, D), seed=seed, stream=ek.random.STREAMS["diffusion_elbo"])
    xs, ts = np.repeat(x, T, axis=0), np.tile(np.arange(1, T + 1), n)
    ref = from_elbokit(model)
    with torch.no_grad():
        step, _ = ref.step_term(t64(xs), torch.as_tensor(ts), t64(eps))
        prior = ref.prior_kl(t64(x)).numpy()
    return step.numpy().reshape(n, T), prior, (xs, ts, eps)
