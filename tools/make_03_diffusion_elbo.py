"""Writes notebooks/03_diffusion_elbo.ipynb (without outputs): python tools/make_03_diffusion_elbo.py"""
import os

import nbformat as nbf

md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell
cells = [
    md(r"""# A diffusion model is a hierarchical VAE

A Markovian hierarchical VAE with latents $x_1,\dots,x_T$ (MATH.md §6) has the bound
$$\log p(x_0) \ge \mathbb E_q\Big[\log p_\theta(x_0|x_1) + \log p(x_T) - \log q(x_T|x_{T-1})
+ \sum_{t=1}^{T-1}\big(\log p_\theta(x_t|x_{t+1}) - \log q(x_t|x_{t-1})\big)\Big].$$
A diffusion model (MATH.md §7) is the special case whose latents have the data's dimension, whose
encoder is **fixed**, $q(x_t|x_{t-1}) = \mathcal N(\sqrt{\alpha_t}\,x_{t-1}, \beta_t I)$, and whose top
latent is close to $\mathcal N(0, I)$. Only the decoder $p_\theta(x_{t-1}|x_t)$ is learned.

The same bound can be grouped two ways:

* **A, consistency form**: reconstruction $-$ prior term $\mathrm{KL}(q(x_T|x_{T-1})\|p(x_T))$ $-$ one
  consistency term per level, $\mathbb E_q[\log q(x_t|x_{t-1}) - \log p_\theta(x_t|x_{t+1})]$, all at one
  sample of the whole forward chain (Monte Carlo).
* **B, denoising form**: conditioning each encoder step on $x_0$ by Bayes' rule gives
  reconstruction $-$ $\mathrm{KL}(q(x_T|x_0)\|p(x_T))$ $-\sum_{t\ge 2}\mathbb E_{q(x_t|x_0)}\mathrm{KL}(q(x_{t-1}|x_t,x_0)\|p_\theta(x_{t-1}|x_t))$,
  every KL between Gaussians in closed form.

Both have the same expectation; B has far lower variance. We check both on a trained 2-D model."""),
    code("""import numpy as np
import matplotlib.pyplot as plt
import elbokit as ek

x = ek.datasets.swiss_roll(3000, seed=0)
test = ek.datasets.swiss_roll(200, seed=1)
model = ek.Diffusion(2, timesteps=100, schedule="linear", hidden=(128, 128), variance="large", seed=0)
model"""),
    md(r"""## The schedule
$\bar\alpha_t = \prod_{s\le t}\alpha_s$ falls from 1 to almost 0, so $q(x_T|x_0) = \mathcal N(\sqrt{\bar\alpha_T}x_0, (1-\bar\alpha_T)I)\approx\mathcal N(0,I)$;
the signal-to-noise ratio $\mathrm{SNR}(t) = \bar\alpha_t/(1-\bar\alpha_t)$ decreases monotonically."""),
    code("""t = np.arange(1, model.timesteps + 1)
fig, ax = plt.subplots(1, 2, figsize=(9, 3))
ax[0].plot(t, model.alphas_cumprod, label=r"$\\bar\\alpha_t$"); ax[0].plot(t, model.betas, label=r"$\\beta_t$"); ax[0].legend()
ax[1].semilogy(t, model.snr); ax[1].set_title("SNR(t)"); plt.show()
assert np.allclose(model.alphas_cumprod, np.cumprod(1 - model.betas))
assert np.all(np.diff(model.snr) < 0) and model.alphas_cumprod[-1] < 1e-3"""),
    md("""## Training
The simple loss $\\|\\varepsilon - \\varepsilon_\\theta(x_t, t)\\|^2$ with $t$ uniform, in the C++ loop,
with an exponential moving average of the weights."""),
    code("""ek.set_num_threads(1)  # a small model: one thread is fastest
hist = model.fit(x, epochs=60, batch_size=128, lr=2e-3, ema=0.99, validation=test, seed=0, progress=False)
plt.plot(hist.train_loss); plt.xlabel("epoch"); plt.ylabel("simple loss"); plt.show()
assert hist.train_loss[-1] < hist.train_loss[0]"""),
    md("""## Both decompositions on the trained model
Per example, every term in nats; the per-step terms are an (n, T) array."""),
    code("""B = model.elbo(test, form="denoising", seed=1)
A = model.elbo(test, form="consistency", seed=1)
print(B); print(A)
fig, ax = plt.subplots(1, 2, figsize=(10, 3.2))
ax[0].semilogy(t[1:], B.step_means()[1:]); ax[0].set_title("B: KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t))"); ax[0].set_xlabel("t")
ax[1].plot(t[:-1], A.step_means()[:-1]); ax[1].set_title("A: E[log q(x_t|x_{t-1}) - log p(x_t|x_{t+1})]"); ax[1].set_xlabel("t")
plt.show()
se = np.hypot(A.stderr(), B.stderr())
print(f"A - B = {A.mean() - B.mean():.3f} nats, combined standard error {se:.3f}")
assert abs(A.mean() - B.mean()) < 4 * se"""),
    md("""## Their variances
The same data point, 400 independent draws of each estimator: the means agree, the spread does not.
(B's prior term and step KLs are analytic; A draws one chain and pays for every level's noise.)"""),
    code("""R = 400
reps = np.repeat(test[:1], R, axis=0)
b = model.elbo(reps, form="denoising", seed=2).elbo
a = model.elbo(reps, form="consistency", seed=2).elbo
print(f"B: {b.mean():.3f} ± {b.std(ddof=1) / np.sqrt(R):.3f}  (std {b.std():.3f})")
print(f"A: {a.mean():.3f} ± {a.std(ddof=1) / np.sqrt(R):.3f}  (std {a.std():.3f})")
print(f"variance ratio A/B: {a.var() / b.var():.1f}")
plt.hist(a, 40, alpha=0.6, density=True, label="A (consistency)"); plt.hist(b, 40, alpha=0.6, density=True, label="B (denoising)")
plt.legend(); plt.xlabel("ELBO draw (nats)"); plt.show()
assert abs(a.mean() - b.mean()) < 4 * np.hypot(a.std() / np.sqrt(R), b.std() / np.sqrt(R))
assert a.var() > 5 * b.var()"""),
    md("""## Samples
Ancestral sampling over all T steps, and DDIM over 20 of them (η = 0, deterministic)."""),
    code("""s, traj, steps = model.sample(2000, method="ddpm", seed=3, return_trajectory=True)
s_ddim = model.sample(2000, method="ddim", steps=20, seed=3)
fig, ax = plt.subplots(1, 4, figsize=(14, 3.3), sharex=True, sharey=True)
ax[0].scatter(*x[:2000].T, s=2); ax[0].set_title("data")
ax[1].scatter(*s.T, s=2); ax[1].set_title("DDPM, 100 steps")
ax[2].scatter(*s_ddim.T, s=2); ax[2].set_title("DDIM, 20 steps")
for i in range(30):
    ax[3].plot(traj[:, i, 0], traj[:, i, 1], lw=0.5)
ax[3].set_title("trajectories x_T -> x_0"); plt.show()
assert np.all(np.abs(s.mean(0) - x.mean(0)) < 0.15) and np.all(np.abs(s.std(0) / x.std(0) - 1) < 0.15)"""),
]
nb = nbf.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "notebooks", "03_diffusion_elbo.ipynb")
nbf.write(nb, path)
print("wrote", path)
