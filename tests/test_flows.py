"""Flows (MATH.md §8): forward/inverse/log-determinant and backward against finite differences
and PyTorch autograd; the density integrates to one; the ELBO of the deterministic VAE equals
the exact log-likelihood."""
import math

import numpy as np
import pytest
import torch

import elbokit as ek
from test_gradients import fd_grad, rel_err

LAYER_SETS = [("coupling", "coupling"), ("planar", "planar", "planar"), ("coupling", "planar", "coupling", "planar")]


def make_flow(layers, dim=3, hidden=(6,), activation="tanh", seed=0, rng=None):
    f = ek.Flow(dim, layers, hidden=hidden, activation=activation, dtype="float64", seed=seed)
    rng = rng or np.random.default_rng(seed)
    p = {n: a + 0.3 * rng.normal(size=a.shape) for n, a in f.parameters().items()}  # away from the init
    f.set_parameters(p)
    return f


# ---- a PyTorch statement of the same flow ---------------------------------------------------------
def torch_log_prob(flow, x, params):
    """log p(x) and z of ``flow`` written with torch ops (float64), parameters from a dict of tensors."""
    cfg = flow.config
    D, act = cfg["dim"], {"tanh": torch.tanh, "relu": torch.relu}[cfg["activation"]]
    h_count = len(cfg["hidden"])
    logdet = torch.zeros(x.shape[0], dtype=torch.float64)
    n_coupling = 0
    for l, kind in enumerate(cfg["layers"]):
        pre = f"layers.{l}"
        if kind == "coupling":
            parity = n_coupling % 2
            n_coupling += 1
            keep = [j for j in range(D) if j % 2 == parity]
            change = [j for j in range(D) if j % 2 != parity]
            h = x[:, keep]
            for i in range(h_count):
                h = act(h @ params[f"{pre}.net.{i}.weight"].T + params[f"{pre}.net.{i}.bias"])
            o = h @ params[f"{pre}.head.weight"].T + params[f"{pre}.head.bias"]
            C = len(change)
            s, t = torch.tanh(o[:, :C]), o[:, C:]
            cols = [None] * D
            for k, j in enumerate(keep):
                cols[j] = x[:, j]
            for k, j in enumerate(change):
                cols[j] = x[:, j] * torch.exp(s[:, k]) + t[:, k]
            x = torch.stack(cols, dim=1)
            logdet = logdet + s.sum(1)
        else:
            u, w, b = params[f"{pre}.u"], params[f"{pre}.w"], params[f"{pre}.b"]
            wu = w @ u
            uh = u + (torch.nn.functional.softplus(wu) - 1 - wu) * w / (w @ w)
            h = torch.tanh(x @ w + b)
            x = x + h[:, None] * uh
            logdet = logdet + torch.log(1 + (1 - h * h) * (w @ uh))
    prior = -0.5 * (D * math.log(2 * math.pi) + (x * x).sum(1))
    return prior + logdet, x, logdet


@pytest.mark.parametrize("layers", LAYER_SETS)
def test_log_prob_gradient_matches_finite_differences(layers, rng):
    f = make_flow(layers, rng=rng)
    x = rng.normal(size=(6, 3))
    J, g = f.log_prob_grad(x)
    assert J == pytest.approx(f.log_prob(x).mean(), rel=1e-12)
    fd = fd_grad(lambda: f.log_prob(x).mean(), f.parameters(), f.set_parameters)
    errs = {n: rel_err(fd[n], g[n]) for n in fd}
    assert max(errs.values()) < 1e-6, errs


@pytest.mark.parametrize("layers", LAYER_SETS)
def test_vjp_input_gradient_and_logdet_match_finite_differences(layers, rng):
    f = make_flow(layers, rng=rng)
    x = rng.normal(size=(4, 3))
    dz, dld = rng.normal(size=(4, 3)), rng.normal(size=4)

    def J(xx):
        z, ld = f.forward(xx)
        return (dz * z).sum() + (dld * ld).sum()

    g, dx = f.vjp(x, dz, dld)
    fdx = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += 1e-6
        xm[idx] -= 1e-6
        fdx[idx] = (J(xp) - J(xm)) / 2e-6
    assert rel_err(fdx, dx) < 1e-6
    fd = fd_grad(lambda: J(x), f.parameters(), f.set_parameters)
    assert max(rel_err(fd[n], g[n]) for n in fd) < 1e-6
    # log|det| against the determinant of the finite-difference Jacobian
    jac = f.jacobian(x)
    _, ld = f.forward(x)
    assert np.allclose(np.linalg.slogdet(jac)[1], ld, atol=1e-10)
    for i in range(x.shape[1]):
        xp, xm = x.copy(), x.copy()
        xp[:, i] += 1e-6
        xm[:, i] -= 1e-6
        col = (f.forward(xp)[0] - f.forward(xm)[0]) / 2e-6
        assert np.allclose(jac[:, :, i], col, atol=1e-7)


@pytest.mark.parametrize("layers", LAYER_SETS)
def test_matches_pytorch_autograd(layers, rng):
    f = make_flow(layers, rng=rng)
    x = rng.normal(size=(7, 3))
    params = {n: torch.tensor(a, requires_grad=True) for n, a in f.parameters().items()}
    xt = torch.tensor(x, requires_grad=True)
    lp, z, ld = torch_log_prob(f, xt, params)
    ze, lde = f.forward(x)
    assert np.allclose(z.detach().numpy(), ze, atol=1e-12) and np.allclose(ld.detach().numpy(), lde, atol=1e-12)
    lp.mean().backward()
    _, g = f.log_prob_grad(x)
    for n, t in params.items():
        assert rel_err(t.grad.numpy(), g[n]) < 1e-10, n
    _, dx = f.vjp(x, -ze / x.shape[0], np.full(x.shape[0], 1.0 / x.shape[0]))
    assert rel_err(xt.grad.numpy(), dx) < 1e-10


@pytest.mark.parametrize("layers", LAYER_SETS)
def test_inverse_inverts_forward(layers, rng):
    f = make_flow(layers, rng=rng)
    x = 2 * rng.normal(size=(50, 3))
    z, _ = f.forward(x)
    assert np.abs(f.inverse(z) - x).max() < 1e-9
    zz = rng.normal(size=(20, 3))
    assert np.abs(f.forward(f.inverse(zz))[0] - zz).max() < 1e-9


def test_planar_reparameterization_keeps_layer_invertible(rng):
    """With w·u very negative the raw layer would fold the space; û keeps wᵀû > −1 and det > 0."""
    f = ek.Flow(2, ("planar",), dtype="float64")
    f.set_parameters({"layers.0.u": np.array([-3.0, 0.0]), "layers.0.w": np.array([2.0, 0.0]),
                      "layers.0.b": np.array([0.1])})
    x = np.linspace(-3, 3, 201)[:, None] * np.array([1.0, 0.0]) + np.array([0.0, 0.5])
    z, ld = f.forward(x)
    assert np.isfinite(ld).all() and (np.diff(z[:, 0]) > 0).all()
    assert np.abs(f.inverse(z) - x).max() < 1e-9


def test_density_integrates_to_one_and_elbo_equals_log_likelihood(rng):
    f = make_flow(("coupling", "planar", "coupling"), dim=2, hidden=(8,), rng=rng)
    g = np.linspace(-9, 9, 601)
    X, Y = np.meshgrid(g, g)
    pts = np.stack([X.ravel(), Y.ravel()], 1)
    mass = np.exp(f.log_prob(pts)).sum() * (g[1] - g[0]) ** 2
    assert mass == pytest.approx(1.0, abs=2e-3)
    e = f.elbo(pts[:100])
    assert np.array_equal(e["elbo"], f.log_prob(pts[:100]))


def test_smoothed_vae_elbo_tends_to_log_likelihood(rng):
    f = make_flow(("coupling", "planar", "coupling"), dim=2, hidden=(8,), rng=rng)
    x = rng.normal(size=(3, 2))
    lp = f.log_prob(x)
    gaps = []
    for sigma in (0.1, 0.01, 0.001):
        est, se = f.elbo_smoothed(x, sigma, n_samples=4000, seed=1)
        gaps.append(np.abs(lp - est).max())
        assert (est < lp + 4 * se + 1e-9).all()  # an ELBO: below log p(x) up to Monte-Carlo error
    assert gaps[2] < gaps[1] < gaps[0] and gaps[2] < 5e-3, gaps


def test_fit_two_moons_raises_log_likelihood_and_is_thread_independent():
    x = ek.datasets.two_moons(512, seed=0)
    x = (x - x.mean(0)) / x.std(0)
    out = []
    for nt in (1, 2):
        ek.set_num_threads(nt)
        f = ek.Flow(2, ("coupling",) * 4, hidden=(16,), seed=3)
        h = f.fit(x, epochs=15, batch_size=128, lr=5e-3, progress=False, validation=x[:100])
        out.append((f.parameters(), h))
    ek.set_num_threads(2)
    for n in out[0][0]:
        assert np.array_equal(out[0][0][n], out[1][0][n]), n
    h = out[0][1]
    assert h.train_elbo[-1] > h.train_elbo[0] + 0.5
    # standard normal reference: -log(2 pi) - 1 = -2.84 nats on standardized data
    assert h.val_elbo[-1] > -2.6


def test_float32_close_to_float64_and_save_load(tmp_path, rng):
    f64 = make_flow(("coupling", "planar"), dim=2, hidden=(5,), rng=rng)
    f32 = ek.Flow(2, ("coupling", "planar"), hidden=(5,), activation="tanh", dtype="float32")
    f32.set_parameters(f64.parameters())
    x = rng.normal(size=(10, 2))
    assert np.allclose(f32.log_prob(x), f64.log_prob(x), atol=1e-4)
    path = f64.save(tmp_path / "flow.elbokit")
    g = ek.load(path)
    assert isinstance(g, ek.Flow) and np.array_equal(g.log_prob(x), f64.log_prob(x))
    s = g.sample(5, seed=2)
    assert s.shape == (5, 2) and np.isfinite(s).all()


@pytest.mark.parametrize("kwargs,match", [
    (dict(dim=0), "dim must be an integer >= 1, got 0"),
    (dict(dim=1, layers=("coupling",)), "dim must be >= 2 for coupling layers, got 1"),
    (dict(dim=2, layers=("affine",)), r"layers\[0\] must be one of 'coupling', 'planar', got 'affine'"),
    (dict(dim=2, layers=()), "layers must name at least one layer"),
    (dict(dim=2, hidden=(0,)), r"hidden\[0\] must be an integer >= 1, got 0"),
    (dict(dim=2, activation="gelu"), "activation must be one of"),
])
def test_bad_construction_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ek.Flow(**kwargs)


def test_bad_input_raises():
    f = ek.Flow(2, ("planar",))
    with pytest.raises(ValueError, match=r"x must have shape \(n, 2\), got \(3, 3\)"):
        f.log_prob(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="x must contain only finite values, got nan"):
        f.log_prob(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="x must not be empty"):
        f.log_prob(np.zeros((0, 2)))
    with pytest.raises(ValueError, match=r"dz must have shape \(1, 2\), got \(2, 2\)"):
        f.vjp(np.zeros((1, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="sigma must be positive, got 0.0"):
        f.elbo_smoothed(np.zeros((1, 2)), 0.0)
    with pytest.raises(ValueError, match="epochs must be an integer >= 1, got 0"):
        f.fit(np.zeros((4, 2)), epochs=0)
