"""Property-based tests of the models' public calls: every call on arbitrary arrays and sizes
either returns finite numbers of the documented shapes or raises ValueError/TypeError naming the
argument (tests/fuzzing.py). The profile (tests/conftest.py) fixes the examples."""
import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, strategies as st  # noqa: E402

import elbokit as ek  # noqa: E402
from fuzzing import BAD_INTS, arrays, check, floats, ints  # noqa: E402

# Work sizes (epochs, k): 10**9 is a valid, very long request, not an absurd one.
BAD_WORK = [v for v in BAD_INTS if v != 10 ** 9]

rng = np.random.default_rng(0)
MODELS = {
    "vae_bern32": ek.VAE(5, 2, hidden=(4,), dtype="float32", seed=0),
    "vae_gauss64": ek.VAE(5, 2, hidden=(), likelihood="gaussian", dtype="float64", seed=0),
    "hvae_markov": ek.HVAE(5, (3, 2), hidden=(4,), dtype="float32", seed=0),
    "hvae_topdown": ek.HVAE(5, (3, 2), hidden=(4,), structure="topdown", likelihood="gaussian", dtype="float64", seed=0),
    "diffusion": ek.Diffusion(3, timesteps=6, hidden=(8,), emb_dim=4, seed=0),
    "diffusion_d256": ek.Diffusion(3, timesteps=4, hidden=(8,), emb_dim=4, data="discrete256", seed=0),
    "flow": ek.Flow(4, layers=("coupling", "planar"), hidden=(6,), seed=0),
    "flow32": ek.Flow(2, layers=("planar",), dtype="float32", seed=0),
    "ae": ek.Autoencoder(5, 2, hidden=(4,), seed=0),
    "ae_contractive": ek.Autoencoder(5, 2, hidden=(), kind="contractive", code_activation="sigmoid", dtype="float64"),
}


def width(m):
    return getattr(m, "x_dim", None) or m.dim


def unit(m):
    return getattr(m, "likelihood", None) == "bernoulli"


def n_of(x):
    """Rows of an input (1 for anything without rows: the call must then reject it)."""
    return len(x) if isinstance(x, list) else (x.shape[0] if np.ndim(x) else 1)


def rows(n, *cols):
    """shapes(result): a tuple/array result whose arrays have n rows (and the given widths)."""
    def f(out):
        outs = out if isinstance(out, (tuple, list)) else [out]
        for o, c in zip(outs, cols or [None] * len(outs)):
            o = np.asarray(o)
            assert o.shape[0] == n, (o.shape, n)
            if c is not None:
                assert o.shape[1:] == c, (o.shape, c)
    return f


# (name, model keys, call(model, x), shapes(model, n) or None); x is the fuzzed argument "x"
X_CALLS = [
    ("elbo", ["vae_bern32", "vae_gauss64"], lambda m, x: m.elbo(x, n_samples=2, seed=1),
     lambda m, n: lambda r: (r.elbo.shape == (n,) and r.kl_per_dim.shape == (n, m.z_dim)) or pytest.fail("shape")),
    ("elbo_mc", ["vae_bern32", "hvae_markov", "hvae_topdown"], lambda m, x: m.elbo(x, kl="mc", seed=1),
     lambda m, n: lambda r: r.elbo.shape == (n,) or pytest.fail("shape")),
    ("elbo_grad", ["vae_bern32", "vae_gauss64", "hvae_markov", "hvae_topdown"], lambda m, x: m.elbo_grad(x, seed=2),
     lambda m, n: lambda r: [r[1][k].shape == v.shape or pytest.fail(k) for k, v in m.parameters().items()]),
    ("log_likelihood", ["vae_bern32", "vae_gauss64", "hvae_markov", "hvae_topdown"],
     lambda m, x: m.log_likelihood(x, k=3, seed=1), lambda m, n: rows(n)),
    ("encode", ["vae_bern32", "vae_gauss64", "ae", "ae_contractive"], lambda m, x: m.encode(x), lambda m, n: rows(n)),
    ("encode_levels", ["hvae_markov", "hvae_topdown"], lambda m, x: m.encode(x), None),
    ("reconstruct", ["vae_bern32", "hvae_markov", "ae"], lambda m, x: m.reconstruct(x),
     lambda m, n: rows(n, (width(m),))),
    ("active_units", ["vae_bern32", "hvae_topdown"], lambda m, x: m.active_units(x), None),
    ("fit", ["vae_bern32", "vae_gauss64", "hvae_markov", "hvae_topdown", "diffusion", "flow", "ae"],
     lambda m, x: m.fit(x, epochs=1, batch_size=3, lr=1e-4, progress=False), None),
    ("fit_validation", ["vae_gauss64", "diffusion", "flow32", "ae_contractive"],
     lambda m, x: m.fit(np.zeros((2, width(m))) + 0.5, epochs=1, lr=1e-4, validation=x, progress=False), None),
    ("diffusion_elbo", ["diffusion", "diffusion_d256"], lambda m, x: m.elbo(x, seed=0),
     lambda m, n: lambda r: r.steps.shape == (n, m.timesteps) or pytest.fail("shape")),
    ("diffusion_elbo_a", ["diffusion"], lambda m, x: m.elbo(x, form="consistency", seed=0), None),
    ("diffusion_loss", ["diffusion", "diffusion_d256"],
     lambda m, x: m.loss(x, 1, np.zeros((n_of(x), 3)), kind="hybrid"), lambda m, n: rows(n)),
    ("diffusion_loss_grad", ["diffusion"], lambda m, x: m.loss_grad(x, 2, np.zeros((n_of(x), 3)), kind="elbo"), None),
    ("p_mean_variance", ["diffusion"], lambda m, x: m.p_mean_variance(x, 3), lambda m, n: rows(n, (3,), ())),
    ("predict", ["diffusion"], lambda m, x: m.predict(x, 1), None),
    ("q_sample", ["diffusion"], lambda m, x: m.q_sample(x, 2, np.ones((n_of(x), 3))), lambda m, n: rows(n, (3,))),
    ("q_posterior", ["diffusion"], lambda m, x: m.q_posterior(x, np.ones((n_of(x), 3)), 2), None),
    ("flow_forward", ["flow", "flow32"], lambda m, x: m.forward(x), lambda m, n: rows(n, (m.dim,), ())),
    ("flow_inverse", ["flow", "flow32"], lambda m, x: m.inverse(x), lambda m, n: rows(n, (m.dim,))),
    ("flow_log_prob", ["flow", "flow32"], lambda m, x: m.log_prob(x), lambda m, n: rows(n)),
    ("flow_log_prob_grad", ["flow"], lambda m, x: m.log_prob_grad(x), None),
    ("flow_jacobian", ["flow"], lambda m, x: m.jacobian(x), lambda m, n: rows(n, (4, 4))),
    ("flow_elbo_smoothed", ["flow"], lambda m, x: m.elbo_smoothed(x, 0.1, n_samples=3), None),
    ("ae_loss", ["ae", "ae_contractive"], lambda m, x: m.loss(x), None),
    ("ae_loss_grad", ["ae", "ae_contractive"], lambda m, x: m.loss_grad(x), None),
]
CASES = [(name, key, call, shapes) for name, keys, call, shapes in X_CALLS for key in keys]


def _extra_valid(key, m, d):
    """Constraints beyond shape, dtype and finiteness that the documentation states."""
    if d.valid is not True:
        return d.valid
    if key == "diffusion_d256":
        k = (d.arr + 1) * 127.5
        return bool(np.all(np.abs(k - np.round(k)) <= 1e-3) and np.all(np.abs(d.arr) <= 1))
    return d.valid


@pytest.mark.parametrize("name,key,call,shapes", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
@given(data=st.data())
def test_array_inputs(name, key, call, shapes, data):
    m = MODELS[key]
    p0 = m.parameters()
    d = data.draw(arrays((None, width(m)), unit_interval=unit(m)), label="x")
    valid = _extra_valid(key, m, d)
    names = ("x", "validation", "z")
    try:
        outcome = check(lambda: call(m, d.value), names, valid,
                        allow_inf=("",) if valid is None else (),
                        shapes=None if shapes is None or valid is not True else shapes(m, n_of(d.value)))
    finally:
        m.set_parameters(p0)  # fit moves them
    if name.startswith("fit") and outcome == "ok":
        assert all(np.isfinite(a).all() for a in m.parameters().values())


SIZE_CALLS = [
    ("vae_bern32", "log_likelihood", dict(k=ints([1, 2, 7], bad=[0, -1, 2 ** 63, 2.5, "3", None, True]), seed=ints([0, 3], bad=[-1, 2 ** 64, 1.5, "1", None]))),
    ("vae_bern32", "elbo", dict(n_samples=ints([1, 3, None], bad=[v for v in BAD_INTS if v is not None]), seed=ints([0, 1], bad=[-1, 2 ** 64, 0.5]),
                                kl=st.sampled_from(["analytic", "mc", "MC", "", None, 3]))),
    ("vae_gauss64", "sample", dict(n=ints([1, 4]), seed=ints([0, 9], bad=[-2, 2 ** 70, "0"]))),
    ("hvae_markov", "sample", dict(n=ints([1, 4]))),
    ("hvae_topdown", "log_likelihood", dict(k=ints([1, 3], bad=[0, -(2 ** 63), 2 ** 64, 3.0, float("nan")]))),
    ("diffusion", "sample", dict(n=ints([1, 3]), method=st.sampled_from(["ddpm", "ddim", "DDIM", None]),
                                 eta=floats([0.0, 0.5, 1.0, 2.0], bad=[-1.0, float("nan"), "0", None, float("inf")]))),
    ("diffusion", "sample_steps", dict(n=ints([2]), steps=ints([1, 2, 6], bad=[0, -1, 7, 10 ** 9, 2 ** 63, 2.0, "2"]))),
    ("flow", "sample", dict(n=ints([1, 5]), seed=ints([0, 2], bad=[-1, 2 ** 64]))),
    ("flow", "elbo_smoothed", dict(sigma=floats([0.1, 1.0, 1e-3]), n_samples=ints([2, 4], bad=[1] + BAD_WORK))),
    ("vae_bern32", "fit", dict(epochs=ints([1], bad=BAD_WORK), batch_size=ints([1, 2, 10 ** 9, 2 ** 40], bad=[0, -1, 2 ** 63, 1.5, None]),
                               lr=floats([1e-3, 0.1]), beta=floats([0.0, 1.0, 2.0], bad=[-1.0, float("nan"), "1"]),
                               n_samples=ints([1, 2]), warmup_steps=ints([0, 5], bad=[-1, 2 ** 63, 0.5]))),
    ("diffusion", "fit", dict(epochs=ints([1], bad=BAD_WORK), batch_size=ints([1, 4, 10 ** 9], bad=BAD_WORK), ema=floats([0.0, 0.5, 0.99], bad=[1.0, -0.1, float("nan"), "0.9"]),
                              loss=st.one_of(st.sampled_from(["simple", "elbo", "hybrid", None]),  # None: the model's default
                                             st.sampled_from(["mse", "Simple"])))),
    ("ae", "fit", dict(epochs=ints([1, 2], bad=BAD_WORK), clip_norm=floats([0.5, 10.0], bad=[0.0, -1.0, float("inf"), "1"]),
                       optimizer=st.sampled_from(["adam", "sgd", "Adam", None]),
                       momentum=floats([0.0, 0.5], bad=[-0.1, 1.0, 2.0, float("nan")]))),
    ("flow", "fit", dict(epochs=ints([1], bad=BAD_WORK), batch_size=ints([2, 3, 10 ** 9], bad=BAD_WORK), weight_decay=floats([0.0, 1e-4], bad=[-1.0, float("nan")]))),
    ("hvae_markov", "decode", dict(level=ints([1, 2], bad=[0, 3, -1, 2 ** 63, 1.5, None, True]))),
    ("hvae_topdown", "prior", dict(level=ints([2], bad=[0, 1, 3, -1, 2 ** 63, 2.0, None]))),
]


def _call_sizes(m, what, kw):
    x = np.full((3, width(m)), 0.5)
    if what == "log_likelihood":
        return m.log_likelihood(x, **kw)
    if what == "elbo":
        return m.elbo(x, **kw)
    if what in ("sample", "sample_steps"):
        kw.setdefault("n", 2)
        if what == "sample_steps":
            kw["method"] = "ddim"
        return m.sample(**kw)
    if what == "elbo_smoothed":
        return m.elbo_smoothed(x, **kw)
    if what == "fit":
        return m.fit(x, progress=False, **kw)
    if what == "decode":
        level = kw["level"]
        z = np.zeros((2, m.z_dims[level - 1] if isinstance(level, int) and 1 <= level <= 2 else 2))
        return m.decode(z, level=level)
    if what == "prior":
        return m.prior(np.zeros((2, 2)), kw["level"])
    raise AssertionError(what)


@pytest.mark.parametrize("key,what,strategies", SIZE_CALLS, ids=[f"{k}-{w}" for k, w, _ in SIZE_CALLS])
@given(data=st.data())
def test_size_and_option_arguments(key, what, strategies, data):
    m = MODELS[key]
    p0 = m.parameters()
    kw = {name: data.draw(s, label=name) for name, s in strategies.items()}
    good = {name: _is_good(s, kw[name]) for name, s in strategies.items()}
    valid = all(good.values())
    names = [n for n, g in good.items() if not g] or list(kw)
    try:
        check(lambda: _call_sizes(m, what, dict(kw)), names, valid)
    finally:
        m.set_parameters(p0)


def _is_good(strategy, value):
    """Whether value came from the 'good' half of ints()/floats() (their first alternative) or is a
    documented choice of a sampled_from of strings."""
    from hypothesis.strategies._internal.strategies import OneOfStrategy, SampledFromStrategy
    s = strategy.wrapped_strategy if hasattr(strategy, "wrapped_strategy") else strategy
    if isinstance(s, OneOfStrategy):
        goods = list(s.original_strategies[0].elements)
        return any(type(value) is type(g) and value == g for g in goods)
    if isinstance(s, SampledFromStrategy):
        return value in ("analytic", "mc", "ddpm", "ddim", "simple", "elbo", "hybrid", "adam", "sgd")
    raise AssertionError(strategy)
