"""Derivations as data (:class:`Step`, :class:`Derivation`) and the library of the seven standard
ones (``DERIVATIONS``: "jensen", "gap", "reconstruction_kl", "hvae", "diffusion", "em", "surgery"),
with the choice of a model's context."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..diffusion import Diffusion
from ..exact import GaussianMixture, Gaussian1D, LinearGaussian
from ..hvae import HVAE
from ..vae import VAE
from .contexts import DiffusionContext, EMContext, HVAEContext, LatentContext, MixtureContext, SurgeryContext
from .estimates import Estimate, exact, log_mean, mc


# ---- derivations as data -----------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    """One line of a derivation: ``latex`` and a plain ``text``; ``estimate(ctx)`` -> Estimate (a
    line) or a list of (latex, text, Estimate) (the terms of the line above, shown, not chained);
    ``relation`` to the next line ("=", "≥", "≤"; None for the last) and ``why`` it holds."""
    latex: str
    text: str
    estimate: Callable
    relation: str | None = None
    why: str = ""
    terms: bool = False


@dataclass(frozen=True)
class Derivation:
    """A named derivation: its steps, the model kinds it is traced on and the MATH.md section."""
    name: str
    title: str
    steps: tuple
    models: tuple
    section: str
    context: str = "model"   # "model", "em" (one EM round) or "surgery" (the encodings of x)

    def __repr__(self) -> str:
        return f"Derivation({self.name!r}: {self.title}; {len(self.steps)} steps; models {', '.join(self.models)})"


# ---- the library -------------------------------------------------------------------------------
def _log_p(c) -> Estimate:
    if c.log_marginal is not None:
        return exact(c.log_marginal, c.rtol)
    return log_mean(c.log_p_big, "big", rtol=c.rtol, note=f"L_K, K = {c.big_k}")


def _elbo_exact(c):
    return None if c.elbo_terms is None else c.elbo_terms[0]


JENSEN = Derivation("jensen", "log p(x) ≥ ELBO by Jensen's inequality", (
    Step(r"\log p(x)", "log p(x)", _log_p, "=", "marginalization: p(x) = ∫ p(x, z) dz"),
    Step(r"\log \int p(x|z)\,p(z)\,dz = \log \mathbb{E}_{p(z)}[p(x|z)]", "log E_p(z)[p(x|z)]  (naive Monte Carlo)",
         lambda c: log_mean(c.lx_prior, "prior", c.log_marginal, c.rtol), "=",
         "multiply and divide by q(z|x) inside the integral"),
    Step(r"\log \int q(z|x)\,\frac{p(x,z)}{q(z|x)}\,dz", "log ∫ q(z|x) p(x,z)/q(z|x) dz  (importance sampling)",
         lambda c: log_mean(c.lj - c.lq, "q", c.log_marginal, c.rtol), "=",
         "an integral against the density q(z|x) is an expectation under q"),
    Step(r"\log \mathbb{E}_{q(z|x)}\!\left[\frac{p(x,z)}{q(z|x)}\right]", "log E_q[p(x,z)/q(z|x)]",
         lambda c: log_mean(c.lj - c.lq, "q", c.log_marginal, c.rtol), "≥",
         "Jensen: log is concave, log E[w] ≥ E[log w]"),
    Step(r"\mathbb{E}_{q(z|x)}\!\left[\log \frac{p(x,z)}{q(z|x)}\right]", "E_q[log p(x,z)/q(z|x)]",
         lambda c: mc(c.lj - c.lq, "q", _elbo_exact(c), c.rtol), "=", "definition of the ELBO (MATH.md §2)"),
    Step(r"\mathrm{ELBO}(x) = \mathbb{E}_q[\log p(x|z)] - \mathrm{KL}(q(z|x)\,\|\,p(z))",
         "ELBO(x)  (the engine: reconstruction − analytic KL)",
         lambda c: mc(c.engine[0] - c.engine[2][None, :], "q", _elbo_exact(c), c.rtol)),
), ("Gaussian1D", "LinearGaussian", "VAE"), "§2")


GAP = Derivation("gap", "log p(x) = ELBO + KL(q(z|x) ‖ p(z|x))", (
    Step(r"\log p(x)", "log p(x)", lambda c: exact(c.log_marginal, c.rtol), "=",
         "log p(x) does not depend on z, and q integrates to 1"),
    Step(r"\mathbb{E}_{q(z|x)}[\log p(x)]", "E_q[log p(x)]",
         lambda c: mc(np.broadcast_to(c.log_marginal, c.lq.shape), "q", c.log_marginal, c.rtol), "=",
         "Bayes' rule: p(x) = p(x, z) / p(z|x)"),
    Step(r"\mathbb{E}_{q}\!\left[\log \frac{p(x,z)}{p(z|x)}\right]", "E_q[log p(x,z)/p(z|x)]",
         lambda c: mc(c.lj - c.lpost, "q", c.log_marginal, c.rtol), "=", "multiply and divide by q(z|x)"),
    Step(r"\mathbb{E}_{q}\!\left[\log \frac{p(x,z)}{q(z|x)} + \log\frac{q(z|x)}{p(z|x)}\right]",
         "E_q[log p(x,z)/q(z|x) + log q(z|x)/p(z|x)]",
         lambda c: mc((c.lj - c.lq) + (c.lq - c.lpost), "q", c.log_marginal, c.rtol), "=",
         "linearity of expectation"),
    Step(r"\mathbb{E}_{q}\!\left[\log \frac{p(x,z)}{q(z|x)}\right] + \mathbb{E}_{q}\!\left[\log\frac{q(z|x)}{p(z|x)}\right]",
         "E_q[log p(x,z)/q] + E_q[log q/p(z|x)]",
         lambda c: mc((c.lj - c.lq) + (c.lq - c.lpost), "q", c.log_marginal, c.rtol), "=",
         "definitions of the ELBO and of the KL divergence"),
    Step(r"\mathrm{ELBO}(x) + \mathrm{KL}(q(z|x)\,\|\,p(z|x))", "ELBO(x) + KL(q(z|x) ‖ p(z|x))",
         lambda c: exact(c.elbo_terms[0] + c.gap, c.rtol), "≥", "KL ≥ 0 (Gibbs' inequality)"),
    Step("", "", lambda c: [(r"\mathrm{ELBO}(x)", "ELBO(x)", mc(c.lj - c.lq, "q", c.elbo_terms[0], c.rtol)),
                            (r"\mathrm{KL}(q(z|x)\,\|\,p(z|x))", "KL(q(z|x) ‖ p(z|x))  (the gap)",
                             mc(c.lq - c.lpost, "q", c.gap, c.rtol))], terms=True),
    Step(r"\mathrm{ELBO}(x)", "ELBO(x)", lambda c: exact(c.elbo_terms[0], c.rtol)),
), ("Gaussian1D", "LinearGaussian", "GaussianMixture"), "§2")


def _rec_kl_engine(c):
    """(reconstruction (S, n), Monte-Carlo KL (S, n), analytic KL (n,)): the engine's for a Gaussian
    latent, the sums for the mixture."""
    if isinstance(c, LatentContext):
        return c.engine
    return c.lx, c.lq - c.lpz, c.elbo_terms[2]


RECONSTRUCTION_KL = Derivation("reconstruction_kl", "ELBO = reconstruction − KL(q(z|x) ‖ p(z))", (
    Step(r"\mathrm{ELBO}(x) = \mathbb{E}_{q}[\log p(x,z) - \log q(z|x)]", "E_q[log p(x,z) − log q(z|x)]",
         lambda c: mc(c.lj - c.lq, "q", _elbo_exact(c), c.rtol), "=", "product rule: p(x, z) = p(x|z) p(z)"),
    Step(r"\mathbb{E}_{q}[\log p(x|z) + \log p(z) - \log q(z|x)]", "E_q[log p(x|z) + log p(z) − log q(z|x)]",
         lambda c: mc(_rec_kl_engine(c)[0] - _rec_kl_engine(c)[1], "q", _elbo_exact(c), c.rtol), "=",
         "linearity of expectation"),
    Step(r"\mathbb{E}_{q}[\log p(x|z)] - \mathbb{E}_{q}\!\left[\log \frac{q(z|x)}{p(z)}\right]",
         "E_q[log p(x|z)] − E_q[log q(z|x)/p(z)]",
         lambda c: mc(_rec_kl_engine(c)[0] - _rec_kl_engine(c)[1], "q", _elbo_exact(c), c.rtol), "=",
         "definition of KL; in closed form for Gaussians (MATH.md §1) or by a finite sum"),
    Step("", "", lambda c: [
        (r"\mathbb{E}_{q}[\log p(x|z)]", "reconstruction E_q[log p(x|z)]",
         mc(_rec_kl_engine(c)[0], "q", None if c.elbo_terms is None else c.elbo_terms[1], c.rtol)),
        (r"\mathbb{E}_{q}[\log q(z|x) - \log p(z)]", "KL by Monte Carlo",
         mc(_rec_kl_engine(c)[1], "q", None if c.elbo_terms is None else c.elbo_terms[2], c.rtol)),
        (r"\mathrm{KL}(q(z|x)\,\|\,p(z))", "KL in closed form",
         exact(_rec_kl_engine(c)[2], c.rtol))], terms=True),
    Step(r"\mathbb{E}_{q}[\log p(x|z)] - \mathrm{KL}(q(z|x)\,\|\,p(z))", "E_q[log p(x|z)] − KL(q(z|x) ‖ p(z))",
         lambda c: mc(_rec_kl_engine(c)[0] - _rec_kl_engine(c)[2][None, :], "q", _elbo_exact(c), c.rtol)),
), ("Gaussian1D", "LinearGaussian", "GaussianMixture", "VAE"), "§2")


def _level_terms(c, which):
    L = c.kl_mc.shape[2]
    src = c.kl_mc if which == "mc" else c.kl_an
    out = []
    for l in range(L):
        top = l == L - 1
        name = (r"\mathbb{E}_q[\log q(z_%d|\cdot) - \log p(z_%d|\cdot)]" if which == "mc"
                else r"\mathbb{E}_q[\mathrm{KL}(q(z_%d|\cdot)\,\|\,p(z_%d|\cdot))]") % (l + 1, l + 1)
        txt = f"level {l + 1}{' (prior matching, top)' if top else ''}: " + ("log q − log p" if which == "mc" else "KL term")
        out.append((name, txt, mc(src[:, :, l], "q", c.exact("levels", l), c.rtol)))
    return out


def _hvae_log_p(c) -> Estimate:
    if c.closed is not None:
        return exact(c.closed["log_p"], c.rtol)
    return log_mean(c.log_p_big, "big", rtol=c.rtol, note=f"L_K, K = {c.big_k}")


HVAE_LEVELS = Derivation("hvae", "the hierarchical ELBO split into per-level terms (Markov and top-down)", (
    Step(r"\log p(x) = \log \mathbb{E}_{q(z_{1:L}|x)}\!\left[\frac{p(x, z_{1:L})}{q(z_{1:L}|x)}\right]",
         "log p(x)  (closed form, or L_K)", _hvae_log_p, "≥", "Jensen, as for one level"),
    Step(r"\mathrm{ELBO}(x) = \mathbb{E}_{q(z_{1:L}|x)}[\log p(x, z_{1:L}) - \log q(z_{1:L}|x)]",
         "E_q[log p(x, z_1..L) − log q(z_1..L|x)]",
         lambda c: mc(c.rec - c.kl_mc.sum(axis=2), "q", c.exact("elbo"), c.rtol), "=",
         "factorization: Markov p(x|z_1) Π p(z_{l−1}|z_l) p(z_L), q(z_1|x) Π q(z_l|z_{l−1}); "
         "top-down p(z_L) Π p(z_l|z_{>l}), q(z_L|x) Π q(z_l|z_{>l}, x)"),
    Step(r"\mathbb{E}_q[\log p(x|z_1)] - \sum_{l=1}^{L} \mathbb{E}_q\!\left[\log \frac{q(z_l|\mathrm{pa}_q(z_l))}{p(z_l|\mathrm{pa}_p(z_l))}\right]",
         "E_q[log p(x|z_1)] − Σ_l E_q[log q(z_l|·) − log p(z_l|·)]",
         lambda c: mc(c.rec - c.kl_mc.sum(axis=2), "q", c.exact("elbo"), c.rtol), "=",
         "tower rule: the inner expectation over z_l given its parents is a Gaussian KL in closed form "
         "(the top level for Markov, every level for top-down, MATH.md §6)"),
    Step("", "", lambda c: [(r"\mathbb{E}_q[\log p(x|z_1)]", "reconstruction",
                             mc(c.rec, "q", c.exact("reconstruction"), c.rtol))]
         + _level_terms(c, "mc"), terms=True),
    Step(r"\mathbb{E}_q[\log p(x|z_1)] - \sum_{l=1}^{L} \mathbb{E}_q[\mathrm{KL}_l]",
         "E_q[log p(x|z_1)] − Σ_l E_q[KL_l]  (analytic where the structure allows)",
         lambda c: mc(c.rec_an - c.kl_an.sum(axis=2), "q", c.exact("elbo"), c.rtol)),
    Step("", "", lambda c: _level_terms(c, "analytic"), terms=True),
), ("HVAE",), "§6")


def _dsum(r):
    return np.asarray(r.steps, np.float64).sum(axis=1)


def _diff(c, arr):
    return np.asarray(arr, np.float64).reshape(c.S, c.n)


DIFFUSION = Derivation("diffusion", "the diffusion ELBO: HVAE form → consistency form → denoising form → ε-MSE", (
    Step(r"\mathbb{E}_{q(x_{1:T}|x_0)}\!\left[\log \frac{p(x_T)\prod_t p_\theta(x_{t-1}|x_t)}{\prod_t q(x_t|x_{t-1})}\right]",
         "E_q[log p(x_T) + Σ_t log p(x_{t−1}|x_t) − Σ_t log q(x_t|x_{t−1})]  (HVAE form)",
         lambda c: mc(c.hvae_form, "chain", c.exact("elbo"), c.rtol), "=",
         "regroup the product by level (Markov: z_t = x_t, fixed encoder)"),
    Step(r"\mathbb{E}[\log p_\theta(x_0|x_1)] - \mathbb{E}[\mathrm{KL}(q(x_T|x_{T-1})\|p(x_T))] - \sum_{t=1}^{T-1}\mathbb{E}[\mathrm{KL}(q(x_t|x_{t-1})\|p_\theta(x_t|x_{t+1}))]",
         "consistency form A (the engine)",
         lambda c: mc(_diff(c, c.form_a.elbo), "A", c.exact("elbo"), c.rtol), "=",
         "Bayes' rule on the encoder, q(x_t|x_{t−1}, x_0) = q(x_{t−1}|x_t, x_0) q(x_t|x_0)/q(x_{t−1}|x_0); the ratios telescope"),
    Step(r"\mathbb{E}[\log p_\theta(x_0|x_1)] - \mathrm{KL}(q(x_T|x_0)\|p(x_T)) - \sum_{t=2}^{T}\mathbb{E}_{q(x_t|x_0)}[\mathrm{KL}(q(x_{t-1}|x_t,x_0)\|p_\theta(x_{t-1}|x_t))]",
         "denoising form B (the engine)",
         lambda c: mc(_diff(c, c.form_b.elbo), "B", c.exact("elbo"), c.rtol), "=",
         "KL of two Gaussians with shared isotropic variances in closed form (MATH.md §1, §7)"),
    Step("", "", lambda c: [
        (r"\mathbb{E}[\log p_\theta(x_0|x_1)]", "reconstruction", mc(_diff(c, c.form_b.reconstruction), "B", c.exact("reconstruction"), c.rtol)),
        (r"\mathrm{KL}(q(x_T|x_0)\|p(x_T))", "prior matching", mc(_diff(c, c.form_b.prior), "B", c.exact("prior"), c.rtol)),
        (r"\sum_{t\ge2}\mathbb{E}[\mathrm{KL}_t]", "Σ denoising matching KLs", mc(_diff(c, _dsum(c.form_b)), "B", c.exact("steps"), c.rtol))],
        terms=True),
    Step(r"\ldots - \sum_{t=2}^{T}\mathbb{E}\!\left[\frac{\|\tilde\mu_t - \mu_\theta\|^2}{2\sigma_t^2} + \frac{d}{2}\!\left(\frac{\tilde\beta_t}{\sigma_t^2} - 1 - \log\frac{\tilde\beta_t}{\sigma_t^2}\right)\right]",
         "… − Σ_t [‖μ̃_t − μ_θ‖²/(2σ_t²) + (d/2)(β̃_t/σ_t² − 1 − log β̃_t/σ_t²)]  (recomputed)",
         lambda c: mc(_diff(c, c.form_b.reconstruction) - _diff(c, c.form_b.prior) - c.recomputed[0], "B", c.exact("elbo"), c.rtol),
         "=", "ε-parameterization: μ̃_t − μ_θ = β_t/(√α_t √(1−ᾱ_t)) (ε_θ − ε)"),
    Step(r"\ldots - \sum_{t=2}^{T}\mathbb{E}\!\left[\frac{\beta_t^2}{2\sigma_t^2\alpha_t(1-\bar\alpha_t)}\|\epsilon - \epsilon_\theta(x_t, t)\|^2 + \mathrm{const}_t\right]",
         "… − Σ_t [β_t²/(2σ_t² α_t (1−ᾱ_t)) ‖ε − ε_θ‖² + const_t]  (a weighted MSE)",
         lambda c: mc(_diff(c, c.form_b.reconstruction) - _diff(c, c.form_b.prior) - c.recomputed[1], "B", c.exact("elbo"), c.rtol)),
), ("Diffusion",), "§7")


EM = Derivation("em", "EM: log p = ELBO after the E-step; the M-step cannot decrease it", (
    Step(r"\log p(x|\theta')", "log p(x|θ')  (after the M-step)", lambda c: exact(c.lpx_new), "≥",
         "KL(q ‖ p(k|x, θ')) ≥ 0"),
    Step(r"\mathrm{ELBO}(q, \theta') = \mathbb{E}_q[\log p(x,k|\theta') - \log q(k)]", "ELBO(q, θ')",
         lambda c: mc(c.lj_new - c.lq, "k", c.elbo_new), "≥",
         "M-step: θ' = argmax_θ ELBO(q, θ) in closed form"),
    Step(r"\mathrm{ELBO}(q, \theta) = \mathbb{E}_q[\log p(x,k|\theta) - \log q(k)]", "ELBO(q, θ)",
         lambda c: mc(c.lj - c.lq, "k", c.elbo_old), "=",
         "E-step: q(k) = p(k|x, θ) makes KL(q ‖ p(k|x, θ)) = 0"),
    Step(r"\log p(x|\theta)", "log p(x|θ)  (before)", lambda c: exact(c.lpx)),
), ("GaussianMixture",), "§5", "em")


def _split(c, i):
    return None if c.exact_split is None else c.exact_split[i]


def _sum_split(c):
    return None if c.exact_split is None else sum(c.exact_split)


SURGERY = Derivation("surgery", "ELBO surgery: average KL = KL(q_agg ‖ p) + I_q[x; z]", (
    Step(r"\frac1n\sum_i \mathrm{KL}(q(z|x_i)\,\|\,p(z))", "average KL(q(z|x_i) ‖ p(z))  (closed form)",
         lambda c: exact(c.avg_kl, c.rtol), "=", "definition of the KL divergence"),
    Step(r"\frac1n\sum_i \mathbb{E}_{q(z|x_i)}[\log q(z|x_i) - \log p(z)]", "(1/n) Σ_i E_qi[log q_i − log p]",
         lambda c: mc(c.lq - c.lp, "q", c.avg_kl, c.rtol), "=", "add and subtract log q_agg(z)"),
    Step(r"\frac1n\sum_i \mathbb{E}_{q_i}[\log q(z|x_i) - \log q_{agg}(z)] + \frac1n\sum_i \mathbb{E}_{q_i}[\log q_{agg}(z) - \log p(z)]",
         "(1/n) Σ_i E_qi[log q_i − log q_agg] + (1/n) Σ_i E_qi[log q_agg − log p]",
         lambda c: mc((c.lq - c.lagg) + (c.lagg - c.lp), "q", c.avg_kl, c.rtol), "=",
         "(1/n) Σ_i q(z|x_i) = q_agg(z), so the second sum is an expectation under q_agg"),
    Step(r"I_q[x; z] + \mathrm{KL}(q_{agg}(z)\,\|\,p(z))", "I_q[x; z] + KL(q_agg ‖ p)",
         lambda c: mc(c.lq - c.lp, "q", _sum_split(c), c.rtol)),
    Step("", "", lambda c: [
        (r"I_q[x; z]", "mutual information", mc(c.lq - c.lagg, "q", _split(c, 0), c.rtol)),
        (r"\mathrm{KL}(q_{agg}\,\|\,p)", "marginal KL", mc(c.lagg - c.lp, "q", _split(c, 1), c.rtol)),
        (r"\log n", "log n (the bound on I_q)", exact(np.full(c.n, math.log(c.n))))], terms=True),
), ("Gaussian1D", "LinearGaussian", "GaussianMixture", "VAE", "HVAE"), "§4", "surgery")


DERIVATIONS = {d.name: d for d in (JENSEN, GAP, RECONSTRUCTION_KL, HVAE_LEVELS, DIFFUSION, EM, SURGERY)}


def names() -> list:
    """The derivations' names, in the order of the issue (1-7)."""
    return list(DERIVATIONS)


def get(name) -> Derivation:
    """The derivation called ``name`` (or the Derivation itself)."""
    if isinstance(name, Derivation):
        return name
    if not isinstance(name, str) or name not in DERIVATIONS:
        raise ValueError(f"derivation must be one of {', '.join(repr(n) for n in DERIVATIONS)} or a Derivation, got {name!r}")
    return DERIVATIONS[name]


def _context(d: Derivation, model, x, S: int, seed: int, q=None):
    kind = type(model).__name__
    if kind not in d.models:
        raise ValueError(f"model must be one of {', '.join(d.models)} for the derivation {d.name!r}, got {kind}")
    if d.context == "surgery":
        return SurgeryContext(model, x, S, seed)
    if d.context == "em":
        return EMContext(model, x, S, seed)
    if isinstance(model, GaussianMixture):
        return MixtureContext(model, x, S, seed, q)
    if isinstance(model, HVAE):
        return HVAEContext(model, x, S, seed)
    if isinstance(model, Diffusion):
        return DiffusionContext(model, x, S, seed)
    if isinstance(model, (Gaussian1D, LinearGaussian, VAE)):
        return LatentContext(model, x, S, seed)
    raise ValueError(f"model must be one of {', '.join(d.models)}, got {kind}")
