"""The HVAE: one level is exactly the VAE; a linear-Gaussian hierarchy against its closed forms
(log p(x), the posterior, the ELBO gap); the ordering of the importance-weighted bounds; the
networks; training; saving; determinism; and bad input."""
import math
import os
import sys

import numpy as np
import pytest
import torch

import elbokit as ek

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hvae_cases import CASES, build  # noqa: E402
from torch_reference_hvae import TorchHVAE  # noqa: E402


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300)


# ------------------------------------------------------------------ one level = the VAE
ONE_LEVEL = [("markov", "bernoulli", (8, 6)), ("topdown", "gaussian", (7,)), ("topdown", "bernoulli", ()),
             ("markov", "gaussian", ())]


@pytest.mark.parametrize("structure,likelihood,hidden", ONE_LEVEL)
def test_one_level_is_exactly_the_vae(structure, likelihood, hidden, rng):
    """Same names, shapes and initial weights for a seed; the same ELBO terms and gradients (both
    KL estimators), L_K, encoder, decoder and samples for the same weights and noise."""
    vae = ek.VAE(7, 3, hidden=hidden, likelihood=likelihood, activation="tanh", dtype="float64", seed=4)
    h = ek.HVAE(7, (3,), hidden=hidden, structure=structure, likelihood=likelihood, activation="tanh",
                dtype="float64", seed=4)
    pv, ph = vae.parameters(), h.parameters()
    assert list(pv) == list(ph)
    assert all(np.array_equal(pv[k], ph[k]) for k in pv)
    p = {k: v + 0.2 * rng.standard_normal(v.shape) for k, v in pv.items()}
    vae.set_parameters(p)
    h.set_parameters(p)
    x = rng.uniform(size=(6, 7)) if likelihood == "bernoulli" else rng.standard_normal((6, 7))
    eps = rng.standard_normal((2, 6, 3))
    for kl in ("analytic", "mc"):
        rv, gv = vae.elbo_grad(x, eps=eps, kl=kl)
        rh, gh = h.elbo_grad(x, eps=[eps], kl=kl)
        assert rel(rh.elbo, rv.elbo) < 1e-13 and rel(rh.kl_levels[:, 0], rv.kl) < 1e-13
        assert rel(rh.reconstruction, rv.reconstruction) < 1e-13
        for k in gv:
            assert rel(gh[k], gv[k]) < 1e-12, k
    assert np.array_equal(h.elbo(x, n_samples=3, seed=9).elbo, vae.elbo(x, n_samples=3, seed=9).elbo)
    assert rel(h.log_likelihood(x, k=50, seed=2), vae.log_likelihood(x, k=50, seed=2)) < 1e-13
    (mu, lv), = h.encode(x)
    mv, lvv = vae.encode(x)
    assert np.array_equal(mu, mv) and np.array_equal(lv, lvv)
    assert np.array_equal(h.sample(5, seed=3), vae.sample(5, seed=3))
    assert np.array_equal(h.decode(mu, logits=True), vae.decode(mu, logits=True))


def test_one_level_fit_is_the_vae_fit(rng):
    """The shared loop draws the same noise for one level: the same trajectory."""
    x = (rng.uniform(size=(150, 10)) > 0.5).astype(float)
    kw = dict(hidden=(12,), dtype="float64", seed=2)
    vae, h = ek.VAE(10, 3, **kw), ek.HVAE(10, (3,), structure="topdown", **kw)
    opts = dict(epochs=2, batch_size=32, lr=3e-3, n_samples=2, kl="mc", warmup_steps=5, progress=False, seed=1)
    hv, hh = vae.fit(x, validation=x[:40], **opts), h.fit(x, validation=x[:40], **opts)
    assert rel(hh["step_loss"], hv["step_loss"]) < 1e-10
    assert rel(hh["val_elbo"], hv["val_elbo"]) < 1e-10
    assert np.array_equal(hh["active_units"], hv["active_units"])
    for k, v in vae.parameters().items():
        assert rel(h.parameters()[k], v) < 1e-9, k


# ------------------------------------------------------------------ closed forms: a linear-Gaussian hierarchy
# z_2 ~ N(0, 1), z_1 | z_2 ~ N(A z_2 + a, s2), x | z_1 ~ N(C z_1 + c, v I) (MATH.md §5, §6): every
# conditional and posterior is Gaussian with a mean linear in its input and a constant variance, so
# linear networks (hidden=()) with zero log-variance weights represent the exact posterior in both
# structures (for "topdown", precision weighting is then exactly Bayes' rule).
A, a, S2, V = 1.3, -0.4, 0.5, 0.3
C, c = np.array([0.8, -1.1, 0.5]), np.array([0.2, 0.1, -0.3])


def log_px(x):
    cov = (A * A + S2) * np.outer(C, C) + V * np.eye(3)
    d = x - (C * a + c)
    _, logdet = np.linalg.slogdet(cov)
    return -0.5 * (3 * math.log(2 * math.pi) + logdet + np.einsum("ni,ij,nj->n", d, np.linalg.inv(cov), d))


def exact_model(structure, d_mu=(0.0, 0.0), d_lv=(0.0, 0.0)):
    """The hierarchy with its exact posterior; d_mu / d_lv shift q's mean / log-variance biases of
    level 1 and 2 away from it."""
    h = ek.HVAE(3, (1, 1), hidden=(), structure=structure, likelihood="gaussian", decoder_var=V,
                dtype="float64")
    p = {k: np.zeros_like(v) for k, v in h.parameters().items()}
    p["decoder.1.mu.weight"][:] = A
    p["decoder.1.mu.bias"][:] = a
    p["decoder.1.logvar.bias"][:] = math.log(S2)
    p["decoder.0.out.weight"][:, 0] = C
    p["decoder.0.out.bias"][:] = c
    if structure == "markov":
        V1 = A * A + S2                                     # z_1's marginal variance
        var1 = 1.0 / (1.0 / V1 + C @ C / V)                 # p(z_1|x)
        p["encoder.0.mu.weight"][0] = var1 * C / V
        p["encoder.0.mu.bias"][:] = var1 * (a / V1 - C @ c / V)
        p["encoder.0.logvar.bias"][:] = math.log(var1)
        var2 = 1.0 / (1.0 + A * A / S2)                     # p(z_2|z_1)
        p["encoder.1.mu.weight"][:] = var2 * A / S2
        p["encoder.1.mu.bias"][:] = -var2 * A * a / S2
        p["encoder.1.logvar.bias"][:] = math.log(var2)
    else:
        var_d = V / (C @ C)                                 # the likelihood of z_1 as a Gaussian
        p["encoder.0.mu.weight"][0] = var_d * C / V
        p["encoder.0.mu.bias"][:] = -var_d * C @ c / V
        p["encoder.0.logvar.bias"][:] = math.log(var_d)
        G, g = C * A, C * a + c                             # x | z_2 ~ N(G z_2 + g, Sigma)
        Si = np.linalg.inv(S2 * np.outer(C, C) + V * np.eye(3))
        var2 = 1.0 / (1.0 + G @ Si @ G)                     # p(z_2|x)
        p["encoder.1.mu.weight"][0] = var2 * Si @ G
        p["encoder.1.mu.bias"][:] = -var2 * G @ Si @ g
        p["encoder.1.logvar.bias"][:] = math.log(var2)
    for l in range(2):
        p[f"encoder.{l}.mu.bias"] += d_mu[l]
        p[f"encoder.{l}.logvar.bias"] += d_lv[l]
    h.set_parameters(p)
    return h


def linear_data(n, seed=0):
    r = np.random.default_rng(seed)
    z1 = A * r.standard_normal(n) + a + math.sqrt(S2) * r.standard_normal(n)
    return np.outer(z1, C) + c + math.sqrt(V) * r.standard_normal((n, 3))


@pytest.mark.parametrize("structure", ["markov", "topdown"])
def test_exact_posterior_gives_log_px_for_every_sample(structure):
    """With q the exact posterior, log p(x, z) - log q(z|x) = log p(x) for every z: the Monte-Carlo
    ELBO and every L_K equal the closed-form log p(x); the analytic ELBO does in expectation."""
    h, x = exact_model(structure), linear_data(40)
    lp = log_px(x)
    assert np.allclose(h.elbo(x, n_samples=3, kl="mc", seed=1).elbo, lp, rtol=0, atol=1e-10)
    assert np.allclose(h.log_likelihood(x, k=7, seed=2), lp, rtol=0, atol=1e-10)
    r = h.elbo(x, n_samples=400, kl="analytic", seed=3)
    err = r.elbo - lp  # Monte-Carlo noise only: zero mean
    assert abs(err.mean()) < 4 * err.std(ddof=1) / math.sqrt(len(err))
    assert np.all(r.kl_levels[:, 1] >= 0)  # the top term is an analytic KL


def test_markov_elbo_gap_is_the_closed_form_kl():
    """With shifted biases, ELBO = log p(x) - KL(q(z|x) || p(z|x)), where for this model
    KL = KL(q(z_1|x) || p(z_1|x)) + KL(q(z_2|z_1) || p(z_2|z_1)) (the second does not depend on z_1)."""
    dm, dl = (0.3, -0.2), (0.4, -0.5)
    h, x = exact_model("markov", dm, dl), linear_data(60, seed=1)
    var1 = 1.0 / (1.0 / (A * A + S2) + C @ C / V)
    var2 = 1.0 / (1.0 + A * A / S2)
    kl1 = 0.5 * (math.exp(dl[0]) - dl[0] - 1 + dm[0] ** 2 / var1)
    kl2 = 0.5 * (math.exp(dl[1]) - dl[1] - 1 + dm[1] ** 2 / var2)
    expect = log_px(x) - kl1 - kl2
    for kl in ("analytic", "mc"):
        r = h.elbo(x, n_samples=2000, kl=kl, seed=4)
        per_example_se = r.elbo.std() / math.sqrt(2000)  # a bound on the MC error of each mean
        assert abs(r.mean() - expect.mean()) < 5 * per_example_se / math.sqrt(len(x)) + 5 * r.stderr() / 50
        assert np.all(np.abs(r.elbo - expect) < 6 * per_example_se + 0.05)


@pytest.mark.parametrize("structure", ["markov", "topdown"])
def test_importance_weighted_bounds_increase_towards_log_px(structure):
    """L_1 <= L_10 <= L_100 <= log p(x) on average (MATH.md §3), L_1 = ELBO in expectation, and
    L_100 closes most of the gap, with q shifted away from the posterior."""
    h, x = exact_model(structure, (0.4, -0.3), (0.5, -0.6)), linear_data(300, seed=2)
    lp = log_px(x).mean()
    L = {k: h.log_likelihood(x, k=k, seed=5) for k in (1, 10, 100)}
    m = {k: v.mean() for k, v in L.items()}
    se = {k: ek.mean_stderr(L[k] - L[1])[1] for k in (10, 100)}
    assert m[1] + 3 * se[10] < m[10] and m[10] < m[100] < lp + 1e-3
    elbo = h.elbo(x, n_samples=50, kl="analytic", seed=6)
    assert abs(m[1] - elbo.mean()) < 4 * ek.mean_stderr(L[1] - elbo.elbo)[1]
    assert elbo.mean() < lp - 0.05
    assert lp - m[100] < 0.1 * (lp - m[1])


def test_bounds_ordered_on_a_nonlinear_model():
    """The same ordering for a random nonlinear 3-level model on digits (both structures),
    L_1 <= L_10 <= L_100 >= ELBO on average."""
    x = ek.datasets.digits()[1][:120]
    for structure in ("markov", "topdown"):
        h = ek.HVAE(64, (8, 4, 2), hidden=(32,), structure=structure, seed=1, dtype="float64")
        L = [h.log_likelihood(x, k=k, seed=1).mean() for k in (1, 10, 100)]
        assert L[0] < L[1] < L[2] and L[2] > h.elbo(x, n_samples=10, seed=2).mean()


def test_analytic_and_mc_estimators_agree_in_expectation():
    """Both KL estimators are unbiased for every level's term (within 5 standard errors)."""
    case = dict(CASES[4], kl="analytic")
    for structure in ("markov", "topdown"):
        h, x, _ = build(dict(case, structure=structure), n=4)
        # 10 independent runs of 400 samples per estimator: means and standard errors per entry
        runs = {kl: np.stack([h.elbo(x, n_samples=400, kl=kl, seed=10 * i + (kl == "mc")).kl_levels
                              for i in range(10)]) for kl in ("analytic", "mc")}
        mean = {kl: r.mean(axis=0) for kl, r in runs.items()}
        se = np.sqrt(sum(r.var(axis=0, ddof=1) / 10 for r in runs.values()))
        assert np.all(np.abs(mean["analytic"] - mean["mc"]) < 5 * se + 1e-12), (mean, se)
        if structure == "topdown":  # the analytic KLs have the lower variance
            assert np.all(runs["analytic"].var(axis=0) <= runs["mc"].var(axis=0))


# ------------------------------------------------------------------ the networks
@pytest.mark.parametrize("structure", ["markov", "topdown"])
def test_encode_decode_sample_match_torch(structure, rng):
    """encode along the mean path and along a sampled chain, decode from any level through the
    prior's means, and ancestral sampling with the documented noise, all as the reference computes."""
    h, x, _ = build(dict(CASES[0], z_dims=(3, 2, 2), structure=structure))
    ref = TorchHVAE.from_elbokit(h)
    n = x.shape[0]
    eps = [rng.standard_normal((n, z)) for z in h.z_dims]
    with torch.no_grad():
        chain = ref._chain(torch.from_numpy(x), [torch.from_numpy(e)[None] for e in eps])
        chain0 = ref._chain(torch.from_numpy(x), [torch.zeros(1, n, z, dtype=torch.float64) for z in h.z_dims])
    for enc, ch in ((h.encode(x, eps=eps), chain), (h.encode(x), chain0)):
        for (mu, lv), (_, m, v, _, _) in zip(enc, ch):
            assert np.allclose(mu, m.numpy().reshape(mu.shape), atol=1e-12)
            assert np.allclose(lv, v.numpy().reshape(lv.shape), atol=1e-12)
    z3 = rng.standard_normal((4, 2))
    with torch.no_grad():
        z2 = ref._dec[2](torch.from_numpy(z3))[1]
        z1 = ref._dec[1](z2)[1]
        expect = torch.sigmoid(ref._dec[0](z1)).numpy()
        assert np.allclose(h.decode(z1.numpy()), expect, atol=1e-12)
    assert np.allclose(h.decode(z3, level=3), expect, atol=1e-12)
    with torch.no_grad():
        for level, z in ((3, z3), (2, z2.numpy())):
            _, pm, plv = ref._dec[level - 1](torch.from_numpy(z))
            mu, lv = h.prior(z, level)
            assert np.allclose(mu, pm.numpy(), atol=1e-12) and np.allclose(lv, plv.numpy(), atol=1e-12)
    xs, zs = h.sample(6, seed=3, return_latent=True)
    flat = ek.random.normal(6 * 7, 3, stream=ek.random.STREAMS["sample"])
    e = [flat[:18].reshape(6, 3), flat[18:30].reshape(6, 2), flat[30:].reshape(6, 2)]
    assert np.array_equal(zs[2], e[2])
    with torch.no_grad():
        for l in (1, 0):
            _, pm, plv = ref._dec[l + 1](torch.from_numpy(zs[l + 1]))
            assert np.allclose(zs[l], (pm + torch.exp(0.5 * plv) * torch.from_numpy(e[l])).numpy(), atol=1e-12)
        assert np.allclose(xs, torch.sigmoid(ref._dec[0](torch.from_numpy(zs[0]))).numpy(), atol=1e-12)
    rec = h.reconstruct(x)
    assert rec.shape == x.shape and np.array_equal(rec, h.decode(h.encode(x)[0][0]))
    assert not np.array_equal(h.reconstruct(x, sample=True, seed=1), rec)


# ------------------------------------------------------------------ training, saving
@pytest.mark.parametrize("structure", ["markov", "topdown"])
def test_fit_on_digits_reports_every_level(structure, tmp_path):
    train, test = ek.datasets.digits()
    h = ek.HVAE(64, (8, 4), hidden=(64,), structure=structure, seed=0)
    before = h.elbo(test, seed=0).mean()
    hist = h.fit(train, epochs=4, batch_size=64, lr=3e-3, validation=test, warmup_steps=40, free_bits=0.05,
                 progress=False)
    assert hist["kl_terms"].shape == (4, 2) and hist["active_units"].shape == (4, 2)
    # active units per level: dimensions of q's mean along the chain's mean path with variance > 0.01
    expect = [int((np.var(mu.astype(np.float64), axis=0) > 0.01).sum()) for mu, _ in h.encode(test)]
    assert list(hist["active_units"][-1]) == expect
    assert np.allclose(hist["train_kl"], hist["kl_terms"].sum(axis=1), rtol=1e-9)
    assert np.allclose(hist["train_elbo"], hist["train_reconstruction"] - hist["train_kl"], rtol=1e-9)
    assert hist["beta"][0] < 1.0 and hist["beta"][-1] == 1.0
    assert hist["val_elbo"][-1] > before + 5
    path = h.save(tmp_path / "h.elbokit")
    h2 = ek.load(path)
    assert isinstance(h2, ek.HVAE) and h2.config == h.config
    assert all(np.array_equal(v, h2.parameters()[k]) for k, v in h.parameters().items())
    assert np.array_equal(h2.elbo(test, seed=1).elbo, h.elbo(test, seed=1).elbo)


def run_everything(threads, structure):
    ek.set_num_threads(threads)
    try:
        x = np.random.default_rng(0).uniform(size=(300, 200))
        h = ek.HVAE(200, (16, 8, 4), hidden=(300, 120), structure=structure, seed=5)
        r = h.elbo(x, n_samples=3, seed=1)
        _, g = h.elbo_grad(x, n_samples=2, seed=2, kl="mc")
        ll = h.log_likelihood(x[:10], k=300, seed=3)
        hist = h.fit(x, epochs=1, batch_size=150, progress=False, seed=4, validation=x[:50])
        return [r.elbo, r.kl_levels, ll, hist["step_loss"], hist["val_elbo"]] + list(g.values()) + \
            list(h.parameters().values())
    finally:
        ek.set_num_threads(2)


@pytest.mark.parametrize("structure", ["markov", "topdown"])
def test_bit_identical_with_one_and_two_threads(structure):
    one, two = run_everything(1, structure), run_everything(2, structure)
    assert all(np.array_equal(a, b) for a, b in zip(one, two))


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("kwargs,match", [
    (dict(x_dim=0), "x_dim must be an integer >= 1, got 0"),
    (dict(x_dim=6, z_dims=()), r"z_dims must hold at least one positive integer, got \(\)"),
    (dict(x_dim=6, z_dims=(3, 0)), r"z_dims\[1\] must be an integer >= 1, got 0"),
    (dict(x_dim=6, z_dims=(3, 2.5)), r"z_dims\[1\] must be an integer"),
    (dict(x_dim=6, z_dims=None), "z_dims must be a tuple of positive integers, got None"),
    (dict(x_dim=6, hidden=(4, -1)), r"hidden\[1\] must be an integer >= 1, got -1"),
    (dict(x_dim=6, structure="ladder"), "structure must be one of 'markov', 'topdown', got 'ladder'"),
    (dict(x_dim=6, likelihood="poisson"), "likelihood must be one of 'bernoulli', 'gaussian', got 'poisson'"),
    (dict(x_dim=6, activation="swish"), "activation must be one of .*got 'swish'"),
    (dict(x_dim=6, dtype="float16"), "dtype must be one of 'float32', 'float64', got 'float16'"),
    (dict(x_dim=6, seed=-1), "seed must be an integer >= 0, got -1"),
    (dict(x_dim=6, likelihood="gaussian", decoder_var=0.0), "decoder_var must be positive, got 0.0"),
])
def test_constructor_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ek.HVAE(**kwargs)


@pytest.fixture(scope="module")
def small():
    return ek.HVAE(6, (3, 2), hidden=(5,), dtype="float64", seed=0)


X = np.full((4, 6), 0.5)


@pytest.mark.parametrize("x,match", [
    (np.full((4, 5), 0.5), r"x must have shape \(n, 6\), got \(4, 5\)"),
    (np.full(6, 0.5), r"x must be a 2-D array of shape \(n, 6\), got shape \(6,\)"),
    (np.zeros((0, 6)), r"x must not be empty, got shape \(0, 6\)"),
    (np.where(np.eye(4, 6) > 0, np.nan, 0.5), "x must contain only finite values, got nan at index"),
    (np.where(np.eye(4, 6) > 0, -np.inf, 0.5), "x must contain only finite values, got -inf"),
    (np.full((4, 6), 1.5), r"x must lie in \[0, 1\] for a Bernoulli likelihood"),
])
def test_bad_data_rejected_everywhere(small, x, match):
    for call in (lambda: small.elbo(x), lambda: small.elbo_grad(x), lambda: small.log_likelihood(x, k=3),
                 lambda: small.encode(x), lambda: small.reconstruct(x),
                 lambda: small.fit(x, epochs=1, progress=False)):
        with pytest.raises(ValueError, match=match):
            call()


@pytest.mark.parametrize("kwargs,match", [
    (dict(kl="exact"), "kl must be one of 'analytic', 'mc', got 'exact'"),
    (dict(n_samples=0), "n_samples must be an integer >= 1, got 0"),
    (dict(seed=-3), "seed must be an integer >= 0, got -3"),
    (dict(eps=np.zeros((1, 4, 3))), r"eps must be a list of 2 arrays, one per level, of shapes .* got ndarray"),
    (dict(eps=[np.zeros((1, 4, 3))]), "eps must be a list of 2 arrays, one per level, got a list of 1"),
    (dict(eps=[np.zeros((1, 4, 3))] * 3), "eps must be a list of 2 arrays, one per level, got a list of 3"),
    (dict(eps=[np.zeros((1, 4, 3)), np.zeros((1, 4, 3))]), r"eps\[1\] must have shape \(n, 4, 2\), got \(1, 4, 3\)"),
    (dict(eps=[np.zeros((1, 5, 3)), np.zeros((1, 5, 2))]), r"eps\[0\] must have shape \(n, 4, 3\), got \(1, 5, 3\)"),
    (dict(eps=[np.zeros((4, 3)), np.zeros((1, 4, 2))]), r"eps\[0\] must be a 3-D array"),
    (dict(eps=[np.zeros((2, 4, 3)), np.zeros((1, 4, 2))]), r"eps\[1\] must have the same number of samples as eps\[0\] \(2\)"),
    (dict(eps=[np.zeros((1, 4, 3)), np.full((1, 4, 2), np.nan)]), r"eps\[1\] must contain only finite values"),
    (dict(eps=[np.zeros((0, 4, 3)), np.zeros((0, 4, 2))]), r"eps\[0\] must not be empty"),
    (dict(eps=[np.zeros((2, 4, 3)), np.zeros((2, 4, 2))], n_samples=3), "n_samples must equal eps"),
])
def test_elbo_options_rejected(small, kwargs, match):
    for call in (small.elbo, small.elbo_grad, small.objective_grad):
        with pytest.raises(ValueError, match=match):
            call(X, **kwargs)


@pytest.mark.parametrize("call,match", [
    (lambda m: m.decode(np.zeros((2, 3)), level=3), r"level must be an integer in \[1, 2\], got 3"),
    (lambda m: m.decode(np.zeros((2, 3)), level=0), "level must be an integer >= 1, got 0"),
    (lambda m: m.decode(np.zeros((2, 3)), level=2), r"z must have shape \(n, 2\), got \(2, 3\)"),
    (lambda m: m.decode(np.full((2, 3), np.inf)), "z must contain only finite values"),
    (lambda m: m.sample(0), "n must be an integer >= 1, got 0"),
    (lambda m: m.prior(np.zeros((2, 3)), 1), "level must be an integer >= 2, got 1"),
    (lambda m: m.prior(np.zeros((2, 3)), 3), r"level must be an integer in \[2, 2\], got 3"),
    (lambda m: m.prior(np.zeros((2, 3)), 2), r"z must have shape \(n, 2\), got \(2, 3\)"),
    (lambda m: m._core.prior(np.zeros((2, 3)), 1), r"level must be an integer in \[2, 2\]"),
    (lambda m: m.log_likelihood(X, k=0), "k must be an integer >= 1, got 0"),
    (lambda m: m.encode(X, eps=[np.zeros((4, 3))]), "eps must be a list of 2 arrays, one per level, got a list of 1"),
    (lambda m: m.objective_grad(X, beta=-1.0), "beta must be >= 0.0, got -1.0"),
    (lambda m: m.objective_grad(X, free_bits=float("nan")), "free_bits must be finite, got nan"),
    (lambda m: m.fit(X, epochs=0, progress=False), "epochs must be an integer >= 1, got 0"),
    (lambda m: m.fit(X, kl="exact", progress=False), "kl must be one of 'analytic', 'mc', got 'exact'"),
    (lambda m: m.fit(X, validation=np.zeros((3, 5)), progress=False), r"validation must have shape \(n, 6\)"),
    (lambda m: m.set_parameters({"encoder.0.mu.weight": np.zeros((3, 5))}), "params must have exactly the names"),
    (lambda m: m._core.elbo(X, [np.zeros((4, 3))], 1, "analytic"),
     r"eps must hold one array per level \(2\), got 1"),
    (lambda m: m._core.elbo(X, [np.zeros((4, 3)), np.zeros((3, 2))], 1, "analytic"),
     r"eps\[1\] must have shape \(4, 2\), got \(3, 2\)"),
    (lambda m: m._core.elbo(X, [np.zeros((4, 3)), np.zeros((4, 2))], 0, "analytic"),
     "n_samples must be a positive integer, got 0"),
    (lambda m: m._core.decode(np.zeros((2, 3)), 5, True), r"level must be an integer in \[1, 2\], got 5"),
])
def test_other_bad_input_rejected(small, call, match):
    with pytest.raises(ValueError, match=match):
        call(small)


def test_unknown_structure_rejected_by_the_core():
    with pytest.raises(ValueError, match="structure must be one of 'markov', 'topdown', got 'ladder'"):
        ek._core.HVAE_f64(6, [3], [], "ladder", "relu", "bernoulli", True, 1.0, 0)
    with pytest.raises(ValueError, match="z_dims must hold at least one latent width, got an empty list"):
        ek._core.HVAE_f64(6, [], [], "markov", "relu", "bernoulli", True, 1.0, 0)
