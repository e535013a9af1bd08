"""Speed of one HVAE training step (forward, backward, Adam) on digits: elbokit's C++ engine against
the equivalent PyTorch model (tests/torch_reference_hvae.py: the same layout, weights and
objective), both float32 on the same number of threads.

3 levels z = (16, 8, 4), hidden (128,), batch 128, one sample, analytic KL; elbokit's time is its
fit loop (shuffling, noise, step, optimizer) divided by the number of steps, PyTorch's an
equivalent hand loop (randperm, randn, forward, backward, Adam).

    python benchmarks/hvae_step_vs_torch.py [--epochs 5] [--threads 2]
"""
import argparse
import os
import sys
import time

import numpy as np
import torch

import elbokit as ek

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from torch_reference_hvae import TorchHVAE  # noqa: E402

Z_DIMS, HIDDEN, BATCH, LR = (16, 8, 4), (128,), 128, 1e-3


def torch_steps(model, x, epochs, seed):
    torch.manual_seed(seed)
    x = torch.from_numpy(x)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    steps = 0
    for _ in range(epochs):
        order = torch.randperm(x.shape[0])
        for start in range(0, x.shape[0], BATCH):
            xb = x[order[start:start + BATCH]]
            eps = [torch.randn(1, xb.shape[0], z) for z in model.z_dims]
            _, rec, kl_levels = model.elbo_terms(xb, eps, "analytic")
            loss = -(rec.mean() - kl_levels.mean(0).sum())
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
    return steps


def case(structure, train, epochs, seed=0):
    """(elbokit ms/step, torch ms/step) for one structure."""
    h = ek.HVAE(64, Z_DIMS, hidden=HIDDEN, structure=structure, dtype="float32", seed=seed)
    ref = TorchHVAE.from_elbokit(h).float()
    h.fit(train, epochs=1, batch_size=BATCH, lr=LR, progress=False)  # warm-up
    t = time.perf_counter()
    hist = h.fit(train, epochs=epochs, batch_size=BATCH, lr=LR, progress=False, seed=seed)
    t_ek = (time.perf_counter() - t) / hist["steps"]
    torch_steps(ref, train, 1, seed)  # warm-up
    t = time.perf_counter()
    n = torch_steps(ref, train, epochs, seed)
    t_torch = (time.perf_counter() - t) / n
    return 1e3 * t_ek, 1e3 * t_torch


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    ek.set_num_threads(a.threads)
    torch.set_num_threads(a.threads)
    train = ek.datasets.digits()[0].astype(np.float32)
    print(f"HVAE 64-{HIDDEN}-{Z_DIMS} on digits, batch {BATCH}, float32, {a.threads} threads, "
          f"{a.epochs} epochs timed; ms per training step")
    print(f"{'structure':10s} {'elbokit':>9s} {'pytorch':>9s} {'speed-up':>9s}")
    for structure in ("markov", "topdown"):
        t_ek, t_torch = case(structure, train, a.epochs)
        print(f"{structure:10s} {t_ek:9.3f} {t_torch:9.3f} {t_torch / t_ek:8.2f}x")


if __name__ == "__main__":
    main()
