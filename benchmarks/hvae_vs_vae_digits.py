"""Held-out log-likelihood on digits: hierarchical VAEs (2 and 3 levels, both structures) against a
one-level VAE with the same hidden widths and the same total latent width, all trained with the
same recipe. Prints the held-out ELBO (10 samples) and L_K (K = 5000 by default), mean ± s.e. in
nats, and the per-level terms.

    python benchmarks/hvae_vs_vae_digits.py [--epochs 100] [--k 5000]
"""
import argparse
import time

import elbokit as ek


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--k", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    train, test = ek.datasets.digits()
    models = {
        "VAE z=12": ek.VAE(64, 12, hidden=(128,), seed=a.seed),
        "HVAE markov (8, 4)": ek.HVAE(64, (8, 4), hidden=(128,), structure="markov", seed=a.seed),
        "HVAE topdown (8, 4)": ek.HVAE(64, (8, 4), hidden=(128,), structure="topdown", seed=a.seed),
        "HVAE markov (6, 4, 2)": ek.HVAE(64, (6, 4, 2), hidden=(128,), structure="markov", seed=a.seed),
        "HVAE topdown (6, 4, 2)": ek.HVAE(64, (6, 4, 2), hidden=(128,), structure="topdown", seed=a.seed),
    }
    recipe = dict(epochs=a.epochs, batch_size=64, lr=2e-3, warmup_steps=500, progress=False, seed=a.seed)
    print(f"digits: train {train.shape}, test {test.shape}; recipe {recipe}; L_K with K = {a.k}")
    print(f"{'model':24s} {'params':>7s} {'train s':>8s} {'ELBO':>17s} {'L_K':>17s} {'L_K - VAE (paired)':>19s}"
          f"  per-level KL")
    base = None
    for name, m in models.items():
        t = time.perf_counter()
        m.fit(train, **recipe)
        t = time.perf_counter() - t
        r = m.elbo(test, n_samples=10, seed=1)
        per_example = m.log_likelihood(test, k=a.k, seed=2)
        base = per_example if base is None else base
        ll, diff = ek.mean_stderr(per_example), ek.mean_stderr(per_example - base)
        levels = r.level_means() if hasattr(r, "level_means") else [r.mean("kl")]
        print(f"{name:24s} {m.num_parameters:7d} {t:8.1f} {r.mean():8.3f} ± {r.stderr():.3f} "
              f"{ll[0]:8.3f} ± {ll[1]:.3f} {diff[0]:+9.3f} ± {diff[1]:.3f}  {' '.join(f'{k:.2f}' for k in levels)}")


if __name__ == "__main__":
    main()
