"""The closed forms of the tracer's linear models: the exact ELBO terms and log p(x) of a linear
Gaussian HVAE (MATH.md §6) and the exact ELBO terms of a diffusion model with an affine network
(MATH.md §7)."""
from __future__ import annotations

import math

import numpy as np

from ..diffusion import Diffusion
from ..hvae import HVAE
from .estimates import LOG_2PI


def _affine_sq(m, C, A, b):
    """E‖A Z + b‖² per point for Z ~ N(m (n, K), C (K, K)), elementwise over the rows of A:
    (n, d) of (A m + b)² + diag(A C Aᵀ)."""
    return (m @ A.T + b) ** 2 + np.einsum("ij,jk,ik->i", A, C, A)[None, :]


def hvae_linear_closed_form(model: HVAE):
    """The exact ELBO terms and log p(x) of a *linear* Gaussian HVAE (MATH.md §6), or None: every
    conditional is linear-Gaussian when hidden=(), likelihood="gaussian", L >= 2 and every
    log-variance head has zero weights (constant variances). Then q(z_{1:L}|x) is one Gaussian
    N(m(x), C) (propagated level by level in q's ancestral order: Markov bottom-up, top-down by
    precision weighting), every E_q[log density] is a quadratic expectation, and p(x) =
    N(W μ_1 + b, W Σ_1 Wᵀ + diag v) with (μ_1, Σ_1) the prior's marginal of z_1.
    Returns f(x) -> dict(reconstruction (n,), levels (n, L), elbo (n,), log_p (n,))."""
    if not isinstance(model, HVAE) or model.hidden != () or model.likelihood != "gaussian" or model.levels < 2:
        return None
    p = {k: np.asarray(v, np.float64) for k, v in model.parameters().items()}
    if any(np.any(v != 0) for k, v in p.items() if k.endswith("logvar.weight")):
        return None
    L, zd = model.levels, model.z_dims
    off = np.concatenate([[0], np.cumsum(zd)]).astype(int)
    K = int(off[-1])
    sl = [slice(off[l], off[l + 1]) for l in range(L)]                 # level l + 1's block of Z
    v = model.decoder_variance()
    W, w0 = p["decoder.0.out.weight"], p["decoder.0.out.bias"]
    F = {l: p[f"decoder.{l}.mu.weight"] for l in range(1, L)}         # p(z_l|z_{l+1}), l = 1..L-1 (0-based: level l)
    f = {l: p[f"decoder.{l}.mu.bias"] for l in range(1, L)}
    t = {l: np.exp(p[f"decoder.{l}.logvar.bias"]) for l in range(1, L)}
    Em = [p[f"encoder.{l}.mu.weight"] for l in range(L)]
    em = [p[f"encoder.{l}.mu.bias"] for l in range(L)]
    ev = [np.exp(p[f"encoder.{l}.logvar.bias"]) for l in range(L)]

    def fn(x):
        n = x.shape[0]
        m, C = np.zeros((n, K)), np.zeros((K, K))
        qvar = [None] * L

        def put(l, A, b, s):           # z_l = A Z + b + N(0, diag s), A touching set levels only
            m[:, sl[l]] = m @ A.T + b
            C[sl[l], :] = A @ C
            C[:, sl[l]] = C[sl[l], :].T
            C[sl[l], sl[l]] = A @ C @ A.T + np.diag(s)
            qvar[l] = s
        if model.structure == "markov":
            put(0, np.zeros((zd[0], K)), x @ Em[0].T + em[0], ev[0])
            for l in range(1, L):
                A = np.zeros((zd[l], K))
                A[:, sl[l - 1]] = Em[l]
                put(l, A, np.broadcast_to(em[l], (n, zd[l])), ev[l])
        else:
            put(L - 1, np.zeros((zd[L - 1], K)), x @ Em[L - 1].T + em[L - 1], ev[L - 1])
            for l in range(L - 2, -1, -1):   # precision weighting of the bottom-up N(mu_d, s_d) and p(z_l|z_{l+1})
                s = 1.0 / (1.0 / ev[l] + 1.0 / t[l + 1])
                A = np.zeros((zd[l], K))
                A[:, sl[l + 1]] = (s / t[l + 1])[:, None] * F[l + 1]
                put(l, A, s * ((x @ Em[l].T + em[l]) / ev[l] + f[l + 1] / t[l + 1]), s)
        # E_q[log p(x|z_1)]
        A = np.zeros((x.shape[1], K))
        A[:, sl[0]] = -W
        rec = -0.5 * (LOG_2PI + np.log(v) + _affine_sq(m, C, A, x - w0) / v).sum(axis=1)
        levels = np.empty((n, L))
        for l in range(L):
            ent = 0.5 * (LOG_2PI + np.log(qvar[l]) + 1.0).sum()         # −E log q(z_l|its parents)
            A = np.zeros((zd[l], K))
            A[:, sl[l]] = np.eye(zd[l])
            if l == L - 1:
                lp = -0.5 * (LOG_2PI + _affine_sq(m, C, A, 0.0)).sum(axis=1)
            else:
                A[:, sl[l + 1]] = -F[l + 1]
                lp = -0.5 * (LOG_2PI + np.log(t[l + 1]) + _affine_sq(m, C, A, -f[l + 1]) / t[l + 1]).sum(axis=1)
            levels[:, l] = -ent - lp
        # log p(x): the prior's marginal of z_1, then x
        mu, S = np.zeros(zd[L - 1]), np.eye(zd[L - 1])
        for l in range(L - 2, -1, -1):
            mu, S = F[l + 1] @ mu + f[l + 1], F[l + 1] @ S @ F[l + 1].T + np.diag(t[l + 1])
        cov = W @ S @ W.T + np.diag(v)
        Lc = np.linalg.cholesky(cov)
        r = np.linalg.solve(Lc, (x - (W @ mu + w0)).T)
        logp = -0.5 * (x.shape[1] * LOG_2PI + 2 * np.log(np.diag(Lc)).sum() + (r * r).sum(axis=0))
        return {"reconstruction": rec, "levels": levels, "elbo": rec - levels.sum(axis=1), "log_p": logp}
    return fn


def diffusion_linear_closed_form(model: Diffusion):
    """The exact ELBO terms of a diffusion model whose network is affine in x_t (hidden=(),
    prediction="epsilon", data="continuous"), or None (MATH.md §7). Then ε_θ(x_t, t) = A x_t + b_t
    (A and b_t read off the network by probing it at 0 and the unit vectors), μ_θ = P_t x_t + r_t,
    and with x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε every term is a Gaussian expectation of a quadratic:
    E‖μ̃_t − μ_θ‖² = ‖k_0 x_0 + G_t √ᾱ_t x_0 − r_t‖² + (1−ᾱ_t)‖G_t‖_F², G_t = k_1 I − P_t.
    Returns f(x) -> dict(reconstruction, prior, steps (n, T; column 0 is 0), elbo)."""
    if not isinstance(model, Diffusion) or tuple(model.config["hidden"]) != () or model.prediction != "epsilon" \
            or model.data != "continuous":
        return None
    T, D = model.timesteps, model.x_dim
    betas, alphas, ab = (np.asarray(a, np.float64) for a in (model.betas, model.alphas, model.alphas_cumprod))
    ab_prev = np.asarray(model.alphas_cumprod_prev, np.float64)
    bt, s2 = np.asarray(model.posterior_variance, np.float64), np.asarray(model.sigmas2, np.float64)
    probe = np.vstack([np.zeros((1, D)), np.eye(D)]).astype(model._np_dtype)
    maps = []
    for t in range(1, T + 1):
        e = np.asarray(model.predict(probe, t)["eps"], np.float64)
        b, A = e[0], (e[1:] - e[0]).T                                     # ε_θ = A x + b
        c = betas[t - 1] / math.sqrt(1 - ab[t - 1])
        P = (np.eye(D) - c * A) / math.sqrt(alphas[t - 1])
        maps.append((P, -c * b / math.sqrt(alphas[t - 1])))

    def fn(x0):
        n = x0.shape[0]
        steps = np.zeros((n, T))
        for t in range(2, T + 1):
            P, r = maps[t - 1]
            k0 = math.sqrt(ab_prev[t - 1]) * betas[t - 1] / (1 - ab[t - 1])
            k1 = math.sqrt(alphas[t - 1]) * (1 - ab_prev[t - 1]) / (1 - ab[t - 1])
            G = k1 * np.eye(D) - P
            mean = k0 * x0 + math.sqrt(ab[t - 1]) * x0 @ G.T - r
            e2 = (mean ** 2).sum(axis=1) + (1 - ab[t - 1]) * (G * G).sum()
            ratio = bt[t - 1] / s2[t - 1]
            steps[:, t - 1] = e2 / (2 * s2[t - 1]) + 0.5 * D * (ratio - 1 - math.log(ratio))
        P, r = maps[0]
        res = x0 - math.sqrt(ab[0]) * x0 @ P.T - r
        e2 = (res ** 2).sum(axis=1) + (1 - ab[0]) * (P * P).sum()
        rec = -0.5 * (D * (LOG_2PI + math.log(s2[0])) + e2 / s2[0])
        prior = 0.5 * (ab[-1] * x0 ** 2 + (1 - ab[-1]) - 1 - math.log(1 - ab[-1])).sum(axis=1)
        return {"reconstruction": rec, "prior": prior, "steps": steps, "elbo": rec - prior - steps.sum(axis=1)}
    return fn
