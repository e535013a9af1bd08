"""Writes notebooks/10_image_models.ipynb (without outputs): python tools/make_10_image_models.py"""
import os

import nbformat as nbf

md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell
cells = [
    md(r"""# Image models: a convolutional VAE and a U-Net diffusion model

The bounds do not change with the network. A VAE's ELBO is still
$\mathbb E_q[\log p_\theta(x|z)] - \mathrm{KL}(q_\phi(z|x)\,\|\,p(z))$ (MATH.md §2) and a diffusion model's is
still the denoising form of MATH.md §7. What changes is *which functions* $q_\phi$ and $p_\theta$ can
represent. On images the standard choices are convolutions: a VAE whose encoder halves the image
with strided convolutions and whose decoder doubles it back with transposed ones, and a diffusion
decoder $p_\theta(x_{t-1}|x_t)$ whose mean comes from a **U-Net** shared over all $t$, told the step
through a time embedding added to every residual block.

In elbokit a model holds its distributions and its ELBO and takes its networks by description
(`net="mlp"`, `"conv"`, `"unet"`): the same `elbo`, `fit`, `sample` run on any of them. Here both
kinds are trained on the 8×8 digits that ship with scikit-learn, next to their MLP counterparts."""),
    code("""import numpy as np
import matplotlib.pyplot as plt
import elbokit as ek
from elbokit import plots

train, test = ek.datasets.digits()          # (1500, 64), (297, 64) in [0, 1]
ek.set_num_threads(2)"""),
    md(r"""## A convolutional VAE

`ek.VAE(None, z_dim, net="conv", image_shape=(1, 8, 8), channels=(16, 32))`: two `Conv2d(4, stride 2,
padding 1)` levels (8×8 → 4×4 → 2×2), the Gaussian heads on the flattened features, and a decoder that
mirrors it (`Linear` to 32×2×2, two `ConvTranspose2d(4, 2, 1)`). Its parameters carry PyTorch's names and
layouts (`encoder.0.weight` is a `Conv2d` weight (16, 1, 4, 4)). We train it and an MLP VAE of the same
latent size for the same number of steps, and compare held-out ELBO and $L_{1000}$."""),
    code("""vaes = {
    "mlp": ek.VAE(64, 8, hidden=(128, 128), seed=0),
    "conv": ek.VAE(None, 8, net="conv", image_shape=(1, 8, 8), channels=(16, 32), seed=0),
}
results = {}
for name, m in vaes.items():
    m.fit(train, epochs=30, batch_size=128, lr=2e-3, seed=0, progress=False, active_units=False)
    r = m.elbo(test, n_samples=10, seed=1)
    ll = m.log_likelihood(test, k=1000, seed=2)
    results[name] = (r, ll)
    print(f"{name:5s} {m.num_parameters:7d} parameters: held-out ELBO {r.mean():8.3f} ± {r.stderr():.3f}, "
          f"L_1000 {ll.mean():8.3f}, {r.bits_per_dim():.3f} bits/dim (Bernoulli)")
for name, (r, ll) in results.items():
    assert np.all(np.isfinite(r.elbo)) and ll.mean() >= r.mean() - 3 * r.stderr()   # L_K >= ELBO
print(vaes["conv"].parameters()["encoder.0.weight"].shape)"""),
    code("""fig, ax = plt.subplots(2, 2, figsize=(10, 4))
for i, (name, m) in enumerate(vaes.items()):
    plots.plot_images(m.reconstruct(test[:20]), shape=(8, 8), ax=ax[i, 0], title=f"{name}: reconstructions")
    plots.plot_images(m.sample(20, seed=3), shape=(8, 8), ax=ax[i, 1], title=f"{name}: samples")
plt.tight_layout(); plt.show()"""),
    md(r"""## A U-Net diffusion model on 8-bit digits

The digits put on the 256-level grid $k\cdot 2/255 - 1$ make $p_\theta(x_0|x_1)$ a discretized Gaussian,
so every term of the bound is a log-probability and bits/dim is an honest upper bound on the
code length (MATH.md §7). `net="unet"` builds two resolutions (8×8 with 8 channels, 4×4 with 16),
residual blocks with GroupNorm, skip concatenations, and the sinusoidal embedding of $t$ through a
small MLP into every block. We train it and an MLP ε-network with the same schedule and steps."""),
    code("""grid = lambda a: 2 * np.round(255 * a) / 255 - 1
xtr, xte = grid(train), grid(test)[:60]
kw = dict(timesteps=50, data="discrete256", variance="large", seed=0)
diff = {
    "mlp": ek.Diffusion(64, hidden=(256, 256), **kw),
    "unet": ek.Diffusion(net="unet", image_shape=(1, 8, 8), channels=(8, 16), groups=4, **kw),
}
untrained = {name: m.elbo(xte, seed=1).bits_per_dim() for name, m in diff.items()}
elbos = {}
for name, m in diff.items():
    m.fit(xtr, epochs=4, batch_size=64, lr=2e-3, ema=0.99, seed=0, progress=False)
    elbos[name] = m.elbo(xte, seed=1)
    print(f"{name:5s} {m.num_parameters:7d} parameters: {untrained[name]:.3f} bits/dim untrained, "
          f"{elbos[name].bits_per_dim():.3f} trained")
for name, r in elbos.items():
    assert np.all(r.elbo <= 0) and r.bits_per_dim() < untrained[name]   # log-probabilities; training helps"""),
    md(r"""Every term of the bound, per step: the prior term $\mathrm{KL}(q(x_T|x_0)\|p(x_T))$, the step KLs
$\mathrm{KL}(q(x_{t-1}|x_t,x_0)\|p_\theta(x_{t-1}|x_t))$ for $t \ge 2$, and the reconstruction at $t = 1$. The
network only enters the step KLs and the reconstruction; where the U-Net's terms are lower, it
denoises better."""),
    code("""fig, ax = plt.subplots(1, 2, figsize=(11, 3.3))
for name, r in elbos.items():
    ax[0].semilogy(np.arange(2, r.steps.shape[1] + 1), r.steps.mean(0)[1:], label=name)
ax[0].set_xlabel("t"); ax[0].set_ylabel("step KL (nats)"); ax[0].legend()
names = list(elbos)
ax[1].bar(names, [elbos[n].bits_per_dim() for n in names]); ax[1].set_ylabel("bits/dim (held-out)")
plt.tight_layout(); plt.show()
for name, r in elbos.items():
    parts = -r.reconstruction.mean() + r.prior.mean() + r.steps.sum(1).mean()
    assert abs(parts + r.elbo.mean()) < 1e-6 * abs(r.elbo.mean())   # the terms add up to the bound"""),
    md("""Samples of the U-Net model: ancestral over all 50 steps, and one trajectory $x_T \\to x_0$."""),
    code("""m = diff["unet"]
s, traj, steps = m.sample(20, method="ddpm", seed=4, return_trajectory=True)
fig, ax = plt.subplots(1, 2, figsize=(11, 2.5))
plots.plot_images((np.clip(s, -1, 1) + 1) / 2, shape=(8, 8), ax=ax[0], title="U-Net samples (DDPM)", vmin=0, vmax=1)
idx = np.linspace(0, len(steps) - 1, 10).round().astype(int)
plots.plot_images((np.clip(traj[idx, 0], -1, 1) + 1) / 2, shape=(8, 8), ax=ax[1], title="x_T -> x_0", vmin=0, vmax=1)
plt.show()
assert s.shape == (20, 64) and np.isfinite(s).all()"""),
]
nb = nbf.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "notebooks", "10_image_models.ipynb")
nbf.write(nb, path)
print("wrote", path)
