"""Writes notebooks/02_hierarchical_vae.ipynb (without outputs): python tools/make_02_hierarchical_vae.py"""
import os

import nbformat as nbf

md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell

cells = [
    md(r"""# Hierarchical VAEs: every level's term, visible

A hierarchical VAE (MATH.md §6) stacks $L$ Gaussian latent levels. `elbokit` builds two forms that
share one generative model

$$p(x, z_{1:L}) = p(z_L)\, p_\theta(x \mid z_1) \prod_{l<L} p_\theta(z_l \mid z_{l+1}), \qquad p(z_L) = \mathcal N(0, I),$$

and differ in the encoder:

* **Markov**: $q(z_{1:L} \mid x) = q(z_1 \mid x) \prod_{l>1} q(z_l \mid z_{l-1})$. The ELBO splits into a
  reconstruction term, a prior-matching term at the top and one *consistency* term per lower level,
  $\log q(z_l \mid z_{l-1}) - \log p(z_l \mid z_{l+1})$, all Monte Carlo over one ancestral sample of the chain.
* **Top-down** (ladder): a bottom-up pass gives a Gaussian $\mathcal N(\mu_{d,l}, \sigma_{d,l}^2)$ per level;
  $q(z_L \mid x)$ is the top one, and below it $q(z_l \mid z_{l+1}, x)$ is the **precision-weighted**
  combination with the prior: $\sigma_q^{-2} = \sigma_d^{-2} + \sigma_p^{-2}$,
  $\mu_q = \sigma_q^2(\mu_d \sigma_d^{-2} + \mu_p \sigma_p^{-2})$. Each level's term is
  $\mathrm{KL}(q(z_l \mid z_{l+1}, x) \,\|\, p(z_l \mid z_{l+1}))$, analytic given the sampled $z_{l+1}$.

In both cases $\mathrm{ELBO} = \mathbb E_q[\log p(x, z_{1:L}) - \log q(z_{1:L} \mid x)]
= \text{reconstruction} - \sum_l \text{kl\_levels}_l$."""),
    code("""import time
import numpy as np
import matplotlib.pyplot as plt
import elbokit as ek

ek.set_num_threads(2)
train, test = ek.datasets.digits()          # 8x8 digits in [0, 1]: (1500, 64), (297, 64)
h = ek.HVAE(64, z_dims=(8, 4), hidden=(64,), structure="markov", dtype="float64", seed=0)
print(h)
for name, p in h.parameters().items():
    print(f"{name:28s} {p.shape}")"""),
    md("""## From the joint and the encoder to the ELBO's terms

Draw one ancestral sample of the chain $z \\sim q(z \\mid x)$ with our own noise, evaluate every density
of the joint and of the encoder with NumPy from the networks' outputs (`encode`, `prior`,
`decode`), and compare with the engine's terms for the same noise (`kl="mc"`)."""),
    code("""def log_normal(z, mu, logvar):
    return -0.5 * (np.log(2 * np.pi) + logvar + (z - mu) ** 2 * np.exp(-logvar)).sum(-1)

x = test[:5]
rng = np.random.default_rng(0)
eps = [rng.standard_normal((x.shape[0], z)) for z in h.z_dims]       # one draw per level
(mu1, lv1), (mu2, lv2) = h.encode(x, eps=eps)                       # q(z1|x), q(z2|z1) along the chain
z1 = mu1 + np.exp(0.5 * lv1) * eps[0]
z2 = mu2 + np.exp(0.5 * lv2) * eps[1]
pm1, plv1 = h.prior(z2, level=2)                                     # p(z1|z2)
logits = h.decode(z1, logits=True)                                   # p(x|z1), Bernoulli logits
log_px_z1 = (x * logits - np.logaddexp(0, logits)).sum(-1)
log_joint = log_px_z1 + log_normal(z1, pm1, plv1) + log_normal(z2, 0 * z2, 0 * z2)
log_q = log_normal(z1, mu1, lv1) + log_normal(z2, mu2, lv2)

r = h.elbo(x, eps=[e[None] for e in eps], kl="mc")
print("log p(x,z) - log q(z|x):", np.round(log_joint - log_q, 4))
print("engine's ELBO          :", np.round(r.elbo, 4))
print("reconstruction         :", np.round(r.reconstruction, 4))
print("kl_levels (consistency, prior matching):\\n", np.round(r.kl_levels, 4))
assert np.allclose(log_joint - log_q, r.elbo, atol=1e-10)
assert np.allclose(r.reconstruction, log_px_z1, atol=1e-10)
assert np.allclose(r.kl_levels[:, 0], log_normal(z1, mu1, lv1) - log_normal(z1, pm1, plv1), atol=1e-10)
assert np.allclose(r.kl_levels[:, 1], log_normal(z2, mu2, lv2) - log_normal(z2, 0 * z2, 0 * z2), atol=1e-10)
assert np.allclose(r.elbo, r.reconstruction - r.kl_levels.sum(axis=1))"""),
    md("""The top-down model's terms are analytic KLs given the sampled upper latents; with `kl="mc"` they
become $\\log q - \\log p$ at the samples. Both estimators are unbiased, the analytic one has lower
variance:"""),
    code("""td = ek.HVAE(64, z_dims=(8, 4), hidden=(64,), structure="topdown", dtype="float64", seed=0)
ra = td.elbo(test[:50], n_samples=200, kl="analytic", seed=1)
rm = td.elbo(test[:50], n_samples=200, kl="mc", seed=2)
print(ra)
print("per-level mean, analytic:", ra.level_means().round(3), " mc:", rm.level_means().round(3))
assert np.allclose(ra.level_means(), rm.level_means(), atol=0.05)"""),
    md("""## Training on digits: each level's term during training

Three models with the same hidden width and the same total latent width (12): a one-level VAE, and
2-level Markov and top-down HVAEs. Same recipe for all (Adam, KL warm-up over 300 steps). The
history holds the per-level terms (`kl_terms`, epochs × L) and active units per level."""),
    code("""recipe = dict(epochs=20, batch_size=64, lr=2e-3, warmup_steps=300, validation=test, progress=False, seed=0)
models = {"VAE z=12": ek.VAE(64, 12, hidden=(128,), seed=0),
          "HVAE markov (8, 4)": ek.HVAE(64, (8, 4), hidden=(128,), structure="markov", seed=0),
          "HVAE topdown (8, 4)": ek.HVAE(64, (8, 4), hidden=(128,), structure="topdown", seed=0)}
hists = {}
for name, m in models.items():
    t = time.perf_counter()
    hists[name] = m.fit(train, **recipe)
    print(f"{name:22s} {m.num_parameters:6d} parameters, {time.perf_counter() - t:5.1f} s, "
          f"held-out ELBO {hists[name]['val_elbo'][-1]:.2f}, active units {hists[name]['active_units'][-1]}")
for name in ("HVAE markov (8, 4)", "HVAE topdown (8, 4)"):
    hist = hists[name]
    assert hist["kl_terms"].shape == (20, 2)
    assert np.allclose(hist["train_kl"], hist["kl_terms"].sum(axis=1))"""),
    code("""fig, axes = plt.subplots(1, 3, figsize=(14, 3.5))
for ax, name in zip(axes[:2], ("HVAE markov (8, 4)", "HVAE topdown (8, 4)")):
    k = hists[name]["kl_terms"]
    for l in range(k.shape[1]):
        ax.plot(k[:, l], label=f"level {l + 1}" + (" (top)" if l == k.shape[1] - 1 else ""))
    ax.plot(hists[name]["beta"], "k:", label="β (warm-up)")
    ax.set(title=name + ": KL per level", xlabel="epoch", ylabel="nats")
    ax.legend()
for name, hist in hists.items():
    axes[2].plot(hist["val_elbo"], label=name)
axes[2].set(title="held-out ELBO", xlabel="epoch", ylabel="nats", ylim=(-35, -22))
axes[2].legend()
plt.tight_layout()"""),
    md("""Read the curves level by level: KL warm-up (β rising to 1) lets every level take information
early; a level whose term stays near 0 nats has collapsed onto its prior (posterior collapse, MATH.md §2),
which the per-level active units show too. Free bits per level (`fit(..., free_bits=λ)`) keep each
level's term above λ during training."""),
    md("""## Comparison with the one-level VAE

Held-out ELBO (10 samples) and the importance-weighted bound $L_K$ over the whole latent chain,
$\\log w = \\log p(x, z_{1:L}) - \\log q(z_{1:L} \\mid x)$. Here $K = 500$ to keep the notebook fast;
`benchmarks/hvae_vs_vae_digits.py` trains longer and reports $L_{5000}$."""),
    code("""print(f"{'model':22s} {'ELBO':>17s} {'L_500':>17s}")
for name, m in models.items():
    r = m.elbo(test, n_samples=10, seed=1)
    ll = m.log_likelihood(test, k=500, seed=2)
    mean, se = ek.mean_stderr(ll)
    print(f"{name:22s} {r.mean():8.3f} ± {r.stderr():.3f} {mean:8.3f} ± {se:.3f}")
    assert mean > r.mean()          # L_K >= ELBO (on average)"""),
    md("""With one level both structures are exactly the VAE (same parameter names, initial weights,
ELBO and gradients):"""),
    code("""v1 = ek.VAE(64, 12, hidden=(128,), dtype="float64", seed=3)
h1 = ek.HVAE(64, (12,), hidden=(128,), structure="topdown", dtype="float64", seed=3)
assert list(v1.parameters()) == list(h1.parameters())
assert np.array_equal(v1.elbo(test, seed=4).elbo, h1.elbo(test, seed=4).elbo)
print("one-level HVAE == VAE:", list(h1.parameters())[:4], "...")"""),
]

nb = nbf.v4.new_notebook()
nb["cells"] = cells
nb["metadata"] = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "notebooks", "02_hierarchical_vae.ipynb")
nbf.write(nb, path)
print("wrote", path)
