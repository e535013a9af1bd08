#!/usr/bin/env python
"""elbokit against PyTorch, and against the machine's limit.

    python benchmarks/run.py                      # every case, full sizes (~1 min when the 2 cores are quiet)
    python benchmarks/run.py --quick --cases 2,3  # a smoke run
    python benchmarks/run.py --json out.json --threads 2

Each case runs an elbokit computation and the same computation written in PyTorch
(benchmarks/torch_models.py): same architecture, same initial weights (``vae.parameters()``
loaded into the torch module), same data, same batches, same noise, float32, the same number of
threads. The two alternate inside one loop (elbokit first on even repeats, PyTorch first on odd
ones), warm-up excluded; the reported rate is the median over repeats.

No speed may come from doing less: before timing, every case runs both frameworks on identical
inputs and compares what they computed (the ELBO after training, the per-example ELBO, L_K);
a row's ``check`` is "ok" only when they agree within the stated tolerance.

Noise: the engine draws its own (Philox) noise inside each call; PyTorch is handed the same
numbers (``ek.random.normal`` with the engine's streams), precomputed outside its timed region.
Random-number generation therefore counts against elbokit only.

FLOP counts (``flops_*`` below) count only the matrix products, the useful ones:
a linear layer in -> out on B rows costs 2*B*in*out forward; its backward costs 2*B*in*out for
dW plus 2*B*in*out for dX, except for a layer whose input is the data (the first encoder layer),
whose dX neither framework computes. Element-wise work (activations, softplus, exp, Adam) is not
counted. The machine's peak is the best run of two large float32 GEMMs (numpy ``@`` on its
OpenBLAS, ``torch.mm``) with the same threads; "% peak" is elbokit's GFLOP/s over it.

Ratios: > 1 means elbokit is better. Rates (steps/s, examples/s): elbokit / PyTorch. Memory:
PyTorch MiB / elbokit MiB. Thread scaling: elbokit's 2-over-1 speed-up / PyTorch's.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

# ----------------------------------------------------------------------------- settings
FULL = dict(repeats=7, gemm_n=2048, gemm_repeats=7,
            c1_steps=20, c1_epochs=2,      # 2560 rows, batch 128: 40 steps per timed run
            c2_steps=20, c2_epochs=10,     # 1280 rows, batch 64: 200 steps per timed run
            c3_n=10000, c4_n=1000, c4_k=1000, c4_repeats=3, c8_repeats=5)
QUICK = dict(repeats=3, gemm_n=1024, gemm_repeats=3,
             c1_steps=5, c1_epochs=1, c2_steps=10, c2_epochs=2,
             c3_n=2000, c4_n=16, c4_k=1000, c4_repeats=2, c8_repeats=3)

FMNIST = dict(x_dim=784, z_dim=20, hidden=(400,), batch=128)
DIGITS = dict(x_dim=64, z_dim=8, hidden=(128, 128), batch=64)

TRAIN_RTOL = 1e-3   # ELBO after the same training steps (float32 rounding accumulates over steps)
EVAL_RTOL = 1e-4    # mean per-example ELBO / L_K on the same weights and noise
SEED = 0

# Targets (moonshots): min ratio, and for case 1 a minimum share of the machine's peak.
TARGETS = {1: dict(ratio=1.3, peak=0.60), 2: dict(ratio=4.0), 3: dict(ratio=1.5), 4: dict(ratio=1.5),
           5: dict(ratio=4.0), 6: dict(ratio=4.0), 7: dict(ratio=4.0), 8: dict(scaling=1.7), 9: dict(ratio=1.0)}

ek = np = torch = tm = None  # imported in main() after the thread settings


def _import(threads: int, need_torch: bool = True):
    """numpy's OpenBLAS reads its thread count when it loads: set it first."""
    global ek, np, torch, tm
    os.environ["OPENBLAS_NUM_THREADS"] = str(threads)
    import numpy
    import elbokit
    np, ek = numpy, elbokit
    if need_torch:
        import torch as _torch
        sys.path.insert(0, HERE)
        import torch_models
        torch, tm = _torch, torch_models


def set_threads(n: int) -> None:
    ek.set_num_threads(n)
    if torch is not None:
        torch.set_num_threads(n)


# ----------------------------------------------------------------------------- FLOPs
def layer_shapes(x_dim, z_dim, hidden):
    """(encoder layers incl. both heads, decoder layers incl. the output), each (in, out)."""
    dims = [x_dim, *hidden]
    enc = [(dims[i], dims[i + 1]) for i in range(len(hidden))] + [(dims[-1], z_dim)] * 2
    ddims = [z_dim, *hidden[::-1]]
    dec = [(ddims[i], ddims[i + 1]) for i in range(len(hidden))] + [(ddims[-1], x_dim)]
    return enc, dec


def _mac(layers):
    return sum(i * o for i, o in layers)


def flops_train_step(x_dim, z_dim, hidden, batch, n_samples=1):
    """One training step: forward 2*B*in*out per layer, backward 2*B*in*out (dW) + 2*B*in*out (dX)
    per layer, no dX for the layers fed by the data (encoder.0, or both heads when hidden=())."""
    enc, dec = layer_shapes(x_dim, z_dim, hidden)
    data_fed = enc[:1] if hidden else enc
    return (3 * 2 * batch * _mac(enc) - 2 * batch * _mac(data_fed)
            + 3 * 2 * batch * n_samples * _mac(dec))


def flops_elbo(x_dim, z_dim, hidden, n, n_samples=1):
    """Forward only: the encoder on n rows, the decoder on n*n_samples rows."""
    enc, dec = layer_shapes(x_dim, z_dim, hidden)
    return 2 * n * _mac(enc) + 2 * n * n_samples * _mac(dec)


def flops_log_likelihood(x_dim, z_dim, hidden, n, k):
    """L_K: the encoder once per example, the decoder K times."""
    return flops_elbo(x_dim, z_dim, hidden, n, n_samples=k)


# ----------------------------------------------------------------------------- timing
def alternate(runs, repeats: int, pause: float = 0.01):
    """runs: list of (name, prepare, fn). Each repeat calls every fn once, in an order rotated
    by one each repeat (so none always goes first); prepare() (e.g. thread settings) is not timed.
    A short pause lets the other runtime's spinning OpenMP workers go to sleep.
    Returns name -> list of seconds."""
    out = {name: [] for name, _, _ in runs}
    for r in range(repeats):
        k = r % len(runs)
        for name, prepare, fn in runs[k:] + runs[:k]:
            if prepare is not None:
                prepare()
            time.sleep(pause)
            t0 = time.perf_counter()
            fn()
            out[name].append(time.perf_counter() - t0)
    return out


def median(xs):
    return statistics.median(xs)


# ----------------------------------------------------------------------------- data
_CACHE = {}


def fashion(n_train: int = 0, n_test: int = 0):
    """Fashion-MNIST float32 rows (train[:n_train], test[:n_test]); random [0, 1] data of the same
    shape when the dataset is not installed."""
    need = max(n_train, n_test, 1)
    if _CACHE.get("fm_n", 0) < need:
        try:
            tr, te = ek.datasets.fashion_mnist(limit=need, dtype=np.float32)
            _CACHE["fm_src"] = "Fashion-MNIST"
        except (FileNotFoundError, OSError):
            rng = np.random.default_rng(0)
            tr, te = (rng.random((need, 784), dtype=np.float32) for _ in range(2))
            _CACHE["fm_src"] = "random [0,1] (Fashion-MNIST not installed)"
        _CACHE["fm"], _CACHE["fm_n"] = (tr, te), need
    tr, te = _CACHE["fm"]
    if len(tr) < n_train or len(te) < n_test:
        raise ValueError(f"need {n_train} train / {n_test} test rows, the dataset has {len(tr)} / {len(te)}")
    return np.ascontiguousarray(tr[:n_train]), np.ascontiguousarray(te[:n_test])


def digits(n_train: int):
    if "dg" not in _CACHE:
        try:
            tr, te = ek.datasets.digits()
            _CACHE["dg_src"] = "sklearn digits"
        except ImportError:
            rng = np.random.default_rng(0)
            tr, te = rng.random((1500, 64)), rng.random((297, 64))
            _CACHE["dg_src"] = "random [0,1] (scikit-learn not installed)"
        _CACHE["dg"] = (tr.astype(np.float32), te.astype(np.float32))
    tr, te = _CACHE["dg"]
    reps = -(-n_train // len(tr))
    return np.ascontiguousarray(np.tile(tr, (reps, 1))[:n_train]), te


def rel(a, b) -> float:
    return abs(float(a) - float(b)) / max(abs(float(b)), 1e-30)


# ----------------------------------------------------------------------------- rows
def row(case, elbokit, pytorch, unit, ratio, **extra):
    r = dict(case=case, elbokit=elbokit, pytorch=pytorch, unit=unit, ratio=ratio)
    r.update(extra)
    return r


def rate_row(number, name, unit, work, t_ek, t_pt, flops_per_unit, peak, check, detail, **extra):
    """A row for a rate (work units per second); t_*: lists of seconds for `work` units."""
    ek_rate, pt_rate = work / median(t_ek), work / median(t_pt)
    ek_best, pt_best = work / min(t_ek), work / min(t_pt)
    g_ek = ek_rate * flops_per_unit / 1e9
    g_pt = pt_rate * flops_per_unit / 1e9
    return row(f"{number}. {name}", ek_rate, pt_rate, unit, ek_rate / pt_rate, kind="case", number=number,
               elbokit_best=ek_best, pytorch_best=pt_best, ratio_best=ek_best / pt_best,
               gflops_elbokit=g_ek, gflops_pytorch=g_pt,
               peak_share_elbokit=g_ek / peak if peak else None,
               peak_share_pytorch=g_pt / peak if peak else None,
               check=check, check_detail=detail, repeats=len(t_ek),
               seconds_elbokit=t_ek, seconds_pytorch=t_pt, work_per_run=work, flops_per_unit=flops_per_unit,
               **extra)


# ----------------------------------------------------------------------------- peak
def bench_peak(cfg):
    """Large float32 GEMMs, numpy (OpenBLAS) and torch.mm (MKL), alternating. Rows give the median;
    the machine's peak (the denominator of "% peak") is the best single run of either, the
    closest measure of what the cores can do when other work shares the machine."""
    n = cfg["gemm_n"]
    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    b = rng.random((n, n), dtype=np.float32)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    a @ b
    torch.mm(ta, tb)
    t = alternate([("numpy", None, lambda: a @ b), ("torch", None, lambda: torch.mm(ta, tb))],
                  cfg["gemm_repeats"])
    fl = 2.0 * n ** 3
    rows = []
    for key, name in (("numpy", "numpy @ (OpenBLAS)"), ("torch", "torch.mm")):
        rows.append(row(f"peak: sgemm {n}x{n} float32, {name}", None, None, "GFLOP/s", None, kind="peak",
                        value=fl / median(t[key]) / 1e9, best=fl / min(t[key]) / 1e9, seconds=t[key]))
    return rows, max(r["best"] for r in rows)


# ----------------------------------------------------------------------------- training cases
class TrainCase:
    """elbokit's fit against the equivalent PyTorch loop, from the same initial weights.

    x has steps*batch rows, so each epoch is `steps` full minibatches; a timed run is
    vae.fit(x, epochs, batch) (a fresh Adam, global steps 0..epochs*steps-1) on the elbokit side
    and the same steps with a fresh torch.optim.Adam on the PyTorch side. The first run of each
    (from identical weights) is the equivalence check and the warm-up."""

    def __init__(self, arch, x, x_eval, epochs, adam_impl):
        self.arch, self.x, self.x_eval, self.epochs = arch, x, x_eval, epochs
        B, Z = arch["batch"], arch["z_dim"]
        self.B = B
        self.vae = ek.VAE(arch["x_dim"], Z, hidden=arch["hidden"], likelihood="bernoulli", seed=SEED)
        self.model = tm.TorchVAE.from_elbokit(self.vae)
        self.adam_impl = adam_impl
        n = len(x)
        steps = epochs * -(-n // B)
        S = ek.random.STREAMS
        self.perms = [torch.from_numpy(ek.random.permutation(n, SEED, S["shuffle"] + e)) for e in range(epochs)]
        self.noise = []
        for e in range(epochs):
            for k in range(0, n, B):
                t = len(self.noise)
                b = min(B, n - k)
                self.noise.append(torch.from_numpy(
                    ek.random.normal((1, b, Z), SEED, S["train_noise"] + t).astype(np.float32)))
        assert len(self.noise) == steps
        self.steps = steps
        self.xt = torch.from_numpy(x)
        self.flops = flops_train_step(arch["x_dim"], Z, arch["hidden"], B)

    def run_elbokit(self):
        return self.vae.fit(self.x, epochs=self.epochs, batch_size=self.B, lr=1e-3, optimizer="adam",
                            seed=SEED, progress=False)

    def run_pytorch(self):
        opt = tm.make_adam(self.model, lr=1e-3, impl=self.adam_impl)
        return tm.train_epochs(self.model, opt, self.xt, self.perms, self.noise, self.B)

    def check(self):
        """Both from the same weights: the last epoch's training ELBO and the ELBO of held-out
        rows (same eps) after training must agree to TRAIN_RTOL."""
        hist = self.run_elbokit()
        pt_train = self.run_pytorch()
        ek_train = float(hist["train_elbo"][-1])
        eps = ek.random.normal((1, len(self.x_eval), self.arch["z_dim"]), 123)
        ek_eval = float(self.vae.elbo(self.x_eval, eps=eps).elbo.mean())
        with torch.no_grad():
            pt_eval = float(tm.elbo_terms(self.model, torch.from_numpy(self.x_eval),
                                          torch.from_numpy(eps.astype(np.float32)))[0].mean())
        d_train, d_eval = rel(ek_train, pt_train), rel(ek_eval, pt_eval)
        ok = d_train <= TRAIN_RTOL and d_eval <= TRAIN_RTOL and math.isfinite(ek_eval)
        detail = (f"after {self.steps} steps: train ELBO {ek_train:.4f} vs {pt_train:.4f} (rel {d_train:.1e}), "
                  f"held-out ELBO {ek_eval:.4f} vs {pt_eval:.4f} (rel {d_eval:.1e}); tol {TRAIN_RTOL:g}")
        return ("ok" if ok else "FAIL"), detail

    def timed(self, repeats):
        """Also times vae.encode(x): fit ends each epoch with an active-units diagnostic, an
        encoder pass over the training rows, which the torch loop does not do."""
        t = alternate([("ek", None, self.run_elbokit), ("pt", None, self.run_pytorch),
                       ("enc", None, lambda: self.vae.encode(self.x))], repeats)
        share = self.epochs * median(t["enc"]) / median(t["ek"])
        return t["ek"], t["pt"], share


def case_train(number, name, arch, x, x_eval, epochs, cfg, peak, threads):
    c = TrainCase(arch, x, x_eval, epochs, cfg["adam"])
    set_threads(threads)
    check, detail = c.check()
    t_ek, t_pt, share = c.timed(cfg["repeats"])
    return rate_row(number, name, "steps/s", c.steps, t_ek, t_pt, c.flops, peak, check, detail,
                    threads=threads, steps_per_run=c.steps, batch=c.B, epochs=epochs,
                    fit_active_units_share=share)


def case1(cfg, peak, threads):
    x, x_eval = fashion(FMNIST["batch"] * cfg["c1_steps"], 1000)
    return [case_train(1, "Fashion-MNIST VAE 784-400-20 train step (batch 128, Adam)", FMNIST, x, x_eval,
                       cfg["c1_epochs"], cfg, peak, threads)]


def case2(cfg, peak, threads):
    x, x_eval = digits(DIGITS["batch"] * cfg["c2_steps"])
    return [case_train(2, "digits VAE 64-(128,128)-8 train step (batch 64, Adam)", DIGITS, x, x_eval,
                       cfg["c2_epochs"], cfg, peak, threads)]


def trained_fashion_vae():
    """The case-1 architecture after 10 Adam steps (so that checks are not at the initialization)."""
    x, _ = fashion(1280, 0)
    vae = ek.VAE(784, 20, hidden=(400,), likelihood="bernoulli", seed=SEED)
    vae.fit(x, epochs=1, batch_size=128, seed=SEED, progress=False)
    return vae, tm.TorchVAE.from_elbokit(vae)


def case3(cfg, peak, threads):
    n = cfg["c3_n"]
    _, x = fashion(0, n)
    vae, model = trained_fashion_vae()
    set_threads(threads)
    xt = torch.from_numpy(x)
    # vae.elbo(x, n_samples=1, seed=0) draws ek.random.normal((1, n, z), seed=0): hand torch the same
    eps = torch.from_numpy(ek.random.normal((1, n, 20), SEED).astype(np.float32))

    def run_ek():
        return vae.elbo(x, n_samples=1, seed=SEED).elbo

    def run_pt():
        with torch.no_grad():
            return tm.elbo_terms(model, xt, eps)[0]

    a, b = run_ek(), run_pt().numpy()
    d_mean, d_max = rel(a.mean(), b.mean()), float(np.max(np.abs(a - b)) / np.mean(np.abs(b)))
    ok = d_mean <= EVAL_RTOL and d_max <= 10 * EVAL_RTOL
    detail = (f"mean ELBO {a.mean():.4f} vs {b.mean():.4f} (rel {d_mean:.1e}), max per-example diff "
              f"{d_max:.1e} of mean |ELBO|; tol {EVAL_RTOL:g} / {10 * EVAL_RTOL:g}")
    t = alternate([("ek", None, run_ek), ("pt", None, run_pt)], cfg["repeats"])
    return [rate_row(3, f"ELBO evaluation, {n} Fashion-MNIST examples (n_samples=1)", "examples/s", n,
                     t["ek"], t["pt"], flops_elbo(784, 20, (400,), 1), peak,
                     "ok" if ok else "FAIL", detail, threads=threads)]


def case4(cfg, peak, threads):
    n, K = cfg["c4_n"], cfg["c4_k"]
    _, x = fashion(0, n)
    vae, model = trained_fashion_vae()
    set_threads(threads)
    xt = torch.from_numpy(x)
    # the engine's importance samples: index (b*K + k)*Z + j of (seed, STREAMS['log_likelihood'])
    eps = torch.from_numpy(
        ek.random.normal((n, K, 20), SEED, ek.random.STREAMS["log_likelihood"]).astype(np.float32))

    def run_ek():
        return vae.log_likelihood(x, k=K, seed=SEED)

    def run_pt():
        return tm.log_likelihood(model, xt, eps)

    # warm-up on a few rows, then the check on the first timed run's output
    vae.log_likelihood(x[:4], k=K, seed=SEED)
    tm.log_likelihood(model, xt[:4], eps[:4])
    outs = {}

    def timed(name, fn):
        def f():
            outs.setdefault(name, fn())
        return f
    t = alternate([("ek", None, timed("ek", run_ek)), ("pt", None, timed("pt", run_pt))], cfg["c4_repeats"])
    a, b = outs["ek"], outs["pt"].numpy()
    d_mean, d_max = rel(a.mean(), b.mean()), float(np.max(np.abs(a - b)) / np.mean(np.abs(b)))
    ok = d_mean <= EVAL_RTOL and d_max <= 10 * EVAL_RTOL
    detail = (f"mean L_{K} {a.mean():.4f} vs {b.mean():.4f} (rel {d_mean:.1e}), max per-example diff "
              f"{d_max:.1e} of mean |L_K|; tol {EVAL_RTOL:g} / {10 * EVAL_RTOL:g}")
    return [rate_row(4, f"log-likelihood L_{K}, {n} Fashion-MNIST examples (chunked)", "examples/s", n,
                     t["ek"], t["pt"], flops_log_likelihood(784, 20, (400,), 1, K), peak,
                     "ok" if ok else "FAIL", detail, threads=threads)]


# Cases 5-7: models the engine does not have yet. Each function returns its rows like case1..4
# (rate_row with a check) once the model exists; until then the row says "n/a (not implemented)".
def _not_implemented(number, name):
    def f(cfg, peak, threads):
        return [row(f"{number}. {name}", None, None, None, None, kind="n/a", number=number,
                    check="n/a", check_detail="n/a (not implemented)")]
    return f


case5 = _not_implemented(5, "HVAE training step")
case6 = _not_implemented(6, "diffusion model training step")
case7 = _not_implemented(7, "diffusion model ELBO evaluation")


def case8(cfg, peak, threads):
    """Case 1 at 1 thread and at `threads` threads, all four runs alternating."""
    x, x_eval = fashion(FMNIST["batch"] * cfg["c1_steps"], 1000)
    c = TrainCase(FMNIST, x, x_eval, cfg["c1_epochs"], cfg["adam"])
    set_threads(threads)
    check, detail = c.check()
    runs = []
    for n_thr in (1, threads):
        prep = (lambda n=n_thr: set_threads(n))
        runs += [(f"ek{n_thr}", prep, c.run_elbokit), (f"pt{n_thr}", prep, c.run_pytorch)]
    t = alternate(runs, cfg["c8_repeats"])
    set_threads(threads)
    r1 = rate_row(8, "case 1 at 1 thread", "steps/s", c.steps, t["ek1"], t["pt1"], c.flops, peak,
                  check, detail, threads=1)
    r2 = rate_row(8, f"case 1 at {threads} threads", "steps/s", c.steps, t[f"ek{threads}"],
                  t[f"pt{threads}"], c.flops, peak, check, detail, threads=threads)
    r1["case"], r2["case"] = "8a. case 1 at 1 thread", f"8b. case 1 at {threads} threads"
    r1["kind"] = r2["kind"] = "case-detail"
    s_ek, s_pt = r2["elbokit"] / r1["elbokit"], r2["pytorch"] / r1["pytorch"]
    b_ek, b_pt = r2["elbokit_best"] / r1["elbokit_best"], r2["pytorch_best"] / r1["pytorch_best"]
    r = row(f"8. thread scaling of case 1, 1 -> {threads} threads", s_ek, s_pt, f"x ({threads}T/1T)",
            s_ek / s_pt, kind="scaling", number=8, check=check, check_detail=detail,
            elbokit_best=b_ek, pytorch_best=b_pt, ratio_best=b_ek / b_pt)
    return [r1, r2, r]


def case9(cfg, peak, threads, quick):
    """Peak memory of case 1's timed run, each framework in a fresh subprocess."""
    res = {}
    for fw in ("elbokit", "pytorch"):
        cmd = [sys.executable, os.path.abspath(__file__), "--memory-worker", fw, "--threads", str(threads)]
        if quick:
            cmd.append("--quick")
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if p.returncode != 0:
            raise RuntimeError(f"memory worker {fw} failed:\n{p.stderr[-3000:]}")
        res[fw] = json.loads(p.stdout.strip().splitlines()[-1])
    m_ek, m_pt = res["elbokit"]["peak_mib"], res["pytorch"]["peak_mib"]
    d = rel(res["elbokit"]["train_elbo"], res["pytorch"]["train_elbo"])
    ok = d <= TRAIN_RTOL
    detail = (f"train ELBO {res['elbokit']['train_elbo']:.4f} vs {res['pytorch']['train_elbo']:.4f} "
              f"(rel {d:.1e}); {res['elbokit']['method']}; baseline RSS elbokit "
              f"{res['elbokit']['baseline_mib']:.1f} MiB, PyTorch {res['pytorch']['baseline_mib']:.1f} MiB")
    return [row("9. peak memory of case 1 (above post-import baseline)", m_ek, m_pt, "MiB",
                m_pt / max(m_ek, 1e-9), kind="memory", number=9, check="ok" if ok else "FAIL",
                check_detail=detail, workers=res)]


def _status_kib(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def memory_worker(fw, threads, quick):
    """Runs case 1's timed run once in this fresh process and prints {peak_mib, ...} as JSON.
    Peak = VmHWM after the run minus VmRSS after imports and setup, the high-water mark having
    been reset (/proc/self/clear_refs) so that loading the data does not count."""
    cfg = QUICK if quick else FULL
    _import(threads, need_torch=(fw == "pytorch"))
    set_threads(threads)
    x, x_eval = fashion(FMNIST["batch"] * cfg["c1_steps"], 0)
    if fw == "pytorch":
        c = TrainCase(FMNIST, x, x_eval, cfg["c1_epochs"], cfg["adam"])
        run = c.run_pytorch
    else:
        vae = ek.VAE(784, 20, hidden=(400,), likelihood="bernoulli", seed=SEED)

        def run():
            return float(vae.fit(x, epochs=cfg["c1_epochs"], batch_size=128, seed=SEED,
                                 progress=False)["train_elbo"][-1])
    method = "VmHWM - VmRSS, high-water mark reset after setup"
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        method = "VmHWM - VmRSS (high-water mark could not be reset: includes setup)"
    base = _status_kib("VmRSS")
    elbo = run()
    hwm = _status_kib("VmHWM")
    print(json.dumps(dict(framework=fw, peak_mib=(hwm - base) / 1024, baseline_mib=base / 1024,
                          hwm_mib=hwm / 1024, train_elbo=elbo, method=method)))


CASES = {1: case1, 2: case2, 3: case3, 4: case4, 5: case5, 6: case6, 7: case7, 8: case8, 9: case9}


# ----------------------------------------------------------------------------- report
def target_text(r, peak):
    n = r.get("number")
    tg = TARGETS.get(n)
    if tg is None or r.get("kind") not in ("case", "scaling", "memory", "n/a"):
        return "", None
    parts, met = [], True
    if "ratio" in tg:
        parts.append("<= PyTorch" if n == 9 else f">={tg['ratio']:g}x")
        met &= r["ratio"] is not None and r["ratio"] >= tg["ratio"]
    if "peak" in tg:
        parts.append(f">={tg['peak']:.0%} peak")
        met &= (r.get("peak_share_elbokit") or 0) >= tg["peak"]
    if "scaling" in tg:
        parts.append(f"elbokit >={tg['scaling']:g}x")
        met &= r["elbokit"] is not None and r["elbokit"] >= tg["scaling"]
    if r.get("kind") == "n/a":
        return " & ".join(parts), None
    return " & ".join(parts) + (": met" if met else ": not met"), bool(met)


def fmt(v, unit=None):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if unit and unit.startswith("x"):
        return f"{v:.2f}x"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.1f}"
    return f"{v:.2f}"


def print_table(rows, peak, out=sys.stdout):
    head = ["case", "elbokit", "PyTorch", "unit", "ratio", "target", "ek GFLOP/s", "% peak", "check",
            "ratio (best runs)"]
    lines = []
    for r in rows:
        if r.get("kind") == "meta":
            continue
        if r.get("kind") == "peak":
            lines.append([r["case"], "-", "-", r["unit"], "-", "", fmt(r["value"]),
                          f"{r['value'] / peak:.0%}" if peak else "-", "", ""])
            continue
        if r.get("kind") == "n/a":
            lines.append([r["case"], "n/a (not implemented)", "", "", "", target_text(r, peak)[0], "", "", "", ""])
            continue
        share = r.get("peak_share_elbokit")
        lines.append([r["case"], fmt(r["elbokit"], r["unit"]), fmt(r["pytorch"], r["unit"]), r["unit"] or "",
                      f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-", target_text(r, peak)[0],
                      fmt(r.get("gflops_elbokit")), f"{share:.0%}" if share is not None else "-",
                      r.get("check", ""), f"{r['ratio_best']:.2f}x" if r.get("ratio_best") else ""])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]
    sep = "-+-".join("-" * w for w in widths)

    def line(cells):
        return " | ".join(str(c).ljust(w) if i in (0, 3, 5, 8) else str(c).rjust(w)
                          for i, (c, w) in enumerate(zip(cells, widths)))
    print(line(head), file=out)
    print(sep, file=out)
    for cells in lines:
        print(line(cells), file=out)


# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repeats and smaller sizes (a smoke run)")
    p.add_argument("--cases", default="1,2,3,4,5,6,7,8,9", help="comma-separated case numbers (default: all)")
    p.add_argument("--json", metavar="PATH", help="write the rows as a JSON list of objects")
    p.add_argument("--threads", type=int, default=2, help="threads for both frameworks (default 2)")
    p.add_argument("--torch-adam", choices=("fused", "foreach", "default"), default="fused",
                   help="torch.optim.Adam implementation (default fused: PyTorch's fastest on CPU)")
    p.add_argument("--memory-worker", choices=("elbokit", "pytorch"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    try:
        a.case_list = sorted({int(c) for c in a.cases.split(",") if c.strip()})
    except ValueError:
        p.error(f"--cases must be comma-separated integers, got {a.cases!r}")
    bad = [c for c in a.case_list if c not in CASES]
    if bad or not a.case_list:
        p.error(f"--cases must be among {sorted(CASES)}, got {a.cases!r}")
    if a.threads < 1:
        p.error("--threads must be >= 1")
    return a


def main(argv=None):
    args = parse_args(argv)
    if args.memory_worker:
        QUICK["adam"] = FULL["adam"] = args.torch_adam
        memory_worker(args.memory_worker, args.threads, args.quick)
        return 0
    t_start = time.perf_counter()
    _import(args.threads)
    set_threads(args.threads)
    cfg = dict(QUICK if args.quick else FULL)
    cfg["adam"] = QUICK["adam"] = FULL["adam"] = args.torch_adam
    print(f"elbokit {ek.__version__}, PyTorch {torch.__version__}, numpy {np.__version__}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; threads {args.threads}; "
          f"{'quick' if args.quick else 'full'} run; torch Adam: {args.torch_adam}", flush=True)
    load0 = os.getloadavg()[0]
    rows = [row("environment", ek.__version__, torch.__version__, None, None, kind="meta",
                numpy=np.__version__, python=platform.python_version(), machine=platform.machine(),
                cpus=os.cpu_count(), threads=args.threads, quick=args.quick, torch_adam=args.torch_adam,
                cases=args.case_list)]
    peak_rows, peak = bench_peak(cfg)
    rows += peak_rows
    print(f"machine peak (best sgemm run, {args.threads} threads): {peak:.1f} GFLOP/s", flush=True)
    for n in args.case_list:
        t0 = time.perf_counter()
        fn = CASES[n]
        new = fn(cfg, peak, args.threads, args.quick) if n == 9 else fn(cfg, peak, args.threads)
        for r in new:
            if r.get("kind") in ("case", "scaling", "memory", "n/a"):
                r["target"], r["target_met"] = target_text(r, peak)
        rows += new
        for r in new:
            print(f"  [{time.perf_counter() - t0:5.1f}s] {r['case']}: elbokit {fmt(r['elbokit'], r['unit'])}, "
                  f"PyTorch {fmt(r['pytorch'], r['unit'])} {r['unit'] or ''}; check {r.get('check')}: "
                  f"{r.get('check_detail', '')}", flush=True)
            if "fit_active_units_share" in r:
                print(f"         fit's per-epoch active-units pass (vae.encode of the training rows) is "
                      f"~{r['fit_active_units_share']:.0%} of elbokit's time", flush=True)
    if "fm_src" in _CACHE or "dg_src" in _CACHE:
        print("data:", ", ".join(_CACHE[k] for k in ("fm_src", "dg_src") if k in _CACHE))
    print()
    print_table(rows, peak)
    load1 = os.getloadavg()[0]
    rows[0].update(loadavg_start=load0, loadavg_end=load1, seconds=time.perf_counter() - t_start)
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s; 1-min load average {load0:.1f} at the start, "
          f"{load1:.1f} at the end ({os.cpu_count()} CPUs)")
    if max(load0, load1) > os.cpu_count():
        print("warning: the machine was busy with other work; multi-threaded rates suffer most "
              "(a descheduled OpenMP thread stalls every barrier)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1, default=float)
    failed = [r["case"] for r in rows if r.get("check") == "FAIL"]
    if failed:
        print("EQUIVALENCE CHECK FAILED:", "; ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
