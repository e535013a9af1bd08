"""The image layers of the core (cpp/include/elbokit/conv.hpp: Conv2d, ConvTranspose2d, nearest
upsampling ×2, GroupNorm), each forward/backward pair against torch.nn on the same weights and inputs
(float64 gradients, float32 forward) and against float64 central finite differences; parameter
gradients bit-identical for 1, 2 and 3 threads; bad shapes and NaN input rejected."""
import numpy as np
import pytest
import torch

import elbokit as ek
from elbokit import _core

K = {"float32": _core.conv.float32, "float64": _core.conv.float64}

# (B, C, H, W, O, k, stride, padding): stride 1 and 2, padding 0 and 1, odd sides, C = 1, batch 1
CONV_CASES = [
    (1, 1, 5, 5, 2, 3, 1, 0),
    (2, 3, 7, 6, 4, 3, 2, 1),
    (3, 2, 8, 8, 3, 4, 2, 1),
    (2, 1, 9, 7, 2, 1, 1, 0),
    (1, 2, 6, 5, 3, 3, 1, 1),
    (2, 2, 2, 2, 3, 4, 2, 1),  # a kernel wider than the image: taps beyond both edges
] + [
    # 3x3 at stride 1 on even sides: Winograd F(2x2, 3x3) (winograd.hpp); padding 0, 1 and 2, a
    # 2x2 output, C = O = 1, and a 36x34 image wider than the float32 one-window fast path
    (2, 3, 6, 8, 4, 3, 1, 1),
    (2, 5, 10, 6, 3, 3, 1, 0),
    (1, 4, 4, 4, 3, 3, 1, 2),
    (3, 2, 4, 6, 2, 3, 1, 0),
    (2, 1, 8, 8, 1, 3, 1, 1),
    (2, 3, 36, 34, 2, 3, 1, 1),
] + [
    # 4x4 at stride 2 with >= 8 channels: Winograd F(2x2, 2x2) on the phase planes (winograd_s2.hpp);
    # a 7x7 (odd) output, padding 0 with odd and even output sides, a 30x34 image wider than the
    # float32 one-window fast path, and a 2x2 image with a 1x1 output; 14x14 with padding 1 and 16x16
    # with padding 0 take the packed paths (16x16 padded: an image's 16 tiles in one packet)
    (2, 8, 14, 14, 5, 4, 2, 1),
    (2, 8, 16, 16, 3, 4, 2, 0),
    (3, 8, 8, 10, 4, 4, 2, 0),
    (1, 9, 30, 34, 3, 4, 2, 1),
    (2, 8, 2, 2, 3, 4, 2, 1),
]
WINOGRAD_CASES = [c for c in CONV_CASES if c[5] == 3 and c[6] == 1 and c[2] % 2 == 0 and c[3] % 2 == 0]
S2_CASES = [c for c in CONV_CASES if c[5] == 4 and c[6] == 2 and c[1] >= 8]
# (B, C_in, H, W, C_out, k, stride, padding)
CONVT_CASES = [
    (1, 1, 3, 3, 2, 4, 2, 1),
    (2, 3, 4, 5, 2, 4, 2, 1),
    (2, 2, 3, 4, 1, 3, 2, 0),
    (3, 2, 5, 3, 3, 3, 1, 1),
    (2, 2, 1, 1, 3, 4, 2, 1),
] + [
    # 4x4 at stride 2 with >= 8 output channels: F(2x2, 2x2), the adjoint of the Conv2d path; a 7x7
    # input to 14x14, padding 0, a 32x34 output wider than the one-window fast path, a 1x1 input;
    # 7x7 to 14x14 (padding 1) and to 16x16 (padding 0) take the packed paths
    (2, 5, 7, 7, 8, 4, 2, 1),
    (2, 3, 7, 7, 8, 4, 2, 0),
    (2, 3, 4, 3, 9, 4, 2, 0),
    (1, 2, 16, 17, 8, 4, 2, 1),
    (2, 3, 1, 1, 8, 4, 2, 1),
]
CONVT_S2_CASES = [c for c in CONVT_CASES if c[5] == 4 and c[6] == 2 and c[4] >= 8]
# (B, C, H, W, G)
GN_CASES = [(1, 1, 3, 3, 1), (2, 4, 5, 3, 2), (3, 6, 4, 4, 3), (2, 4, 1, 2, 4)]


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def torch_conv(case, dtype, transpose=False):
    B, C, H, W, O, k, s, p = case
    cls = torch.nn.ConvTranspose2d if transpose else torch.nn.Conv2d
    torch.manual_seed(sum(case))
    m = cls(C, O, k, stride=s, padding=p).to(dtype)
    x = torch.randn(B, C, H, W, dtype=dtype, requires_grad=True)
    return m, x


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_matches_torch(case):
    m, x = torch_conv(case, torch.float64)
    y = m(x)
    dout = torch.randn_like(y)
    (y * dout).sum().backward()
    _, _, _, _, _, _, s, p = case
    w, b = m.weight.detach().numpy(), m.bias.detach().numpy()
    k64 = K["float64"]
    ours = k64.conv2d_forward(x.detach().numpy(), w, b, stride=s, padding=p)
    assert rel_err(ours, y.detach().numpy()) < 1e-12
    dx, dw, db = k64.conv2d_backward(dout.numpy(), x.detach().numpy(), w, stride=s, padding=p)
    assert rel_err(dx, x.grad.numpy()) < 1e-6
    assert rel_err(dw, m.weight.grad.numpy()) < 1e-6
    assert rel_err(db, m.bias.grad.numpy()) < 1e-6
    # float32 forward
    m32 = m.float()
    x32 = x.detach().float()
    y32 = K["float32"].conv2d_forward(x32.numpy(), m32.weight.detach().numpy(), m32.bias.detach().numpy(),
                                      stride=s, padding=p)
    assert rel_err(y32, m32(x32).detach().numpy()) < 1e-5


@pytest.mark.parametrize("case", CONVT_CASES)
def test_conv_transpose2d_matches_torch(case):
    m, x = torch_conv(case, torch.float64, transpose=True)
    y = m(x)
    dout = torch.randn_like(y)
    (y * dout).sum().backward()
    _, _, _, _, _, _, s, p = case
    w, b = m.weight.detach().numpy(), m.bias.detach().numpy()
    k64 = K["float64"]
    ours = k64.conv_transpose2d_forward(x.detach().numpy(), w, b, stride=s, padding=p)
    assert ours.shape == tuple(y.shape)
    assert rel_err(ours, y.detach().numpy()) < 1e-12
    dx, dw, db = k64.conv_transpose2d_backward(dout.numpy(), x.detach().numpy(), w, stride=s, padding=p)
    assert rel_err(dx, x.grad.numpy()) < 1e-6
    assert rel_err(dw, m.weight.grad.numpy()) < 1e-6
    assert rel_err(db, m.bias.grad.numpy()) < 1e-6
    m32 = m.float()
    x32 = x.detach().float()
    y32 = K["float32"].conv_transpose2d_forward(x32.numpy(), m32.weight.detach().numpy(),
                                                m32.bias.detach().numpy(), stride=s, padding=p)
    assert rel_err(y32, m32(x32).detach().numpy()) < 1e-5


@pytest.mark.parametrize("shape", [(1, 1, 3, 3), (2, 3, 4, 5)])
def test_upsample2_matches_torch(shape):
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    y = torch.nn.Upsample(scale_factor=2, mode="nearest")(x)
    dout = torch.randn_like(y)
    (y * dout).sum().backward()
    k64 = K["float64"]
    assert np.array_equal(k64.upsample2_forward(x.detach().numpy()), y.detach().numpy())
    assert rel_err(k64.upsample2_backward(dout.numpy()), x.grad.numpy()) < 1e-12


@pytest.mark.parametrize("case", GN_CASES)
def test_group_norm_matches_torch(case):
    B, C, H, W, G = case
    torch.manual_seed(sum(case))
    m = torch.nn.GroupNorm(G, C).double()
    with torch.no_grad():  # a non-trivial affine map
        m.weight.normal_()
        m.bias.normal_()
    x = (3 * torch.randn(B, C, H, W, dtype=torch.float64) + 1).requires_grad_()
    y = m(x)
    dout = torch.randn_like(y)
    (y * dout).sum().backward()
    w, b = m.weight.detach().numpy(), m.bias.detach().numpy()
    k64 = K["float64"]
    ours, mean, rstd = k64.group_norm_forward(x.detach().numpy(), G, w, b)
    assert mean.shape == (B, G) and rstd.shape == (B, G)
    assert rel_err(ours, y.detach().numpy()) < 1e-10
    dx, dw, db = k64.group_norm_backward(dout.numpy(), x.detach().numpy(), G, w, b)
    assert rel_err(dx, x.grad.numpy()) < 1e-6
    assert rel_err(dw, m.weight.grad.numpy()) < 1e-6
    assert rel_err(db, m.bias.grad.numpy()) < 1e-6
    m32 = m.float()
    x32 = x.detach().float()
    y32, _, _ = K["float32"].group_norm_forward(x32.numpy(), G, m32.weight.detach().numpy(),
                                                m32.bias.detach().numpy())
    assert rel_err(y32, m32(x32).detach().numpy()) < 1e-5


@pytest.mark.parametrize("case", WINOGRAD_CASES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_conv2d_winograd_equals_im2col(case, dtype, rng):
    """The two algorithms of a 3x3 stride-1 Conv2d agree on the same operands: forward, input,
    weight and bias gradients (float64 to rounding, float32 to its precision); "auto" takes the
    Winograd path on these shapes, so its results are the Winograd ones bit for bit."""
    B, C, H, W, O, k, s, p = case
    k_ = K[dtype]
    x, w, b = (rng.normal(size=sh).astype(dtype) for sh in ((B, C, H, W), (O, C, k, k), (O,)))
    dout = rng.normal(size=(B, O, H + 2 * p - 2, W + 2 * p - 2)).astype(dtype)
    tol = 1e-12 if dtype == "float64" else 2e-5
    res = {}
    for algo in ("im2col", "winograd", "auto"):
        res[algo] = [k_.conv2d_forward(x, w, b, stride=1, padding=p, algorithm=algo)]
        res[algo] += list(k_.conv2d_backward(dout, x, w, stride=1, padding=p, algorithm=algo))
    for a, b_ in zip(res["winograd"], res["im2col"]):
        assert rel_err(a, b_) < tol
    for a, b_ in zip(res["winograd"], res["auto"]):
        assert a.tobytes() == b_.tobytes()


@pytest.mark.parametrize("case", [(3, 2, 8, 8, 3, 4, 2, 1)] + S2_CASES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_conv2d_winograd_s2_equals_im2col(case, dtype, rng):
    """A 4x4 stride-2 Conv2d and its ConvTranspose2d (the adjoint, the same weight tensor read as
    (C_in, C_out, 4, 4)): F(2x2, 2x2) against im2col on the same operands, forward and all three
    gradients; "auto" takes F(2x2, 2x2) from 8 channels on (the Conv2d's input, the transposed
    layer's output), bit for bit, and im2col below."""
    B, C, H, W, O, k, s, p = case
    k_ = K[dtype]
    x, w, b, bt = (rng.normal(size=sh).astype(dtype) for sh in ((B, C, H, W), (O, C, k, k), (O,), (C,)))
    Ho, Wo = (H + 2 * p - 4) // 2 + 1, (W + 2 * p - 4) // 2 + 1
    dout = rng.normal(size=(B, O, Ho, Wo)).astype(dtype)
    tol = 1e-12 if dtype == "float64" else 2e-5
    res = {}
    for algo in ("im2col", "winograd", "auto"):
        res[algo] = [k_.conv2d_forward(x, w, b, stride=2, padding=p, algorithm=algo)]
        res[algo] += list(k_.conv2d_backward(dout, x, w, stride=2, padding=p, algorithm=algo))
        # ConvTranspose2d(O -> C): input dout (B, O, Ho, Wo), output (B, C, H, W), gradient x
        res[algo].append(k_.conv_transpose2d_forward(dout, w, bt, stride=2, padding=p, algorithm=algo))
        res[algo] += list(k_.conv_transpose2d_backward(x, dout, w, stride=2, padding=p, algorithm=algo))
    assert res["im2col"][4].shape == (B, C, H, W)
    for a, b_ in zip(res["winograd"], res["im2col"]):
        assert rel_err(a, b_) < tol
    auto = k_.auto_algorithm(C, H, W, 4, 2, p)
    assert auto == k_.auto_algorithm(C, H, W, 4, 2, p, transpose=True)
    assert auto == ("winograd_s2" if fast_s2_path(dtype, C, W, p) else "im2col")
    for a, b_ in zip(res["winograd" if auto == "winograd_s2" else "im2col"], res["auto"]):
        assert a.tobytes() == b_.tobytes()


def fast_s2_path(dtype, C, W, p):
    """Where "auto" takes F(2x2, 2x2) (winograd_s2.hpp): its float32 AVX-512 fast paths (the engine is
    built with -march=native, so on an AVX-512 core), 8 channels or more, padded rows of <= 32 entries."""
    with open("/proc/cpuinfo") as f:
        avx512 = "avx512f" in f.read().split()
    return dtype == "float32" and avx512 and C >= 8 and W + 2 * p <= 32


def test_conv2d_algorithm_is_checked():
    k64 = K["float64"]
    x = np.zeros((1, 2, 5, 6))
    with pytest.raises(ValueError, match=r"algorithm 'winograd' needs a 3x3 kernel at stride 1 on even sides or a "
                                         r"4x4 kernel at stride 2 on even padded sides, got kernel 3, stride 1, "
                                         r"padding 1, input 5x6"):
        k64.conv2d_forward(x, np.zeros((2, 2, 3, 3)), padding=1, algorithm="winograd")
    with pytest.raises(ValueError, match=r"algorithm 'winograd' needs a 3x3 kernel .* got kernel 4, stride 2, "
                                         r"padding 1, input 5x6"):
        k64.conv2d_forward(x, np.zeros((2, 2, 4, 4)), stride=2, padding=1, algorithm="winograd")
    with pytest.raises(ValueError, match=r"algorithm 'winograd' needs a 4x4 kernel at stride 2 on even padded "
                                         r"sides, got kernel 3, stride 2, padding 0, output 11x13"):
        k64.conv_transpose2d_forward(x, np.zeros((2, 2, 3, 3)), stride=2, algorithm="winograd")
    with pytest.raises(ValueError, match=r"algorithm must be 'auto', 'im2col' or 'winograd', got 'fft'"):
        k64.conv2d_backward(np.zeros((1, 2, 4, 5)), x, np.zeros((2, 2, 2, 2)), algorithm="fft")
    with pytest.raises(ValueError, match=r"algorithm must be 'auto', 'im2col' or 'winograd', got 'FFT'"):
        k64.conv_transpose2d_backward(np.zeros((1, 2, 10, 12)), x, np.zeros((2, 2, 2, 2)), algorithm="FFT")


# ---- finite differences (float64): J = Σ dout ⊙ layer(x, θ), directional derivatives

def fd_check(f, args, grads, rng, h=1e-5):
    """For each argument i, the central difference of f along a random direction v_i against <grad_i, v_i>."""
    errs = []
    for i, g in enumerate(grads):
        v = rng.normal(size=args[i].shape)
        plus = [a + h * v if j == i else a for j, a in enumerate(args)]
        minus = [a - h * v if j == i else a for j, a in enumerate(args)]
        fd = (f(*plus) - f(*minus)) / (2 * h)
        an = float(np.sum(g * v))
        errs.append(abs(fd - an) / max(abs(an), 1e-12))
    return max(errs)


@pytest.mark.parametrize("case,algo", [(c, "auto") for c in CONV_CASES[:3] + WINOGRAD_CASES[:3]]
                         + [(c, "winograd") for c in S2_CASES[:3]])
def test_conv2d_backward_finite_differences(case, algo, rng):
    """Float64 "auto" runs the stride-2 4x4 layers by im2col, so their F(2x2, 2x2) path is asked for by
    name: the algorithm itself (its portable transforms) against finite differences."""
    B, C, H, W, O, k, s, p = case
    x, w, b = rng.normal(size=(B, C, H, W)), rng.normal(size=(O, C, k, k)), rng.normal(size=O)
    k64 = K["float64"]
    y = k64.conv2d_forward(x, w, b, stride=s, padding=p, algorithm=algo)
    dout = rng.normal(size=y.shape)
    grads = k64.conv2d_backward(dout, x, w, stride=s, padding=p, algorithm=algo)
    J = lambda x, w, b: float(np.sum(dout * k64.conv2d_forward(x, w, b, stride=s, padding=p, algorithm=algo)))
    assert fd_check(J, [x, w, b], grads, rng) < 1e-6


@pytest.mark.parametrize("case,algo", [(c, "auto") for c in CONVT_CASES[:3]]
                         + [(c, "winograd") for c in CONVT_S2_CASES[:3]])
def test_conv_transpose2d_backward_finite_differences(case, algo, rng):
    B, C, H, W, O, k, s, p = case
    x, w, b = rng.normal(size=(B, C, H, W)), rng.normal(size=(C, O, k, k)), rng.normal(size=O)
    k64 = K["float64"]
    y = k64.conv_transpose2d_forward(x, w, b, stride=s, padding=p, algorithm=algo)
    dout = rng.normal(size=y.shape)
    grads = k64.conv_transpose2d_backward(dout, x, w, stride=s, padding=p, algorithm=algo)
    J = lambda x, w, b: float(np.sum(dout * k64.conv_transpose2d_forward(x, w, b, stride=s, padding=p,
                                                                         algorithm=algo)))
    assert fd_check(J, [x, w, b], grads, rng) < 1e-6


@pytest.mark.parametrize("case", GN_CASES[1:3])
def test_group_norm_backward_finite_differences(case, rng):
    B, C, H, W, G = case
    x, w, b = rng.normal(size=(B, C, H, W)), rng.normal(size=C), rng.normal(size=C)
    k64 = K["float64"]
    dout = rng.normal(size=x.shape)
    grads = k64.group_norm_backward(dout, x, G, w, b)
    J = lambda x, w, b: float(np.sum(dout * k64.group_norm_forward(x, G, w, b)[0]))
    assert fd_check(J, [x, w, b], grads, rng) < 1e-6


def test_upsample2_backward_finite_differences(rng):
    x = rng.normal(size=(2, 3, 3, 4))
    k64 = K["float64"]
    dout = rng.normal(size=(2, 3, 6, 8))
    g = k64.upsample2_backward(dout)
    J = lambda x: float(np.sum(dout * k64.upsample2_forward(x)))
    assert fd_check(J, [x], [g], rng) < 1e-6


# ---- determinism over thread counts (shapes large enough to run in parallel)

def test_layers_bit_identical_for_1_2_3_threads(rng):
    k32 = K["float32"]
    x = rng.normal(size=(37, 8, 16, 16)).astype(np.float32)
    w = rng.normal(size=(16, 8, 3, 3)).astype(np.float32)
    b = rng.normal(size=16).astype(np.float32)
    wt = rng.normal(size=(8, 4, 4, 4)).astype(np.float32)
    gw, gb = rng.normal(size=8).astype(np.float32), rng.normal(size=8).astype(np.float32)
    dy = rng.normal(size=(37, 16, 8, 8)).astype(np.float32)
    dyt = rng.normal(size=(37, 4, 32, 32)).astype(np.float32)
    dyw = rng.normal(size=(37, 16, 16, 16)).astype(np.float32)  # the Winograd path: 3x3, stride 1
    w4 = rng.normal(size=(16, 8, 4, 4)).astype(np.float32)  # F(2x2, 2x2): 4x4, stride 2, 8 channels
    wt8 = rng.normal(size=(8, 8, 4, 4)).astype(np.float32)  # ... and its transpose (16x16 -> 32x32)
    dyt8 = rng.normal(size=(37, 8, 32, 32)).astype(np.float32)
    results = []
    before = ek.get_num_threads()
    try:
        for n in (1, 2, 3):
            ek.set_num_threads(n)
            out = [k32.conv2d_forward(x, w, b, stride=2, padding=1)]
            out += list(k32.conv2d_backward(dy, x, w, stride=2, padding=1))
            out.append(k32.conv2d_forward(x, w, b, stride=1, padding=1))
            out += list(k32.conv2d_backward(dyw, x, w, stride=1, padding=1))
            out.append(k32.conv_transpose2d_forward(x, wt, None, stride=2, padding=1))
            out += list(k32.conv_transpose2d_backward(dyt, x, wt, stride=2, padding=1))
            out.append(k32.conv2d_forward(x, w4, b, stride=2, padding=1))
            out += list(k32.conv2d_backward(dy, x, w4, stride=2, padding=1))
            out.append(k32.conv_transpose2d_forward(dy, w4, gb, stride=2, padding=1))  # 8x8 -> 16x16
            out += list(k32.conv_transpose2d_backward(x, dy, w4, stride=2, padding=1))
            out.append(k32.conv_transpose2d_forward(x, wt8, gb, stride=2, padding=1))
            out += list(k32.conv_transpose2d_backward(dyt8, x, wt8, stride=2, padding=1))
            out += list(k32.group_norm_forward(x, 4, gw, gb))
            out += list(k32.group_norm_backward(x[::-1].copy(), x, 4, gw, gb))
            results.append(out)
    finally:
        ek.set_num_threads(before)
    for other in results[1:]:
        for a, b_ in zip(results[0], other):
            assert a.tobytes() == b_.tobytes()


# ---- bad input

def test_layers_reject_bad_input():
    k64 = K["float64"]
    x = np.zeros((2, 3, 5, 5))
    with pytest.raises(ValueError, match=r"weight must have shape \(O, C=3, k, k\), got \(4, 2, 3, 3\)"):
        k64.conv2d_forward(x, np.zeros((4, 2, 3, 3)))
    with pytest.raises(ValueError, match=r"x must have shape \(B, C, H, W\), got \(2, 75\)"):
        k64.conv2d_forward(np.zeros((2, 75)), np.zeros((4, 3, 3, 3)))
    with pytest.raises(ValueError, match=r"kernel_size 7 does not fit the padded input 5x5"):
        k64.conv2d_forward(x, np.zeros((4, 3, 7, 7)))
    with pytest.raises(ValueError, match=r"stride must be 1 or 2, got 3"):
        k64.conv2d_forward(x, np.zeros((4, 3, 3, 3)), stride=3)
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\), got \(3,\)"):
        k64.conv2d_forward(x, np.zeros((4, 3, 3, 3)), np.zeros(3))
    with pytest.raises(ValueError, match=r"dout must have shape \(2, 4, 3, 3\), got \(2, 4, 5, 5\)"):
        k64.conv2d_backward(np.zeros((2, 4, 5, 5)), x, np.zeros((4, 3, 3, 3)))
    with pytest.raises(ValueError, match=r"weight must have shape \(C_in=3, C_out, k, k\)"):
        k64.conv_transpose2d_forward(x, np.zeros((2, 3, 4, 4)))
    with pytest.raises(ValueError, match=r"num_groups must be a positive divisor of the channels 3, got 2"):
        k64.group_norm_forward(x, 2, np.ones(3), np.zeros(3))
    bad = x.copy()
    bad[1, 2, 0, 4] = np.nan
    with pytest.raises(ValueError, match=r"x must contain only finite values, got nan"):
        k64.conv2d_forward(bad, np.zeros((4, 3, 3, 3)))
    with pytest.raises(ValueError, match=r"x must contain only finite values"):
        k64.group_norm_forward(bad, 3, np.ones(3), np.zeros(3))
