"""Gradient estimators (MATH.md §2): reparameterization and score function against closed-form
gradients; the same comparison on a VAE's encoder; the encoder's backward pass against finite
differences and PyTorch."""
import numpy as np
import pytest
import torch

import elbokit as ek
from elbokit import estimators as est
from conftest import make_vae
from test_gradients import fd_grad, rel_err
from torch_reference import TorchVAE

MU, LV = np.array([0.5, -1.0, 0.2]), np.array([-0.5, 0.3, 0.0])


@pytest.mark.parametrize("fn", [est.quadratic([1.0, 0.0, -2.0]), est.exponential([0.3, -0.2, 0.5])],
                         ids=["quadratic", "exponential"])
def test_both_estimators_are_unbiased_and_reparam_has_lower_variance(fn):
    c = est.compare(fn, MU, LV, n_samples=4, n_repeats=20000, seed=1)
    s = c.summary()
    R = 20000
    for name in ("reparam", "score"):
        for part, exact in (("mu", c.exact_mu), ("logvar", c.exact_logvar)):
            se = np.sqrt(s[name]["var_" + part] / R)
            assert np.all(np.abs(s[name]["mean_" + part] - exact) < 4.5 * se + 1e-12), (name, part)
    assert s["variance_ratio"] > 3
    # the closed forms themselves, by central differences of E_q f
    h = 1e-6
    for j in range(3):
        e = np.eye(3)[j] * h
        assert (fn.value(MU + e, LV) - fn.value(MU - e, LV)) / (2 * h) == pytest.approx(c.exact_mu[j], rel=1e-6)
        assert (fn.value(MU, LV + e) - fn.value(MU, LV - e)) / (2 * h) == pytest.approx(c.exact_logvar[j], rel=1e-6)


def test_leave_one_out_baseline_reduces_score_variance_and_stays_unbiased():
    fn = est.quadratic([3.0, 3.0, 3.0])
    plain = est.compare(fn, MU, LV, n_samples=8, n_repeats=5000, seed=2).summary()
    base = est.compare(fn, MU, LV, n_samples=8, n_repeats=5000, seed=2, baseline="mean")
    sb = base.summary()
    assert sb["score"]["var_mu"].sum() < 0.2 * plain["score"]["var_mu"].sum()
    se = np.sqrt(sb["score"]["var_mu"] / 5000)
    assert np.all(np.abs(sb["score"]["mean_mu"] - base.exact_mu) < 4.5 * se)


def test_vae_encoder_estimators_agree_and_score_is_noisier(rng):
    vae = make_vae("bernoulli", (8,), "tanh", x_dim=6, z_dim=2, rng=rng)
    x = rng.uniform(size=(4, 6))
    c = est.vae_encoder(vae, x, n_samples=4, n_repeats=400, seed=0, baseline="mean")
    s = c.summary()
    assert s["variance_ratio"] > 5
    assert s["mean_abs_z"] < 1.5 and s["max_z"] < 5, s
    assert all(n.startswith("encoder.") for n in c.names)
    # reparam mean ≈ a many-sample reparameterization gradient
    eps = ek.random.normal((2000, 4, 2), seed=9)
    _, g = vae.objective_grad(x, eps=eps, beta=0.0)
    big = np.concatenate([g[n].ravel() for n in c.names])
    assert rel_err(big, c.reparam.mean(0)) < 0.1


def test_encoder_backward_matches_finite_differences_and_pytorch(rng):
    vae = make_vae("gaussian", (7, 5), "silu", x_dim=6, z_dim=3, rng=rng)
    x = rng.normal(size=(5, 6))
    dmu, dlv = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    g = vae._grad_dict(vae._core.encoder_backward(x, dmu, dlv))

    def J():
        mu, lv = vae.encode(x)
        return (dmu * mu).sum() + (dlv * lv).sum()

    params = vae.parameters()
    enc = {n: a for n, a in params.items() if n.startswith("encoder.")}
    fd = fd_grad(J, enc, lambda q: vae.set_parameters({**params, **q}))
    assert max(rel_err(fd[n], g[n]) for n in fd) < 1e-6
    assert all(np.all(g[n] == 0) for n in params if n.startswith("decoder."))
    tv = TorchVAE.from_elbokit(vae, activation="silu")
    mu, lv = tv.encode(torch.tensor(x))
    ((torch.tensor(dmu) * mu).sum() + (torch.tensor(dlv) * lv).sum()).backward()
    for n, p in tv.named_parameters():
        if n.startswith("encoder."):
            assert rel_err(p.grad.numpy(), g[n]) < 1e-10, n


@pytest.mark.parametrize("call,match", [
    (lambda: est.compare(est.quadratic([0.0]), [0.0, 1.0], [0.0, 0.0]),
     "fn is defined on 1 dimensions, but mu has 2"),
    (lambda: est.compare(est.quadratic([0.0, 0.0]), [0.0, 1.0], [0.0]), r"logvar must have shape \(2\), got \(1,\)"),
    (lambda: est.compare(est.quadratic([0.0]), [0.0], [0.0], n_repeats=1), "n_repeats must be an integer >= 2, got 1"),
    (lambda: est.compare(est.quadratic([0.0]), [0.0], [0.0], baseline="mean"), "n_samples must be >= 2 for baseline='mean'"),
    (lambda: est.compare(est.quadratic([0.0]), [0.0], [0.0], baseline="median"),
     "baseline must be one of 'none', 'mean', got 'median'"),
    (lambda: est.vae_encoder(ek.VAE(3, 2, hidden=()), np.ones((2, 4))), r"x must have shape \(n, 3\), got \(2, 4\)"),
    (lambda: ek.VAE(3, 2, hidden=())._core.encoder_backward(np.ones((2, 3), np.float32), np.ones((2, 2), np.float32),
                                                             np.ones((1, 2), np.float32)),
     r"dlogvar must have shape \(2, 2\), got \(1, 2\)"),
])
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call()
