"""The ELBO laboratory's C++ kernels against PyTorch on the same work: a coupling flow's training
step (forward, log-determinant, backward; float32 and float64) and the ELBO surgery's O(n² Z)
aggregate-posterior log-density. Both sides get the same number of threads; results are checked
equal before anything is timed. Usage: python benchmarks/lab_vs_torch.py [--threads 2]
"""
import argparse
import math
import os
import sys
import time

import numpy as np
import torch

import elbokit as ek

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from test_flows import torch_log_prob  # noqa: E402


def best_of(fn, repeat=5, number=20):
    fn()
    return min(_time(fn, number) for _ in range(repeat)) / number


def _time(fn, number):
    t = time.perf_counter()
    for _ in range(number):
        fn()
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    ek.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    x = ek.datasets.two_moons(256, seed=0)
    print(f"threads {args.threads}; times in ms (best of 5)")
    for dtype, tdt in (("float32", torch.float32), ("float64", torch.float64)):
        flow = ek.Flow(2, ("coupling",) * 6, hidden=(64, 64), dtype=dtype, seed=0)
        params = {n: torch.tensor(a, dtype=tdt, requires_grad=True) for n, a in flow.parameters().items()}
        xt = torch.tensor(x, dtype=tdt)
        lp = torch_log_prob(flow, xt, params)[0].mean()
        assert abs(lp.item() - flow.log_prob(x.astype(dtype)).mean()) < 1e-3

        def torch_step():
            for p in params.values():
                p.grad = None
            torch_log_prob(flow, xt, params)[0].mean().backward()

        t_ek = best_of(lambda: flow.log_prob_grad(x))
        t_pt = best_of(torch_step)
        print(f"coupling flow 6x(64,64), batch 256, {dtype}: log p + gradient  elbokit {1e3 * t_ek:7.3f}   "
              f"pytorch {1e3 * t_pt:7.3f}   ratio {t_pt / t_ek:5.1f}x")
    rng = np.random.default_rng(0)
    for n, Z in ((1000, 8), (3000, 16)):
        mu, lv, z = rng.normal(size=(n, Z)), 0.3 * rng.normal(size=(n, Z)), rng.normal(size=(n, Z))
        from elbokit.surgery import log_aggregate_posterior
        mt, lt, zt = (torch.tensor(a) for a in (mu, lv, z))

        def torch_agg():  # chunked to keep the (n, n, Z) temporary small
            out = []
            for i in range(0, n, 500):
                d = (zt[i:i + 500, None, :] - mt[None]) ** 2 * torch.exp(-lt)[None]
                lp = -0.5 * (Z * math.log(2 * math.pi) + lt.sum(1)[None] + d.sum(-1))
                out.append(torch.logsumexp(lp, 1) - math.log(n))
            return torch.cat(out)

        assert np.allclose(torch_agg().numpy(), log_aggregate_posterior(z, mu, lv), atol=1e-10)
        t_ek = best_of(lambda: log_aggregate_posterior(z, mu, lv), repeat=3, number=3)
        t_pt = best_of(torch_agg, repeat=3, number=3)
        print(f"log q_agg, n = M = {n}, Z = {Z}, float64: elbokit {1e3 * t_ek:8.2f}   pytorch {1e3 * t_pt:8.2f}   "
              f"ratio {t_pt / t_ek:5.1f}x")


if __name__ == "__main__":
    main()
