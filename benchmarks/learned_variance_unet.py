#!/usr/bin/env python
"""Learned reverse variances on images (issue 11, item 6): a U-Net diffusion model on the 8×8 digits
put on the 8-bit grid (discrete256, honest bits/dim), trained the same way with variance "small",
"large" and "learned" (loss "hybrid" for all three), held-out bits/dim with its standard error.

    python benchmarks/learned_variance_unet.py      # ~2.5 min on 2 cores

2026-12-03 (2 cores, quiet): small 5.959 ± 0.051, large 5.165 ± 0.031, learned 5.026 ± 0.034 bits/dim.
"""
import numpy as np, elbokit as ek, time
train, test = ek.datasets.digits()
g = lambda a: 2 * np.round(255 * a) / 255 - 1
xtr, xte = g(train), g(test)[:150]
for var in ("small", "large", "learned"):
    m = ek.Diffusion(net="unet", image_shape=(1, 8, 8), channels=(16, 32), groups=8, timesteps=100, data="discrete256", variance=var, seed=0)
    a = time.perf_counter()
    m.fit(xtr, epochs=15, batch_size=64, lr=2e-3, ema=0.99, seed=0, progress=False, loss="hybrid")
    r = m.elbo(xte, seed=1)
    se = r.stderr() / (64 * np.log(2))
    print(f"{var:8s} loss=hybrid 15 epochs: {r.bits_per_dim():.3f} ± {se:.3f} bits/dim ({time.perf_counter()-a:.0f} s)", flush=True)
