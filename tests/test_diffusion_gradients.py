"""Diffusion losses (MATH.md §7): values and hand-written gradients against central finite
differences in float64 and against PyTorch autograd on the same weights, steps and noise.
Error measure: ||g_ref - g|| / ||g_ref|| per tensor."""
import numpy as np
import pytest
import torch

import elbokit as ek
from test_gradients import fd_grad, rel_err
from torch_diffusion import from_elbokit

CASES = [
    # prediction, variance, data, hidden, activation, kind
    ("epsilon", "small", "continuous", (6, 5), "silu", "simple"),
    ("epsilon", "small", "continuous", (6, 5), "silu", "elbo"),
    ("epsilon", "large", "continuous", (7,), "tanh", "hybrid"),
    ("x0", "small", "continuous", (6,), "softplus", "elbo"),
    ("v", "large", "continuous", (6, 4), "elu", "elbo"),
    ("v", "small", "continuous", (), "relu", "simple"),
    ("epsilon", "small", "discrete256", (6,), "silu", "elbo"),
    ("x0", "large", "discrete256", (5,), "tanh", "hybrid"),
]


def make_model(prediction, variance, data, hidden, activation, T=12, dtype="float64", schedule="linear"):
    return ek.Diffusion(3, timesteps=T, schedule=schedule, hidden=hidden, prediction=prediction, variance=variance,
                        data=data, emb_dim=4, activation=activation, dtype=dtype, seed=3)


def make_batch(data, rng, T=12, n=8):
    if data == "discrete256":
        x = rng.integers(0, 256, size=(n, 3)) * (2 / 255) - 1
        x[0] = [-1.0, 1.0, 1 - 2 / 255]  # both open edges
    else:
        x = rng.normal(size=(n, 3))
    t = np.concatenate([[1, 1, 2, T], rng.integers(1, T + 1, size=n - 4)])  # t = 1 and the ends always
    return x, t, rng.normal(size=(n, 3))


@pytest.mark.parametrize("prediction,variance,data,hidden,activation,kind", CASES)
def test_loss_gradient_matches_finite_differences_and_torch(prediction, variance, data, hidden, activation, kind, rng):
    m = make_model(prediction, variance, data, hidden, activation)
    x, t, eps = make_batch(data, rng)
    J, g = m.loss_grad(x, t, eps, kind)
    assert J == pytest.approx(m.loss(x, t, eps, kind).mean(), rel=1e-12)
    fd = fd_grad(lambda: m.loss(x, t, eps, kind).mean(), m.parameters(), m.set_parameters)
    errs = {n: rel_err(fd[n], g[n]) for n in fd}
    assert max(errs.values()) < 1e-6, errs
    ref = from_elbokit(m)
    Jt, per_t, gt = ref.loss_grad(x, t, eps, kind)
    assert np.allclose(m.loss(x, t, eps, kind), per_t, rtol=1e-10, atol=1e-10)
    terrs = {n: rel_err(gt[n], g[n]) for n in gt}
    assert max(terrs.values()) < 1e-9, terrs


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_one_step_for_every_row_folds_the_embedding_into_layer_0(dtype, rng):
    """When every row has the same t (a sampler's step), the MLP computes layer 0 as x_t · W[:, :D]ᵀ
    plus the one row b + W[:, D:] · emb(t) (mlp.hpp). Its loss and gradient (the backward builds
    concat(x_t, emb) for layer 0's weight gradient) against finite differences and torch, and against
    the per-row path: the same rows with one more row of another t."""
    m = make_model("epsilon", "small", "continuous", (6, 5), "silu", dtype=dtype)
    x, _, eps = make_batch("continuous", rng, n=9)
    t = np.full(9, 7)
    J, g = m.loss_grad(x, t, eps, "elbo")
    ref = from_elbokit(m)
    Jt, per_t, gt = ref.loss_grad(x, t, eps, "elbo")
    tol = 1e-10 if dtype == "float64" else 2e-5
    assert np.allclose(m.loss(x, t, eps, "elbo"), per_t, rtol=tol, atol=tol)
    assert max(rel_err(gt[n], g[n].astype(np.float64)) for n in gt) < (1e-9 if dtype == "float64" else 1e-4)
    if dtype == "float64":
        fd = fd_grad(lambda: m.loss(x, t, eps, "elbo").mean(), m.parameters(), m.set_parameters)
        assert max(rel_err(fd[n], g[n]) for n in fd) < 1e-6
    # the per-row path (rows of different t): the first nine rows' losses are the same numbers
    x2, t2, e2 = np.vstack([x, x[:1]]), np.append(t, 3), np.vstack([eps, eps[:1]])
    assert np.allclose(m.loss(x2, t2, e2, "elbo")[:9], m.loss(x, t, eps, "elbo"), rtol=10 * tol, atol=10 * tol)
    # and the sampler, whose steps all fold: DDPM from the same seed is finite and seeded
    a = m.sample(33, method="ddpm", seed=4)
    assert np.isfinite(a).all() and np.array_equal(a, m.sample(33, method="ddpm", seed=4))


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_torch_matches_on_a_long_cosine_and_linear_schedule(schedule, rng):
    """The default network shape with T = 1000 and every step present once in the batch."""
    m = ek.Diffusion(2, timesteps=1000, schedule=schedule, hidden=(32, 32), dtype="float64", seed=1)
    x = rng.normal(size=(1000, 2))
    t = rng.permutation(1000) + 1
    eps = rng.normal(size=(1000, 2))
    ref = from_elbokit(m)
    for kind in ("simple", "elbo"):
        J, g = m.loss_grad(x, t, eps, kind)
        Jt, per_t, gt = ref.loss_grad(x, t, eps, kind)
        assert J == pytest.approx(Jt, rel=1e-10)
        assert max(rel_err(gt[n], g[n]) for n in gt) < 1e-8


def test_float32_close_to_float64(rng):
    m64 = make_model("epsilon", "small", "continuous", (16, 16), "silu")
    m32 = make_model("epsilon", "small", "continuous", (16, 16), "silu", dtype="float32")
    m32.set_parameters(m64.parameters())
    x, t, eps = make_batch("continuous", rng, n=32)
    J64, g64 = m64.loss_grad(x, t, eps, "elbo")
    J32, g32 = m32.loss_grad(x, t, eps, "elbo")
    assert J32 == pytest.approx(J64, rel=1e-4)
    for n in g64:
        assert g32[n].dtype == np.float32 and rel_err(g64[n], g32[n].astype(np.float64)) < 1e-3, n


def test_discretized_gaussian_is_stable_far_in_the_tails():
    """log P of bins 40 to 60 standard deviations from the mean (both open edges and an inner bin in
    the upper tail): finite, equal to scipy's log_ndtr differences, with a finite gradient."""
    from scipy.special import log_ndtr

    m = make_model("epsilon", "large", "discrete256", (), "relu")
    p = m.parameters()
    p["net.out.weight"][:] = 0
    e_hat = np.array([-60.0, 60.0, 45.0])  # eps_hat = the bias: mu = (x_1 - sqrt(beta_1) eps_hat)/sqrt(alpha_1)
    p["net.out.bias"][:] = e_hat
    m.set_parameters(p)
    x = np.array([[-1.0, 1.0, 100 / 127.5 - 1]])
    eps = np.zeros((1, 3))
    per = m.loss(x, [1], eps, "elbo")
    b1, a1 = m.betas[0], m.alphas[0]
    mu = (np.sqrt(a1) * x - np.sqrt(b1) * e_hat) / np.sqrt(a1)  # abar_1 = alpha_1 = 1 - beta_1, eps = 0
    sd = np.sqrt(m.sigmas2[0])
    z_hi, z_lo = (x + 1 / 255 - mu) / sd, (x - 1 / 255 - mu) / sd
    assert z_hi[0, 0] < -40 and z_lo[0, 1] > 40 and z_lo[0, 2] > 30
    a, b = log_ndtr(-z_hi[0, 2]), log_ndtr(-z_lo[0, 2])  # upper tail: Phi(-lo) - Phi(-hi)
    lp = log_ndtr(z_hi[0, 0]) + log_ndtr(-z_lo[0, 1]) + b + np.log1p(-np.exp(a - b))
    ab = m.alphas_cumprod[-1]
    prior = 0.5 * (ab * x ** 2 + (1 - ab) - 1 - np.log(1 - ab)).sum()
    assert np.isfinite(per[0]) and per[0] == pytest.approx(prior - m.timesteps * lp, rel=1e-10)
    _, g = m.loss_grad(x, [1], eps, "elbo")
    assert all(np.isfinite(v).all() for v in g.values()) and np.abs(g["net.out.bias"]).min() > 0
