"""The element-wise kernels of the engine (cpp/include/elbokit/simd.hpp, layers.hpp,
distributions.hpp) against float64 NumPy references: every length up to a few SIMD packets (so
the padded last packet is exercised), the parallel path, and extreme values."""
import numpy as np
import pytest
from scipy.special import expit

from elbokit import _core

K = {"float32": _core.kernels.float32, "float64": _core.kernels.float64}
TOL = {"float32": dict(rtol=3e-6, atol=1e-37), "float64": dict(rtol=1e-13, atol=1e-300)}
EXTREMES = [-1000.0, -100.0, -87.0, -30.0, -17.0, -1.0, -1e-8, 0.0, 1e-8, 0.5, 1.0, 17.0, 30.0, 88.0, 100.0, 1000.0]


def reference(act, a):
    a = a.astype(np.float64)
    s = expit(a)
    f = {
        "relu": (np.maximum(a, 0), (a > 0) * 1.0),
        "tanh": (np.tanh(a), 1 - np.tanh(a) ** 2),
        "sigmoid": (s, s * (1 - s)),
        "softplus": (np.logaddexp(0, a), s),
        "elu": (np.where(a > 0, a, np.expm1(np.minimum(a, 0))), np.where(a > 0, 1.0, np.exp(np.minimum(a, 0)))),
        "silu": (a * s, s * (1 + a * (1 - s))),
        "leaky_relu": (np.where(a > 0, a, 0.01 * a), np.where(a > 0, 1.0, 0.01)),
        "identity": (a, np.ones_like(a)),
    }
    return f[act]


def inputs(n, dtype, seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(scale=6.0, size=n)
    a[: min(n, len(EXTREMES))] = EXTREMES[: min(n, len(EXTREMES))]
    rng.shuffle(a)
    return a.astype(dtype).reshape(1, n)


ACTS = ["relu", "tanh", "sigmoid", "softplus", "elu", "silu", "leaky_relu", "identity"]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("act", ACTS)
def test_activation_kernels_match_float64_reference(dtype, act):
    # tanh overflows nothing but Eigen's float tanh is a rational approximation: a looser bound
    tol = dict(TOL[dtype], rtol=2e-5) if (act in ("tanh", "silu", "elu") and dtype == "float32") else TOL[dtype]
    for n in list(range(1, 50)) + [40007]:
        a = inputs(n, dtype, n)
        g = np.random.default_rng(n + 1).normal(size=a.shape).astype(dtype)
        y_ref, dy_ref = reference(act, a)
        y = K[dtype].activation_forward(act, a)
        d = K[dtype].activation_backward(act, a, g)
        if act in ("tanh", "sigmoid"):  # their derivative is formed from the output, as in torch:
            y64 = y.astype(np.float64)  # 1 - y^2 and y(1 - y) cancel near |y| = 1 in any precision
            dy_ref = 1 - y64 ** 2 if act == "tanh" else y64 * (1 - y64)
        assert y.dtype == np.dtype(dtype) and y.shape == a.shape
        np.testing.assert_allclose(y, y_ref, **tol, err_msg=f"{act} forward, n={n}")
        # the derivative's reference at the input as rounded to dtype; tanh' from the rounded output
        np.testing.assert_allclose(d, g * dy_ref, **dict(tol, atol=max(tol["atol"], 1e-6 if dtype == "float32" else 1e-15)),
                                   err_msg=f"{act} backward, n={n}")
        assert np.all(np.isfinite(y)) and np.all(np.isfinite(d))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("act", ["sigmoid", "softplus", "elu", "silu", "leaky_relu"])
def test_packet_kernels_do_not_depend_on_position(dtype, act):
    """simd.hpp runs every element through the same packet code, the last partial packet
    included: an element's value does not depend on the length of its array or its offset."""
    a = inputs(53, dtype, 3)
    full = K[dtype].activation_forward(act, a)
    for start in range(0, 20):
        part = K[dtype].activation_forward(act, np.ascontiguousarray(a[:, start:]))
        assert np.array_equal(part, full[:, start:]), (act, start)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_bernoulli_kernel_matches_float64_reference(dtype):
    for D in list(range(1, 40)) + [784]:
        rng = np.random.default_rng(D)
        B, S = 3, 2
        x = rng.random((B, D))
        x[0] = (x[0] > 0.5)  # binary and grey levels
        l = inputs(S * B * D, dtype, D).reshape(S * B, D)
        logp, sig = K[dtype].bernoulli_logpdf(x.astype(dtype), l)
        x64, l64 = np.tile(x.astype(dtype).astype(np.float64), (S, 1)), l.astype(np.float64)
        terms = x64 * l64 - np.logaddexp(0, l64)
        ref = terms.sum(1)
        # a term x*l - softplus(l) cancels when x = 1 and l >> 0: errors scale with its parts
        scale = (np.abs(x64 * l64) + np.logaddexp(0, l64)).sum(1) + 1e-300
        err = np.abs(logp - ref) / scale
        assert err.max() < (2e-6 if dtype == "float32" else 1e-14), (D, err.max())
        np.testing.assert_allclose(sig, expit(l64), **TOL[dtype])
        # the row's value does not depend on the other rows (no position effect)
        one, _ = K[dtype].bernoulli_logpdf(x[:1].astype(dtype), np.ascontiguousarray(l[:1]))
        assert one[0] == logp[0]


def test_softplus_float32_on_a_dense_grid():
    """The float32 log of [1, 2] (simd.hpp log_1to2, Cephes' polynomial without the general log's
    range reduction) inside softplus: within 2.5e-7 relative of float64 on 800,001 points."""
    a = np.linspace(-40, 40, 800001).astype(np.float32).reshape(1, -1)
    y = K["float32"].activation_forward("softplus", a)
    ref = np.logaddexp(0, a.astype(np.float64))
    assert np.max(np.abs(y - ref) / ref) < 2.5e-7


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_value_range_is_numpys_min_and_max(dtype):
    """_core.value_range (one parallel pass, the input checks of large arrays) against NumPy's min
    and max; a NaN anywhere makes both NaN; infinities show."""
    for n in (1, 5, 15, 16, 17, 65535, 65536, 65537, 200001):
        a = np.random.default_rng(n).normal(size=n).astype(dtype)
        assert _core.value_range(a) == (float(a.min()), float(a.max())), n
        for pos in sorted({0, n // 2, n - 1}):
            b = a.copy()
            b[pos] = np.nan
            assert all(np.isnan(v) for v in _core.value_range(b)), (n, pos)
            b[pos] = np.inf
            assert _core.value_range(b)[1] == np.inf
            b[pos] = -np.inf
            assert _core.value_range(b)[0] == -np.inf
    with pytest.raises(ValueError, match="must not be empty"):
        _core.value_range(np.zeros(0, dtype))


def test_large_inputs_with_nan_or_infinity_are_rejected_by_name():
    import elbokit as ek
    vae = ek.VAE(784, 4, hidden=(8,), dtype="float32", seed=0)
    x = np.full((200, 784), 0.5, np.float32)  # 156,800 entries: the engine's range check
    for bad in (np.nan, np.inf):
        y = x.copy()
        y[123, 456] = bad
        with pytest.raises(ValueError, match=r"x must contain only finite values, got (nan|inf) at index \(123, 456\)"):
            vae.elbo(y)
    y = x.copy()
    y[7, 8] = 1.5
    with pytest.raises(ValueError, match=r"x must lie in \[0, 1\].*got values in \[0.5, 1.5\]"):
        vae.elbo(y)


def test_kernels_reject_bad_names_and_shapes():
    with pytest.raises(ValueError, match="activation must be one of"):
        K["float64"].activation_forward("gelu", np.zeros((1, 3)))
    with pytest.raises(ValueError, match="dout must have shape"):
        K["float64"].activation_backward("relu", np.zeros((1, 3)), np.zeros((1, 4)))
