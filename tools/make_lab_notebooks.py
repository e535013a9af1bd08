"""Writes notebooks 04-09 (the ELBO laboratory) without outputs: python tools/make_lab_notebooks.py"""
import pathlib

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

OUT = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
SETUP = """import math
import numpy as np
import matplotlib
import matplotlib.pyplot as plt
import elbokit as ek
np.set_printoptions(precision=4, suppress=True)"""


def write(name, cells):
    nb = new_notebook(metadata={"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                                "language_info": {"name": "python"}})
    nb.cells = [new_markdown_cell(c[3:]) if c.startswith("md:") else new_code_cell(c) for c in cells]
    nbformat.write(nb, OUT / f"{name}.ipynb")


write("04_kl_divergence", ["""md:# KL divergence: discrete, Gaussian, forward against reverse

The Kullback-Leibler divergence $\\mathrm{KL}(P\\|Q) = \\sum_x P(x)\\log\\frac{P(x)}{Q(x)}$ is the price of
describing samples of $P$ with a code built for $Q$ (MATH.md §1). Three facts carry the whole
ELBO story: it is never negative, it is not symmetric, and which direction one minimizes decides
what an approximation looks like.""", SETUP, """md:## 1. Non-negativity (Gibbs' inequality)

$-\\mathrm{KL}(P\\|Q) = \\sum P \\log\\frac{Q}{P} \\le \\log\\sum P\\frac{Q}{P} = \\log \\sum_{x: P>0} Q \\le 0$ by Jensen
(log is concave), with equality iff $Q/P$ is constant on the support, i.e. $P = Q$. With
$0\\log 0 = 0$, and $+\\infty$ where $Q = 0 < P$: a code for $Q$ cannot describe an outcome it
deems impossible. Cross-entropy splits as $H(P, Q) = H(P) + \\mathrm{KL}(P\\|Q)$.""", """rng = np.random.default_rng(0)
P, Q = rng.dirichlet(np.ones(5), size=1000), rng.dirichlet(np.ones(5), size=1000)
kl_pq, kl_qp = ek.kl.discrete(P, Q), ek.kl.discrete(Q, P)
print("min KL over 1000 random pairs:", kl_pq.min())
assert (kl_pq >= 0).all() and ek.kl.discrete(P[0], P[0]) == 0
assert np.allclose(ek.kl.cross_entropy(P, Q), ek.kl.entropy(P) + kl_pq)
print("KL(P||Q) - KL(Q||P) ranges over", (kl_pq - kl_qp).min(), (kl_pq - kl_qp).max(), "(not symmetric)")
print(ek.kl.discrete([0.5, 0.5, 0.0], [0.25, 0.25, 0.5]), "= log 2;", ek.kl.discrete([0.5, 0.5], [1.0, 0.0]))
assert ek.kl.discrete([0.5, 0.5], [1.0, 0.0]) == math.inf""", """md:## 2. Between Gaussians

For $q = \\mathcal N(\\mu_1, \\sigma_1^2)$ and $p = \\mathcal N(\\mu_2,\\sigma_2^2)$,
$\\mathbb E_q[\\log q - \\log p] = \\tfrac12\\big[\\log\\frac{\\sigma_2^2}{\\sigma_1^2} + \\frac{\\sigma_1^2 + (\\mu_1-\\mu_2)^2}{\\sigma_2^2} - 1\\big]$:
$\\mathbb E_q[(z-\\mu_1)^2] = \\sigma_1^2$ and $\\mathbb E_q[(z-\\mu_2)^2] = \\sigma_1^2 + (\\mu_1-\\mu_2)^2$. Diagonal Gaussians
add this over dimensions; against $\\mathcal N(0, I)$ it is the VAE's prior-matching term. Check it
against a Monte-Carlo average with its standard error:""", """mu1, lv1, mu2, lv2 = 0.3, -0.4, -1.1, 0.7
z = mu1 + math.exp(lv1 / 2) * ek.random.normal(200000, seed=1)
logq = -0.5 * (math.log(2 * math.pi) + lv1 + (z - mu1) ** 2 / math.exp(lv1))
logp = -0.5 * (math.log(2 * math.pi) + lv2 + (z - mu2) ** 2 / math.exp(lv2))
mc, se = ek.mean_stderr(logq - logp)
exact = ek.kl.gaussian(mu1, lv1, mu2, lv2)
print(f"closed form {exact:.5f}, Monte Carlo {mc:.5f} ± {se:.5f}")
assert abs(mc - exact) < 4 * se""", """md:## 3. Forward against reverse KL

Fit one Gaussian $q$ to a two-mode mixture $p$.

* **Forward** $\\min_q \\mathrm{KL}(p\\|q) = -H(p) - \\mathbb E_p[\\log q]$: only the cross-entropy depends on $q$, and for a
  Gaussian $q$ its minimizer matches the mean and the variance of $p$ (set the derivatives in $\\mu$
  and $\\sigma^2$ to zero). $q$ must put mass wherever $p$ has some: **mass covering**.
* **Reverse** $\\min_q \\mathrm{KL}(q\\|p) = -H(q) - \\mathbb E_q[\\log p]$: $q$ is punished for mass where $p$ is small, not
  for missing mass elsewhere, so it settles on one mode: **mode seeking**. This is the direction
  the ELBO uses ($\\mathrm{KL}(q(z|x)\\|p(z|x))$), and it needs only $\\log p$ up to a constant.""", """mix = dict(weights=[0.3, 0.7], means=[-3.0, 2.5], stds=[0.8, 1.2])
fwd = ek.kl.fit_gaussian(**mix, direction="forward")
rev = ek.kl.fit_gaussian(**mix, direction="reverse")
rev_other = ek.kl.fit_gaussian(**mix, direction="reverse", init=(-3.0, 1.0))
for f in (fwd, rev, rev_other):
    print(f)
w, m, s = (np.array(mix[k]) for k in ("weights", "means", "stds"))
assert abs(fwd.mean - (w * m).sum()) < 1e-12                          # moment matching
assert abs(fwd.std ** 2 - ((w * (s**2 + m**2)).sum() - fwd.mean**2)) < 1e-12
assert abs(rev.mean - 2.5) < 0.1 and abs(rev_other.mean + 3.0) < 0.1  # one mode each
assert rev.kl < rev_other.kl and abs(rev.kl + math.log(0.7)) < 0.01   # ≈ -log(weight of the mode)
zz = np.linspace(-7, 7, 400)
plt.plot(zz, np.exp(ek.kl.mixture_logpdf(zz, **mix)), "k", label="p (mixture)")
for f, st in ((fwd, "--"), (rev, "-."), (rev_other, ":")):
    plt.plot(zz, np.exp(-0.5 * ((zz - f.mean) / f.std) ** 2) / (f.std * math.sqrt(2 * math.pi)), st,
             label=f"{f.direction} KL: N({f.mean:.2f}, {f.std:.2f}²)")
plt.legend(); plt.title("mass covering (forward) vs mode seeking (reverse)"); plt.show()"""])


write("05_exact_models_and_em", ["""md:# Exactly solvable models and EM

Three latent-variable models whose evidence, posterior and ELBO have closed forms (MATH.md §5):
the references every estimator in elbokit is checked against.""", SETUP, """md:## 1. The one-dimensional Gaussian

$p(z) = \\mathcal N(0,1)$, $p(x|z) = \\mathcal N(cz + d, v)$. Then $x = cz + d + \\sqrt v\\,\\nu$ is Gaussian with
mean $d$ and variance $c^2 + v$, so $\\log p(x) = \\log\\mathcal N(x; d, c^2+v)$; Bayes' rule for jointly Gaussian
$(z, x)$ gives $p(z|x) = \\mathcal N\\big(\\frac{c(x-d)}{c^2+v}, \\frac{v}{c^2+v}\\big)$. With the encoder
$q(z|x) = \\mathcal N(ax + b, w)$ and $m = ax+b$:

$$\\mathrm{ELBO}(x) = \\underbrace{-\\tfrac12\\Big[\\log 2\\pi v + \\frac{(x - cm - d)^2 + c^2 w}{v}\\Big]}_{\\mathbb E_q \\log p(x|z)}
 - \\underbrace{\\tfrac12\\,(m^2 + w - 1 - \\log w)}_{\\mathrm{KL}(q\\|p(z))},$$

and the gap is the KL between the two Gaussians $q(z|x)$ and $p(z|x)$. The identity
$\\log p(x) = \\mathrm{ELBO}(x) + \\mathrm{KL}(q\\|p(z|x))$ holds for **any** $a, b, w$:""", """g = ek.exact.Gaussian1D(a=0.3, b=0.1, c=1.2, d=0.5, v=0.4, w=0.2)
x = np.linspace(-3, 3, 7)
print("log p(x)      ", g.log_marginal(x))
print("ELBO + gap    ", g.elbo(x) + g.gap(x))
assert np.allclose(g.log_marginal(x), g.elbo(x) + g.gap(x), atol=1e-12) and (g.gap(x) >= 0).all()
est, se = g.elbo_mc(x, n_samples=20000, seed=0)          # the Monte-Carlo ELBO agrees
assert np.all(np.abs(est - g.elbo(x)) < 4 * se)
opt = ek.exact.Gaussian1D.with_exact_posterior(c=1.2, d=0.5, v=0.4)
print("gap with q = p(z|x):", opt.gap(x))
assert np.abs(opt.gap(x)).max() < 1e-12""", """md:For data $x\\sim\\mathcal N(m, s^2)$ the maximum-likelihood decoders have $d = m$, $c^2+v = s^2$; the
textbook solution $a = 1/s, b = -m/s, c = s, d = m$ is the limit $v\\to 0$ with $w$ matched to the
posterior variance:""", """m, s = 0.4, 1.7
for v in (0.1, 0.01, 0.001):
    t = ek.exact.Gaussian1D.with_exact_posterior(c=s, d=m, v=v)
    e = t.expected(m, s)
    print(f"v={v:6}: a={t.a:.4f} (1/s={1/s:.4f}), b={t.b:.4f} (-m/s={-m/s:.4f}), E[ELBO]={e['elbo']:.4f}, gap={e['gap']:.1e}")
assert abs(t.a - 1 / s) < 1e-3 and abs(t.b + m / s) < 1e-3""", """md:## 2. Probabilistic PCA and the linear VAE

$p(x|z) = \\mathcal N(Wz + \\mu, vI)$ gives $p(x) = \\mathcal N(\\mu, WW^\\top + vI)$ and the posterior
$\\mathcal N(M^{-1}W^\\top(x-\\mu), vM^{-1})$, $M = W^\\top W + vI$. The likelihood is maximized by
$W = U_k(\\Lambda_k - vI)^{1/2}$ with $v$ the mean of the discarded eigenvalues. At that optimum the columns of
$W$ are orthogonal, $M$ is diagonal, so a linear VAE with a *diagonal* $q$ can represent the exact
posterior: its best ELBO equals the maximum likelihood. Check it, then train one with the engine.""", """rng = np.random.default_rng(0)
W0 = rng.normal(size=(6, 2)) * [2.0, 1.0]
x = rng.normal(size=(800, 2)) @ W0.T + 0.5 * rng.normal(size=(800, 6)) + rng.normal(size=6)
lg = ek.exact.LinearGaussian(2).fit(x)
best = lg.log_likelihood(x).mean()
from sklearn.decomposition import PCA
pca = PCA(2).fit(x)
print(f"pPCA max log-likelihood {best:.5f}; sklearn PCA score {pca.score(x):.5f} (unbiased covariance)")
vae = ek.VAE(6, 2, hidden=(), likelihood="gaussian", dtype="float64", decoder_var=lg.variance)
vae.set_parameters(lg.vae_parameters())
exact_elbo = ek.exact.LinearGaussian.vae_elbo(vae, x)[0]
print("linear VAE at the pPCA optimum: closed-form ELBO", exact_elbo.mean(), "= log p(x)", best)
assert abs(exact_elbo.mean() - best) < 1e-9""", """vae = ek.VAE(6, 2, hidden=(), likelihood="gaussian", dtype="float64", decoder_var=lg.variance, seed=0)
vae.fit(x, epochs=300, batch_size=100, lr=1e-2, progress=False, seed=0)
vae.fit(x, epochs=200, batch_size=100, lr=1e-3, progress=False, seed=1)
trained = ek.exact.LinearGaussian.vae_elbo(vae, x)[0].mean()
print(f"trained linear VAE (v fixed at the pPCA value): ELBO {trained:.5f}, {best - trained:.5f} nats below the max")
assert 0 <= best - trained < 0.01
vae2 = ek.VAE(6, 2, hidden=(), likelihood="gaussian", dtype="float64", seed=0)   # learned per-dimension variance
vae2.fit(x, epochs=300, batch_size=100, lr=1e-2, progress=False, seed=0)
vae2.fit(x, epochs=200, batch_size=100, lr=1e-3, progress=False, seed=1)
print(f"learned per-dimension variance: ELBO {ek.exact.LinearGaussian.vae_elbo(vae2, x)[0].mean():.5f} "
      "(a richer noise model than pPCA's isotropic v: it may exceed the pPCA maximum)")""", """md:## 3. A mixture of Gaussians: EM is coordinate ascent on the ELBO

With a discrete latent $k$, $\\mathrm{ELBO} = \\sum_k q_k[\\log \\pi_k\\mathcal N(x;\\mu_k,\\Sigma_k) - \\log q_k]
= \\log p(x) - \\mathrm{KL}(q\\|p(k|x))$. The **E-step** sets $q$ to the responsibilities $r_{ik}\\propto\\pi_k\\mathcal N(x_i;\\mu_k,\\Sigma_k)$,
closing the gap (ELBO = log p(x)); the **M-step** maximizes the ELBO over $(\\pi,\\mu,\\Sigma)$ in closed form. Since
$\\log p(\\theta_{new}) \\ge \\mathrm{ELBO}(q, \\theta_{new}) \\ge \\mathrm{ELBO}(q, \\theta_{old}) = \\log p(\\theta_{old})$, the
log-likelihood never decreases.""", """rng = np.random.default_rng(1)
centers = np.array([[0, 0], [4, 1], [1, 5]])
xm = np.concatenate([rng.normal(size=(150, 2)) @ np.diag([1, 0.5]) + c for c in centers])
gm = ek.exact.GaussianMixture(3, seed=0).fit(xm, iterations=30)
h = np.array([gm.initial_log_likelihood] + gm.history)
print("log-likelihood per iteration:", h[:6], "...", h[-1])
assert (np.diff(h) >= -1e-12).all()
assert np.allclose(gm.elbo_after_e_step, h[:-1], atol=1e-12)   # ELBO = log p(x) right after the E-step
from sklearn.mixture import GaussianMixture as SkGM
sk = SkGM(3, random_state=0).fit(xm)
print(f"elbokit EM {gm.log_likelihood(xm).mean():.5f}, scikit-learn {sk.score(xm):.5f}")
vem = ek.exact.GaussianMixture(3, seed=0).fit_variational(xm, iterations=40, steps=5, lr=2.0)
print(f"variational EM (q takes gradient steps): ELBO {vem.elbo_history[-1]:.5f} <= log p {vem.history[-1]:.5f}")
assert (np.diff(vem.elbo_history) >= -1e-12).all() and vem.elbo_history[-1] <= vem.history[-1]
plt.plot(h, "o-", label="EM: log p(x)"); plt.plot(vem.elbo_history, ".-", label="variational EM: ELBO")
plt.xlabel("iteration"); plt.ylabel("nats per point"); plt.legend(); plt.show()"""])


write("06_gradient_estimators", ["""md:# Two gradient estimators of $\\nabla_\\phi\\,\\mathbb E_{q_\\phi}[f(z)]$

The ELBO is an expectation under $q_\\phi$, and we need its gradient in $\\phi$ (MATH.md §2).

* **Reparameterization**: $z = \\mu + \\sigma\\epsilon$, $\\epsilon\\sim\\mathcal N(0,I)$ moves $\\phi$ inside the
  expectation: $\\nabla_\\mu = \\mathbb E[\\nabla f(z)]$, $\\nabla_{\\log\\sigma^2} = \\mathbb E[\\nabla f(z)\\odot\\epsilon\\odot\\sigma/2]$.
* **Score function**: $\\nabla_\\phi\\int q_\\phi f = \\int q_\\phi\\,\\nabla_\\phi\\log q_\\phi\\, f = \\mathbb E_q[f(z)\\nabla_\\phi\\log q_\\phi(z)]$,
  with $\\nabla_\\mu\\log q = \\epsilon/\\sigma$ and $\\nabla_{\\log\\sigma^2}\\log q = (\\epsilon^2-1)/2$. It needs no $\\nabla f$ but
  multiplies $f$'s *value* by a zero-mean factor: unbiased, with a far larger variance.""", SETUP, """md:## 1. A quadratic with a known answer

$f(z) = \\|z - c\\|^2$: $\\mathbb E_q f = \\|\\mu - c\\|^2 + \\sum\\sigma^2$, so $\\nabla_\\mu = 2(\\mu - c)$ and $\\nabla_{\\log\\sigma^2} = \\sigma^2$.""", """mu, lv = np.array([0.5, -1.0, 0.2]), np.array([-0.5, 0.3, 0.0])
fn = ek.estimators.quadratic([1.0, 0.0, -2.0])
c = ek.estimators.compare(fn, mu, lv, n_samples=1, n_repeats=20000, seed=0)
s = c.summary()
for name in ("reparam", "score"):
    se = np.sqrt(s[name]["var_mu"] / 20000)
    print(f"{name:8s} mean dmu {s[name]['mean_mu']}  exact {c.exact_mu}  variance {s[name]['var_mu']}")
    assert np.all(np.abs(s[name]["mean_mu"] - c.exact_mu) < 4.5 * se)
print(f"score / reparam variance: {s['variance_ratio']:.1f}x")
assert s["variance_ratio"] > 3""", """md:A baseline $b$ leaves the score estimator unbiased ($\\mathbb E[\\nabla\\log q] = 0$) and, chosen near $\\mathbb E f$,
shrinks its variance; the leave-one-out mean of the other samples is such a baseline. Variance
against the number of samples:""", """rows = []
for S in (2, 4, 16, 64):
    plain = ek.estimators.compare(fn, mu, lv, n_samples=S, n_repeats=2000, seed=1).summary()
    base = ek.estimators.compare(fn, mu, lv, n_samples=S, n_repeats=2000, seed=1, baseline="mean").summary()
    rows.append((S, plain["reparam"]["var_mu"].sum(), plain["score"]["var_mu"].sum(), base["score"]["var_mu"].sum()))
    print(f"S={S:3d}: reparam {rows[-1][1]:.4f}  score {rows[-1][2]:.4f}  score+baseline {rows[-1][3]:.4f}")
rows = np.array(rows)
assert (rows[:, 2] > rows[:, 1]).all() and (rows[:, 3] < rows[:, 2]).all()
plt.loglog(rows[:, 0], rows[:, 1:], "o-"); plt.legend(["reparam", "score", "score + baseline"])
plt.xlabel("samples per estimate"); plt.ylabel("total variance of d/dmu"); plt.show()""", """md:## 2. On a VAE's encoder

The same comparison for the gradient of the reconstruction term $\\mathbb E_q[\\log p(x|z)]$ with respect to every
parameter of a VAE's encoder: reparameterization through the engine's backward pass against the
score function pushed through the encoder by its vector-Jacobian product.""", """train, test = ek.datasets.digits()
vae = ek.VAE(64, 4, hidden=(32,), seed=0)
vae.fit(train, epochs=5, progress=False)
cmp = ek.estimators.vae_encoder(vae, test[:16], n_samples=4, n_repeats=200, seed=0, baseline="mean")
summ = cmp.summary()
print(summ)
assert summ["variance_ratio"] > 5 and summ["mean_abs_z"] < 1.5   # both unbiased, score far noisier"""])


write("07_elbo_surgery", ["""md:# ELBO surgery: where the KL term goes

Average the VAE's prior-matching term over a data set of $n$ points (MATH.md §4). With the aggregated
posterior $q_{agg}(z) = \\frac1n\\sum_i q(z|x_i)$,

$$\\frac1n\\sum_i \\mathrm{KL}(q(z|x_i)\\|p(z)) = \\frac1n\\sum_i\\mathbb E_{q(z|x_i)}\\Big[\\log\\frac{q(z|x_i)}{q_{agg}(z)} + \\log\\frac{q_{agg}(z)}{p(z)}\\Big]
= \\underbrace{I_q[x;z]}_{\\text{mutual information}} + \\underbrace{\\mathrm{KL}(q_{agg}\\|p)}_{\\text{marginal KL}},$$

because $\\frac1n\\sum_i\\mathbb E_{q(z|x_i)}[g(z)] = \\mathbb E_{q_{agg}}[g(z)]$. Since $q_{agg}\\ge q(z|x_i)/n$, $0\\le I_q\\le\\log n$. Only the
marginal KL is a mismatch between the encoder and the prior; the mutual information is what the
code must pay to carry information about $x$ — and the best prior for a fixed encoder is $q_{agg}$.""", SETUP, """train, test = ek.datasets.digits()
vae = ek.VAE(64, 6, hidden=(128,), seed=0)
vae.fit(train, epochs=15, batch_size=64, lr=2e-3, progress=False)
r = ek.surgery(vae, test, seed=0, n_samples=8)
print(r)
assert abs(r.residual) < 4 * r.residual_stderr + 1e-3           # the identity on the estimates
assert 0 < r.mutual_information <= r.log_n""", """md:$\\log q_{agg}(z)$ is a log-sum-exp over all $n$ encodings at every sample — $O(n^2)$ work, done in C++. The
mutual information is capped by $\\log n$: with $n = 297$ held-out digits it cannot exceed 5.69 nats even
if every code were perfectly distinguishable. A β-VAE trades mutual information away:""", """rows = []
for beta in (0.5, 1.0, 4.0):
    v = ek.VAE(64, 6, hidden=(128,), seed=0)
    v.fit(train, epochs=10, batch_size=64, lr=3e-3, beta=beta, progress=False)
    rb = ek.surgery(v, test, seed=0, n_samples=8)
    rows.append((beta, rb.average_kl, rb.mutual_information, rb.marginal_kl))
    print(f"beta={beta}: average KL {rb.average_kl:.3f} = I {rb.mutual_information:.3f} + marginal KL {rb.marginal_kl:.3f}"
          f"  (residual {rb.residual:+.4f} ± {rb.residual_stderr:.4f})")
    assert abs(rb.residual) < 4 * rb.residual_stderr + 1e-3
assert rows[-1][2] < rows[0][2]   # a larger beta carries less information
b = np.array(rows)
plt.bar(np.arange(3) - 0.15, b[:, 2], 0.3, label="I_q[x; z]"); plt.bar(np.arange(3) + 0.15, b[:, 3], 0.3, label="KL(q_agg || p)")
plt.xticks(range(3), [f"beta={x}" for x in b[:, 0]]); plt.ylabel("nats"); plt.legend(); plt.show()""", """md:The surgery only needs the (top-level) diagonal Gaussian posterior of each point: any object with
`encode_top(x)` (a hierarchical VAE's top level), or any callable `x -> (mu, logvar)`, works too.""", """r2 = ek.surgery(lambda xs: vae.encode(xs), test, seed=0, n_samples=8)
assert r2.mutual_information == r.mutual_information"""])


write("08_flows_as_vaes", ["""md:# Normalizing flows are VAEs with a deterministic encoder

Take an invertible $f$, encoder $z = f(x)$, decoder $x = f^{-1}(z)$, prior $\\mathcal N(0, I)$. Change of variables:

$$\\log p(x) = \\log p(f(x)) + \\log\\Big|\\det\\frac{\\partial f}{\\partial x}\\Big|.$$

As a VAE, $q(z|x) = \\delta(z - f(x))$ *is* the exact posterior (given $x$, $z$ is determined), so the gap
$\\mathrm{KL}(q\\|p(z|x))$ is zero and the ELBO equals $\\log p(x)$ (MATH.md §8): the ratio of the decoder's and encoder's
deltas, $\\delta(x - f^{-1}(z))/\\delta(z - f(x))$, is exactly $|\\det \\partial f/\\partial x|$. Affine coupling layers make the
determinant a sum of log-scales; planar layers a single $\\log|1 + u^\\top\\psi|$.""", SETUP, """x = ek.datasets.two_moons(2000, seed=0)
x = (x - x.mean(0)) / x.std(0)
flow = ek.Flow(2, ("coupling",) * 6, hidden=(32, 32), seed=0)
hist = flow.fit(x, epochs=40, batch_size=128, lr=3e-3, progress=False)
print(f"mean log p(x): {hist.train_elbo[0]:.3f} -> {hist.train_elbo[-1]:.3f} nats (standard normal: {-math.log(2*math.pi)-1:.3f})")
assert hist.train_elbo[-1] > -2.2""", """md:The density is exact, so it integrates to one — a check no ELBO-trained VAE can pass:""", """g = np.linspace(-6, 6, 401)
X, Y = np.meshgrid(g, g)
lp = flow.log_prob(np.stack([X.ravel(), Y.ravel()], 1)).reshape(X.shape)
mass = np.exp(lp).sum() * (g[1] - g[0]) ** 2
print("∫ p(x) dx over the grid:", mass)
assert abs(mass - 1) < 0.01
e = flow.elbo(x[:5])
assert np.array_equal(e["elbo"], flow.log_prob(x[:5]))   # ELBO of the deterministic VAE = log p(x)
fig, ax = plt.subplots(1, 2, figsize=(9, 4))
ax[0].contourf(X, Y, np.exp(lp), 30); ax[0].set_title("flow density")
s = flow.sample(2000, seed=1); ax[1].scatter(s[:, 0], s[:, 1], s=2); ax[1].set_title("samples x = f⁻¹(z)")
plt.show()""", """md:## The limit, with an ordinary Gaussian VAE

Blur the deterministic VAE: $q(z|x) = \\mathcal N(f(x), \\sigma^2 JJ^\\top)$ with $J = \\partial f/\\partial x$, and $p(x|z) = \\mathcal N(f^{-1}(z), \\sigma^2 I)$.
To first order $x - f^{-1}(z) = -\\sigma\\epsilon$, so $\\mathbb E_q[\\log p(x|z) - \\log q(z|x)] = \\log|\\det J| + O(\\sigma^2)$ and the ordinary
ELBO tends to $\\log p(x)$ as $\\sigma\\to0$ (how small σ must be depends on how curved $f^{-1}$ is where the flow stretches space):""", """xs = x[:4]
lp_exact = flow.log_prob(xs)
gaps = []
for sigma in (0.1, 0.01, 0.001, 0.0001):
    est, se = flow.elbo_smoothed(xs, sigma, n_samples=2000, seed=0)
    gaps.append(np.abs(lp_exact - est).max())
    print(f"sigma={sigma:7}: max |log p(x) - ELBO_sigma| = {gaps[-1]:.6f}   (Monte-Carlo s.e. up to {se.max():.6f})")
assert gaps[-1] < 1e-3 and np.all(np.abs(lp_exact - est) < 5 * se + 1e-6) and gaps[-1] < gaps[0]"""])


write("09_autoencoders", ["""md:# Autoencoders: deterministic codes

An autoencoder learns an encoder $f$ and a decoder $g$ that minimize the reconstruction error
$\\|x - g(f(x))\\|^2$ (MATH.md §9). No distribution is involved: no ELBO, no prior to sample from.

* **denoising**: $\\min\\mathbb E\\|x - g(f(x + \\delta))\\|^2$, $\\delta\\sim\\mathcal N(0, s^2 I)$ — learn to undo noise;
* **contractive**: add $\\lambda\\|\\partial f/\\partial x\\|_F^2$ — codes insensitive to small input changes. For the one-layer encoder
  $y = s(Wx + b)$, $\\partial y_i/\\partial x_j = s'(a_i)W_{ij}$, so $\\|J\\|_F^2 = \\sum_i s'(a_i)^2\\|W_i\\|^2$ (its gradient is written by hand in C++).""", SETUP, """train, test = ek.datasets.digits()
aes = {
    "plain": ek.Autoencoder(64, 8, hidden=(64,), kind="plain", seed=0),
    "denoising": ek.Autoencoder(64, 8, hidden=(64,), kind="denoising", noise_std=0.3, seed=0),
    "contractive": ek.Autoencoder(64, 8, hidden=(), kind="contractive", code_activation="sigmoid", contraction=0.5, seed=0),
}
for name, ae in aes.items():
    h = ae.fit(train, epochs=15, batch_size=64, lr=3e-3, progress=False, validation=test)
    l = ae.loss(test)
    print(f"{name:12s} held-out squared error {l['reconstruction'].mean():.3f}   ‖J‖² {l['penalty'].mean():.3f}")
    assert h.train_loss[-1] < h.train_loss[0]""", """md:The penalty is the Frobenius norm of the encoder's Jacobian — check it by finite differences:""", """ae = aes["contractive"]
x0 = test[:1].astype(np.float64)
jac = np.stack([(ae.encode(x0 + 1e-3 * e) - ae.encode(x0 - 1e-3 * e))[0] / 2e-3 for e in np.eye(64)], 1)
print("finite differences", (jac ** 2).sum(), " penalty", ae.loss(test[:1])["penalty"][0])
assert abs((jac ** 2).sum() - ae.loss(test[:1])["penalty"][0]) < 1e-2 * ae.loss(test[:1])["penalty"][0]""", """md:## Latent spaces compared

Interpolate between the codes of two digits, and decode random codes. The VAE's prior fixes where
codes live ($\\mathcal N(0, I)$), so random draws decode to plausible digits; an autoencoder's codes occupy some
unknown region, and a Gaussian draw matched to their first two moments often falls off it.""", """from elbokit.autoencoder import interpolate
vae = ek.VAE(64, 8, hidden=(64,), seed=0)
vae.fit(train, epochs=15, batch_size=64, lr=3e-3, progress=False)
fig, ax = plt.subplots(2, 8, figsize=(10, 2.8))
for row, model in enumerate((aes["plain"], vae)):
    _, dec = interpolate(model, test[0], test[5], n_steps=8)
    for k in range(8):
        ax[row, k].imshow(dec[k].reshape(8, 8), cmap="gray"); ax[row, k].axis("off")
ax[0, 0].set_title("autoencoder", loc="left"); ax[1, 0].set_title("VAE (posterior means)", loc="left")
plt.show()
# how far do decoded random codes land from real digits? (distance to the nearest held-out digit)
def nearest(samples):
    d = ((samples[:, None, :] - test[None, :, :]) ** 2).sum(-1)
    return d.min(1).mean()
codes = aes["plain"].encode(train).astype(np.float64)
zc = codes.mean(0) + ek.random.normal((200, 8), seed=3) @ np.linalg.cholesky(np.cov(codes.T)).T
ae_samples, vae_samples = aes["plain"].decode(zc), vae.sample(200, seed=3)
print(f"mean distance to the nearest real digit: autoencoder + Gaussian codes {nearest(ae_samples):.2f}, "
      f"VAE prior samples {nearest(vae_samples):.2f}")
assert np.isfinite(nearest(ae_samples)) and np.isfinite(nearest(vae_samples))"""])
print("written to", OUT)
