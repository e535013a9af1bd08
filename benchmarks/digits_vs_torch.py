"""Held-out quality of elbokit's training against an identical PyTorch training loop on digits.

Both start from the same initial weights (elbokit's seed s, loaded into PyTorch) and train the demo's
VAE 64-(128,128)-8 with Adam (batch 32, lr 2e-3, 20 epochs, analytic KL, one sample), each with its
own random numbers: elbokit its counter-based noise and shuffling, PyTorch torch.randn/randperm
under torch.manual_seed(s). Both trained models are then evaluated by the same estimators (held-out
ELBO with 10 samples, L_5000) on the same noise. float64 throughout (this measures the training,
not the speed; see run.py for speed). Usage: python benchmarks/digits_vs_torch.py [--seeds 3]
"""
import argparse
import os
import sys
import time

import numpy as np
import torch

import elbokit as ek

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from torch_reference import TorchVAE  # noqa: E402

CONFIG = dict(x_dim=64, z_dim=8, hidden=(128, 128), likelihood="bernoulli", activation="relu")
EPOCHS, BATCH, LR = 20, 32, 2e-3


def train_torch(model, x, seed):
    torch.manual_seed(seed)
    x = torch.from_numpy(x)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    for _ in range(EPOCHS):
        order = torch.randperm(x.shape[0])
        for start in range(0, x.shape[0], BATCH):
            xb = x[order[start:start + BATCH]]
            eps = torch.randn(1, xb.shape[0], model.z_dim, dtype=torch.float64)
            loss = -model.objective(xb, eps)
            opt.zero_grad()
            loss.backward()
            opt.step()


def evaluate(vae, test):
    r = vae.elbo(test, n_samples=10, seed=123)
    ll = vae.log_likelihood(test, k=5000, seed=321)
    return r.mean(), r.stderr(), *ek.mean_stderr(ll)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(2)
    train, test = ek.datasets.digits()
    rows = []
    for s in range(args.seeds):
        vae = ek.VAE(**CONFIG, dtype="float64", seed=s)
        ref = TorchVAE.from_elbokit(vae)
        t0 = time.perf_counter()
        vae.fit(train, epochs=EPOCHS, batch_size=BATCH, lr=LR, seed=s, progress=False)
        t1 = time.perf_counter()
        train_torch(ref, train, s)
        t2 = time.perf_counter()
        twin = ek.VAE(**CONFIG, dtype="float64", seed=s)
        twin.set_parameters({k: v.detach().numpy() for k, v in ref.state_dict().items()})
        rows.append(("elbokit", s, *evaluate(vae, test), t1 - t0))
        rows.append(("pytorch", s, *evaluate(twin, test), t2 - t1))
    print(f"digits, VAE 64-(128,128)-8, Adam batch {BATCH} lr {LR}, {EPOCHS} epochs; held-out 297 digits, nats")
    print(f"{'trainer':8s} {'seed':>4s} {'ELBO (10 samples)':>20s} {'L_5000':>20s} {'train s':>8s}")
    for name, s, e, es, l, ls, t in rows:
        print(f"{name:8s} {s:4d} {e:12.3f} ± {es:5.3f} {l:12.3f} ± {ls:5.3f} {t:8.2f}")
    for name in ("elbokit", "pytorch"):
        e = np.array([r[2] for r in rows if r[0] == name])
        l = np.array([r[4] for r in rows if r[0] == name])
        print(f"{name:8s} mean over seeds: ELBO {e.mean():.3f} (sd {e.std(ddof=1) if len(e) > 1 else 0:.3f}), "
              f"L_5000 {l.mean():.3f} (sd {l.std(ddof=1) if len(l) > 1 else 0:.3f})")


if __name__ == "__main__":
    main()
