#!/usr/bin/env python
"""elbokit against PyTorch and JAX, and against the machine's limit.

    python benchmarks/run.py                      # every case, full sizes (~2 min when the 2 cores are quiet)
    python benchmarks/run.py --quick --cases 2,3  # a smoke run
    python benchmarks/run.py --json out.json --threads 2

Each case runs an elbokit computation and the same computation written in PyTorch
(benchmarks/torch_models.py): same architecture, same initial weights (``model.parameters()``
loaded into the torch module), same data, same batches, same noise, float32, the same number of
threads. The two alternate inside one loop (elbokit first on even repeats, PyTorch first on odd
ones), warm-up excluded; the reported rate is the median over repeats.

No speed may come from doing less: before timing, every case runs both frameworks on identical
inputs and compares what they computed (the ELBO or diffusion loss after training, the
per-example ELBO, L_K, the DDPM samples); some cases check the output of their first timed run;
a row's ``check`` is "ok" only when they agree within the stated tolerance.

Noise: the engine draws its own (Philox) noise inside each call; PyTorch is handed the same
numbers (``ek.random.normal`` / ``uniform`` / ``permutation`` with the engine's streams),
precomputed outside its timed region.
Random-number generation therefore counts against elbokit only.

FLOP counts (``flops_*`` below) count only the matrix products, the useful ones:
a linear layer in -> out on B rows costs 2*B*in*out forward; its backward costs 2*B*in*out for
dW plus 2*B*in*out for dX, except for a layer whose input is the data (the first encoder layer,
the eps-network's first layer), whose dX neither framework computes. Element-wise work (activations, softplus, exp, Adam) is not
counted. The machine's peak is the best run of two large float32 GEMMs (numpy ``@`` on its
OpenBLAS, ``torch.mm``) with the same threads; "% peak" is elbokit's GFLOP/s over it.

JAX (optional: ``pip install ".[bench]"``; ``--jax off`` or jax not importable leaves its column
"-"): benchmarks/jax_models.py, the same computations as pure functions, one jit-compiled step or
call per timed unit of work (compiled ahead of time, the compile time reported apart), XLA limited
to --threads CPUs, float32, the same weights and noise, checked against elbokit like PyTorch.

Roofline (second table): per unit of work, the FLOPs above and the bytes a perfect implementation
must move (``bytes_*``: weights, gradients, Adam's moments, activations written and read once, the
data), against the machine's peak and its memory bandwidth measured in the same run (a large
stream copy/triad); the bound is the larger of FLOPs/peak and bytes/bandwidth, and each
framework's share is its rate over the bound's rate. The headline is elbokit against the better
of the two peers.

Ratios: > 1 means elbokit is better. Rates (steps/s, examples/s, points/s): elbokit / PyTorch. Memory:
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
FULL = dict(repeats=7, gemm_n=2048, gemm_repeats=7, bw_n=1 << 24, bw_repeats=7,
            c1_steps=20, c1_epochs=2,      # 2560 rows, batch 128: 40 steps per timed run
            c2_steps=20, c2_epochs=10,     # 1280 rows, batch 64: 200 steps per timed run
            c3_n=10000, c4_n=1000, c4_k=1000, c4_repeats=3,
            c5_steps=20, c5_epochs=5,      # 2560 rows, batch 128: 100 steps per timed run
            c6_steps=10, c6_epochs=6,      # 5120 rows, batch 512: 60 steps per timed run
            c7_n=10000, c7_t=1000, c7_repeats=2,  # ~20 s per elbokit run: 2 repeats
            c10_steps=10, c10_epochs=1, c11_steps=6, c11_epochs=1, c12_n=256, c12_repeats=2, quick=False,
            c8_repeats=5)
QUICK = dict(repeats=3, gemm_n=1024, gemm_repeats=3, bw_n=1 << 22, bw_repeats=3,
             c1_steps=5, c1_epochs=1, c2_steps=10, c2_epochs=2,
             c3_n=2000, c4_n=16, c4_k=1000, c4_repeats=2,
             c5_steps=5, c5_epochs=2, c6_steps=4, c6_epochs=2, c7_n=2000, c7_t=100, c7_repeats=2,
             c10_steps=2, c10_epochs=1, c11_steps=2, c11_epochs=1, c12_n=8, c12_repeats=2, quick=True,
             c8_repeats=3)

FMNIST = dict(x_dim=784, z_dim=20, hidden=(400,), batch=128)
DIGITS = dict(x_dim=64, z_dim=8, hidden=(128, 128), batch=64)
HVAE = dict(x_dim=64, z_dims=(16, 8, 4), hidden=(128,), batch=128)        # case 5, markov, on digits
DIFFUSION = dict(x_dim=2, hidden=(256, 256, 256), emb_dim=32, batch=512)   # cases 6, 7, on the swiss roll
LR = 1e-3

TRAIN_RTOL = 1e-3   # ELBO after the same training steps (float32 rounding accumulates over steps)
EVAL_RTOL = 1e-4    # mean per-example ELBO / L_K on the same weights and noise
SAMPLE_RTOL = 1e-3  # DDPM samples after all T steps with the same noise: max |diff| over mean |x|
SEED = 0

# Targets (moonshots): min ratio against PyTorch ("ratio"), against JAX ("jax"), against the better
# of the two ("peer": PyTorch alone when the JAX column is empty), and for case 1 a minimum share
# of the machine's peak. Issue 15 set 2, 3, 4 and 7 against JAX / the better peer.
TARGETS = {1: dict(ratio=1.3, peak=0.60), 2: dict(ratio=4.0, jax=1.5), 3: dict(peer=1.5), 4: dict(peer=1.5),
           5: dict(ratio=4.0), 6: dict(ratio=4.0), 7: dict(peer=1.5), 8: dict(scaling=1.7), 9: dict(ratio=1.0),
           10: dict(ratio=1.5), 11: dict(ratio=1.3), 12: dict(ratio=1.3)}
CONV_VAE = dict(image_shape=(1, 28, 28), channels=(32, 64), z_dim=16, batch=128)  # case 10, Fashion-MNIST
UNET = dict(image_shape=(1, 28, 28), channels=(32, 64), groups=8, emb_dim=32, batch=64)  # cases 11, 12

ek = np = torch = tm = None  # imported in main() after the thread settings
jax = jnp = jm = None          # optional; imported first in main() by _import_jax
JAX_INFO = dict(status="not requested")


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


def _import_jax(threads: int, mode: str) -> None:
    """Imports jax (CPU, float32) and benchmarks/jax_models.py unless mode is "off"; "auto" leaves
    the JAX column empty when jax is not importable, "on" fails. XLA sizes its intra-op pool from
    the CPUs this thread may run on when its client starts, so the client is started under an
    affinity of `threads` CPUs (then the affinity is restored), and XLA_FLAGS asks for the same.
    Called before numpy, torch and the engine start any thread."""
    global jax, jnp, jm
    if mode == "off":
        JAX_INFO.update(status="off (--jax off)")
        return
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    eigen = "true" if threads > 1 else "false"
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_cpu_multi_thread_eigen={eigen}"
                               f" intra_op_parallelism_threads={threads}"
                               " --xla_force_host_platform_device_count=1").strip()
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    limit = cpus is not None and len(cpus) > threads
    try:
        if limit:
            os.sched_setaffinity(0, cpus[:threads])
        try:
            import jax as _jax
            _jax.config.update("jax_enable_x64", False)   # float32 arrays by default
            devices = _jax.devices()
        finally:
            if limit:
                os.sched_setaffinity(0, cpus)
    except ImportError as e:
        if mode == "on":
            raise SystemExit(f"--jax on: jax is not importable ({e}); pip install '.[bench]'")
        JAX_INFO.update(status=f"not installed ({e.__class__.__name__}: {e})")
        return
    import jax.numpy as _jnp
    sys.path.insert(0, HERE)
    import jax_models
    jax, jnp, jm = _jax, _jnp, jax_models
    JAX_INFO.update(status="on", version=jax.__version__, devices=[str(d) for d in devices],
                    xla_flags=os.environ["XLA_FLAGS"], affinity_limited=bool(limit))
    JAX_INFO.update(jax_thread_check(threads))


def jax_thread_check(threads: int, seconds: float = 0.5) -> dict:
    """How many cores XLA keeps busy: process CPU time over wall time while a compiled float32
    GEMM (1024^3) runs repeatedly, measured before any other runtime has started a thread."""
    a = jnp.ones((1024, 1024), jnp.float32)
    f = jax.jit(lambda m: m @ m).lower(a).compile()
    f(a).block_until_ready()
    n, w0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - w0 < seconds:
        f(a).block_until_ready()
        n += 1
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return dict(cpu_per_wall=cpu / wall, gemm_gflops=n * 2 * 1024 ** 3 / wall / 1e9,
                os_threads=len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else None,
                threads_ok=cpu / wall <= threads + 0.25)


def to_jax(a):
    """A torch tensor or numpy array as a jax device array (float64 -> float32, int64 -> int32)."""
    a = a.numpy() if hasattr(a, "numpy") else np.asarray(a)
    if a.dtype == np.float64:
        a = a.astype(np.float32)
    elif a.dtype == np.int64:
        a = a.astype(np.int32)
    return jnp.asarray(a)


def set_threads(n: int) -> None:
    ek.set_num_threads(n)
    if torch is not None:
        torch.set_num_threads(n)


# ----------------------------------------------------------------------------- FLOPs
def mlp_layers(in_dim, hidden, out_dim, heads=1):
    """(in, out) of an MLP's linear layers: the trunk in_dim -> hidden..., then `heads` output
    layers of out_dim (2 for a Gaussian's mean and log-variance)."""
    dims = [in_dim, *hidden]
    return [(dims[i], dims[i + 1]) for i in range(len(hidden))] + [(dims[-1], out_dim)] * heads


def layer_shapes(x_dim, z_dim, hidden):
    """(encoder layers incl. both heads, decoder layers incl. the output), each (in, out)."""
    return mlp_layers(x_dim, hidden, z_dim, heads=2), mlp_layers(z_dim, hidden[::-1], x_dim)


def _mac(layers):
    return sum(i * o for i, o in layers)


def flops_backprop(layers, rows, data_fed=()):
    """Forward and backward of `layers` on `rows` rows: 2*rows*in*out forward, 2*rows*in*out (dW)
    + 2*rows*in*out (dX) backward per layer, no dX for the layers fed by the data (`data_fed`)."""
    return 3 * 2 * rows * _mac(layers) - 2 * rows * _mac(data_fed)


def flops_train_step(x_dim, z_dim, hidden, batch, n_samples=1):
    """One VAE training step: the encoder on B rows (no dX for encoder.0, or for both heads when
    hidden=()), the decoder on S*B rows."""
    enc, dec = layer_shapes(x_dim, z_dim, hidden)
    return flops_backprop(enc, batch, enc[:1] if hidden else enc) + flops_backprop(dec, batch * n_samples)


def flops_hvae_train_step(x_dim, z_dims, hidden, batch):
    """One training step of the Markov HVAE (one sample): q(z_1|x), q(z_{l+1}|z_l), p(x|z_1) and
    p(z_l|z_{l+1}) all on B rows; only the first encoder's first layer is fed by the data."""
    ins = [x_dim, *z_dims[:-1]]
    enc = [mlp_layers(i, hidden, z, heads=2) for i, z in zip(ins, z_dims)]
    dec = [mlp_layers(z_dims[0], hidden[::-1], x_dim)]
    dec += [mlp_layers(z_dims[l], hidden[::-1], z_dims[l - 1], heads=2) for l in range(1, len(z_dims))]
    layers = [layer for net in enc + dec for layer in net]
    return flops_backprop(layers, batch, enc[0][:1] if hidden else enc[0])


def eps_net_layers(x_dim, hidden, emb_dim):
    """The diffusion eps-network on concat(x_t, emb(t)) (its first layer is fed by the data)."""
    return mlp_layers(x_dim + emb_dim, hidden, x_dim)


def flops_diffusion_train_step(x_dim, hidden, emb_dim, batch):
    layers = eps_net_layers(x_dim, hidden, emb_dim)
    return flops_backprop(layers, batch, layers[:1])


def flops_ddpm_sample(x_dim, hidden, emb_dim, steps):
    """One point's whole chain: the eps-network forward at each of the T steps."""
    return 2 * steps * _mac(eps_net_layers(x_dim, hidden, emb_dim))


def flops_elbo(x_dim, z_dim, hidden, n, n_samples=1):
    """Forward only: the encoder on n rows, the decoder on n*n_samples rows."""
    enc, dec = layer_shapes(x_dim, z_dim, hidden)
    return 2 * n * _mac(enc) + 2 * n * n_samples * _mac(dec)


def flops_log_likelihood(x_dim, z_dim, hidden, n, k):
    """L_K: the encoder once per example, the decoder K times."""
    return flops_elbo(x_dim, z_dim, hidden, n, n_samples=k)


# ----------------------------------------------------------------------------- bytes
# What a perfect implementation must move per unit of work, in float32 (4 bytes): see bytes_pass.
F32 = 4


def _params(layers):
    return sum(i * o + o for i, o in layers)


def bytes_pass(layer_rows, train: bool, extra_floats: float = 0.0) -> float:
    """Bytes of one pass over linear layers layer_rows = [(rows, (in, out)), ...]: the weights read
    once (P floats), each layer's output written once and read once (2 * rows * out); for a
    training step also the weights read again for the backward, the gradient written, Adam
    reading p, g, m, v and writing p, m, v (10 P in all) and each output's gradient written and
    read once (4 * rows * out in all); plus extra_floats (the data read, the results written)."""
    P = sum(_params([layer]) for _, layer in layer_rows)
    act = sum(rows * o for rows, (_, o) in layer_rows)
    return F32 * ((10 * P + 4 * act) if train else (P + 2 * act)) + F32 * extra_floats


def bytes_train_step(x_dim, z_dim, hidden, batch):
    """VAE step: the encoder on B rows, the decoder on B rows; data read by the encoder and the
    likelihood, the noise read."""
    enc, dec = layer_shapes(x_dim, z_dim, hidden)
    return bytes_pass([(batch, l) for l in enc + dec], True, 2 * batch * x_dim + batch * z_dim)


def bytes_hvae_train_step(x_dim, z_dims, hidden, batch):
    ins = [x_dim, *z_dims[:-1]]
    layers = [l for i, z in zip(ins, z_dims) for l in mlp_layers(i, hidden, z, heads=2)]
    layers += mlp_layers(z_dims[0], hidden[::-1], x_dim)
    layers += [l for k in range(1, len(z_dims)) for l in mlp_layers(z_dims[k], hidden[::-1], z_dims[k - 1], heads=2)]
    return bytes_pass([(batch, l) for l in layers], True, 2 * batch * x_dim + batch * sum(z_dims))


def bytes_diffusion_train_step(x_dim, hidden, emb_dim, batch):
    """The eps-network on B rows; x0, eps and t read, the network's input (B, D + E) written and read."""
    layers = eps_net_layers(x_dim, hidden, emb_dim)
    return bytes_pass([(batch, l) for l in layers], True, batch * (3 * x_dim + 1 + 2 * (x_dim + emb_dim)))


def bytes_elbo(x_dim, z_dim, hidden, n):
    """Per example of an n-row ELBO: the weights once per call (/ n), activations, data read twice,
    noise read, the ELBO written."""
    enc, dec = layer_shapes(x_dim, z_dim, hidden)
    return bytes_pass([(n, l) for l in enc + dec], False, n * (2 * x_dim + z_dim + 1)) / n


def bytes_log_likelihood(x_dim, z_dim, hidden, n, k):
    """Per example of L_K: the encoder on n rows, the decoder on n*K rows, the K noise vectors read."""
    enc, dec = layer_shapes(x_dim, z_dim, hidden)
    rows = [(n, l) for l in enc] + [(n * k, l) for l in dec]
    return bytes_pass(rows, False, n * (2 * x_dim + k * z_dim + 1)) / n


def bytes_ddpm_sample(x_dim, hidden, emb_dim, n, steps):
    """Per point of an n-point chain: at each step the weights once (/ n), the network's input and
    activations written and read once, z read, x updated."""
    layers = eps_net_layers(x_dim, hidden, emb_dim)
    per_step = bytes_pass([(n, l) for l in layers], False, n * (2 * (x_dim + emb_dim) + 3 * x_dim))
    return steps * per_step / n


def roofline(r, peak, bw):
    """Adds the roofline fields to a rate row: seconds per unit at the peak and at the bandwidth,
    the bound (the larger), its rate and each framework's share of it."""
    fl, by = r.get("flops_per_unit"), r.get("bytes_per_unit")
    if not fl or not by or not peak or not bw:
        return
    t_c, t_m = fl / (peak * 1e9), by / (bw * 1e9)
    bound_rate = 1.0 / max(t_c, t_m)
    r.update(roofline_bound="compute" if t_c >= t_m else "memory", roofline_rate=bound_rate,
             roofline_compute_s=t_c, roofline_memory_s=t_m,
             intensity=fl / by, bound_share_elbokit=r["elbokit"] / bound_rate,
             bound_share_pytorch=r["pytorch"] / bound_rate,
             bound_share_jax=r["jax"] / bound_rate if r.get("jax") else None)


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


def alternate_keep_first(runs, repeats: int):
    """alternate(), also keeping each fn's output from its first timed call: the check of a case
    too long to run once more just for it. Returns (name -> list of seconds, name -> output)."""
    outs = {}

    def keep(name, fn):
        def f():
            out = fn()
            outs.setdefault(name, out)
        return f
    return alternate([(name, prepare, keep(name, fn)) for name, prepare, fn in runs], repeats), outs


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


def compare_per_example(a, b, name):
    """(check, detail) for per-example values a (elbokit) and b (PyTorch) of the same inputs: the
    means within EVAL_RTOL, the worst example within 10 * EVAL_RTOL of the mean |b|."""
    d_mean, d_max = rel(a.mean(), b.mean()), float(np.max(np.abs(a - b)) / np.mean(np.abs(b)))
    ok = d_mean <= EVAL_RTOL and d_max <= 10 * EVAL_RTOL
    detail = (f"mean {name} {a.mean():.4f} vs {b.mean():.4f} (rel {d_mean:.1e}), max per-example diff "
              f"{d_max:.1e} of mean |{name}|; tol {EVAL_RTOL:g} / {10 * EVAL_RTOL:g}")
    return ("ok" if ok else "FAIL"), detail


# ----------------------------------------------------------------------------- rows
def row(case, elbokit, pytorch, unit, ratio, **extra):
    r = dict(case=case, elbokit=elbokit, pytorch=pytorch, unit=unit, ratio=ratio)
    r.update(extra)
    return r


def rate_row(number, name, unit, work, t_ek, t_pt, flops_per_unit, peak, check, detail, t_jx=None,
             jax_check=None, **extra):
    """A row for a rate (work units per second); t_*: lists of seconds for `work` units; t_jx and
    jax_check = (check, detail) when the JAX column ran. `bytes_per_unit` (in extra) feeds the
    roofline (added in main once the bandwidth is known). "vs best peer" is elbokit over the
    faster of PyTorch and JAX."""
    ek_rate, pt_rate = work / median(t_ek), work / median(t_pt)
    ek_best, pt_best = work / min(t_ek), work / min(t_pt)
    g_ek = ek_rate * flops_per_unit / 1e9
    g_pt = pt_rate * flops_per_unit / 1e9
    jx_rate = work / median(t_jx) if t_jx else None
    jx_best = work / min(t_jx) if t_jx else None
    peer = max(pt_rate, jx_rate or 0.0)
    return row(f"{number}. {name}", ek_rate, pt_rate, unit, ek_rate / pt_rate, kind="case", number=number,
               elbokit_best=ek_best, pytorch_best=pt_best, ratio_best=ek_best / pt_best,
               jax=jx_rate, jax_best=jx_best, ratio_jax=ek_rate / jx_rate if jx_rate else None,
               ratio_jax_best=ek_best / jx_best if jx_best else None,
               best_peer="JAX" if jx_rate and jx_rate > pt_rate else "PyTorch", ratio_best_peer=ek_rate / peer,
               gflops_elbokit=g_ek, gflops_pytorch=g_pt, gflops_jax=jx_rate * flops_per_unit / 1e9 if jx_rate else None,
               peak_share_elbokit=g_ek / peak if peak else None,
               peak_share_pytorch=g_pt / peak if peak else None,
               check=check, check_detail=detail, repeats=len(t_ek),
               jax_check=jax_check[0] if jax_check else None, jax_check_detail=jax_check[1] if jax_check else None,
               seconds_elbokit=t_ek, seconds_pytorch=t_pt, seconds_jax=t_jx, work_per_run=work,
               flops_per_unit=flops_per_unit, **extra)


# ----------------------------------------------------------------------------- peak
def bench_peak(cfg):
    """Large float32 GEMMs, numpy (OpenBLAS), torch.mm (MKL) and, with the JAX column, a compiled
    jnp.dot (XLA's own kernels), alternating. Rows give the median; the machine's peak (the
    denominator of "% peak" and the roofline's) is the best single run of any, the closest measure
    of what the cores can do when other work shares the machine."""
    n = cfg["gemm_n"]
    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    b = rng.random((n, n), dtype=np.float32)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    a @ b
    torch.mm(ta, tb)
    runs = [("numpy", None, lambda: a @ b), ("torch", None, lambda: torch.mm(ta, tb))]
    names = [("numpy", "numpy @ (OpenBLAS)"), ("torch", "torch.mm")]
    if jm is not None:
        ja, jb = jnp.asarray(a), jnp.asarray(b)
        f, _ = jm.compile_fn(jnp.dot, ja, jb)
        f(ja, jb).block_until_ready()
        runs.append(("jax", None, lambda: f(ja, jb).block_until_ready()))
        names.append(("jax", "jax.jit(jnp.dot) (XLA)"))
    t = alternate(runs, cfg["gemm_repeats"])
    fl = 2.0 * n ** 3
    rows = []
    for key, name in names:
        rows.append(row(f"peak: sgemm {n}x{n} float32, {name}", None, None, "GFLOP/s", None, kind="peak",
                        value=fl / median(t[key]) / 1e9, best=fl / min(t[key]) / 1e9, seconds=t[key]))
    return rows, max(r["best"] for r in rows)


def bench_bandwidth(cfg, threads):
    """Memory bandwidth on arrays far larger than the caches (64 MiB each): numpy's copy (one
    thread; 2 x 4 bytes per element: read, write) and torch's triad a = b + 3 c (`threads`
    threads; 3 x 4 bytes), alternating; the write-allocate read is not counted, so these are
    lower bounds on what the memory system moved. Rows give the median; the bandwidth the roofline
    uses is the best single run of either (as for the peak)."""
    n = cfg["bw_n"]
    a, b, c = (np.full(n, v, dtype=np.float32) for v in (0.0, 1.0, 2.0))
    ta, tb, tc = (torch.from_numpy(v) for v in (a, b, c))
    np.copyto(a, b)
    torch.add(tb, tc, alpha=3.0, out=ta)
    t = alternate([("copy", None, lambda: np.copyto(a, b)),
                   ("triad", None, lambda: torch.add(tb, tc, alpha=3.0, out=ta))], cfg["bw_repeats"])
    rows = []
    for key, name, by in (("copy", "numpy copy (1 thread)", 8.0 * n),
                          ("triad", f"torch triad a = b + 3c ({threads} threads)", 12.0 * n)):
        rows.append(row(f"bandwidth: {name}, {4 * n >> 20} MiB arrays", None, None, "GB/s", None, kind="bandwidth",
                        value=by / median(t[key]) / 1e9, best=by / min(t[key]) / 1e9, seconds=t[key]))
    return rows, max(r["best"] for r in rows)


# ----------------------------------------------------------------------------- training cases
def split_levels(flat, n, z_dims):
    """The engine's level-blocked HVAE noise: a flat vector of n*sum(z_dims) numbers, level l being
    the block (n, z_l) (one sample)."""
    out, off = [], 0
    for z in z_dims:
        out.append(flat[off:off + n * z].reshape(n, z))
        off += n * z
    return out


class TrainCase:
    """elbokit's fit against the equivalent PyTorch loop (tm.train_loop), from the same initial weights.

    x has steps*batch rows, so each epoch is `steps` full minibatches; a timed run is
    model.fit(x, epochs, batch) (a fresh Adam, global steps 0..epochs*steps-1) on the elbokit side
    and the same steps with a fresh torch.optim.Adam on the PyTorch side, the rows of epoch e in
    the order ek.random.permutation(n, SEED, STREAMS['shuffle'] + e) and global step t's noise
    precomputed by step_noise(t, b). The first run of each (from identical weights) is the
    equivalence check and the warm-up.

    A subclass builds self.ek_model (with fit) and self.model (the torch module), sets
    self.loss_fn (tm's batch loss), self.flops (per step) and defines step_noise and held_out."""
    metric = "ELBO"          # compared by check: fit's train_elbo and a held-out ELBO
    # The VAEs' fit counts active units at each epoch's end by default (an encoder pass over 2048
    # rows, ~13% of case 1's time on one thread); the torch loop does not, so neither does elbokit here.
    fit_kwargs = dict(active_units=False)

    def __init__(self, x, x_eval, epochs, batch, adam_impl, use_jax=True):
        self.x, self.x_eval, self.epochs, self.B, self.adam_impl = x, x_eval, epochs, batch, adam_impl
        n = len(x)
        S = ek.random.STREAMS
        self.perms = [torch.from_numpy(ek.random.permutation(n, SEED, S["shuffle"] + e)) for e in range(epochs)]
        sizes = [min(batch, n - k) for k in range(0, n, batch)] * epochs
        self.noise = [self.step_noise(t, b) for t, b in enumerate(sizes)]
        self.steps, self.sizes = len(sizes), sizes
        self.xt = torch.from_numpy(x)
        self.jx = None
        if jm is not None and use_jax:
            self.jax_setup()

    def jax_setup(self):
        """Builds self.jx (a jax_models.Trainer from the same initial weights) and its per-step
        inputs: the minibatch indices and the noise of self.noise as device arrays; compiles the
        step (self.jax_compile_s)."""
        raise NotImplementedError

    def _jax_trainer(self, jx_model, loss, convert):
        self.jx_model = jx_model
        self.jx = jm.Trainer(jx_model.params, loss, self.x, LR)
        n, B = len(self.x), self.B
        self.jx_idx = [to_jax(p[s:s + B]) for p in self.perms for s in range(0, n, B)]
        self.jx_noise = [convert(nz) for nz in self.noise]
        self.jx.prepare(self.jx_idx, self.jx_noise)
        self.jax_compile_s = self.jx.compile_seconds

    def run_jax(self):
        return self.jx.run(self.jx_idx, self.jx_noise, self.sizes, len(self.x))

    def held_out_jax(self):
        """JAX's value of the metric on x_eval with held_out's noise, after training."""
        raise NotImplementedError

    def step_noise(self, t, b):
        """The noise the engine draws at global step t for a batch of b rows, as torch inputs."""
        raise NotImplementedError

    def held_out(self):
        """(elbokit, PyTorch) value of the metric on x_eval with the same noise, after training."""
        raise NotImplementedError

    def train_values(self, hist, pt_loss):
        """(elbokit, PyTorch) training metric of the last epoch: fit's train_elbo and minus the torch
        loop's mean loss (the negative ELBO); hist None gives (None, ...)."""
        return (None if hist is None else float(hist["train_elbo"][-1])), -pt_loss

    def run_elbokit(self):
        return self.ek_model.fit(self.x, epochs=self.epochs, batch_size=self.B, lr=LR, optimizer="adam",
                                 seed=SEED, progress=False, **self.fit_kwargs)

    def run_pytorch(self):
        opt = tm.make_adam(self.model, lr=LR, impl=self.adam_impl)
        return tm.train_loop(self.model, opt, self.xt, self.perms, self.noise, self.B, self.loss_fn)

    def _compare(self, ek_train, ek_eval, other_train, other_eval):
        d_train, d_eval = rel(ek_train, other_train), rel(ek_eval, other_eval)
        ok = d_train <= TRAIN_RTOL and d_eval <= TRAIN_RTOL and math.isfinite(ek_eval)
        m = self.metric
        detail = (f"after {self.steps} steps: train {m} {ek_train:.4f} vs {other_train:.4f} (rel {d_train:.1e}), "
                  f"held-out {m} {ek_eval:.4f} vs {other_eval:.4f} (rel {d_eval:.1e}); tol {TRAIN_RTOL:g}")
        return ("ok" if ok else "FAIL"), detail

    def check(self):
        """All from the same weights: the last epoch's training metric and the held-out one after
        training must agree to TRAIN_RTOL. Returns ((check, detail) against PyTorch, the same
        against JAX or None)."""
        ek_train, pt_train = self.train_values(self.run_elbokit(), self.run_pytorch())
        ek_eval, pt_eval = self.held_out()
        jx = None
        if self.jx is not None:
            jx_train = self.train_values(None, self.run_jax())[1]
            jx = self._compare(ek_train, ek_eval, jx_train, self.held_out_jax())
        return self._compare(ek_train, ek_eval, pt_train, pt_eval), jx

    def timed(self, repeats):
        """(elbokit, PyTorch, JAX or None) seconds per timed run, alternating."""
        runs = [("ek", None, self.run_elbokit), ("pt", None, self.run_pytorch)]
        if self.jx is not None:
            runs.append(("jx", None, self.run_jax))
        t = alternate(runs, repeats)
        return t["ek"], t["pt"], t.get("jx")


class VAETrainCase(TrainCase):
    """ek.VAE (Bernoulli) against tm.TorchVAE; step t's noise (1, b, z_dim) from STREAMS['train_noise'] + t."""

    def __init__(self, arch, x, x_eval, epochs, adam_impl, use_jax=True):
        self.arch = arch
        self.ek_model = ek.VAE(arch["x_dim"], arch["z_dim"], hidden=arch["hidden"], likelihood="bernoulli", seed=SEED)
        self.model = tm.TorchVAE.from_elbokit(self.ek_model)
        self.loss_fn = tm.vae_loss
        self.flops = flops_train_step(arch["x_dim"], arch["z_dim"], arch["hidden"], arch["batch"])
        self.bytes = bytes_train_step(arch["x_dim"], arch["z_dim"], arch["hidden"], arch["batch"])
        super().__init__(x, x_eval, epochs, arch["batch"], adam_impl, use_jax)

    def jax_setup(self):
        model = jm.JaxVAE.from_elbokit(self.ek_model)
        self._jax_trainer(model, jm.vae_loss(model), lambda nz: to_jax(nz[0]))

    def _eval_eps(self):
        return ek.random.normal((1, len(self.x_eval), self.arch["z_dim"]), 123)

    def held_out_jax(self):
        f = jm.elbo_fn(self.jx_model)
        return float(jnp.mean(f(self.jx.params, to_jax(self.x_eval), to_jax(self._eval_eps()[0]))))

    def step_noise(self, t, b):
        return torch.from_numpy(ek.random.normal((1, b, self.arch["z_dim"]), SEED,
                                                 ek.random.STREAMS["train_noise"] + t).astype(np.float32))

    def held_out(self):
        eps = self._eval_eps()
        ek_eval = float(self.ek_model.elbo(self.x_eval, eps=eps).elbo.mean())
        with torch.no_grad():
            pt_eval = float(tm.elbo_terms(self.model, torch.from_numpy(self.x_eval),
                                          torch.from_numpy(eps.astype(np.float32)))[0].mean())
        return ek_eval, pt_eval


class HVAETrainCase(TrainCase):
    """ek.HVAE (markov, Bernoulli, analytic KL, one sample) against tm.TorchHVAE; step t's noise is
    ek.random.normal(b * sum(z_dims), SEED, STREAMS['train_noise'] + t) in level blocks (b, z_l)."""
    fit_kwargs = dict(kl="analytic", n_samples=1, active_units=False)

    def __init__(self, arch, x, x_eval, epochs, adam_impl):
        self.arch = arch
        self.ek_model = ek.HVAE(arch["x_dim"], z_dims=arch["z_dims"], hidden=arch["hidden"], structure="markov",
                                likelihood="bernoulli", dtype="float32", seed=SEED)
        self.model = tm.TorchHVAE.from_elbokit(self.ek_model)
        self.loss_fn = tm.hvae_loss
        self.flops = flops_hvae_train_step(arch["x_dim"], arch["z_dims"], arch["hidden"], arch["batch"])
        self.bytes = bytes_hvae_train_step(arch["x_dim"], arch["z_dims"], arch["hidden"], arch["batch"])
        super().__init__(x, x_eval, epochs, arch["batch"], adam_impl)

    def jax_setup(self):
        model = jm.JaxHVAE.from_elbokit(self.ek_model)
        self._jax_trainer(model, jm.hvae_loss(model), lambda nz: [to_jax(e) for e in nz])

    def held_out_jax(self):
        eps = [to_jax(e) for e in self._levels(len(self.x_eval), 123)]
        return float(jnp.mean(jm.hvae_elbo_fn(self.jx_model)(self.jx.params, to_jax(self.x_eval), eps)))

    def _levels(self, n, seed, stream=0):
        z = self.arch["z_dims"]
        return split_levels(ek.random.normal(n * sum(z), seed, stream).astype(np.float32), n, z)

    def step_noise(self, t, b):
        return [torch.from_numpy(e) for e in self._levels(b, SEED, ek.random.STREAMS["train_noise"] + t)]

    def held_out(self):
        eps = self._levels(len(self.x_eval), 123)
        ek_eval = float(self.ek_model.elbo(self.x_eval, eps=[e[None] for e in eps]).elbo.mean())
        with torch.no_grad():
            pt_eval = float(tm.hvae_elbo(self.model, torch.from_numpy(self.x_eval),
                                         [torch.from_numpy(e) for e in eps]).mean())
        return ek_eval, pt_eval


class DiffusionTrainCase(TrainCase):
    """ek.Diffusion (epsilon prediction, loss="simple") against tm.TorchDiffusion; step t draws
    t_b = 1 + floor(T * uniform(SEED, STREAMS['diffusion_time'] + t)[b]) and eps (b, D) from
    STREAMS['train_noise'] + t. check compares the simple loss (fit's train_loss, and on held-out
    rows at drawn steps and noise)."""
    metric = "loss"
    fit_kwargs = dict(loss="simple")

    def __init__(self, model, x, x_eval, epochs, adam_impl):
        self.ek_model = model
        self.model = tm.TorchDiffusion.from_elbokit(model)
        self.loss_fn = tm.diffusion_loss
        c = model.config
        self.flops = flops_diffusion_train_step(c["x_dim"], c["hidden"], c["emb_dim"], DIFFUSION["batch"])
        self.bytes = bytes_diffusion_train_step(c["x_dim"], c["hidden"], c["emb_dim"], DIFFUSION["batch"])
        super().__init__(x, x_eval, epochs, DIFFUSION["batch"], adam_impl)

    def jax_setup(self):
        model = jm.JaxDiffusion.from_elbokit(self.ek_model)
        self._jax_trainer(model, jm.diffusion_loss(model), lambda nz: (to_jax(nz[0]), to_jax(nz[1])))

    def held_out_jax(self):
        steps, eps = self._draw(len(self.x_eval), 123, 0, 1)
        f = jm.diffusion_losses_fn(self.jx_model)
        return float(jnp.mean(f(self.jx.params, to_jax(self.x_eval), to_jax(steps), to_jax(eps))))

    def _draw(self, b, seed, time_stream, noise_stream):
        T = self.ek_model.timesteps
        t = np.minimum(T, 1 + np.floor(T * ek.random.uniform(b, seed, time_stream)).astype(np.int64))
        return t, ek.random.normal((b, self.ek_model.x_dim), seed, noise_stream).astype(np.float32)

    def step_noise(self, t, b):
        S = ek.random.STREAMS
        steps, eps = self._draw(b, SEED, S["diffusion_time"] + t, S["train_noise"] + t)
        return torch.from_numpy(steps), torch.from_numpy(eps)

    def train_values(self, hist, pt_loss):
        return (None if hist is None else float(hist["train_loss"][-1])), pt_loss

    def held_out(self):
        steps, eps = self._draw(len(self.x_eval), 123, 0, 1)
        ek_eval = float(self.ek_model.loss(self.x_eval, steps, eps, "simple").mean())
        with torch.no_grad():
            pt_eval = float(tm.diffusion_losses(self.model, torch.from_numpy(self.x_eval), torch.from_numpy(steps),
                                                torch.from_numpy(eps)).mean())
        return ek_eval, pt_eval


def case_train(number, name, c, cfg, peak, threads):
    set_threads(threads)
    (check, detail), jx_check = c.check()
    t_ek, t_pt, t_jx = c.timed(cfg["repeats"])
    return rate_row(number, name, "steps/s", c.steps, t_ek, t_pt, c.flops, peak, check, detail, t_jx=t_jx,
                    jax_check=jx_check, jax_compile_s=getattr(c, "jax_compile_s", None), bytes_per_unit=c.bytes,
                    threads=threads, steps_per_run=c.steps, batch=c.B, epochs=c.epochs)


def case1(cfg, peak, threads):
    x, x_eval = fashion(FMNIST["batch"] * cfg["c1_steps"], 1000)
    c = VAETrainCase(FMNIST, x, x_eval, cfg["c1_epochs"], cfg["adam"])
    return [case_train(1, "Fashion-MNIST VAE 784-400-20 train step (batch 128, Adam)", c, cfg, peak, threads)]


def case2(cfg, peak, threads):
    x, x_eval = digits(DIGITS["batch"] * cfg["c2_steps"])
    c = VAETrainCase(DIGITS, x, x_eval, cfg["c2_epochs"], cfg["adam"])
    return [case_train(2, "digits VAE 64-(128,128)-8 train step (batch 64, Adam)", c, cfg, peak, threads)]


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

    a = run_ek()
    check, detail = compare_per_example(a, run_pt().numpy(), "ELBO")
    runs = [("ek", None, run_ek), ("pt", None, run_pt)]
    jx = {}
    if jm is not None:
        jmodel = jm.JaxVAE.from_elbokit(vae)
        args = (jmodel.params, to_jax(x), to_jax(eps[0]))
        f, jx["compile_s"] = jm.compile_fn(jm.elbo_fn(jmodel), *args)

        def run_jx():
            return f(*args).block_until_ready()
        jx["check"] = compare_per_example(a, np.asarray(run_jx()), "ELBO")
        runs.append(("jx", None, run_jx))
    t = alternate(runs, cfg["repeats"])
    return [rate_row(3, f"ELBO evaluation, {n} Fashion-MNIST examples (n_samples=1)", "examples/s", n,
                     t["ek"], t["pt"], flops_elbo(784, 20, (400,), 1), peak, check, detail, t_jx=t.get("jx"),
                     jax_check=jx.get("check"), jax_compile_s=jx.get("compile_s"),
                     bytes_per_unit=bytes_elbo(784, 20, (400,), n), threads=threads)]


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
    runs = [("ek", None, run_ek), ("pt", None, run_pt)]
    jx = {}
    if jm is not None:
        jmodel = jm.JaxVAE.from_elbokit(vae)
        # chunks of c examples (c * K decoder rows, ~8192 as the engine and the torch version), c | n
        c = max(d for d in range(1, max(1, 8192 // K) + 1) if n % d == 0)
        args = (jmodel.params, to_jax(x), to_jax(eps))
        f, jx["compile_s"] = jm.compile_fn(jm.log_likelihood_fn(jmodel, c), *args)

        def run_jx():
            return f(*args).block_until_ready()
        runs.append(("jx", None, run_jx))
    t, outs = alternate_keep_first(runs, cfg["c4_repeats"])
    check, detail = compare_per_example(outs["ek"], outs["pt"].numpy(), f"L_{K}")
    if "jx" in outs:
        jx["check"] = compare_per_example(outs["ek"], np.asarray(outs["jx"]), f"L_{K}")
    return [rate_row(4, f"log-likelihood L_{K}, {n} Fashion-MNIST examples (chunked)", "examples/s", n,
                     t["ek"], t["pt"], flops_log_likelihood(784, 20, (400,), 1, K), peak, check, detail,
                     t_jx=t.get("jx"), jax_check=jx.get("check"), jax_compile_s=jx.get("compile_s"),
                     bytes_per_unit=bytes_log_likelihood(784, 20, (400,), n, K), threads=threads)]


def case5(cfg, peak, threads):
    x, x_eval = digits(HVAE["batch"] * cfg["c5_steps"])
    c = HVAETrainCase(HVAE, x, x_eval, cfg["c5_epochs"], cfg["adam"])
    return [case_train(5, "digits HVAE 64-(128,)-(16,8,4) markov train step (batch 128, Adam)", c, cfg, peak,
                       threads)]


def swiss(n, seed=0):
    return ek.datasets.swiss_roll(n, seed=seed).astype(np.float32)


def new_diffusion(timesteps):
    d = DIFFUSION
    return ek.Diffusion(d["x_dim"], timesteps=timesteps, hidden=d["hidden"], emb_dim=d["emb_dim"], dtype="float32",
                        seed=SEED)


def case6(cfg, peak, threads):
    x, x_eval = swiss(DIFFUSION["batch"] * cfg["c6_steps"]), swiss(1000, seed=1)
    c = DiffusionTrainCase(new_diffusion(1000), x, x_eval, cfg["c6_epochs"], cfg["adam"])
    return [case_train(6, "diffusion eps-MLP 3x256 train step, 2-D swiss roll (batch 512, Adam)", c, cfg, peak,
                       threads)]


def trained_diffusion(timesteps):
    """The case-6 architecture after 30 Adam steps on the swiss roll (so that checks are not at the
    initialization)."""
    model = new_diffusion(timesteps)
    model.fit(swiss(DIFFUSION["batch"] * 10), epochs=3, batch_size=DIFFUSION["batch"], lr=LR, seed=SEED,
              progress=False)
    return model


def case7(cfg, peak, threads):
    n, T = cfg["c7_n"], cfg["c7_t"]
    model = trained_diffusion(T)
    pt = tm.TorchDiffusion.from_elbokit(model)
    set_threads(threads)
    # the engine's sampling noise: x_T at index i*D + j, sampling step k's z at (k*n + i)*D + j of
    # (seed, STREAMS['sample']), k = 1 ... T-1: one (T, n, D) array
    noise = torch.from_numpy(
        ek.random.normal((T, n, model.x_dim), SEED, ek.random.STREAMS["sample"]).astype(np.float32))

    def run_ek():
        return model.sample(n, method="ddpm", seed=SEED)

    def run_pt():
        return tm.ddpm_sample(pt, noise)

    # warm-up on a few points, then the check on the first timed run's output
    model.sample(16, method="ddpm", seed=SEED)
    tm.ddpm_sample(pt, noise[:, :16])
    runs = [("ek", None, run_ek), ("pt", None, run_pt)]
    jx = {}
    if jm is not None:
        jmodel = jm.JaxDiffusion.from_elbokit(model)
        args = (jmodel.params, to_jax(noise))
        f, jx["compile_s"] = jm.compile_fn(jm.ddpm_sample_fn(jmodel), *args)

        def run_jx():
            return f(*args).block_until_ready()
        runs.append(("jx", None, run_jx))
    t, outs = alternate_keep_first(runs, cfg["c7_repeats"])

    def compare(a, b):
        d = float(np.max(np.abs(a - b)) / np.mean(np.abs(b)))
        ok = d <= SAMPLE_RTOL and np.isfinite(a).all()
        return ("ok" if ok else "FAIL"), (
            f"same noise (STREAMS['sample'], exact): after {T} steps max |diff| {d:.1e} of mean |x| "
            f"{np.mean(np.abs(b)):.3f}; sample mean {fmt_vec(a.mean(0))} vs {fmt_vec(b.mean(0))}, "
            f"std {fmt_vec(a.std(0))} vs {fmt_vec(b.std(0))}; tol {SAMPLE_RTOL:g}")
    check, detail = compare(outs["ek"], outs["pt"].numpy())
    if "jx" in outs:
        jx["check"] = compare(outs["ek"], np.asarray(outs["jx"]))
    h = DIFFUSION
    return [rate_row(7, f"DDPM sampling, {n} 2-D points x {T} steps (eps-MLP 3x256)", "points/s", n,
                     t["ek"], t["pt"], flops_ddpm_sample(h["x_dim"], h["hidden"], h["emb_dim"], T), peak,
                     check, detail, t_jx=t.get("jx"), jax_check=jx.get("check"), jax_compile_s=jx.get("compile_s"),
                     bytes_per_unit=bytes_ddpm_sample(h["x_dim"], h["hidden"], h["emb_dim"], n, T),
                     threads=threads, steps=T)]


def case8(cfg, peak, threads):
    """Case 1 at 1 thread and at `threads` threads, all four runs alternating."""
    x, x_eval = fashion(FMNIST["batch"] * cfg["c1_steps"], 1000)
    c = VAETrainCase(FMNIST, x, x_eval, cfg["c1_epochs"], cfg["adam"], use_jax=False)
    set_threads(threads)
    (check, detail), _ = c.check()
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


def memory_workers(suffix, threads, quick, timeout=900):
    """{framework: the memory worker's JSON} for elbokit and PyTorch, each run in a fresh
    subprocess (``--memory-worker elbokit{suffix}`` and ``pytorch{suffix}``)."""
    res = {}
    for fw in ("elbokit", "pytorch"):
        cmd = [sys.executable, os.path.abspath(__file__), "--memory-worker", fw + suffix, "--threads", str(threads)]
        if quick:
            cmd.append("--quick")
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if p.returncode != 0:
            raise RuntimeError(f"memory worker {fw}{suffix} failed:\n{p.stderr[-3000:]}")
        res[fw] = json.loads(p.stdout.strip().splitlines()[-1])
    return res


def case9(cfg, peak, threads, quick):
    """Peak memory of case 1's timed run, each framework in a fresh subprocess."""
    res = memory_workers("", threads, quick)
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
    """Runs case 1's timed run (fw "elbokit" or "pytorch"), or one epoch of case 11's U-Net steps
    (fw "elbokit-unet" or "pytorch-unet"), once in this fresh process and prints {peak_mib, ...}
    as JSON. Peak = VmHWM after the run minus VmRSS after imports and setup, the high-water mark
    having been reset (/proc/self/clear_refs) so that loading the data does not count."""
    cfg = QUICK if quick else FULL
    _import(threads, need_torch=fw.startswith("pytorch") or fw.endswith("-unet"))
    set_threads(threads)
    if fw.endswith("-unet"):
        x, _ = fashion_images(UNET["batch"] * cfg["c11_steps"], 0)
        c = UNetTrainCase(new_unet(), x, x[:8], 1, cfg["adam"])

        def run():  # fit's train_loss, the torch loop's mean loss: both the simple loss
            return c.run_pytorch() if fw == "pytorch-unet" else float(c.run_elbokit()["train_loss"][-1])
    elif fw == "pytorch":
        x, x_eval = fashion(FMNIST["batch"] * cfg["c1_steps"], 0)
        c = VAETrainCase(FMNIST, x, x_eval, cfg["c1_epochs"], cfg["adam"])

        def run():
            return -c.run_pytorch()  # the loop's last-epoch mean loss is minus the train ELBO
    else:
        x, _ = fashion(FMNIST["batch"] * cfg["c1_steps"], 0)
        vae = ek.VAE(784, 20, hidden=(400,), likelihood="bernoulli", seed=SEED)

        def run():
            return float(vae.fit(x, epochs=cfg["c1_epochs"], batch_size=128, seed=SEED,
                                 progress=False, active_units=False)["train_elbo"][-1])
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


# ---- image models (issue 11): a conv VAE, a U-Net eps-network, DDIM sampling with it ----------
def conv_layers_unet(image_shape, channels, emb_dim):
    """(c_in, c_out, k, output positions) of every conv of the U-Net (unet.hpp) and its Linear layers
    as (in, out) per example: the products a forward pass computes."""
    C, H, W = image_shape
    n, tdim = len(channels), 4 * channels[0]
    convs, lins = [(C, channels[0], 3, H * W)], [(emb_dim, tdim), (tdim, tdim)]

    def res(cin, cout, hw):
        convs.extend([(cin, cout, 3, hw), (cout, cout, 3, hw)] + ([(cin, cout, 1, hw)] if cin != cout else []))
        lins.append((tdim, cout))
    prev = channels[0]
    for i, c in enumerate(channels):
        hw = (H >> i) * (W >> i)
        res(prev, c, hw)
        if i < n - 1:
            convs.append((c, c, 3, hw // 4))
        prev = c
    res(prev, prev, (H >> (n - 1)) * (W >> (n - 1)))
    for i in reversed(range(n)):
        hw = (H >> i) * (W >> i)
        res(prev + channels[i], channels[i], hw)
        prev = channels[i]
        if i > 0:
            convs.append((channels[i], channels[i - 1], 3, hw * 4))
            prev = channels[i - 1]
    convs.append((prev, C, 3, H * W))
    return convs, lins


def conv_layers_vae(image_shape, channels, z_dim):
    """The conv VAE's convs (c_in, c_out, k, output positions; a transposed conv counted at its
    input's positions, where its product runs) and Linear layers (in, out)."""
    C, H, W = image_shape
    convs, prev = [], C
    for i, c in enumerate(channels):
        convs.append((prev, c, 4, (H >> (i + 1)) * (W >> (i + 1))))
        prev = c
    f = 2 ** len(channels)
    feat = channels[-1] * (H // f) * (W // f)
    rev = list(channels[::-1]) + [C]
    dec = [(rev[j], rev[j + 1], 4, (H >> (len(channels) - j)) * (W >> (len(channels) - j))) for j in range(len(rev) - 1)]
    return convs + dec, [(feat, z_dim), (feat, z_dim), (z_dim, feat)]


def conv_flops(convs, lins, batch, train: bool):
    """Products only: a conv c_in -> c_out, kernel k, at P positions costs 2·c_in·k²·c_out·P per
    example forward; training adds the same for dW and for dX (except the first layer's dX)."""
    fwd = [2.0 * ci * k * k * co * p for ci, co, k, p in convs] + [2.0 * a * b for a, b in lins]
    if not train:
        return batch * sum(fwd)
    return batch * (3 * sum(fwd) - fwd[0])


def conv_bytes(convs, lins, batch, params, train: bool, extra_floats: float = 0.0) -> float:
    """bytes_pass's model for image networks: the weights read once (10 P floats for a training
    step: read twice, the gradient, Adam's p, g, m, v read and p, m, v written), each layer's output
    written and read once (and its gradient too when training), plus extra_floats."""
    outs = sum(co * p for _, co, _, p in convs) + sum(b for _, b in lins)
    per = (6.0 if train else 2.0) * batch * outs
    return 4.0 * ((10.0 if train else 1.0) * params + per + extra_floats)


class ConvVAETrainCase(VAETrainCase):
    """ek.VAE(net="conv") (Bernoulli) against tm.TorchConvVAE and jm.JaxConvVAE; the noise and the
    held-out ELBO as VAETrainCase's."""

    def __init__(self, arch, x, x_eval, epochs, adam_impl):
        self.arch = arch
        self.ek_model = ek.VAE(None, arch["z_dim"], net="conv", image_shape=arch["image_shape"],
                               channels=arch["channels"], likelihood="bernoulli", seed=SEED)
        self.model = tm.TorchConvVAE.from_elbokit(self.ek_model)
        self.loss_fn = tm.vae_loss
        convs, lins = conv_layers_vae(arch["image_shape"], arch["channels"], arch["z_dim"])
        self.flops = conv_flops(convs, lins, arch["batch"], True)
        D = int(np.prod(arch["image_shape"]))
        self.bytes = conv_bytes(convs, lins, arch["batch"], self.ek_model.num_parameters, True, 2 * arch["batch"] * D)
        TrainCase.__init__(self, x, x_eval, epochs, arch["batch"], adam_impl)

    def jax_setup(self):
        model = jm.JaxConvVAE.from_elbokit(self.ek_model)
        self._jax_trainer(model, jm.vae_loss(model), lambda nz: to_jax(nz[0]))


def new_unet(timesteps=1000):
    u = UNET
    return ek.Diffusion(image_shape=u["image_shape"], net="unet", channels=u["channels"], groups=u["groups"],
                        emb_dim=u["emb_dim"], timesteps=timesteps, variance="large", dtype="float32", seed=SEED)


class UNetTrainCase(DiffusionTrainCase):
    """ek.Diffusion(net="unet") against tm.TorchUNetDiffusion and jm.JaxUNetDiffusion (loss "simple"),
    the noise and the held-out loss as DiffusionTrainCase's."""

    def __init__(self, model, x, x_eval, epochs, adam_impl):
        self.ek_model = model
        self.model = tm.TorchUNetDiffusion.from_elbokit(model)
        self.loss_fn = tm.diffusion_loss
        convs, lins = conv_layers_unet(UNET["image_shape"], UNET["channels"], UNET["emb_dim"])
        self.flops = conv_flops(convs, lins, UNET["batch"], True)
        self.bytes = conv_bytes(convs, lins, UNET["batch"], model.num_parameters, True, 3 * UNET["batch"] * model.x_dim)
        TrainCase.__init__(self, x, x_eval, epochs, UNET["batch"], adam_impl)

    def jax_setup(self):
        model = jm.JaxUNetDiffusion.from_elbokit(self.ek_model)
        self._jax_trainer(model, jm.diffusion_loss(model), lambda nz: (to_jax(nz[0]), to_jax(nz[1])))


def fashion_images(n_train, n_test):
    """Fashion-MNIST rows scaled to [-1, 1] (the diffusion model's data)."""
    x, x_eval = fashion(n_train, n_test)
    return 2 * x - 1, 2 * x_eval - 1


def case10(cfg, peak, threads):
    x, x_eval = fashion(CONV_VAE["batch"] * cfg["c10_steps"], 500)
    c = ConvVAETrainCase(CONV_VAE, x, x_eval, cfg["c10_epochs"], cfg["adam"])
    return [case_train(10, "Fashion-MNIST conv VAE (32,64)-16 train step (batch 128, Adam)", c, cfg, peak, threads)]


def case11(cfg, peak, threads):
    x, x_eval = fashion_images(UNET["batch"] * cfg["c11_steps"], 128)
    c = UNetTrainCase(new_unet(), x, x_eval, cfg["c11_epochs"], cfg["adam"])
    r = case_train(11, "U-Net eps-network (32,64) train step, 28x28 (batch 64, Adam)", c, cfg, peak, threads)
    return [r] + unet_memory_rows(threads, cfg)


def unet_memory_rows(threads, cfg):
    """Peak resident memory of one U-Net training epoch (case 11's steps), each framework in a fresh
    subprocess (the memory worker of case 9)."""
    res = memory_workers("-unet", threads, cfg["quick"])
    m_ek, m_pt = res["elbokit"]["peak_mib"], res["pytorch"]["peak_mib"]
    d = rel(res["elbokit"]["train_elbo"], res["pytorch"]["train_elbo"])
    detail = (f"train loss {res['elbokit']['train_elbo']:.4f} vs {res['pytorch']['train_elbo']:.4f} (rel {d:.1e}); "
              f"elbokit's whole process {res['elbokit']['hwm_mib']:.0f} MiB resident at its peak (target < 1024)")
    return [row("11m. peak memory of the U-Net train step (above post-import baseline)", m_ek, m_pt, "MiB",
                m_pt / max(m_ek, 1e-9), kind="memory", number=None, check="ok" if d <= TRAIN_RTOL else "FAIL",
                check_detail=detail, workers=res)]


def case12(cfg, peak, threads):
    """DDIM (eta = 0) over 50 steps of the U-Net model after a few training steps, 256 images."""
    n, S = cfg["c12_n"], 50
    model = new_unet()
    x, _ = fashion_images(UNET["batch"] * 4, 0)
    model.fit(x, epochs=1, batch_size=UNET["batch"], lr=LR, seed=SEED, progress=False)
    pt = tm.TorchUNetDiffusion.from_elbokit(model)
    set_threads(threads)
    T = model.timesteps
    tau = [T if S == 1 else int(round(1 + k * (T - 1) / (S - 1))) for k in range(S)]
    abar = [1.0] + [float(a) for a in model.alphas_cumprod]
    x_T = torch.from_numpy(ek.random.normal((n, model.x_dim), SEED, ek.random.STREAMS["sample"]).astype(np.float32))

    def run_ek():
        return model.sample(n, method="ddim", steps=S, seed=SEED)

    def run_pt():
        return tm.ddim_sample(pt, x_T, tau, abar)

    model.sample(8, method="ddim", steps=S, seed=SEED)
    tm.ddim_sample(pt, x_T[:8], tau, abar)
    runs = [("ek", None, run_ek), ("pt", None, run_pt)]
    jx = {}
    if jm is not None:
        # one compiled DDIM step (compiled here, outside the timing) called for each of the S steps
        jmodel = jm.JaxUNetDiffusion.from_elbokit(model)
        jx_x, schedule = to_jax(x_T), jm.ddim_schedule(tau, abar)
        f, jx["compile_s"] = jm.compile_fn(jm.ddim_step_fn(jmodel), jmodel.params, jx_x, *schedule[0])
        f(jmodel.params, jx_x, *schedule[0]).block_until_ready()   # warm-up: one step

        def run_jx():
            return jm.ddim_sample(f, jmodel.params, jx_x, schedule).block_until_ready()
        runs.append(("jx", None, run_jx))
    t, outs = alternate_keep_first(runs, cfg["c12_repeats"])

    def compare(a, b):
        d = float(np.max(np.abs(a - b)) / np.mean(np.abs(b)))
        ok = d <= SAMPLE_RTOL and np.isfinite(a).all()
        return ("ok" if ok else "FAIL"), (f"{n} images after {S} DDIM steps from the same x_T: max |diff| / mean |x| "
                                          f"= {d:.1e}; tol {SAMPLE_RTOL:g}")
    check, detail = compare(outs["ek"], outs["pt"].numpy())
    if "jx" in outs:
        jx["check"] = compare(outs["ek"], np.asarray(outs["jx"]))
    convs, lins = conv_layers_unet(UNET["image_shape"], UNET["channels"], UNET["emb_dim"])
    return [rate_row(12, f"DDIM sampling, {n} 28x28 images x {S} steps (U-Net (32,64))", "images/s", n, t["ek"],
                     t["pt"], S * conv_flops(convs, lins, 1, False), peak, check, detail, t_jx=t.get("jx"),
                     jax_check=jx.get("check"), jax_compile_s=jx.get("compile_s"), threads=threads,
                     bytes_per_unit=S * conv_bytes(convs, lins, 1, model.num_parameters / n, False,
                                                   2 * model.x_dim))]


CASES = {1: case1, 2: case2, 3: case3, 4: case4, 5: case5, 6: case6, 7: case7, 8: case8, 9: case9,
         10: case10, 11: case11, 12: case12}


# ----------------------------------------------------------------------------- report
def target_text(r, peak):
    n = r.get("number")
    tg = TARGETS.get(n)
    if tg is None or r.get("kind") not in ("case", "scaling", "memory"):
        return "", None
    parts, met = [], True
    if "ratio" in tg:
        parts.append("<= PyTorch" if n == 9 else f">={tg['ratio']:g}x")
        met &= r["ratio"] is not None and r["ratio"] >= tg["ratio"]
    if "peer" in tg:
        parts.append(f">={tg['peer']:g}x best peer")
        met &= r.get("ratio_best_peer") is not None and r["ratio_best_peer"] >= tg["peer"]
    if "jax" in tg:
        parts.append(f">={tg['jax']:g}x JAX")
        if r.get("ratio_jax") is None:
            return " & ".join(parts) + ": JAX not run", None
        met &= r["ratio_jax"] >= tg["jax"]
    if "peak" in tg:
        parts.append(f">={tg['peak']:.0%} peak")
        met &= (r.get("peak_share_elbokit") or 0) >= tg["peak"]
    if "scaling" in tg:
        parts.append(f"elbokit >={tg['scaling']:g}x")
        met &= r["elbokit"] is not None and r["elbokit"] >= tg["scaling"]
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


def fmt_vec(v):
    return "(" + ", ".join(f"{float(c):.4f}" for c in v) + ")"


def _print_grid(head, lines, left, out):
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]
    sep = "-+-".join("-" * w for w in widths)

    def line(cells):
        return " | ".join(str(c).ljust(w) if i in left else str(c).rjust(w)
                          for i, (c, w) in enumerate(zip(cells, widths)))
    print(line(head), file=out)
    print(sep, file=out)
    for cells in lines:
        print(line(cells), file=out)


def _x(v):
    return f"{v:.2f}x" if v is not None else "-"


def print_table(rows, peak, out=sys.stdout):
    """The rates and ratios: "vs best peer" (elbokit over the faster of PyTorch and JAX) is the
    headline; check is PyTorch's / JAX's equivalence check; "ratio (best runs)" is against PyTorch."""
    head = ["case", "elbokit", "PyTorch", "JAX", "unit", "vs PyTorch", "vs JAX", "vs best peer", "target",
            "ek GFLOP/s", "% peak", "check", "ratio (best runs)"]
    lines = []
    for r in rows:
        if r.get("kind") == "meta":
            continue
        if r.get("kind") in ("peak", "bandwidth"):
            share = f"{r['value'] / peak:.0%}" if peak and r["kind"] == "peak" else ""
            lines.append([r["case"], "-", "-", "-", r["unit"], "-", "-", "-", "", fmt(r["value"]), share, "", ""])
            continue
        share = r.get("peak_share_elbokit")
        check = r.get("check", "")
        if r.get("jax_check"):
            check += "/" + r["jax_check"]
        lines.append([r["case"], fmt(r["elbokit"], r["unit"]), fmt(r["pytorch"], r["unit"]), fmt(r.get("jax"), r["unit"]),
                      r["unit"] or "", _x(r["ratio"]), _x(r.get("ratio_jax")),
                      (_x(r["ratio_best_peer"]) + f" ({r['best_peer']})") if r.get("ratio_best_peer") else "-",
                      target_text(r, peak)[0], fmt(r.get("gflops_elbokit")), f"{share:.0%}" if share is not None else "-",
                      check, f"{r['ratio_best']:.2f}x" if r.get("ratio_best") else ""])
    _print_grid(head, lines, (0, 4, 8, 11), out)


def print_roofline(rows, peak, bw, out=sys.stdout):
    """Per case and unit of work: FLOPs, bytes, the time each takes at the peak / the bandwidth, the
    bound (the larger) as a rate, and each framework's rate as a share of it; JAX's compile time."""
    head = ["case", "unit", "MFLOP/unit", "KB/unit", "FLOP/B", "us at peak", "us at bw", "bound", "bound rate",
            "elbokit", "PyTorch", "JAX", "JAX compile s"]
    lines = []
    pct = lambda v: f"{v:.0%}" if v is not None else "-"  # noqa: E731
    for r in rows:
        if r.get("kind") != "case" or "roofline_rate" not in r:
            continue
        lines.append([r["case"][:44], r["unit"], f"{r['flops_per_unit'] / 1e6:.3g}",
                      f"{r['bytes_per_unit'] / 1e3:.3g}", f"{r['intensity']:.0f}",
                      f"{r['roofline_compute_s'] * 1e6:.3g}", f"{r['roofline_memory_s'] * 1e6:.3g}",
                      r["roofline_bound"], fmt(r["roofline_rate"]), pct(r["bound_share_elbokit"]),
                      pct(r["bound_share_pytorch"]), pct(r.get("bound_share_jax")),
                      f"{r['jax_compile_s']:.2f}" if r.get("jax_compile_s") is not None else "-"])
    print(f"roofline: peak {peak:.1f} GFLOP/s, memory bandwidth {bw:.1f} GB/s (best runs above); "
          "shares are each framework's rate over the bound's. FLOPs count direct convolution: elbokit's 3x3 "
          "stride-1 convs (Winograd F(2x2, 3x3)) do 2.25x fewer products and its 4x4 stride-2 convs of >= 8 "
          "channels (F(2x2, 2x2) on phase planes) 1.36x fewer at 7x7 and 1.78x at 14x14 outputs, so its share of the "
          "conv rows can pass 100%", file=out)
    _print_grid(head, lines, (0, 1, 7), out)


# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repeats and smaller sizes (a smoke run)")
    p.add_argument("--cases", default="1,2,3,4,5,6,7,8,9,10,11,12", help="comma-separated case numbers (default: all)")
    p.add_argument("--json", metavar="PATH", help="write the rows as a JSON list of objects")
    p.add_argument("--threads", type=int, default=2, help="threads for both frameworks (default 2)")
    p.add_argument("--torch-adam", choices=("fused", "foreach", "default"), default="fused",
                   help="torch.optim.Adam implementation (default fused: PyTorch's fastest on CPU)")
    p.add_argument("--jax", choices=("auto", "on", "off"), default="auto",
                   help="the JAX column: auto (when jax is importable; default), on (required), off")
    p.add_argument("--memory-worker", choices=("elbokit", "pytorch", "elbokit-unet", "pytorch-unet"),
                   help=argparse.SUPPRESS)
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
    _import_jax(args.threads, args.jax)   # first: XLA's thread pool starts before any other runtime's
    _import(args.threads)
    set_threads(args.threads)
    cfg = dict(QUICK if args.quick else FULL)
    cfg["adam"] = QUICK["adam"] = FULL["adam"] = args.torch_adam
    print(f"elbokit {ek.__version__}, PyTorch {torch.__version__}, numpy {np.__version__}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; threads {args.threads}; "
          f"{'quick' if args.quick else 'full'} run; torch Adam: {args.torch_adam}", flush=True)
    if jm is not None:
        print(f"JAX {JAX_INFO['version']} on {', '.join(JAX_INFO['devices'])}; XLA_FLAGS {JAX_INFO['xla_flags']!r}; "
              f"XLA's client started on {args.threads} CPU(s)' affinity: {JAX_INFO['affinity_limited']}; "
              f"thread check: a compiled 1024^3 GEMM kept {JAX_INFO['cpu_per_wall']:.2f} cores busy "
              f"(CPU time / wall time; limit {args.threads}), {JAX_INFO['gemm_gflops']:.0f} GFLOP/s", flush=True)
        if not JAX_INFO["threads_ok"]:
            print(f"warning: XLA used more than {args.threads} threads", flush=True)
    else:
        print(f"JAX: {JAX_INFO['status']} (column '-')", flush=True)
    backend = ek._core.gemm_backend()
    print(f"elbokit products: {backend}", flush=True)
    load0 = os.getloadavg()[0]
    rows = [row("environment", ek.__version__, torch.__version__, None, None, kind="meta",
                numpy=np.__version__, python=platform.python_version(), machine=platform.machine(),
                cpus=os.cpu_count(), threads=args.threads, gemm_backend=backend, quick=args.quick,
                torch_adam=args.torch_adam, cases=args.case_list, jax=dict(JAX_INFO))]
    peak_rows, peak = bench_peak(cfg)
    rows += peak_rows
    print(f"machine peak (best sgemm run, {args.threads} threads): {peak:.1f} GFLOP/s", flush=True)
    bw_rows, bw = bench_bandwidth(cfg, args.threads)
    rows += bw_rows
    print(f"memory bandwidth (best stream run): {bw:.1f} GB/s", flush=True)
    for n in args.case_list:
        t0 = time.perf_counter()
        fn = CASES[n]
        new = fn(cfg, peak, args.threads, args.quick) if n == 9 else fn(cfg, peak, args.threads)
        for r in new:
            if r.get("kind") == "case":
                roofline(r, peak, bw)
            if r.get("kind") in ("case", "scaling", "memory"):
                r["target"], r["target_met"] = target_text(r, peak)
        rows += new
        for r in new:
            jx = ""
            if r.get("jax") is not None:
                jx = (f", JAX {fmt(r['jax'], r['unit'])} (compile {r['jax_compile_s']:.2f} s; check "
                      f"{r['jax_check']}: {r['jax_check_detail']})")
            print(f"  [{time.perf_counter() - t0:5.1f}s] {r['case']}: elbokit {fmt(r['elbokit'], r['unit'])}, "
                  f"PyTorch {fmt(r['pytorch'], r['unit'])} {r['unit'] or ''}; check {r.get('check')}: "
                  f"{r.get('check_detail', '')}{jx}", flush=True)
    if "fm_src" in _CACHE or "dg_src" in _CACHE:
        print("data:", ", ".join(_CACHE[k] for k in ("fm_src", "dg_src") if k in _CACHE))
    print()
    print_table(rows, peak)
    print()
    print_roofline(rows, peak, bw)
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
    failed = [r["case"] for r in rows if "FAIL" in (r.get("check"), r.get("jax_check"))]
    if failed:
        print("EQUIVALENCE CHECK FAILED:", "; ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
