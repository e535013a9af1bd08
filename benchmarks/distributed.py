"""Data-parallel scaling over MPI processes (issue 12): 1 and 2 processes x 1 thread on this machine,
the communication share of a step, and a paper estimate of throughput on 8 and 64 machines.

    python benchmarks/distributed.py [--quick] [--json PATH] [--cases vae,diffusion,unet]

Cases (float32, Adam, the global batch of benchmarks/run.py): the Fashion-MNIST VAE 784-400-20
(case 1, batch 128), the diffusion eps-MLP 3x256 on the 2-D swiss roll (case 6, batch 512) and the
U-Net (32, 64) eps-network on 28x28 (case 11, batch 64). Each count of processes runs as
``mpirun -n R --bind-to core`` with OMP_NUM_THREADS=1 (one core per process); a step's
allreduce (gradient and statistics, summed in place) is timed inside the run.

The estimate (not a measurement) for R machines of this kind, one process each:
  step(R) = compute(b) + allreduce(R),  allreduce(R) = 2 (R - 1) alpha + 2 (R - 1) / R * 4 P / beta
(a ring allreduce of P float32), compute(b) the measured one-process step time at the per-process
batch b (strong scaling: b = B / R, the same global batch; weak scaling: b = B, R times the
examples per step). alpha, beta: this machine's shared-memory loopback as measured, and two
assumed networks, 10 GbE (alpha 30 us, beta 1.1 GB/s) and 100 Gb/s InfiniBand (alpha 2 us,
beta 11 GB/s). elbokit does not overlap the allreduce with the backward pass, so the sum is the
step.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.abspath(__file__)
NETWORKS = {"loopback (measured)": None, "10 GbE (assumed)": (30e-6, 1.1e9), "100 Gb/s IB (assumed)": (2e-6, 11e9)}
CASES = {
    "vae": dict(label="Fashion-MNIST VAE 784-400-20 train step (batch 128)", batch=128, steps=200, quick_steps=40),
    "diffusion": dict(label="diffusion eps-MLP 3x256 train step, swiss roll (batch 512)", batch=512, steps=60,
                      quick_steps=12),
    "unet": dict(label="U-Net (32,64) eps-network train step, 28x28 (batch 64)", batch=64, steps=6, quick_steps=2),
}


# ------------------------------------------------------------------------------------- worker
def _model_and_data(case, rows):
    import numpy as np

    import elbokit as ek
    if case == "vae":
        try:
            x = ek.datasets.fashion_mnist(limit=rows, dtype=np.float32)[0]
        except (FileNotFoundError, OSError):
            x = np.random.default_rng(0).random((rows, 784), dtype=np.float32)
        x = np.concatenate([x] * (-(-rows // len(x))))[:rows]
        return ek.VAE(784, 20, hidden=(400,), seed=0), x
    if case == "diffusion":
        return (ek.Diffusion(2, timesteps=1000, hidden=(256, 256, 256), emb_dim=32, seed=0),
                ek.datasets.swiss_roll(rows, seed=0).astype(np.float32))
    x = np.random.default_rng(0).uniform(-1, 1, (rows, 784)).astype(np.float32)
    return ek.Diffusion(timesteps=1000, net="unet", image_shape=(1, 28, 28), channels=(32, 64), groups=8, seed=0), x


def worker(case, steps, repeats, out, compute_batches):
    """Under mpirun: the best of `repeats` distributed fits of `steps` steps; process 0 writes the
    rates, the allreduce's share, and (one process) the compute time at other batch sizes."""
    import numpy as np

    import elbokit as ek
    from elbokit import distributed as dist
    B = CASES[case]["batch"]
    R, r = dist.size(), dist.rank()
    spent = [0.0, 0]
    reduce = dist.Group.allreduce

    def timed(self, grad, stats):
        t0 = time.perf_counter()
        reduce(self, grad, stats)
        spent[0] += time.perf_counter() - t0
        spent[1] += 1

    dist.Group.allreduce = timed
    best = None
    for _ in range(repeats):
        model, x = _model_and_data(case, B * steps)
        dist.world().Barrier()
        spent[:] = [0.0, 0]
        t0 = time.perf_counter()
        model.fit(x, epochs=1, batch_size=B, progress=False, distributed=True)
        t = time.perf_counter() - t0
        if best is None or t < best[0]:
            best = (t, spent[0], spent[1])
    t, comm, calls = best
    P = model.num_parameters
    # the raw allreduce of P float32 and of 8 doubles (latency), best of many
    w = dist.world()
    g, s = np.ones(P, np.float32), np.ones(8)
    from mpi4py import MPI
    ar = {}
    for name, buf, n in (("P", g, 30), ("small", s, 300)):
        tb = []
        for _ in range(n):
            w.Barrier()
            t1 = time.perf_counter()
            w.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
            tb.append(time.perf_counter() - t1)
        ar[name] = float(np.median(tb))
    res = dict(case=case, ranks=R, steps=steps, seconds=t, steps_per_s=steps / t, allreduce_s=comm,
               allreduce_calls=calls, params=int(P), batch=B, allreduce_P_s=ar["P"], allreduce_small_s=ar["small"],
               threads=ek.get_num_threads())
    if R == 1 and compute_batches:
        comp = {}
        for b in compute_batches:
            n = max(2, min(steps, int(steps * B / b / 4) + 2))
            tb = []
            for _ in range(repeats):
                model, x = _model_and_data(case, b * n)
                t1 = time.perf_counter()
                model.fit(x, epochs=1, batch_size=b, progress=False)
                tb.append((time.perf_counter() - t1) / n)
            comp[str(b)] = min(tb)
        res["compute_s"] = comp
    if r == 0:
        with open(out, "w") as f:
            json.dump(res, f)


# ------------------------------------------------------------------------------------- driver
def _mpirun(n):
    cmd = ["mpirun", "-n", str(n), "--bind-to", "core"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    return cmd


def _estimate(comp, P, B, R, alpha, beta, strong):
    b = max(1, B // R) if strong else B
    keys = sorted(comp, key=int)
    # compute(b): the measured batch nearest below or at b (per-step cost grows with b)
    k = min(keys, key=lambda k: abs(int(k) - b))
    t_ar = 0.0 if R == 1 else 2 * (R - 1) * alpha + 2 * (R - 1) / R * 4 * P / beta
    step = comp[k] + t_ar
    return (b * R) / step, t_ar / step


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps (a smoke run)")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--cases", default="vae,diffusion,unet")
    ap.add_argument("--worker", nargs=5, metavar=("CASE", "STEPS", "REPEATS", "OUT", "BATCHES"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        case, steps, repeats, out, batches = a.worker
        worker(case, int(steps), int(repeats), out, [int(b) for b in batches.split(",") if b])
        return 0
    if shutil.which("mpirun") is None:
        print("mpirun not found: apt-get install openmpi-bin libopenmpi-dev; pip install mpi4py", file=sys.stderr)
        return 2
    import tempfile
    env = dict(os.environ, OMP_NUM_THREADS="1")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in a.cases.split(","):
            c = CASES[case]
            steps = c["quick_steps"] if a.quick else c["steps"]
            repeats = 2 if a.quick or case == "unet" else 3
            B = c["batch"]
            batches = sorted({B, B // 2, max(1, B // 8), max(1, B // 64)})
            for R in (1, 2):
                out = os.path.join(tmp, f"{case}{R}.json")
                cmd = _mpirun(R) + [sys.executable, HERE, "--worker", case, str(steps), str(repeats), out,
                                    ",".join(map(str, batches)) if R == 1 else ""]
                p = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if p.returncode != 0:
                    print(p.stdout[-2000:], p.stderr[-2000:], file=sys.stderr)
                    return 1
                with open(out) as f:
                    results[(case, R)] = json.load(f)
    rows = []
    print(f"data-parallel scaling, 1 thread per process ({os.cpu_count()} CPUs); allreduce timed inside the step")
    print(f"{'case':58s} | {'P':>9s} | {'1 proc steps/s':>14s} | {'2 procs steps/s':>15s} | {'scaling':>7s} | "
          f"{'allreduce ms':>12s} | {'comm share':>10s} | {'raw allreduce ms':>16s}")
    for case in a.cases.split(","):
        r1, r2 = results[(case, 1)], results[(case, 2)]
        comm_ms = 1e3 * r2["allreduce_s"] / max(1, r2["allreduce_calls"])
        share = r2["allreduce_s"] / r2["seconds"]
        row = dict(case=case, label=CASES[case]["label"], params=r1["params"], rate1=r1["steps_per_s"],
                   rate2=r2["steps_per_s"], scaling=r2["steps_per_s"] / r1["steps_per_s"], allreduce_ms=comm_ms,
                   comm_share=share, raw_allreduce_ms=1e3 * r2["allreduce_P_s"],
                   raw_small_us=1e6 * r2["allreduce_small_s"], compute_s=r1["compute_s"], batch=r1["batch"])
        rows.append(row)
        print(f"{CASES[case]['label']:58s} | {row['params']:>9,d} | {row['rate1']:>14.2f} | {row['rate2']:>15.2f} | "
              f"{row['scaling']:>6.2f}x | {comm_ms:>12.3f} | {100 * share:>9.1f}% | {row['raw_allreduce_ms']:>16.3f}")
    print()
    print("paper estimate: examples/s on R machines of this kind (1 process x 1 thread each); "
          "step = compute(per-process batch, measured) + ring allreduce(alpha, beta)")
    print(f"{'case':10s} | {'network':22s} | {'alpha us':>8s} | {'beta GB/s':>9s} | "
          + " | ".join(f"{s} R={R:<3d}" for s in ("strong", "weak") for R in (1, 8, 64)) + " | comm share weak R=64")
    for row in rows:
        # loopback: alpha from the 8-double allreduce (2 alpha at R = 2), beta from the P one
        a_lb = row["raw_small_us"] * 1e-6 / 2
        b_lb = 4 * row["params"] / max(1e-9, row["raw_allreduce_ms"] * 1e-3 - 2 * a_lb)
        row["estimate"] = {}
        for net, ab in NETWORKS.items():
            alpha, beta = ab if ab is not None else (a_lb, b_lb)
            vals = []
            for strong in (True, False):
                for R in (1, 8, 64):
                    vals.append(_estimate(row["compute_s"], row["params"], row["batch"], R, alpha, beta, strong))
            row["estimate"][net] = dict(alpha=alpha, beta=beta, strong={str(R): v[0] for R, v in zip((1, 8, 64), vals[:3])},
                                        weak={str(R): v[0] for R, v in zip((1, 8, 64), vals[3:])},
                                        weak64_share=vals[5][1])
            print(f"{row['case']:10s} | {net:22s} | {alpha * 1e6:>8.1f} | {beta / 1e9:>9.2f} | "
                  + " | ".join(f"{v[0]:>12,.0f}" for v in vals) + f" | {100 * vals[5][1]:>19.1f}%")
    print()
    print("compute(b): one process, one thread, seconds per step at per-process batch b")
    for row in rows:
        print(f"  {row['case']:10s} " + ", ".join(f"b={b}: {1e3 * t:.2f} ms" for b, t in
                                                  sorted(row["compute_s"].items(), key=lambda kv: int(kv[0]))))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
