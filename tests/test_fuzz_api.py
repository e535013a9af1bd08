"""Property-based tests of the constructors, the ELBO laboratory (ek.kl, ek.exact,
ek.estimators, ek.surgery), ek.random and the command line's argument parsing: a call returns
finite numbers of the documented shapes or raises ValueError/TypeError naming the argument
(tests/fuzzing.py)."""
import contextlib
import io

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, strategies as st  # noqa: E402

import elbokit as ek  # noqa: E402
from elbokit import cli  # noqa: E402
from fuzzing import BAD_FLOATS, BAD_INTS, arrays, check, floats, ints  # noqa: E402

WIDTHS_BAD = [(0,), (-1,), (10 ** 9, 10 ** 9), (2 ** 63,), (2.5,), ("4",), [None], 3.5, "4", None, object()]
# (name, constructor, {argument: (good values, bad values)}); defaults make a small model
CONSTRUCTORS = [
    ("VAE", lambda **k: ek.VAE(**{"x_dim": 4, "z_dim": 2, "hidden": (3,), **k}),
     {"x_dim": ([1, 4], BAD_INTS), "z_dim": ([1, 2], BAD_INTS), "hidden": ([(), (3,), 5, [2, 2], None],  # None: the default (128, 128)
                                                                                [w for w in WIDTHS_BAD if w is not None]),
      "likelihood": (["bernoulli", "gaussian"], ["Gaussian", "", None, 1]),
      "dtype": (["float32", "float64"], ["float16", "double", np.float64, None]),
      "seed": ([0, 7, 2 ** 62], [-1, 2 ** 64, 1.5, "0", None]),
      "decoder_var": (["learned", 0.5], [0.0, -1.0, float("nan"), float("inf"), "fixed", None])}),
    ("HVAE", lambda **k: ek.HVAE(**{"x_dim": 4, "z_dims": (3, 2), "hidden": (3,), **k}),
     {"z_dims": ([(2,), (3, 2), [2, 2, 1], 3], [(), (0,), (-1, 2), (10 ** 9,), "3", None]),
      "structure": (["markov", "topdown"], ["ladder", None]), "hidden": ([(), (3,)], WIDTHS_BAD)}),
    ("Diffusion", lambda **k: ek.Diffusion(**{"x_dim": 2, "timesteps": 5, "hidden": (4,), "emb_dim": 4, **k}),
     {"x_dim": ([1, 2], BAD_INTS), "timesteps": ([2, 5, 1000], [0, 1, -1, 10 ** 9, 2 ** 63, 5.0, "5"]),
      "emb_dim": ([2, 4], [0, 3, -2, 10 ** 9, 4.0]), "hidden": ([(4,), (4, 4)], WIDTHS_BAD),
      "prediction": (["epsilon", "x0", "v"], ["eps", None]), "variance": (["small", "large"], ["fixed", 1.0])}),
    ("Diffusion_betas", lambda **k: ek.Diffusion(**{"x_dim": 2, "hidden": (4,), "emb_dim": 4, **k}),
     {"schedule": ([[0.1, 0.2], np.array([0.01, 0.02, 0.5])],
                   [[0.1], [], [0.0, 0.5], [0.5, 1.0], [np.nan, 0.1], [[0.1, 0.2]], "quadratic", np.array(["a", "b"]), None])}),
    ("Flow", lambda **k: ek.Flow(**{"dim": 2, "hidden": (4,), **k}),
     {"dim": ([2, 3], BAD_INTS), "layers": ([("coupling",), ("planar", "coupling"), "planar"],
                                          [(), ("affine",), [None], 3, 2.5]),
      "hidden": ([(4,), 3], WIDTHS_BAD), "activation": (["relu", "tanh"], ["gelu", None])}),
    ("Autoencoder", lambda **k: ek.Autoencoder(**{"x_dim": 4, "code_dim": 2, "hidden": (3,), **k}),
     {"code_dim": ([1, 2], BAD_INTS), "kind": (["plain", "denoising"], ["vae", None]),
      "code_activation": (["identity", "tanh"], ["relu", None]), "hidden": ([(3,), ()], WIDTHS_BAD)}),
]
CCASES = [(n, c, a, gb) for n, c, args in CONSTRUCTORS for a, gb in args.items()]


@pytest.mark.parametrize("name,ctor,arg,goodbad", CCASES, ids=[f"{c[0]}-{c[2]}" for c in CCASES])
@given(data=st.data())
def test_constructor_arguments(name, ctor, arg, goodbad, data):
    good, bad = goodbad
    i = data.draw(st.integers(0, len(good) + len(bad) - 1), label=f"{arg} index")
    value = (good + bad)[i]
    valid = i < len(good)
    if name == "Flow" and arg == "dim" and value == 1:
        valid = False
    check(lambda: ctor(**{arg: value}), [arg], valid,
          shapes=lambda m: all(np.isfinite(a).all() for a in m.parameters().values()) or pytest.fail("parameters"))


def _unit_rows(d):
    return d.arr is not None and d.valid is True and np.all(d.arr >= 0) and np.allclose(d.arr.sum(-1), 1, atol=1e-6)


@given(p=arrays((None, 3)), q=arrays((None, 3)), which=st.sampled_from(["discrete", "cross_entropy", "entropy"]))
def test_kl_discrete(p, q, which):
    # valid: rows on the simplex; uniform rows pass, random ones are rejected (they do not sum to 1)
    fn = getattr(ek.kl, which)
    if which == "entropy":
        check(lambda: fn(p.value), ["p"], _unit_rows(p) or (False if p.valid is not None else None))
        return
    ok = _unit_rows(p) and _unit_rows(q) and np.shape(p.value) == np.shape(q.value)
    check(lambda: fn(p.value, q.value), ["p", "q"], True if ok else None, allow_inf=("",))


def _simplex(draw_unit):
    return draw_unit / draw_unit.sum(-1, keepdims=True)


@given(p=st.integers(1, 4).flatmap(lambda n: st.lists(st.floats(0, 1), min_size=n, max_size=n)),
       zero=st.booleans())
def test_kl_discrete_on_the_simplex(p, zero):
    """Valid probability vectors (zeros included): finite, or +inf exactly where Q = 0 < P."""
    a = np.asarray(p) + 1e-3
    a = a / a.sum()
    b = a[::-1].copy()
    if zero and a.size > 1:
        b[0] = 0.0
        b = b / b.sum()
    out = ek.kl.discrete(a, b)
    assert out >= 0 and not np.isnan(out)
    assert np.isinf(out) == bool((b == 0).any() and (a[b == 0] > 0).any())
    assert np.isfinite(ek.kl.entropy(a)) and ek.kl.cross_entropy(a, b) >= ek.kl.entropy(a) - 1e-12


@given(mu=arrays((None, 2)), logvar=arrays((None, 2)))
def test_kl_gaussian(mu, logvar):
    # shapes broadcast (any two that NumPy broadcasts are fine): only dtype and values decide
    try:
        np.broadcast_shapes(np.shape(mu.value), np.shape(logvar.value))
        both = mu.valid is True and logvar.valid is True
    except ValueError:  # shapes that do not broadcast: rejected
        both = False
    check(lambda: ek.kl.gaussian(mu.value, logvar.value), ["mu1", "logvar1", "broadcast", "shape"],
          True if both else (None if mu.valid is not False and logvar.valid is not False else None),
          allow_inf=("",))


@given(data=st.data())
def test_exact_gaussian1d(data):
    goods = {k: [0.5, 1.0, 3.0] if k in "vw" else [0.5, 1.0, -2.0] for k in "abcdvw"}
    kw = {k: data.draw(floats(goods[k], bad=BAD_FLOATS if k in "vw" else
                              [v for v in BAD_FLOATS if not isinstance(v, float) or not np.isfinite(v) or abs(v) > 1e300]),
                       label=k) for k in "abcdvw"}
    bad_names = [k for k, v in kw.items() if not (type(v) is float and v in goods[k])]
    good = not bad_names
    x = data.draw(arrays((None,)), label="x")

    def call():
        g = ek.exact.Gaussian1D(**kw)
        return g.elbo(x.value), g.gap(x.value), g.log_marginal(x.value), g.elbo_mc(x.value, n_samples=3)

    valid = (True if x.valid else x.valid) if good else None
    check(call, bad_names + ["x"], valid, allow_inf=("",) if x.valid is None or not good else ())


@given(mu=arrays((2,)), logvar=arrays((2,)), n_samples=ints([1, 3]), n_repeats=ints([2, 5], bad=[0, 1, -1, 2 ** 63, 2.0]),
       baseline=st.sampled_from(["none", "mean", "optimal", None]))
def test_estimators_compare(mu, logvar, n_samples, n_repeats, baseline):
    fn = ek.estimators.quadratic(np.array([0.5, -0.5]))
    okints = type(n_samples) is int and n_samples in (1, 3) and type(n_repeats) is int and n_repeats in (2, 5)
    valid = (mu.valid and logvar.valid and okints) if baseline in ("none", "mean") else None
    if not okints:
        valid = False
    check(lambda: ek.estimators.compare(fn, mu.value, logvar.value, n_samples=n_samples, n_repeats=n_repeats,
                                        baseline=baseline),
          ["mu", "logvar", "n_samples", "n_repeats", "baseline"], valid if valid is not True or baseline != "optimal" else None,
          allow_inf=("",) if None in (mu.valid, logvar.valid) else ())


VAE_S = ek.VAE(4, 2, hidden=(3,), seed=0)


@given(x=arrays((None, 4), unit_interval=True), n_samples=ints([1, 2]), n_aggregate=ints([1, 3, None], bad=[0, -1, 2 ** 63, 1.5]))
def test_surgery(x, n_samples, n_aggregate):
    okints = n_samples in (1, 2) and type(n_samples) is int and (n_aggregate is None or type(n_aggregate) is int and n_aggregate in (1, 3))
    valid = x.valid if okints else False
    if valid and (n_of(x.value) < 2 or (n_aggregate or 0) > n_of(x.value)):
        valid = False  # the surgery needs 2 points, and n_aggregate <= n
    check(lambda: ek.surgery(VAE_S, x.value, n_samples=n_samples, n_aggregate=n_aggregate),
          ["x", "n_samples", "n_aggregate"], valid)


def n_of(v):
    return len(v) if isinstance(v, list) else (v.shape[0] if np.ndim(v) else 1)


@given(shape=st.one_of(st.sampled_from([0, 3, (2, 3), (0, 5), ()]), st.sampled_from([-1, (2, -3), 2 ** 40, (2 ** 31, 2),
                                                                                  2.5, "3", None, (1.5,)])),
       seed=ints([0, 5], bad=[-1, 2 ** 64, 0.5]), stream=ints([0, 2], bad=[-1, 2 ** 64]))
def test_random(shape, seed, stream):
    valid = shape in (0, 3, (2, 3), (0, 5), ()) and seed in (0, 5) and stream in (0, 2) and type(seed) is int
    for fn in (ek.random.normal, ek.random.uniform):
        check(lambda: fn(shape, seed=seed, stream=stream), ["shape", "seed", "stream"], valid if type(stream) is int else False)


# -- the command line's arguments -------------------------------------------------------------
TOKENS = ["--epochs", "--batch-size", "--lr", "--beta", "--warmup-steps", "--free-bits", "--n-samples", "--kl",
          "--seed", "--dtype", "--threads", "--k", "--z-dim", "--z-dims", "--hidden", "--likelihood", "--structure",
          "--timesteps", "--schedule", "--loss", "--ema", "--data", "--activation", "--no-progress", "--bogus"]
VALUES = ["0", "1", "-1", "3", "1e-3", "nan", "inf", "1e400", "10000000000000000000000", "abc", "", "mc",
          "float64", "topdown", "digits", "none", "8 4"]


@given(model=st.sampled_from(["vae", "hvae", "diffusion", "flows", ""]),
       argv=st.lists(st.one_of(st.sampled_from(TOKENS), st.sampled_from(VALUES)), max_size=6))
def test_cli_argument_parsing(model, argv, tmp_path_factory):
    """parse_args either exits with argparse's code 2 (a usage message) or parses; a parsed command
    builds its model or raises ValueError / UsageError naming the option (no training is run)."""
    parser = cli.build_parser()
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            args = parser.parse_args(["train", model, *argv] if model else ["train", *argv])
    except SystemExit as e:
        assert e.code == 2, (e.code, err.getvalue())
        assert "error:" in err.getvalue()
        return
    spec = cli.MODELS[args.model]
    try:
        net = spec["build"](args, 64)
    except (ValueError, cli.UsageError) as e:
        assert "--" in str(e) or any(w in str(e) for w in ("z_dim", "hidden", "timesteps", "lr", "beta")), str(e)
        return
    assert net.num_parameters > 0
