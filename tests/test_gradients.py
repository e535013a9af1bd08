"""Every backward pass against central finite differences in float64 (MATH.md §10).

The hand-written gradient of the batch-mean ELBO (and of the training objective with beta and
free bits) is compared, parameter tensor by parameter tensor, with central differences of the
forward pass at the same noise. Error measure: ||g_fd - g|| / ||g_fd|| per tensor (< 1e-6).
"""
import numpy as np
import pytest

from conftest import make_data, make_vae

H = 1e-5


def fd_grad(f, params, set_params):
    """Central differences of the scalar f() with respect to every entry of every tensor."""
    out = {}
    for name, a in params.items():
        g = np.zeros_like(a)
        for idx in np.ndindex(a.shape):
            q = dict(params)
            b = a.copy()
            b[idx] += H
            q[name] = b
            set_params(q)
            fp = f()
            b[idx] -= 2 * H
            set_params(q)
            fm = f()
            g[idx] = (fp - fm) / (2 * H)
        out[name] = g
    set_params(params)
    return out


def rel_err(fd, an):
    den = np.linalg.norm(fd)
    return np.linalg.norm(fd - an) / den if den > 1e-12 else np.linalg.norm(fd - an)


CASES = [
    # likelihood, hidden, activation, kl, n_samples, decoder_var
    ("bernoulli", (), "relu", "analytic", 1, "learned"),
    ("bernoulli", (9,), "tanh", "analytic", 2, "learned"),
    ("bernoulli", (8, 6), "softplus", "mc", 3, "learned"),
    ("bernoulli", (10,), "sigmoid", "mc", 1, "learned"),
    ("gaussian", (8,), "elu", "analytic", 2, "learned"),
    ("gaussian", (7, 5), "silu", "mc", 2, "learned"),
    ("gaussian", (6,), "leaky_relu", "analytic", 1, 0.3),
    ("gaussian", (), "tanh", "mc", 2, "learned"),
]


@pytest.mark.parametrize("likelihood,hidden,activation,kl,S,decoder_var", CASES)
def test_elbo_gradient_matches_finite_differences(likelihood, hidden, activation, kl, S, decoder_var, rng):
    vae = make_vae(likelihood, hidden, activation, decoder_var=decoder_var, rng=rng)
    x = make_data(likelihood, 5, vae.x_dim, rng)
    eps = rng.normal(size=(S, 5, vae.z_dim))
    _, g = vae.elbo_grad(x, eps=eps, kl=kl)
    fd = fd_grad(lambda: vae.elbo(x, eps=eps, kl=kl).elbo.mean(), vae.parameters(), vae.set_parameters)
    errs = {n: rel_err(fd[n], g[n]) for n in fd}
    assert max(errs.values()) < 1e-6, errs


@pytest.mark.parametrize("kl,free_bits,beta", [("analytic", 0.0, 0.3), ("analytic", 0.05, 1.0), ("mc", 0.02, 2.0)])
def test_objective_gradient_with_beta_and_free_bits(kl, free_bits, beta, rng):
    """beta-weighting and free bits (MATH.md §2): F(k) = max(lambda, k) per dimension."""
    vae = make_vae("bernoulli", (8,), "tanh", z_dim=4, rng=rng)
    p = vae.parameters()
    # make one latent dimension's KL small and another large so that free bits binds on some only
    p["encoder.logvar.bias"] = np.array([0.0, -2.0, -0.05, 1.0])
    p["encoder.mu.bias"] = np.array([0.0, 1.0, 0.05, -0.5])
    vae.set_parameters(p)
    x = make_data("bernoulli", 6, vae.x_dim, rng)
    eps = rng.normal(size=(2, 6, vae.z_dim))
    kbar = vae.elbo(x, eps=eps, kl=kl).kl_per_dim.mean(axis=0)
    if free_bits > 0:
        assert (kbar < free_bits).any() and (kbar > free_bits).any(), kbar
    J, g = vae.objective_grad(x, eps=eps, kl=kl, beta=beta, free_bits=free_bits)
    r = vae.elbo(x, eps=eps, kl=kl)
    expect = r.reconstruction.mean() - beta * np.maximum(free_bits, r.kl_per_dim.mean(axis=0)).sum()
    assert J == pytest.approx(expect, rel=1e-12, abs=1e-12)
    fd = fd_grad(lambda: vae.objective_grad(x, eps=eps, kl=kl, beta=beta, free_bits=free_bits)[0],
                 vae.parameters(), vae.set_parameters)
    errs = {n: rel_err(fd[n], g[n]) for n in fd}
    assert max(errs.values()) < 1e-6, errs


def test_clamped_decoder_logvar_has_zero_gradient(rng):
    """Outside [-10, 10] the decoder log-variance is clamped: its gradient is zero there."""
    vae = make_vae("gaussian", (5,), "tanh", rng=rng)
    p = vae.parameters()
    p["decoder.logvar"][:3] = [12.0, -11.0, 3.0]
    vae.set_parameters(p)
    x = make_data("gaussian", 4, vae.x_dim, rng)
    _, g = vae.elbo_grad(x, eps=rng.normal(size=(1, 4, vae.z_dim)))
    assert g["decoder.logvar"][0] == 0 and g["decoder.logvar"][1] == 0 and g["decoder.logvar"][2] != 0


def test_float32_gradient_close_to_float64(rng):
    v64 = make_vae("bernoulli", (16, 8), "relu", x_dim=12, z_dim=4, dtype="float64", rng=rng)
    v32 = make_vae("bernoulli", (16, 8), "relu", x_dim=12, z_dim=4, dtype="float32", rng=rng)
    v32.set_parameters(v64.parameters())
    x = make_data("bernoulli", 9, 12, rng)
    eps = rng.normal(size=(2, 9, 4))
    r64, g64 = v64.elbo_grad(x, eps=eps)
    r32, g32 = v32.elbo_grad(x, eps=eps)
    assert np.allclose(r32.elbo, r64.elbo, rtol=1e-5)
    for n in g64:
        assert g32[n].dtype == np.float32
        assert rel_err(g64[n], g32[n].astype(np.float64)) < 1e-4, n
