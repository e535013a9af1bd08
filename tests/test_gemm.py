"""The engine's one matrix product (cpp/include/elbokit/gemm.hpp) and the linear layer's tiled
products (layers.hpp) against NumPy in float64: every transpose combination, shapes that cross the
tile boundaries (128 rows, 256 columns, balanced multiples of 16), beta = 0 / 1 / other, depth 0,
and the two backends (OpenBLAS, the default build's, and Eigen's own) on the same operands."""
import numpy as np
import pytest

import elbokit as ek
from elbokit import _core

K = {"float32": _core.kernels.float32, "float64": _core.kernels.float64}
TOL = {"float32": 2e-6, "float64": 1e-14}


def rel_err(got, want):
    return np.abs(got - want).max() / max(np.abs(want).max(), 1e-300)


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []


def test_vector_isa_is_what_the_build_targets_and_runs_here():
    isa = _core.vector_isa()
    assert isa in ("avx512", "avx2", "baseline"), isa
    flags = _cpu_flags()
    if flags:  # the engine runs here, so the CPU has what it was compiled for
        if isa == "avx512":
            assert "avx512f" in flags, flags
        if isa == "avx2":
            assert "avx2" in flags and "fma" in flags, flags


def _backend_in_subprocess(value):
    import os
    import subprocess
    import sys
    env = dict(os.environ)
    if value is None:
        env.pop("ELBOKIT_GEMM", None)
    else:
        env["ELBOKIT_GEMM"] = value
    return subprocess.run([sys.executable, "-c", "import elbokit; print(elbokit._core.gemm_backend())"],
                          env=env, capture_output=True, text=True, timeout=120)


def test_backend_rule_and_override():
    # the default build links OpenBLAS; on AVX-512 builds float32 products run on the engine's own
    # kernel (gemm.hpp: gemm_f32) and float64 ones on Eigen's AVX-512 GEMM where OpenBLAS's running
    # core has narrower vectors; ELBOKIT_GEMM forces one
    auto = _backend_in_subprocess(None)
    assert auto.returncode == 0, auto.stderr
    name = auto.stdout.strip()
    assert "OpenBLAS (scipy-openblas32" in name, name
    # OpenBLAS cores of 512-bit vectors: the same list as gemm.hpp's openblas_core_is_avx512
    avx512_core = any(f"core {c}" in name for c in ("SkylakeX", "Cooperlake", "SapphireRapids", "Zen4", "Zen5"))
    # the rule is about the build (gemm.hpp: __AVX512F__), which a portable or cross build sets apart
    # from the CPU it runs on
    own = "elbokit's own AVX-512 kernel for float32 (gemm.hpp: gemm_f32, one thread per tile); float64: "
    if _core.vector_isa() == "avx512":
        assert name.startswith(own), name
        double = name[len(own):]
        if not avx512_core:
            assert double.startswith("Eigen") and "AVX-512" in double, name
        else:
            assert double.startswith("OpenBLAS"), name
    else:
        assert name.startswith("OpenBLAS"), name
    forced = {v: _backend_in_subprocess(v) for v in ("openblas", "eigen", "own")}
    assert forced["openblas"].stdout.startswith("OpenBLAS"), forced["openblas"]
    assert forced["eigen"].stdout.startswith("Eigen"), forced["eigen"]
    if _core.vector_isa() == "avx512":
        assert forced["own"].stdout.startswith(own), forced["own"]
    else:
        assert forced["own"].returncode != 0 and "ELBOKIT_GEMM=own needs a build for AVX-512" in forced["own"].stderr
    bad = _backend_in_subprocess("mkl")
    assert bad.returncode != 0
    assert "ELBOKIT_GEMM must be 'auto', 'own', 'openblas' or 'eigen', got 'mkl'" in bad.stderr


def test_backends_agree_on_the_same_operands():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(70, 130)), rng.normal(size=(130, 90))
    want = a @ b
    for backend in ("default", "eigen", "openblas"):
        got = K["float64"].gemm(False, False, a, b, np.zeros((70, 90)), 0.0, backend)
        assert rel_err(got, want) < 1e-13, backend


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("backend", ["default", "eigen", "openblas"])
@pytest.mark.parametrize("ta,tb", [(False, False), (False, True), (True, False), (True, True)])
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (3, 5, 7), (37, 300, 129), (130, 17, 1)])
@pytest.mark.parametrize("beta", [0.0, 1.0, -0.5])
def test_gemm_matches_numpy(dtype, backend, ta, tb, m, n, k, beta):
    rng = np.random.default_rng(m * 1000 + n * 10 + k)
    a = rng.normal(size=(k, m) if ta else (m, k)).astype(dtype)
    b = rng.normal(size=(n, k) if tb else (k, n)).astype(dtype)
    c = rng.normal(size=(m, n)).astype(dtype)
    want = beta * c.astype(np.float64) + (a.T if ta else a).astype(np.float64) @ (b.T if tb else b).astype(np.float64)
    got = K[dtype].gemm(ta, tb, a, b, c, beta, backend)
    assert got.dtype == np.dtype(dtype) and got.shape == (m, n)
    assert rel_err(got, want) < TOL[dtype] * np.sqrt(k)


@pytest.mark.parametrize("backend", ["default", "eigen"])
def test_gemm_beta_zero_ignores_nan_and_depth_zero_scales(backend):
    k = K["float64"]
    a, b = np.ones((2, 3)), np.ones((3, 4))
    c = np.full((2, 4), np.nan)
    assert np.array_equal(k.gemm(False, False, a, b, c, 0.0, backend), np.full((2, 4), 3.0))
    c = np.arange(8.0).reshape(2, 4)
    e = np.zeros((2, 0)), np.zeros((0, 4))
    assert np.array_equal(k.gemm(False, False, *e, c, 2.0, backend), 2 * c)
    assert np.array_equal(k.gemm(False, False, *e, c, 0.0, backend), np.zeros((2, 4)))


# The float32 products' own AVX-512 kernel (gemm.hpp: gemm_f32, the default backend of AVX-512 builds;
# elsewhere "default" is OpenBLAS or Eigen and these shapes check that): depth blocks of at most 256
# (balanced: 257 -> 2 x 129, 600 -> 3 x 200), row blocks of 384 and 12, panels of 32 columns and
# panels of <= 16 (n <= 16 or a last panel's 13 columns: rows16_kernel's 24-row blocks and 16, 8,
# 4, 2, 1-row tails: 71 = 2 x 24 + 16 + 4 + 2 + 1), op(B) = Bᵀ transposed in 16 x 16 register
# blocks (tails of both), beta 0 with NaN in C.
@pytest.mark.parametrize("ta,tb", [(False, False), (False, True), (True, False), (True, True)])
@pytest.mark.parametrize("m,n,k", [(400, 45, 600), (13, 70, 257), (385, 33, 17), (12, 32, 256), (1, 1, 513),
                                   (25, 17, 31), (71, 16, 300), (23, 9, 40)])
@pytest.mark.parametrize("beta", [0.0, 1.0, -0.5])
def test_float32_default_product_across_its_blocks(ta, tb, m, n, k, beta):
    rng = np.random.default_rng(m * 7 + n * 3 + k)
    a = rng.normal(size=(k, m) if ta else (m, k)).astype(np.float32)
    b = rng.normal(size=(n, k) if tb else (k, n)).astype(np.float32)
    c = rng.normal(size=(m, n)).astype(np.float32)
    want = beta * c.astype(np.float64) + (a.T if ta else a).astype(np.float64) @ (b.T if tb else b).astype(np.float64)
    if beta == 0.0:
        c[:] = np.nan
    got = K["float32"].gemm(ta, tb, a, b, c, beta, "default")
    assert not np.isnan(got).any()
    assert rel_err(got, want) < TOL["float32"] * np.sqrt(k)
    # a tile of a larger matrix: strided operands (lda, ldb, ldc > the tile's width) give the same numbers
    big_a = np.zeros((a.shape[0], a.shape[1] + 5), np.float32)
    big_a[:, :a.shape[1]] = a
    big_b = np.zeros((b.shape[0], b.shape[1] + 3), np.float32)
    big_b[:, :b.shape[1]] = b
    got2 = K["float32"].gemm(ta, tb, big_a[:, :a.shape[1]], big_b[:, :b.shape[1]], c, beta, "default")
    assert np.array_equal(got, got2)


# The Winograd and im2col convolutions' own products (gemm.hpp): gemm_rows (C = beta C + op(A) B,
# beta 0 or 1) and gemm_dots (C += A Bᵀ). Their AVX-512 float kernels block rows of C by 12 and
# columns by 32 (rows) or outputs by 4 x 4 and the reduction by 16 (dots): the shapes cross every
# block edge and remainder; NaN in C must not leak when beta = 0.
ROWS_SHAPES = [(1, 1, 1), (12, 32, 5), (13, 33, 7), (11, 16, 1), (25, 15, 3), (64, 392, 64), (37, 300, 129),
               (130, 17, 2)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("m,n,k", ROWS_SHAPES)
@pytest.mark.parametrize("beta", [0.0, 1.0, -0.5])
def test_gemm_rows_matches_numpy(dtype, ta, m, n, k, beta):
    rng = np.random.default_rng(m * 1000 + n * 10 + k)
    a = rng.normal(size=(k, m) if ta else (m, k)).astype(dtype)
    b = rng.normal(size=(k, n)).astype(dtype)
    c = rng.normal(size=(m, n)).astype(dtype)
    want = beta * c.astype(np.float64) + (a.T if ta else a).astype(np.float64) @ b.astype(np.float64)
    if beta == 0.0:
        c[:] = np.nan
    got = K[dtype].gemm(ta, False, a, b, c, beta, "rows")
    assert got.dtype == np.dtype(dtype) and got.shape == (m, n)
    assert rel_err(got, want) < TOL[dtype] * np.sqrt(k)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("m,p,n", [(1, 1, 1), (4, 6, 16), (5, 7, 17), (3, 13, 33), (64, 64, 392), (9, 130, 15),
                                   (130, 2, 100)])
def test_gemm_dots_matches_numpy(dtype, m, p, n):
    rng = np.random.default_rng(m * 1000 + p * 10 + n)
    a, b, c = (rng.normal(size=s).astype(dtype) for s in ((m, n), (p, n), (m, p)))
    want = c.astype(np.float64) + a.astype(np.float64) @ b.astype(np.float64).T
    got = K[dtype].gemm(False, True, a, b, c, 1.0, "dots")
    assert rel_err(got, want) < TOL[dtype] * np.sqrt(n)


def test_gemm_rows_and_dots_are_deterministic_and_bad_calls_raise():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(40, 70)).astype(np.float32), rng.normal(size=(70, 300)).astype(np.float32)
    first = K["float32"].gemm(False, False, a, b, np.zeros((40, 300), np.float32), 0.0, "rows")
    assert all(np.array_equal(first, K["float32"].gemm(False, False, a, b, np.zeros((40, 300), np.float32), 0.0,
                                                        "rows")) for _ in range(3))
    with pytest.raises(ValueError, match="backend 'rows' takes b untransposed"):
        K["float32"].gemm(False, True, a, b.T.copy(), np.zeros((40, 300), np.float32), 0.0, "rows")
    with pytest.raises(ValueError, match="backend 'dots' computes c \\+ a bᵀ"):
        K["float32"].gemm(False, False, a, b, np.zeros((40, 300), np.float32), 1.0, "dots")


def test_gemm_bad_arguments():
    k = K["float64"]
    with pytest.raises(ValueError, match="backend must be 'default', 'eigen', 'openblas', 'rows' or 'dots', got 'mkl'"):
        k.gemm(False, False, np.ones((2, 3)), np.ones((3, 4)), np.zeros((2, 4)), 0.0, "mkl")
    with pytest.raises(ValueError, match="b must have 3 rows"):
        k.gemm(False, False, np.ones((2, 3)), np.ones((2, 4)), np.zeros((2, 4)), 0.0)
    with pytest.raises(ValueError, match="c must have shape"):
        k.gemm(False, False, np.ones((2, 3)), np.ones((3, 4)), np.zeros((4, 2)), 0.0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("B,I,O", [(1, 1, 1), (5, 3, 2), (300, 70, 520), (129, 784, 257), (700, 20, 400)])
def test_linear_layer_tiles_match_numpy(dtype, B, I, O):
    """Forward and (accumulating) backward of the linear layer, in its tiles: above 4 MFLOP the
    tiles run in parallel, and each output block is one gemm call on a block of the operands."""
    rng = np.random.default_rng(B + I + O)
    x, w, b = (rng.normal(size=s).astype(dtype) for s in ((B, I), (O, I), (1, O)))
    dout = rng.normal(size=(B, O)).astype(dtype)
    dx0, dw0, db0 = (rng.normal(size=s).astype(dtype) for s in ((B, I), (O, I), (1, O)))
    k = K[dtype]
    X, W, Bb, D = (v.astype(np.float64) for v in (x, w, b, dout))
    tol = TOL[dtype] * np.sqrt(max(I, O, B))
    assert rel_err(k.linear_forward(x, w, b), X @ W.T + Bb) < tol
    dx, dw, db = k.linear_backward(dout, x, w, dx0, dw0, db0)
    assert rel_err(dx, dx0 + D @ W) < tol
    assert rel_err(dw, dw0 + D.T @ X) < tol
    assert rel_err(db, db0 + D.sum(0, keepdims=True)) < tol


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_linear_layer_bit_identical_across_threads(dtype):
    rng = np.random.default_rng(7)
    x, w, b = (rng.normal(size=s).astype(dtype) for s in ((513, 300), (400, 300), (1, 400)))
    dout = rng.normal(size=(513, 400)).astype(dtype)
    k, n0 = K[dtype], ek.get_num_threads()
    out = []
    try:
        for n in (1, 2, 3):
            ek.set_num_threads(n)
            z = [np.zeros(s, dtype) for s in ((513, 300), (400, 300), (1, 400))]
            out.append((k.linear_forward(x, w, b), *k.linear_backward(dout, x, w, *z)))
    finally:
        ek.set_num_threads(n0)
    for other in out[1:]:
        for u, v in zip(out[0], other):
            assert np.array_equal(u, v)
