#!/usr/bin/env python
"""Where the time of benchmarks/run.py's cases goes: sub-steps timed through elbokit's public API,
beside the same sub-steps compiled in JAX and the bare matrix products (numpy's OpenBLAS and XLA),
in one process, alternating, median of the repeats. The basis of "what bounds it" in
benchmarks/README.md.

    python benchmarks/profile_cases.py               # needs jax (pip install ".[bench]") and torch
    python benchmarks/profile_cases.py --cases 3,7 --repeats 9

Per case (times in ms per unit of the case: one training step, one call, one sampling step):
  1, 2  fit per step | objective_grad on one batch (forward + backward, no Adam, one Python call)
        | elbo on the batch (forward) | a 1-row encode (the fixed cost of one call) | numpy
        products of the step | JAX: the jitted step, value_and_grad alone, forward alone
  3     elbo of 10,000 rows | encode | decode (logits) | numpy products | JAX elbo | XLA products
  4     L_1000 of 16 rows | decode of the 16,000 rows (logits) | numpy products | JAX L_K
  6     fit per step | loss_grad on the batch | loss on the batch | JAX step, value_and_grad
  7     one sampling step (sample over T = 100 / 100) | predict on the 10,000 points | numpy
        products | JAX one step (eps-network + update) | XLA products
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run  # noqa: E402  (benchmarks/run.py: imports, data, models, timing)


def timeit(fns, repeats):
    """name -> median seconds over repeats, the calls alternating (run.alternate), one warm-up each."""
    for f in fns.values():
        f()
    t = run.alternate([(k, None, f) for k, f in fns.items()], repeats)
    return {k: statistics.median(v) for k, v in t.items()}


def show(title, t, per=1.0, note=""):
    print(f"\n{title}{note}")
    for k, v in t.items():
        print(f"  {k:58s} {1e3 * v / per:9.3f} ms")


def np_products(x, weights):
    """The forward products of a chain x @ W_0 @ W_1 ... (weights as (in, out)), nothing else."""
    def f():
        h = x
        for w in weights:
            h = h @ w
        return h
    return f


def vae_weights(vae, np):
    """(encoder chain with both heads stacked, decoder chain) as (in, out) float32 matrices."""
    p = {k: np.asarray(v, dtype=np.float32) for k, v in vae.parameters().items()}
    n = len(vae.hidden)
    enc = [p[f"encoder.{i}.weight"].T.copy() for i in range(n)]
    enc.append(np.concatenate([p["encoder.mu.weight"], p["encoder.logvar.weight"]]).T.copy())
    dec = [p[f"decoder.{i}.weight"].T.copy() for i in range(n)] + [p["decoder.out.weight"].T.copy()]
    return enc, dec


def train_profile(number, arch, x, steps, epochs, repeats):
    ek, np, jm, jax, jnp = run.ek, run.np, run.jm, run.jax, run.jnp
    B = arch["batch"]
    vae = ek.VAE(arch["x_dim"], arch["z_dim"], hidden=arch["hidden"], likelihood="bernoulli", seed=0)
    xb = np.ascontiguousarray(x[:B])
    eps = ek.random.normal((1, B, arch["z_dim"]), 0)
    enc, dec = vae_weights(vae, np)
    z = np.zeros((B, arch["z_dim"]), np.float32)
    jmodel = jm.JaxVAE.from_elbokit(vae)
    loss = jm.vae_loss(jmodel)
    trainer = jm.Trainer(jmodel.params, loss, x, run.LR)
    idx = [jnp.asarray(ek.random.permutation(len(x), 0, e)[k:k + B].astype(np.int32))
           for e in range(epochs) for k in range(0, len(x), B)]
    noise = [jnp.asarray(ek.random.normal((B, arch["z_dim"]), 0, 100 + t).astype(np.float32)) for t in range(len(idx))]
    trainer.prepare(idx, noise)
    sizes = [B] * len(idx)
    jxb, jeps = jnp.asarray(xb), jnp.asarray(eps[0].astype(np.float32))
    vg, _ = jm.compile_fn(jax.value_and_grad(loss), jmodel.params, jxb, jeps)
    fw, _ = jm.compile_fn(loss, jmodel.params, jxb, jeps)
    n_steps = len(idx)
    t = timeit({
        f"elbokit fit, per step ({n_steps} steps)": lambda: vae.fit(x, epochs=epochs, batch_size=B, seed=0,
                                                                    progress=False, active_units=False),
        "elbokit objective_grad (fwd + bwd, no Adam)": lambda: vae.objective_grad(xb, eps=eps),
        "elbokit elbo on the batch (fwd)": lambda: vae.elbo(xb, eps=eps),
        "elbokit encode of 1 row (fixed cost of a call)": lambda: vae.encode(xb[:1]),
        "numpy products of the forward (encoder + decoder)": lambda: (np_products(xb, enc)(), np_products(z, dec)()),
        f"JAX jitted step, per step ({n_steps} steps)": lambda: trainer.run(idx, noise, sizes, len(x)),
        "JAX value_and_grad alone (no Adam)": lambda: jax.block_until_ready(vg(trainer.params, jxb, jeps)),
        "JAX forward alone": lambda: fw(trainer.params, jxb, jeps).block_until_ready(),
    }, repeats)
    for k in list(t):
        if "per step" in k:
            t[k] /= n_steps
    show(f"case {number}: {arch}", t)


def case3(repeats):
    ek, np, jm, jax, jnp = run.ek, run.np, run.jm, run.jax, run.jnp
    _, x = run.fashion(0, 10000)
    vae = ek.VAE(784, 20, hidden=(400,), likelihood="bernoulli", seed=0)
    eps = ek.random.normal((1, len(x), 20), 0).astype(np.float32)
    mu, _ = vae.encode(x)
    enc, dec = vae_weights(vae, np)
    jmodel = jm.JaxVAE.from_elbokit(vae)
    args = (jmodel.params, jnp.asarray(x), jnp.asarray(eps[0]))
    f, _ = jm.compile_fn(jm.elbo_fn(jmodel), *args)
    jenc, jdec = [jnp.asarray(w) for w in enc], [jnp.asarray(w) for w in dec]
    jz = jnp.asarray(mu)

    def prods(x, enc, z, dec):
        h = x
        for w in enc:
            h = h @ w
        g = z
        for w in dec:
            g = g @ w
        return h, g
    fp, _ = jm.compile_fn(prods, args[1], jenc, jz, jdec)
    t = timeit({
        "elbokit elbo (10,000 rows)": lambda: vae.elbo(x, seed=0),
        "elbokit encode": lambda: vae.encode(x),
        "elbokit decode (logits)": lambda: vae.decode(mu, logits=True),
        "numpy products (encoder + decoder)": lambda: (np_products(x, enc)(), np_products(mu, dec)()),
        "JAX elbo (compiled)": lambda: f(*args).block_until_ready(),
        "XLA products alone (compiled)": lambda: jax.block_until_ready(fp(args[1], jenc, jz, jdec)),
    }, repeats)
    show("case 3: ELBO of 10,000 Fashion-MNIST rows, 784-400-20", t)


def case4(repeats):
    ek, np, jm, jnp = run.ek, run.np, run.jm, run.jnp
    _, x = run.fashion(0, 16)
    K = 1000
    vae = ek.VAE(784, 20, hidden=(400,), likelihood="bernoulli", seed=0)
    eps = ek.random.normal((16, K, 20), 0, ek.random.STREAMS["log_likelihood"]).astype(np.float32)
    mu, logvar = vae.encode(x)
    z = np.ascontiguousarray((mu[:, None] + np.exp(0.5 * logvar)[:, None] * eps).reshape(-1, 20))
    _, dec = vae_weights(vae, np)
    jmodel = jm.JaxVAE.from_elbokit(vae)
    args = (jmodel.params, jnp.asarray(x), jnp.asarray(eps))
    f, _ = jm.compile_fn(jm.log_likelihood_fn(jmodel, 8), *args)
    t = timeit({
        "elbokit log_likelihood, 16 rows x K=1000": lambda: vae.log_likelihood(x, k=K, seed=0),
        "elbokit decode of the 16,000 rows (logits)": lambda: vae.decode(z, logits=True),
        "numpy decoder products (16,000 rows)": np_products(z, dec),
        "JAX L_K (compiled)": lambda: f(*args).block_until_ready(),
    }, repeats)
    show("case 4: L_1000 of 16 rows (per 16 rows)", t)


def case6(repeats):
    ek, np, jm, jax, jnp = run.ek, run.np, run.jm, run.jax, run.jnp
    model = run.new_diffusion(1000)
    B = run.DIFFUSION["batch"]
    x = run.swiss(B * 10)
    xb = np.ascontiguousarray(x[:B])
    tt = np.minimum(1000, 1 + np.floor(1000 * ek.random.uniform(B, 0, 5)).astype(np.int64))
    eps = ek.random.normal((B, 2), 0, 6).astype(np.float32)
    jmodel = jm.JaxDiffusion.from_elbokit(model)
    loss = jm.diffusion_loss(jmodel)
    jargs = (jmodel.params, jnp.asarray(xb), (jnp.asarray(tt.astype(np.int32)), jnp.asarray(eps)))
    vg, _ = jm.compile_fn(jax.value_and_grad(loss), *jargs)
    fw, _ = jm.compile_fn(loss, *jargs)
    t = timeit({
        "elbokit fit, per step (60 steps)": lambda: model.fit(x, epochs=6, batch_size=B, seed=0, progress=False),
        "elbokit loss_grad on the batch (fwd + bwd)": lambda: model.loss_grad(xb, tt, eps),
        "elbokit loss on the batch (fwd)": lambda: model.loss(xb, tt, eps),
        "JAX value_and_grad (compiled)": lambda: jax.block_until_ready(vg(*jargs)),
        "JAX forward (compiled)": lambda: fw(*jargs).block_until_ready(),
    }, repeats)
    t["elbokit fit, per step (60 steps)"] /= 60
    show("case 6: diffusion eps-MLP 3x256, batch 512", t)


def case7(repeats):
    ek, np, jm, jnp = run.ek, run.np, run.jm, run.jnp
    n, T = 10000, 100
    model = run.new_diffusion(T)
    xt = ek.random.normal((n, 2), 0).astype(np.float32)
    p = {k: np.asarray(v, dtype=np.float32) for k, v in model.parameters().items()}
    ws = [p[f"net.{i}.weight"].T.copy() for i in range(3)] + [p["net.out.weight"].T.copy()]
    inp = np.zeros((n, 34), np.float32)
    jmodel = jm.JaxDiffusion.from_elbokit(model)
    noise = jnp.asarray(ek.random.normal((T, n, 2), 0, ek.random.STREAMS["sample"]).astype(np.float32))
    samp, _ = jm.compile_fn(jm.ddpm_sample_fn(jmodel), jmodel.params, noise)

    def one(p, x):
        return (x - jmodel.c[50] * jmodel.eps_hat(p, x, jnp.broadcast_to(jmodel.emb[50], (n, 32)))) * jmodel.r[50]
    jx = jnp.asarray(xt)
    step, _ = jm.compile_fn(one, jmodel.params, jx)
    jws, jinp = [jnp.asarray(w) for w in ws], jnp.asarray(inp)

    def prods(h, ws):
        for w in ws:
            h = h @ w
        return h
    fp, _ = jm.compile_fn(prods, jinp, jws)
    t = timeit({
        f"elbokit sample, per step ({n} points, T={T})": lambda: model.sample(n, method="ddpm", seed=0),
        "elbokit predict on the 10,000 points (one network call)": lambda: model.predict(xt, 50),
        "numpy products of one step": np_products(inp, ws),
        f"JAX sample (compiled fori_loop), per step (T={T})": lambda: samp(jmodel.params, noise).block_until_ready(),
        "JAX one step (compiled)": lambda: step(jmodel.params, jx).block_until_ready(),
        "XLA products of one step (compiled)": lambda: fp(jinp, jws).block_until_ready(),
    }, repeats)
    for k in list(t):
        if "per step" in k:
            t[k] /= T
    show("case 7: DDPM sampling step, 10,000 points, eps-MLP 3x256", t)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", default="1,2,3,4,6,7")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    run._import_jax(a.threads, "on")
    run._import(a.threads)
    run.set_threads(a.threads)
    print(f"threads {a.threads}; JAX {run.JAX_INFO['version']}; 1-min load {os.getloadavg()[0]:.1f}; "
          f"elbokit products: {run.ek._core.gemm_backend()}")
    cases = {int(c) for c in a.cases.split(",")}
    if 1 in cases:
        x, _ = run.fashion(128 * 20, 0)
        train_profile(1, run.FMNIST, x, 20, 2, a.repeats)
    if 2 in cases:
        x, _ = run.digits(64 * 20)
        train_profile(2, run.DIGITS, x, 20, 10, a.repeats)
    for c, f in ((3, case3), (4, case4), (6, case6), (7, case7)):
        if c in cases:
            f(a.repeats)
    print(f"\n1-min load at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
