"""Writes notebooks/11_derivation_tracer.ipynb (without outputs): python tools/make_11_derivation_tracer.py"""
import pathlib

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

OUT = pathlib.Path(__file__).resolve().parent.parent / "notebooks"


def write(name, cells):
    nb = new_notebook(metadata={"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                                "language_info": {"name": "python"}})
    nb.cells = [new_markdown_cell(c[3:]) if c.startswith("md:") else new_code_cell(c) for c in cells]
    nbformat.write(nb, OUT / f"{name}.ipynb")


write("11_derivation_tracer", [r"""md:# The derivation tracer: every line of a derivation, evaluated

A derivation of an ELBO identity is a chain of lines joined by $=$ and $\ge$. The notebooks so far
checked its two ends numerically. `ek.trace(derivation, model, x, n_samples, seed)` evaluates
**every intermediate line** on a concrete model: each line's value (the mean over the points
$x_i$, in nats) with its Monte-Carlo standard error, its closed form where the model has one, and
whether each relation holds within its error:

* $a = b$ holds if $|a - b| \le 4\,\mathrm{s.e.}(a - b)$, $a \ge b$ if $a - b \ge -4\,\mathrm{s.e.}$;
  two lines drawn from the same samples are compared by their *paired* differences, so the
  standard error of a difference is honest; two exact values must match to $10^{-9}$ relative.
* a Monte-Carlo line with a closed form must agree with it within 4 s.e. (the ✓ beside "exact").
* the log of a Monte-Carlo mean is linearized (delta method); when its effective sample size
  falls below 5 its error bar cannot be trusted and its relations read **?** instead of a verdict.

The derivations are data (`ek.derivations.DERIVATIONS`): steps with LaTeX, an estimator, the
relation to the next line and its justification.""", """import math
import numpy as np
import matplotlib
import matplotlib.pyplot as plt
import elbokit as ek
from elbokit import derivations as D
np.set_printoptions(precision=4, suppress=True)
for d in D.DERIVATIONS.values():
    print(d)""", r"""md:## 1. $\log p(x) \ge \mathrm{ELBO}$ by Jensen, on the one-dimensional Gaussian model

$p(z) = \mathcal N(0,1)$, $p(x|z) = \mathcal N(cz + d, v)$, $q(z|x) = \mathcal N(ax + b, w)$ (MATH.md §5): every line has
a closed form. Line 2 samples the prior (naive Monte Carlo), lines 3-4 sample $q$ (importance
sampling), line 5 is the Monte-Carlo ELBO at the same samples as line 4, so the Jensen gap
$\log\mathbb E_q[w] - \mathbb E_q[\log w]$ is measured by paired differences; it must equal
$\mathrm{KL}(q(z|x)\|p(z|x))$.""", """g = ek.exact.Gaussian1D(a=0.3, b=0.1, c=1.2, d=0.5, v=0.5, w=0.4)   # q is not the posterior
x1 = 0.5 + 1.3 * ek.random.normal(16, seed=3)
res = ek.trace("jensen", g, x1, n_samples=1000, seed=0)
display(res)
jensen = [r for r in res.lines if r.relation == "≥"][0]
print(f"Jensen gap {jensen.difference:.4f} ± {jensen.difference_se:.4f}, closed-form KL(q || p(z|x)) {g.gap(x1).mean():.4f}")
assert res.ok and abs(jensen.difference - g.gap(x1).mean()) < 4 * jensen.difference_se
print(res.to_latex())""", r"""md:## 2. $\log p(x) = \mathrm{ELBO} + \mathrm{KL}(q(z|x)\,\|\,p(z|x))$: the second derivation

Bayes' rule replaces $p(x)$ by $p(x,z)/p(z|x)$ inside an expectation over $q$; the integrand is then
*constant* in $z$, so lines 2-5 have zero Monte-Carlo variance, and the split into ELBO and gap
(the terms) is exact. On probabilistic PCA fitted to the digits, the mean-field $q$ (diagonal
covariance) is exact at the maximum likelihood, where $M = W^\top W + vI$ is diagonal; rotating the
latent space, $W \to WR$, leaves $p(x)$ unchanged but makes the posterior covariance non-diagonal:
the gap opens.""", """train, test = ek.datasets.digits()
pp = ek.exact.LinearGaussian(4).fit(train)
print(ek.trace("gap", g, x1, n_samples=200))
R = np.linalg.qr(np.random.default_rng(0).normal(size=(4, 4)))[0]
rot = ek.exact.LinearGaussian(4).set_parameters(pp.weight @ R, pp.mean, pp.variance)
gaps = {}
for name, m in (("ML", pp), ("rotated", rot)):
    r = ek.trace("gap", m, test[:64], n_samples=64, seed=0)
    assert r.ok, r.failures()
    gaps[name] = [t for t in r.rows if t.is_term][1].estimate.exact
    print(f"pPCA {name:8s} log p(x) = {r.lines[0].estimate.value:9.4f}, gap KL(q || p(z|x)) = {gaps[name]:.5f}")
assert gaps["ML"] < 1e-8 < 0.01 < gaps["rotated"]
display(r)""", r"""md:## 3. ELBO = reconstruction − KL(q(z|x) ‖ p(z)), on a trained VAE and on a mixture

Lines 1-3 are Monte Carlo at the same samples; the last replaces the Monte-Carlo KL by the closed
form (lower variance, the same expectation). The VAE has no closed form, so only the relations are
checked; the mixture of Gaussians (a discrete latent $k$, MATH.md §5) has one for every line.""", """vae = ek.VAE(64, 8, hidden=(64,), seed=0)
vae.fit(train, epochs=10, batch_size=32, lr=3e-3, progress=False, active_units=False)
xv = test[:64]
r = ek.trace("reconstruction_kl", vae, xv, n_samples=32, seed=0)
display(r)
assert r.ok
xm = ek.datasets.load("ring", n=400, seed=0)[0]
mix = ek.exact.GaussianMixture(8, seed=0).fit(xm, iterations=3)
q = 0.8 * mix.responsibilities(xm) + 0.2 / 8         # a q that is not the posterior
r = ek.trace("reconstruction_kl", mix, xm, n_samples=64, seed=0, q=q)
display(r)
assert r.ok""", r"""md:## 4. The hierarchical ELBO, level by level (Markov and top-down)

The joint and the encoder factorize by level (MATH.md §6), so the ELBO is the reconstruction minus
one term per level; the tower rule turns a level's $\mathbb E[\log q - \log p]$ into an analytic
Gaussian KL given its parents wherever the structure allows: only at the top for the Markov
chain (its lower levels condition $q$ and $p$ on different variables), at every level top-down.
The analytic terms have the same means and smaller errors. A *linear* Gaussian HVAE (no hidden
layers, constant variances) has every line in closed form: the whole chain $q(z_{1:L}|x)$ is one
Gaussian, and $p(x)$ too (`ek.derivations.hvae_linear_closed_form`).""", """rng = np.random.default_rng(0)
lin = ek.HVAE(4, z_dims=(3, 2), hidden=(), structure="topdown", likelihood="gaussian", dtype="float64", decoder_var=0.5, seed=1)
p = {k: (np.zeros_like(v) if k.endswith("logvar.weight") else v) for k, v in lin.parameters().items()}
lin.set_parameters(p)
r = ek.trace("hvae", lin, rng.normal(size=(8, 4)), n_samples=400, seed=0)
display(r)
assert r.ok and all(row.estimate.exact is not None for row in r.rows)
for structure in ("markov", "topdown"):
    h = ek.HVAE(64, z_dims=(8, 4), hidden=(64,), structure=structure, seed=0)
    h.fit(train, epochs=4, batch_size=64, lr=3e-3, progress=False, active_units=False)
    r = ek.trace("hvae", h, xv, n_samples=16, seed=0)
    display(r)
    assert r.ok, r.failures()""", r"""md:## 5. The diffusion ELBO: HVAE form → consistency form → denoising form → weighted MSE

A diffusion model is a Markovian HVAE with a fixed encoder (MATH.md §7). Line 1 is the HVAE
integrand along a sampled forward chain; line 2 regroups it by level (form A, the engine); Bayes'
rule on the encoder makes the ratios telescope into form B (the engine), whose prior term and
per-step KLs are analytic. Line 4 recomputes the Gaussian KL of $q(x_{t-1}|x_t,x_0)$ and
$p_\theta(x_{t-1}|x_t)$ in closed form from `q_posterior` and `p_mean_variance` at the engine's own
noise, and line 5 writes its mean part in $\epsilon$: $\frac{\beta_t^2}{2\sigma_t^2\alpha_t(1-\bar\alpha_t)}\|\epsilon-\epsilon_\theta\|^2$.
Lines 3-5 agree sample by sample (up to float32 rounding); forms A and B agree in expectation, B
with the smaller error (its prior term and step KLs are analytic). With an affine network
(`hidden=()`) every term is a Gaussian expectation of a quadratic: the closed form
(`ek.derivations.diffusion_linear_closed_form`) stands beside every line.""", """xs = ek.datasets.load("swiss_roll", n=2000, seed=0)[0]
dm = ek.Diffusion(2, timesteps=40, schedule="cosine", hidden=(64, 64), seed=0)
dm.fit(xs, epochs=30, batch_size=128, lr=2e-3, progress=False)
r = ek.trace("diffusion", dm, xs[:32], n_samples=16, seed=0)
display(r)
assert r.ok, r.failures()
a, b = r.lines[1].estimate, r.lines[2].estimate
print(f"s.e. of form A {a.se:.3f} against form B {b.se:.3f}")
assert b.se < a.se
dl = ek.Diffusion(2, timesteps=20, schedule="cosine", hidden=(), dtype="float64", seed=0)
dl.fit(xs, epochs=5, batch_size=128, lr=1e-2, progress=False)
r = ek.trace("diffusion", dl, xs[:16], n_samples=32, seed=0)
display(r)
assert r.ok and all(row.estimate.exact is not None for row in r.rows)""", r"""md:## 6. EM: the E-step closes the gap, the M-step cannot decrease the ELBO

Read from the bottom: $\log p(x|\theta) = \mathrm{ELBO}(q,\theta)$ with $q = p(k|x,\theta)$ (E-step);
$\mathrm{ELBO}(q,\theta') \ge \mathrm{ELBO}(q,\theta)$ because the M-step maximizes it over $\theta$; and
$\log p(x|\theta') \ge \mathrm{ELBO}(q,\theta')$ because a KL is never negative. Hence EM never decreases
$\log p$. The Monte-Carlo lines sample $k \sim q$ once, so the M-step's gain is a paired difference.""",
    """mix = ek.exact.GaussianMixture(8, seed=0).fit(xm, iterations=2)
r = ek.trace("em", mix, xm, n_samples=64, seed=0)
display(r)
assert r.ok""", r"""md:## 7. ELBO surgery: average KL = marginal KL + mutual information

$\frac1n\sum_i \mathrm{KL}(q(z|x_i)\|p(z)) = I_q[x;z] + \mathrm{KL}(q_{agg}\|p)$ (MATH.md §4). Add and subtract
$\log q_{agg}(z)$ inside the expectation, then note that averaging $q(z|x_i)$ over $i$ is $q_{agg}$. On the
one-dimensional model both terms are one-dimensional integrals (exact by quadrature); on the
mixture all terms are finite sums; on the VAE the KL is analytic and the split Monte Carlo.""",
    """for m, x in ((g, x1), (mix, xm), (vae, xv)):
    r = ek.trace("surgery", m, x, n_samples=256 if m is g else 32, seed=0)
    display(r)
    assert r.ok, r.failures()""", r"""md:## A step with a sign error fails

The tracer can fail: a test-only derivation that writes $\mathrm{ELBO} = \mathbb E_q[\log p(x|z)] + \mathrm{KL}$.""",
    """wrong = D.Derivation("wrong", "ELBO = reconstruction + KL (a sign error)", (
    D.Step(r"\\mathrm{ELBO}", "ELBO", lambda c: D.mc(c.lj - c.lq, "q", c.elbo_terms[0]), "=", "a sign error"),
    D.Step(r"\\mathbb{E}_q[\\log p(x|z)] + \\mathrm{KL}", "reconstruction + KL",
           lambda c: D.mc(c.engine[0] + c.engine[2][None, :], "q"))), ("Gaussian1D",), "§2")
r = ek.trace(wrong, g, x1, n_samples=200)
print(r)
assert not r.ok and r.lines[0].holds is False""", r"""md:## Lesson 1: naive Monte Carlo against importance sampling

$p(x) = \mathbb E_{p(z)}[p(x|z)]$ is an expectation anyone can sample, but the prior rarely proposes a
$z$ that explains $x$: the estimate of $\log p(x)$ is dominated by a few lucky samples, biased low and
noisy. Sampling $q(z|x)$ and weighting by $p(x,z)/q(z|x)$ (MATH.md §3) concentrates the samples where
the posterior is. The spread over repeats as $K$ grows, on the exact model (whose data are made far
from the prior's reach by a small noise $v$) and on the trained VAE:""", """sharp = ek.exact.Gaussian1D.with_exact_posterior(c=3.0, d=0.0, v=0.01)
sharp.w *= 2.0                                        # a q close to, but not, the posterior
xs1 = 3.0 * ek.random.normal(16, seed=5)
ks = (1, 10, 100, 1000)
cmp_g = D.naive_vs_importance(sharp, xs1, ks=ks, n_repeats=10, seed=0)
cmp_v = D.naive_vs_importance(vae, xv[:8], ks=ks, n_repeats=5, seed=0)
print(cmp_g); print(cmp_v)
fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
for a, c, title in ((ax[0], cmp_g, "1-D Gaussian model"), (ax[1], cmp_v, "trained VAE, digits")):
    a.loglog(c.ks, c.naive_std, "o-", label="naive, z ~ p(z)")
    a.loglog(c.ks, c.importance_std, "s-", label="importance, z ~ q(z|x)")
    a.set_xlabel("K"); a.set_ylabel("sd of the log p(x) estimate"); a.set_title(title); a.legend()
plt.tight_layout(); plt.show()
assert (cmp_g.importance_std < cmp_g.naive_std).all() and (cmp_v.importance_std < cmp_v.naive_std).all()
assert abs(cmp_g.importance_mean[-1] - cmp_g.log_p) < 0.01 < cmp_g.log_p - cmp_g.naive_mean[-1]""",
    r"""md:## Lesson 2: the amortization gap

The encoder is one network for all $x$; its $q(z|x)$ is not the best Gaussian for each point. For a
few test points, start at the encoder's $q$ and optimize a free Gaussian for that point alone (Adam
on the engine's ELBO gradient with respect to $\mu$ and $\log\sigma^2$). The inference gap
$\log p - \mathrm{ELBO}_{\text{encoder}}$ splits into the **approximation gap** $\log p - \mathrm{ELBO}_{\text{optimal}}$ (the
Gaussian family's limit) and the **amortization gap** $\mathrm{ELBO}_{\text{optimal}} - \mathrm{ELBO}_{\text{encoder}}$ (Cremer et
al. 2018). On the one-dimensional model the Gaussian family holds the posterior, so the whole gap
is amortization: $\mathrm{KL}(q\|p(z|x))$ in closed form.""", """am = D.amortization_gap(vae, xv[:6], steps=150, lr=0.05, n_samples=16, n_eval=1000, k=2000, seed=0)
print(am)
print(f"1-D model: approximation gap 0, amortization gap {g.gap(x1).mean():.4f} (closed form)")
assert am.amortization_gap > 0 and (am.log_p > am.elbo_optimized - 0.1).all()""",
    r"""md:## Lesson 3: a learned prior and the KL term

For a fixed encoder the KL term $\frac1n\sum_i\mathrm{KL}(q(z|x_i)\|p(z))$ is smallest for $p = q_{agg}$, where it
equals the mutual information (the surgery above): the marginal KL is exactly what a learned prior
can save, and with the decoder fixed the ELBO rises by as much. A mixture of Gaussians fitted to
samples of $q_{agg}$ recovers part of it. Here the priors are built from the *training* encodings
and evaluated on held-out points, so even $q_{agg}$ saves less than the held-out points' own
marginal KL (the optimum for those very points):""", """lp = D.learned_prior(vae, xv, x_prior=train[:500], n_components=10, n_samples=16, seed=0)
print(lp)
kl = [m for m, s in lp.kl.values()]
surg = ek.trace("surgery", vae, xv, n_samples=32, seed=0)
print(f"marginal KL of the held-out points: {[t for t in surg.rows if t.text == 'marginal KL'][0].estimate.value:.3f}")
assert kl[1] < kl[0] and kl[2] < kl[0]""", r"""md:## On the command line

`elbokit trace DERIVATION --model FILE --data digits` traces a saved model on the held-out digits
(exit code 0 when every relation holds); `elbokit trace --list` lists the derivations.""",
    """import os, tempfile
from elbokit.cli import main
path = os.path.join(tempfile.mkdtemp(), "vae.elbokit")
vae.save(path)
assert main(["trace", "--list"]) == 0
assert main(["trace", "jensen", "--model", path, "--data", "digits", "--n", "16", "--n-samples", "64"]) in (0, 1)"""])
