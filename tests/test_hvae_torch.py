"""Cross-check elbokit's HVAE against the independent PyTorch float64 reference
(tests/torch_reference_hvae.py) on the same weights and noise: parameter names and shapes, every
level's term, autograd gradients, L_K with the engine's noise, and whole training runs."""
import os
import sys

import numpy as np
import pytest
import torch

import elbokit as ek

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hvae_cases import CASES, build, case_id  # noqa: E402
from test_torch_crosscheck import assert_close, rel_err  # noqa: E402
from torch_reference_hvae import TorchHVAE, engine_noise, train_like_elbokit  # noqa: E402


def torch_grads(ref, x, eps, kl):
    ref.zero_grad()
    ref.elbo_terms(x, eps, kl)[0].mean().backward()
    return {k: p.grad.numpy().copy() for k, p in ref.named_parameters()}


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_names_terms_and_gradients_match_torch(case):
    """state_dict names and shapes equal parameters(); reconstruction, kl_levels and elbo equal the
    reference's to 1e-10; gradients equal autograd's (rtol 1e-8)."""
    h, x, eps = build(case)
    ref = TorchHVAE.from_elbokit(h)
    assert {k: tuple(v.shape) for k, v in ref.state_dict().items()} == \
        {k: v.shape for k, v in h.parameters().items()}
    r, grads = h.elbo_grad(x, eps=eps, kl=case["kl"])
    with torch.no_grad():
        elbo, rec, kl_levels = ref.elbo_terms(x, eps, case["kl"])
    assert_close(r.reconstruction, rec.numpy(), 1e-10, 1e-10, "reconstruction")
    assert_close(r.kl_levels, kl_levels.numpy(), 1e-10, 1e-10, "kl_levels")
    assert_close(r.elbo, elbo.numpy(), 1e-10, 1e-10, "elbo")
    expected = torch_grads(ref, x, eps, case["kl"])
    assert set(grads) == set(expected)
    for name in expected:
        assert_close(grads[name], expected[name], 1e-8, 1e-10, f"grad {name}")


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_split_step_terms_and_gradients_match_torch(case):
    """37 rows: objective_grad splits the step into halves of 18 and 19 rows, one per thread
    (common.hpp: RowHalves); the terms and the gradients still equal autograd's on the whole batch."""
    h, x, eps = build(case, n=37)
    ref = TorchHVAE.from_elbokit(h)
    r, grads = h.elbo_grad(x, eps=eps, kl=case["kl"])
    with torch.no_grad():
        elbo, rec, kl_levels = ref.elbo_terms(x, eps, case["kl"])
    assert_close(r.reconstruction, rec.numpy(), 1e-10, 1e-10, "reconstruction")
    assert_close(r.kl_levels, kl_levels.numpy(), 1e-10, 1e-10, "kl_levels")
    expected = torch_grads(ref, x, eps, case["kl"])
    for name in expected:
        assert_close(grads[name], expected[name], 1e-8, 1e-10, f"grad {name}")


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_level_terms_sum_to_joint_minus_posterior(case):
    """With kl="mc" the level terms are a regrouping of log p(x, z) - log q(z|x): elbokit's
    reconstruction - sum of levels equals the reference's joint-minus-posterior per sample."""
    h, x, eps = build(case)
    ref = TorchHVAE.from_elbokit(h)
    r = h.elbo(x, eps=eps, kl="mc")
    with torch.no_grad():
        lw = ref.log_weights(x, eps).numpy()
    assert_close(r.reconstruction - r.kl_levels.sum(axis=1), lw.mean(axis=0), 1e-10, 1e-10, "elbo")


@pytest.mark.parametrize("case", [CASES[1], CASES[4], CASES[5]], ids=case_id)
def test_log_likelihood_matches_torch_with_engine_noise(case):
    """L_K equals the reference's for the engine's noise: level l of sample k of example b is
    ek.random.normal((n, K, sum(z)), seed, stream=2)[b, k, off_l:off_l + z_l]; and L_1 is the
    one-sample MC ELBO on that noise."""
    h, x, _ = build(case)
    ref = TorchHVAE.from_elbokit(h)
    n, K, seed, zd = x.shape[0], 6, 3, case["z_dims"]
    flat = ek.random.normal((n, K, sum(zd)), seed, stream=2)
    off = np.concatenate([[0], np.cumsum(zd)])
    eps_k = [flat[:, :, off[l]:off[l + 1]].transpose(1, 0, 2) for l in range(len(zd))]
    got = h.log_likelihood(x, k=K, seed=seed)
    with torch.no_grad():
        expected = ref.log_likelihood(x, eps_k).numpy()
    assert_close(got, expected, 1e-9, 1e-10, "log_likelihood")
    l1 = h.log_likelihood(x, k=1, seed=seed)
    flat1 = ek.random.normal((n, 1, sum(zd)), seed, stream=2)
    eps_1 = [flat1[:, :, off[l]:off[l + 1]].transpose(1, 0, 2) for l in range(len(zd))]
    assert_close(l1, h.elbo(x, eps=eps_1, kl="mc").elbo, 1e-10, 1e-10, "L_1 = ELBO")
    assert np.all(got > h.elbo(x, eps=eps_k, kl="mc").elbo)  # Jensen on the same K samples


@pytest.mark.parametrize("structure", ["markov", "topdown"])
def test_float32_model_matches_float64_reference(structure):
    case = dict(CASES[0], structure=structure)
    h, x, eps = build(case, dtype="float32")
    x32, eps32 = x.astype(np.float32), [e.astype(np.float32) for e in eps]
    ref = TorchHVAE.from_elbokit(h)
    r, grads = h.elbo_grad(x32, eps=eps32, kl="analytic")
    with torch.no_grad():
        elbo = ref.elbo_terms(x32, eps32, "analytic")[0].numpy()
    assert rel_err(r.elbo, elbo) < 1e-5
    for name, exp in torch_grads(ref, x32, eps32, "analytic").items():
        assert rel_err(grads[name], exp) < 1e-4, name


@pytest.fixture(scope="module")
def digits():
    train, test = ek.datasets.digits()
    return train[:384], test[:64]


@pytest.mark.parametrize("structure,opts", [
    ("markov", dict(epochs=2, batch_size=64, lr=2e-3, n_samples=1, kl="analytic")),
    ("topdown", dict(epochs=1, batch_size=64, lr=2e-3, n_samples=2, kl="mc", beta=0.7, warmup_steps=4,
                     free_bits=0.2)),
])
def test_fit_matches_torch_replica(digits, structure, opts):
    """fit (the shared C++ loop: shuffling, per-step level-blocked noise, warm-up, free bits per
    level, Adam) lands on the torch replica's weights to 1e-6 relative per tensor."""
    x_train, x_test = digits
    h = ek.HVAE(64, z_dims=(6, 3, 2), hidden=(32,), structure=structure, dtype="float64", seed=0)
    ref = TorchHVAE.from_elbokit(h)
    hist = h.fit(x_train, validation=x_test, seed=0, progress=False, **opts)
    train_like_elbokit(ref, x_train, seed=0, **opts)
    got, expected = h.parameters(), ref.numpy_parameters()
    for name in expected:
        assert rel_err(got[name], expected[name]) < 1e-6, name
    init = ek.HVAE(64, z_dims=(6, 3, 2), hidden=(32,), structure=structure, dtype="float64", seed=0).parameters()
    assert rel_err(got["decoder.2.mu.weight"], init["decoder.2.mu.weight"]) > 1e-3
    assert hist["kl_terms"].shape == (opts["epochs"], 3) and hist["active_units"].shape == (opts["epochs"], 3)
    eps = engine_noise((6, 3, 2), (1, len(x_test)), 5, 0)
    with torch.no_grad():
        val_ref = ref.elbo_terms(x_test, eps, "analytic")[0].mean().item()
    assert abs(h.elbo(x_test, eps=eps).elbo.mean() - val_ref) < 1e-6
