"""The model contexts of the tracer: per-sample log-densities of a model on data x, the engine's
ELBO terms at the same noise, and the closed forms where the model has them (MATH.md §2, §4-§7).
A derivation's steps read their lines off a context."""
from __future__ import annotations

import copy
import math
from functools import cached_property

import numpy as np

from .. import random as _random
from .._validation import as_array
from ..diffusion import Diffusion
from ..exact import GaussianMixture, Gaussian1D, LinearGaussian, _logsumexp
from ..hvae import HVAE
from ..surgery import log_aggregate_posterior
from ..vae import VAE
from .closed_forms import diffusion_linear_closed_form, hvae_linear_closed_form
from .estimates import LOG_2PI, RTOL32, RTOL64, STREAMS


# ---- model contexts ----------------------------------------------------------------------------
def _gauss_logpdf(z, mu, lv):
    """log N(z; mu, diag exp(lv)) summed over the last axis."""
    return -0.5 * (LOG_2PI + lv + (z - mu) ** 2 * np.exp(-lv)).sum(axis=-1)


def _linear_vae(enc_w, enc_b, enc_lv, dec_w, dec_b, v) -> VAE:
    """A float64 linear ek.VAE with a fixed decoder variance v and a constant q variance exp(enc_lv)."""
    k, D = enc_w.shape
    vae = VAE(D, k, hidden=(), likelihood="gaussian", decoder_var=float(v), dtype="float64")
    vae.set_parameters({"encoder.mu.weight": enc_w, "encoder.mu.bias": enc_b,
                        "encoder.logvar.weight": np.zeros((k, D)), "encoder.logvar.bias": enc_lv,
                        "decoder.out.weight": dec_w, "decoder.out.bias": dec_b})
    return vae


class LatentContext:
    """A model with a continuous Gaussian latent, q(z|x) = N(mu, diag exp(lv)) and p(z) = N(0, I),
    on data x (n, D): per-sample log-densities (S, n) under z ~ q and z ~ p(z), the engine's ELBO
    terms at the same noise, and the closed forms where the model has them (MATH.md §2, §5)."""

    def __init__(self, model, x, S: int, seed: int, big_k: int = 2000):
        self.model, self.S, self.seed, self.big_k = model, S, seed, big_k
        self.kind = type(model).__name__
        if isinstance(model, Gaussian1D):
            a = np.asarray(x)
            if a.ndim == 2 and a.shape[1] == 1:
                a = a[:, 0]
            if a.ndim != 1:
                raise ValueError(f"x must be a 1-D array of shape (n,) (or (n, 1)) for Gaussian1D, got shape {a.shape}")
            self.x1 = as_array("x", a, np.float64, ndim=1)
            self.x = self.x1[:, None]
            m = model
            self.vae = _linear_vae(np.array([[m.a]]), np.array([m.b]), np.array([math.log(m.w)]),
                                   np.array([[m.c]]), np.array([m.d]), m.v)
            self.rtol = RTOL64
        elif isinstance(model, LinearGaussian):
            model._check_fitted()
            self.x = model._x(x)
            p = model.vae_parameters()
            self.vae = _linear_vae(p["encoder.mu.weight"], p["encoder.mu.bias"], p["encoder.logvar.bias"],
                                   p["decoder.out.weight"], p["decoder.out.bias"], model.variance)
            self.rtol = RTOL64
        elif isinstance(model, VAE):
            self.vae = model
            self.x = model._x(x).astype(np.float64)
            self.rtol = RTOL64 if model.dtype == "float64" else RTOL32
        else:
            raise ValueError(f"model must be a Gaussian1D, LinearGaussian or VAE here, got {type(model).__name__}")
        self.n, self.D = self.x.shape
        self.Z = self.vae.z_dim
        mu, lv = self.vae.encode(self.x.astype(self.vae._np_dtype))
        self.mu, self.lv = np.asarray(mu, np.float64), np.asarray(lv, np.float64)

    # -- samples -------------------------------------------------------------------------------
    @cached_property
    def eps(self):
        return _random.normal((self.S, self.n, self.Z), seed=self.seed, stream=STREAMS["q"])

    @cached_property
    def z(self):
        return self.mu + np.exp(0.5 * self.lv) * self.eps                           # (S, n, Z)

    def log_lik(self, z):
        """log p(x|z) (S, n) for z (S, n, Z), from the decoder's outputs (MATH.md §1)."""
        S = z.shape[0]
        zf = z.reshape(S * self.n, self.Z).astype(self.vae._np_dtype)
        xt = np.tile(self.x, (S, 1))
        if self.vae.likelihood == "bernoulli":
            l = np.asarray(self.vae.decode(zf, logits=True), np.float64)
            out = (xt * l - (np.maximum(l, 0) + np.log1p(np.exp(-np.abs(l))))).sum(axis=1)
        else:
            m = np.asarray(self.vae.decode(zf), np.float64)
            v = self.vae.decoder_variance()
            out = -0.5 * (LOG_2PI + np.log(v) + (xt - m) ** 2 / v).sum(axis=1)
        return out.reshape(S, self.n)

    @cached_property
    def lx(self):            # log p(x|z), z ~ q
        return self.log_lik(self.z)

    @cached_property
    def lpz(self):           # log p(z)
        return -0.5 * (LOG_2PI + self.z ** 2).sum(axis=2)

    @cached_property
    def lq(self):            # log q(z|x)
        return -0.5 * (LOG_2PI + self.lv + self.eps ** 2).sum(axis=2)

    @cached_property
    def lj(self):            # log p(x, z)
        return self.lx + self.lpz

    @cached_property
    def lx_prior(self):      # log p(x|z'), z' ~ p(z)
        zp = _random.normal((self.S, self.n, self.Z), seed=self.seed, stream=STREAMS["prior"])
        return self.log_lik(zp)

    @cached_property
    def engine(self):
        """The engine's per-sample (reconstruction, KL Monte Carlo) (S, n) and analytic KL (n,) at
        the same noise: x tiled S times, one sample per row."""
        xt = np.tile(self.x, (self.S, 1)).astype(self.vae._np_dtype)
        e = self.eps.reshape(1, self.S * self.n, self.Z)
        r_mc = self.vae.elbo(xt, kl="mc", eps=e)
        r_an = self.vae.elbo(xt, kl="analytic", eps=e)
        sh = (self.S, self.n)
        return (np.asarray(r_mc.reconstruction, np.float64).reshape(sh), np.asarray(r_mc.kl, np.float64).reshape(sh),
                np.asarray(r_an.kl, np.float64).reshape(sh)[0])

    @cached_property
    def log_p_big(self):
        """log p(x) by importance sampling with big_k samples z ~ q (L_K, MATH.md §3) (K, n) log-weights."""
        K = self.big_k
        eps = _random.normal((K, self.n, self.Z), seed=self.seed, stream=STREAMS["big"])
        z = self.mu + np.exp(0.5 * self.lv) * eps
        return (self.log_lik(z) - 0.5 * (LOG_2PI + z * z).sum(axis=2)
                + 0.5 * (LOG_2PI + self.lv + eps * eps).sum(axis=2))

    @cached_property
    def lpost(self):
        """log p(z|x) (S, n) at z ~ q: the exact posterior (Gaussian1D, LinearGaussian)."""
        m = self.model
        if isinstance(m, Gaussian1D):
            pm, pv = m.posterior(self.x1)
            return -0.5 * (LOG_2PI + np.log(pv) + (self.z[..., 0] - pm) ** 2 / pv)
        pm, P = m.posterior(self.x)
        L = np.linalg.cholesky(P)
        r = np.linalg.solve(L, (self.z - pm).reshape(-1, self.Z).T).T.reshape(self.z.shape)
        return -0.5 * (self.Z * LOG_2PI + 2 * np.log(np.diag(L)).sum() + (r * r).sum(axis=2))

    # -- closed forms (n,) or None -------------------------------------------------------------
    @property
    def has_posterior(self) -> bool:
        return isinstance(self.model, (Gaussian1D, LinearGaussian))

    @cached_property
    def log_marginal(self):
        m = self.model
        if isinstance(m, Gaussian1D):
            return m.log_marginal(self.x1)
        if isinstance(m, LinearGaussian):
            return m.log_likelihood(self.x)
        return None

    @cached_property
    def elbo_terms(self):
        """(elbo, reconstruction, kl) (n,) in closed form (MATH.md §5), or None."""
        m = self.model
        if isinstance(m, Gaussian1D):
            return m.elbo(self.x1), m.reconstruction(self.x1), m.kl_prior(self.x1)
        if isinstance(m, LinearGaussian):
            return LinearGaussian.vae_elbo(self.vae, self.x)
        return None

    @cached_property
    def gap(self):
        """KL(q(z|x) ‖ p(z|x)) (n,) between Gaussians, closed form, or None."""
        m = self.model
        if isinstance(m, Gaussian1D):
            return m.gap(self.x1)
        if isinstance(m, LinearGaussian):
            pm, P = m.posterior(self.x)
            Pinv = np.linalg.inv(P)
            d = pm - self.mu
            s = np.exp(self.lv)
            return 0.5 * ((s * np.diag(Pinv)).sum(axis=1) + np.einsum("ni,ij,nj->n", d, Pinv, d) - self.Z
                          + np.linalg.slogdet(P)[1] - self.lv.sum(axis=1))
        return None


class MixtureContext:
    """A mixture of Gaussians (a discrete latent k, MATH.md §5) on x (n, D) with q (n, K): the
    responsibilities unless given. Samples k ~ q(k|x_i) (S, n) by inversion of uniforms."""

    def __init__(self, model: GaussianMixture, x, S: int, seed: int, q=None):
        model._check_fitted()
        self.model, self.S, self.seed = model, S, seed
        self.kind = "GaussianMixture"
        self.x = model._x(x)
        self.n = self.x.shape[0]
        self.a = model.log_joint(self.x)                                   # (n, K) log p(x, k)
        self.lpx = _logsumexp(self.a, axis=1)                              # (n,)
        self.post = np.exp(self.a - self.lpx[:, None])                     # (n, K)
        if q is None:
            self.q = self.post
        else:
            q = as_array("q", q, np.float64, ndim=2, shape=self.a.shape)
            if (q < 0).any() or not np.allclose(q.sum(axis=1), 1.0, atol=1e-8):
                raise ValueError("q must have non-negative rows that sum to 1")
            self.q = q
        self.rtol = RTOL64
        u = _random.uniform((S, self.n), seed=seed, stream=STREAMS["discrete"])
        cdf = np.cumsum(self.q, axis=1)
        self.k = np.minimum((u[..., None] > cdf[None]).sum(axis=2), self.q.shape[1] - 1)   # (S, n)
        rows = np.arange(self.n)[None, :]
        with np.errstate(divide="ignore"):
            self.lq = np.log(self.q[rows, self.k])
            self.lj = self.a[rows, self.k]
            self.lpost = np.log(self.post[rows, self.k])
            self.lpz = np.log(model.weights_)[self.k]
        self.lx = self.lj - self.lpz
        self.log_marginal = self.lpx
        with np.errstate(divide="ignore", invalid="ignore"):
            lq_all = np.where(self.q > 0, np.log(np.where(self.q > 0, self.q, 1.0)), 0.0)
            kl_prior = (self.q * (lq_all - np.log(model.weights_))).sum(axis=1)
            rec = (self.q * (self.a - np.log(model.weights_))).sum(axis=1)
            self.gap = (self.q * (lq_all - np.log(np.maximum(self.post, 1e-300)))).sum(axis=1)
        self.elbo_terms = (rec - kl_prior, rec, kl_prior)

    has_posterior = True


class HVAEContext:
    """An ek.HVAE on x (n, D): per-sample level terms at one noise, Monte Carlo and analytic, log p(x)
    by importance sampling with big_k samples of the chain, and the closed forms of a linear
    Gaussian HVAE (:func:`hvae_linear_closed_form`) (MATH.md §6)."""

    def __init__(self, model: HVAE, x, S: int, seed: int, big_k: int = 1000):
        self.model, self.S, self.seed, self.kind, self.big_k = model, S, seed, "HVAE", big_k
        self.x = model._x(x)
        self.n = self.x.shape[0]
        self.rtol = RTOL64 if model.dtype == "float64" else RTOL32
        self.rec, self.kl_mc, self.kl_an, self.rec_an = self._draw(S, STREAMS["q"])
        cf = hvae_linear_closed_form(model)
        self.closed = None if cf is None else cf(np.asarray(self.x, np.float64))

    def _draw(self, S, stream):
        zd, n = self.model.z_dims, self.n
        flat = _random.normal(S * n * sum(zd), seed=self.seed, stream=stream)
        eps, off = [], 0
        for z in zd:
            eps.append(flat[off:off + S * n * z].reshape(1, S * n, z))
            off += S * n * z
        xt = np.tile(self.x, (S, 1))
        r_mc, r_an = self.model.elbo(xt, kl="mc", eps=eps), self.model.elbo(xt, kl="analytic", eps=eps)
        return (np.asarray(r_mc.reconstruction, np.float64).reshape(S, n),
                np.asarray(r_mc.kl_levels, np.float64).reshape(S, n, -1),
                np.asarray(r_an.kl_levels, np.float64).reshape(S, n, -1),
                np.asarray(r_an.reconstruction, np.float64).reshape(S, n))

    @cached_property
    def log_p_big(self):
        rec, kl, _, _ = self._draw(self.big_k, STREAMS["big"])
        return rec - kl.sum(axis=2)                                         # log w (K, n)

    def exact(self, key, level=None):
        if self.closed is None:
            return None
        v = self.closed[key]
        return v if level is None else v[:, level]


class DiffusionContext:
    """An ek.Diffusion (data="continuous") on x (n, D): S draws per point of the forward chain
    (the HVAE form), of the engine's forms A and B (x tiled S times), and the step KLs of form B
    recomputed at the engine's own noise (MATH.md §7)."""

    def __init__(self, model: Diffusion, x, S: int, seed: int):
        if model.data != "continuous":
            raise ValueError(f"model must be a Diffusion with data='continuous' for the derivation tracer, "
                             f"got data={model.data!r}")
        self.model, self.S, self.seed, self.kind = model, S, seed, "Diffusion"
        self.x = model._x(x)
        self.n, self.D = self.x.shape
        self.T = model.timesteps
        self.rtol = RTOL64 if model.dtype == "float64" else RTOL32
        self.xt = np.tile(self.x, (S, 1))                                   # (S n, D)
        cf = diffusion_linear_closed_form(model)
        self.closed = None if cf is None else cf(np.asarray(self.x, np.float64))

    def exact(self, key):
        if self.closed is None:
            return None
        v = self.closed[key]
        return v.sum(axis=1) if v.ndim == 2 else v

    @cached_property
    def hvae_form(self):
        """log p(x_T) + Σ_t log p(x_{t−1}|x_t) − Σ_t log q(x_t|x_{t−1}) along one forward chain per
        draw (S, n): the Markovian HVAE's ELBO integrand with z_t = x_t."""
        m, T, D, N = self.model, self.T, self.D, self.S * self.n
        noise = _random.normal((T, N, D), seed=self.seed, stream=STREAMS["chain"])
        x_prev = self.xt.astype(np.float64)
        total = np.zeros(N)
        for t in range(1, T + 1):
            b = float(m.betas[t - 1])
            x_t = math.sqrt(1 - b) * x_prev + math.sqrt(b) * noise[t - 1]
            total -= -0.5 * (D * (LOG_2PI + math.log(b)) + (noise[t - 1] ** 2).sum(axis=1))   # log q(x_t|x_{t−1})
            mean, var = m.p_mean_variance(x_t.astype(m._np_dtype), t)
            mean, var = np.asarray(mean, np.float64), np.asarray(var, np.float64)[:, None]
            total += -0.5 * (LOG_2PI + np.log(var) + (x_prev - mean) ** 2 / var).sum(axis=1)  # log p(x_{t−1}|x_t)
            x_prev = x_t
        total += -0.5 * (LOG_2PI + x_prev ** 2).sum(axis=1)                                  # log p(x_T)
        return total.reshape(self.S, self.n)

    @cached_property
    def form_a(self):
        return self.model.elbo(self.xt, form="consistency", seed=self.seed)

    @cached_property
    def form_b(self):
        return self.model.elbo(self.xt, form="denoising", seed=self.seed)

    @cached_property
    def recomputed(self):
        """(Σ_{t>=2} closed-form Gaussian KL, Σ_{t>=2} weighted ε-MSE + variance terms) (S, n) at the
        noise of form B: ε of (row b, step t) at (b T + t − 1) D + j of STREAMS['diffusion_elbo']."""
        m, T, D = self.model, self.T, self.D
        N = self.S * self.n
        eps = _random.normal((N, T, D), seed=self.seed, stream=_random.STREAMS["diffusion_elbo"])
        x0 = self.xt.astype(m._np_dtype)
        kl = np.zeros(N)
        mse = np.zeros(N)
        for t in range(2, T + 1):
            e = eps[:, t - 1].astype(m._np_dtype)
            x_t = m.q_sample(x0, t, e)
            qm, qv = m.q_posterior(x0, x_t, t)
            pm, pv = m.p_mean_variance(x_t, t)
            qm, pm = np.asarray(qm, np.float64), np.asarray(pm, np.float64)
            qv, pv = float(np.asarray(qv)[0]), float(np.asarray(pv)[0])
            var_term = 0.5 * D * (qv / pv - 1.0 - math.log(qv / pv))
            kl += ((qm - pm) ** 2).sum(axis=1) / (2 * pv) + var_term
            b, a, ab = float(m.betas[t - 1]), float(m.alphas[t - 1]), float(m.alphas_cumprod[t - 1])
            eps_hat = np.asarray(m.predict(x_t, t)["eps"], np.float64)
            w = b * b / (2 * pv * a * (1 - ab))
            mse += w * ((eps[:, t - 1] - eps_hat) ** 2).sum(axis=1) + var_term
        return kl.reshape(self.S, self.n), mse.reshape(self.S, self.n)


class EMContext(MixtureContext):
    """One EM round from the mixture's parameters θ: q = p(k|x, θ) (E-step), θ' = the M-step's."""

    def __init__(self, model: GaussianMixture, x, S: int, seed: int):
        super().__init__(model, x, S, seed)
        self.new = copy.deepcopy(model)
        self.new.m_step(self.x, self.post)
        self.a_new = self.new.log_joint(self.x)
        rows = np.arange(self.n)[None, :]
        self.lj_new = self.a_new[rows, self.k]
        self.lpx_new = _logsumexp(self.a_new, axis=1)
        self.elbo_new = self.new.elbo(self.x, self.post)
        self.elbo_old = model.elbo(self.x, self.post)


class SurgeryContext:
    """ELBO surgery (MATH.md §4) of the encodings of x: Gaussian (mu, lv) (n, Z) with p(z) = N(0, I),
    or a mixture's responsibilities (n, K) with p(k) = π. Samples z ~ q(z|x_i) (S, n)."""

    def __init__(self, model, x, S: int, seed: int):
        self.model, self.S, self.seed = model, S, seed
        self.kind = type(model).__name__
        self.exact_split = None
        if isinstance(model, GaussianMixture):
            c = MixtureContext(model, x, S, seed)
            self.n, self.rtol = c.n, RTOL64
            q, pi = c.q, model.weights_
            qagg = q.mean(axis=0)
            with np.errstate(divide="ignore", invalid="ignore"):
                lq_all = np.where(q > 0, np.log(np.where(q > 0, q, 1.0)), 0.0)
                self.avg_kl = (q * (lq_all - np.log(pi))).sum(axis=1)                      # (n,)
                mi = (q * (lq_all - np.log(np.maximum(qagg, 1e-300)))).sum(axis=1).mean()
                mk = float((qagg * (np.log(np.maximum(qagg, 1e-300)) - np.log(pi))).sum())
            self.exact_split = (float(mi), mk)
            self.lq, self.lp = c.lq, np.log(pi)[c.k]
            self.lagg = np.log(qagg)[c.k]
            return
        if isinstance(model, HVAE):
            xx = model._x(x)
            mu, lv = model.encode_top(xx)
            self.rtol = RTOL64 if model.dtype == "float64" else RTOL32
        else:
            lc = LatentContext(model, x, 2, seed)
            mu, lv, self.rtol = lc.mu, lc.lv, lc.rtol
        mu, lv = np.asarray(mu, np.float64), np.asarray(lv, np.float64)
        self.n, Z = mu.shape
        if self.n < 2:
            raise ValueError(f"x must hold at least 2 points for the surgery, got {self.n}")
        eps = _random.normal((S, self.n, Z), seed=seed, stream=STREAMS["q"])
        z = mu + np.exp(0.5 * lv) * eps
        self.lq = -0.5 * (LOG_2PI + lv + eps * eps).sum(axis=2)
        self.lp = -0.5 * (LOG_2PI + z * z).sum(axis=2)
        self.lagg = log_aggregate_posterior(z.reshape(S * self.n, Z), mu, lv).reshape(S, self.n)
        self.avg_kl = 0.5 * (mu * mu + np.exp(lv) - 1.0 - lv).sum(axis=1)
        if Z == 1:
            self.exact_split = _surgery_quadrature(mu[:, 0], lv[:, 0])


def _surgery_quadrature(m, lv):
    """(I_q, KL(q_agg ‖ N(0, 1))) of a 1-D Gaussian encoder by the trapezoidal rule on a grid
    (spectrally accurate for these smooth, fast-decaying integrands), for the exact lines."""
    s = np.exp(0.5 * lv)
    lo, hi = min((m - 14 * s).min(), -14.0), max((m + 14 * s).max(), 14.0)
    g = np.linspace(lo, hi, int(min(60000, max(4000, (hi - lo) / (s.min() / 40)))))
    h = g[1] - g[0]
    lqi = -0.5 * (LOG_2PI + lv[:, None] + (g[None] - m[:, None]) ** 2 / np.exp(lv[:, None]))   # (n, G)
    lagg = _logsumexp(lqi, axis=0) - math.log(len(m))
    qi = np.exp(lqi)
    mi = float((qi * (lqi - lagg)).sum(axis=1).mean() * h)
    mk = float((np.exp(lagg) * (lagg + 0.5 * (LOG_2PI + g * g))).sum() * h)
    return mi, mk
