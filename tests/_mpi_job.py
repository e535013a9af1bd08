"""The programs tests/test_distributed.py runs, under ``mpirun -n R`` or as one plain process.

    python tests/_mpi_job.py MODE OUT [--single]

train: every model trained 50 float64 steps (distributed unless --single), its final weights,
step losses, validation terms and sharded evaluations saved to OUT/rank{r}.npz.
longfit: a VAE trained for a long time with a checkpoint each epoch (OUT/checkpoint.elbokit);
each process writes OUT/pid{r} first (the test kills one).
stall / raise: as longfit, but process 1 stops itself (SIGSTOP) or raises in its 70th allreduce.
errors: the argument errors of distributed training, each process writing the messages it got.
"""
import json
import os
import signal
import sys

import numpy as np

import elbokit as ek


def models():
    """(name, model, fit keyword arguments, data) for the exactness test: 50 steps each."""
    digits = ek.datasets.digits()[0][:400]  # 400 rows, batch 16: 25 steps an epoch, 2 epochs
    imgs = digits[:200]  # conv models: batch 8
    fit = dict(epochs=2, batch_size=16, progress=False, seed=3)
    fit_img = dict(epochs=2, batch_size=8, progress=False, seed=3)
    f64 = dict(dtype="float64", seed=0)
    return [
        ("vae", ek.VAE(64, 4, hidden=(32,), **f64), dict(fit, n_samples=2), digits),
        ("vae_mc_beta", ek.VAE(64, 3, hidden=(16,), likelihood="gaussian", **f64),
         dict(fit, kl="mc", beta=0.5, warmup_steps=10, clip_norm=5.0), digits),
        ("hvae_markov", ek.HVAE(64, (4, 2), hidden=(32,), **f64), dict(fit, n_samples=2), digits),
        ("hvae_topdown", ek.HVAE(64, (4, 2), hidden=(32,), structure="topdown", **f64), fit, digits),
        ("diffusion", ek.Diffusion(64, timesteps=20, hidden=(32, 32), **f64), dict(fit, ema=0.9, loss="elbo"),
         2 * digits - 1),
        ("conv_vae", ek.VAE(None, 4, net="conv", image_shape=(1, 8, 8), channels=(4, 8), **f64), fit_img, imgs),
        ("unet", ek.Diffusion(timesteps=10, net="unet", image_shape=(1, 8, 8), channels=(4, 8), groups=2, **f64),
         dict(fit_img, epochs=1, loss="hybrid"), 2 * imgs - 1),
        ("autoencoder", ek.Autoencoder(64, 4, hidden=(16,), dtype="float64"), fit, digits),
        ("flow", ek.Flow(2, hidden=(8,), dtype="float64"), dict(fit, batch_size=32),
         np.random.default_rng(0).normal(size=(800, 2))),
    ]


def train(out, dist):
    res = {}
    for name, m, kw, x in models():
        h = m.fit(x, validation=x[3::7][:57], distributed=dist, **kw)  # validation sharded unevenly
        res[f"{name}.weights"] = np.asarray(m._core.get_flat())
        for k in ("val_elbo", "val_reconstruction", "val_kl"):
            res[f"{name}.{k}"] = np.asarray(h[k])
        res[f"{name}.step_loss"] = np.asarray(h["step_loss"])
        res[f"{name}.train_elbo"] = np.asarray(h["train_elbo"])
        n = 50
        if name in ("vae", "hvae_markov", "conv_vae"):
            res[f"{name}.elbo"] = m.elbo(x[:n], n_samples=3, seed=5, distributed=dist).elbo
            res[f"{name}.ll"] = m.log_likelihood(x[:n], k=40, seed=5, distributed=dist)
        if name in ("diffusion", "unet"):
            for form in ("denoising", "consistency"):
                res[f"{name}.elbo_{form}"] = m.elbo(x[:21], form=form, seed=5, distributed=dist).elbo
    # a checkpoint written by process 0 at each epoch's end: the last one is the final model
    ck = os.path.join(out, "vae_checkpoint.elbokit")
    vae = ek.VAE(64, 4, hidden=(32,), dtype="float64", seed=1)
    vae.fit(models()[0][3], epochs=2, batch_size=16, progress=False, distributed=dist, checkpoint=ck)
    res["checkpoint.weights"] = np.asarray(vae._core.get_flat())
    r = ek.distributed.rank() if dist else 0
    np.savez(os.path.join(out, f"rank{r}.npz"), **res)


def longfit(out, mode):
    r = ek.distributed.rank()
    with open(os.path.join(out, f"pid{r}"), "w") as f:
        f.write(str(os.getpid()))
    if mode in ("stall", "raise") and r == 1:
        calls = [0]
        reduce = ek.distributed.Group.allreduce

        def faulty(self, grad, stats):
            calls[0] += 1
            if calls[0] == 70:  # after two epochs (28 steps each) and their checkpoints
                if mode == "stall":
                    os.kill(os.getpid(), signal.SIGSTOP)
                raise RuntimeError("injected failure")
            return reduce(self, grad, stats)

        ek.distributed.Group.allreduce = faulty
    x = ek.datasets.digits()[0]
    vae = ek.VAE(64, 8, hidden=(64,), seed=0)
    vae.fit(x, epochs=100000, batch_size=64, progress=False, distributed=True,
            checkpoint=os.path.join(out, "checkpoint.elbokit"))


def errors(out):
    x = ek.datasets.digits()[0][:100]
    R = ek.distributed.size()
    r = ek.distributed.rank()
    got = {}
    cases = {
        "batch_size": lambda: ek.VAE(64, 2, hidden=(8,)).fit(x, batch_size=R - 1, epochs=1, progress=False,
                                                              distributed=True),
        "free_bits": lambda: ek.VAE(64, 2, hidden=(8,)).fit(x, free_bits=0.5, epochs=1, progress=False,
                                                             distributed=True),
        "seed": lambda: ek.VAE(64, 2, hidden=(8,), seed=r).fit(x, epochs=1, progress=False, distributed=True),
        "data": lambda: ek.VAE(64, 2, hidden=(8,)).fit(x[r:], epochs=1, progress=False, distributed=True),
        "options": lambda: ek.VAE(64, 2, hidden=(8,)).fit(x, lr=1e-3 * (r + 1), epochs=1, progress=False,
                                                          distributed=True),
        "checkpoint": lambda: ek.VAE(64, 2, hidden=(8,)).fit(x, epochs=1, progress=False, distributed=True,
                                                             checkpoint=os.path.join(out, "nowhere", "c.elbokit")),
        "distributed": lambda: ek.VAE(64, 2, hidden=(8,)).fit(x, epochs=1, progress=False, distributed="yes"),
        "few_rows": lambda: ek.VAE(64, 2, hidden=(8,)).log_likelihood(x[:R - 1], k=4, distributed=True),
    }
    for name, fn in cases.items():
        try:
            fn()
            got[name] = None
        except ValueError as e:
            got[name] = str(e)
    # still usable after the errors: a short distributed fit
    m = ek.VAE(64, 2, hidden=(8,))
    m.fit(x, epochs=1, batch_size=32, progress=False, distributed=True)
    got["after"] = float(np.sum(m._core.get_flat()))
    with open(os.path.join(out, f"errors{r}.json"), "w") as f:
        json.dump(got, f)


def check_sanitized():
    """Under .ci/run's sanitizer pass (conftest.py sets ELBOKIT_EXPECT_SANITIZED for the processes the
    tests start): this process must run the sanitized engine, with AddressSanitizer's runtime loaded."""
    where = os.environ.get("ELBOKIT_EXPECT_SANITIZED")
    if not where:
        return
    if not os.path.abspath(ek.__file__).startswith(os.path.abspath(where)):
        sys.exit(f"elbokit is imported from {ek.__file__}, not from the sanitizer build in {where}")
    with open("/proc/self/maps") as f:
        if "libasan" not in f.read():
            sys.exit("the sanitizer build runs without AddressSanitizer's runtime loaded")


if __name__ == "__main__":
    check_sanitized()
    mode, out = sys.argv[1], sys.argv[2]
    if mode == "train":
        train(out, "--single" not in sys.argv)
    elif mode in ("longfit", "stall", "raise"):
        longfit(out, mode)
    elif mode == "errors":
        errors(out)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
