"""Cross-check elbokit's VAE against an independent PyTorch float64 reference.

The reference (tests/torch_reference.py) loads elbokit's own parameters and noise, so the
ELBO, its terms, autograd gradients, L_K and whole training runs must agree to rounding.
"""
import os
import sys

import numpy as np
import pytest
import torch

import elbokit as ek

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_reference import TorchVAE, train_like_elbokit  # noqa: E402

TERMS = ("elbo", "reconstruction", "kl", "kl_per_dim")

# Architectures x activations x likelihoods x KL estimators x sample counts, spread out.
CASES = [
    dict(hidden=(), activation="relu", likelihood="bernoulli", decoder_var="learned",
         kl="analytic", S=1, x_dim=6, z_dim=2, n=5),
    dict(hidden=(16,), activation="tanh", likelihood="bernoulli", decoder_var="learned",
         kl="mc", S=3, x_dim=8, z_dim=3, n=7),
    dict(hidden=(32, 16), activation="softplus", likelihood="gaussian", decoder_var="learned",
         kl="analytic", S=3, x_dim=10, z_dim=4, n=9),
    dict(hidden=(16,), activation="elu", likelihood="gaussian", decoder_var=0.5,
         kl="mc", S=1, x_dim=7, z_dim=2, n=6),
    dict(hidden=(32, 16), activation="silu", likelihood="bernoulli", decoder_var="learned",
         kl="mc", S=3, x_dim=12, z_dim=4, n=8),
    dict(hidden=(16,), activation="sigmoid", likelihood="gaussian", decoder_var="learned",
         kl="mc", S=3, x_dim=9, z_dim=3, n=5, logvar_out_of_range=True),
    dict(hidden=(32, 16), activation="leaky_relu", likelihood="gaussian", decoder_var=2.0,
         kl="analytic", S=1, x_dim=11, z_dim=2, n=7),
    dict(hidden=(), activation="tanh", likelihood="gaussian", decoder_var="learned",
         kl="analytic", S=3, x_dim=6, z_dim=3, n=6, logvar_out_of_range=True),
    dict(hidden=(16,), activation="relu", likelihood="bernoulli", decoder_var="learned",
         kl="analytic", S=3, x_dim=10, z_dim=4, n=9),
    # 32 rows or more: objective_grad splits the step into two halves of rows (common.hpp: RowHalves),
    # one per thread; the odd count gives halves of 18 and 19 rows
    dict(hidden=(16,), activation="tanh", likelihood="bernoulli", decoder_var="learned",
         kl="mc", S=3, x_dim=8, z_dim=3, n=40),
    dict(hidden=(32, 16), activation="softplus", likelihood="gaussian", decoder_var="learned",
         kl="analytic", S=1, x_dim=10, z_dim=4, n=37, logvar_out_of_range=True),
]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The reference's ops are tiny: one intra-op thread is fastest (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def case_id(c):
    var = "" if c["likelihood"] == "bernoulli" else f"-var={c['decoder_var']}"
    clamp = "-clamped" if c.get("logvar_out_of_range") else ""
    return (f"h{list(c['hidden'])}-{c['activation']}-{c['likelihood']}{var}-{c['kl']}"
            f"-S{c['S']}{clamp}")


def config(case):
    return {k: case[k] for k in ("hidden", "activation", "likelihood", "decoder_var")}


def build(case, dtype="float64", seed=0):
    """An elbokit VAE with perturbed parameters, its data, noise and the matching TorchVAE.

    Parameters get N(0, 0.1^2) noise on top of elbokit's init so that biases and the decoder
    log-variance are not at special values; an out-of-range case pushes two decoder
    log-variances past the clamp at +-10.
    """
    rng = np.random.default_rng(seed + 17)
    vae = ek.VAE(x_dim=case["x_dim"], z_dim=case["z_dim"], dtype=dtype, seed=seed, **config(case))
    params = {k: v + 0.1 * rng.standard_normal(v.shape).astype(v.dtype)
              for k, v in vae.parameters().items()}
    if "decoder.logvar" in params:
        lv = rng.uniform(-1.5, 1.5, case["x_dim"])
        if case.get("logvar_out_of_range"):
            lv[0], lv[1] = 12.0, -10.5
        params["decoder.logvar"] = lv.astype(params["decoder.logvar"].dtype)
    vae.set_parameters(params)
    n, x_dim = case["n"], case["x_dim"]
    if case["likelihood"] == "bernoulli":
        x = rng.uniform(0.0, 1.0, (n, x_dim))
    else:
        x = rng.standard_normal((n, x_dim))
    eps = rng.standard_normal((case["S"], n, case["z_dim"]))
    ref = TorchVAE(case["x_dim"], case["z_dim"], **config(case)).load_elbokit_parameters(
        vae.parameters())
    return vae, ref, params, x, eps


def assert_close(actual, expected, rtol, atol, what):
    """Elementwise |a - b| <= atol + rtol |b| (NaN fails); the message gives the worst ratio."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    diff = np.abs(actual - expected)
    ratio = np.max(diff / (atol + rtol * np.abs(expected)), initial=0.0)
    assert ratio <= 1.0, (f"{what}: max |a-b|/(atol+rtol|b|) = {ratio:.3g}, "
                          f"max |a-b| = {np.max(diff):.3g}")


def rel_err(actual, expected):
    """max |a - b| / max |b| over an array (NaN-propagating)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    return np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-300)


def torch_grads(ref, x, eps, kl):
    """Autograd gradient of mean_b elbo[b] w.r.t. every reference parameter, as arrays."""
    ref.zero_grad()
    ref.elbo_terms(x, eps, kl)[0].mean().backward()
    return {k: p.grad.numpy().copy() for k, p in ref.named_parameters()}


# ------------------------------------------------------------------ terms and gradients
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_parameter_names_shapes_and_round_trip(case):
    """elbokit's parameter dict has exactly PyTorch's state_dict names and shapes, and
    set_parameters/parameters round-trips the values bit for bit."""
    vae, ref, params, _, _ = build(case)
    got = vae.parameters()
    expected = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in got.items()} == expected
    for k in params:
        np.testing.assert_array_equal(got[k], params[k], err_msg=k)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_elbo_terms_match_torch(case):
    """elbo, reconstruction, kl and kl_per_dim for given eps equal the reference's to 1e-10."""
    vae, ref, _, x, eps = build(case)
    r = vae.elbo(x, eps=eps, kl=case["kl"])
    with torch.no_grad():
        expected = ref.elbo_terms(x, eps, case["kl"])
    for name, exp in zip(TERMS, expected):
        assert_close(getattr(r, name), exp.numpy(), 1e-10, 1e-10, name)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_gradients_match_torch_autograd(case):
    """elbo_grad's gradients equal PyTorch autograd of mean_b elbo[b] for every parameter
    (rtol 1e-8, atol 1e-10), and its returned terms equal the reference's."""
    vae, ref, _, x, eps = build(case)
    r, grads = vae.elbo_grad(x, eps=eps, kl=case["kl"])
    expected = torch_grads(ref, x, eps, case["kl"])
    assert set(grads) == set(expected)
    for name in expected:
        assert_close(grads[name], expected[name], 1e-8, 1e-10, f"grad {name}")
    with torch.no_grad():
        terms = ref.elbo_terms(x, eps, case["kl"])
    for name, exp in zip(TERMS, terms):
        assert_close(getattr(r, name), exp.numpy(), 1e-10, 1e-10, name)


@pytest.mark.parametrize("case", [CASES[2], CASES[4], CASES[6], CASES[9], CASES[10]], ids=case_id)
def test_objective_gradient_with_beta_and_free_bits_matches_torch(case):
    """fit's objective (beta = 0.7, free bits floor between the per-dimension batch-mean KLs,
    so both sides of the max are taken) and its gradient equal the reference's."""
    vae, ref, _, x, eps = build(case)
    with torch.no_grad():
        kl_dim = np.sort(ref.elbo_terms(x, eps, case["kl"])[3].mean(0).numpy())
    free_bits = float(kl_dim[-2] + kl_dim[-1]) / 2  # only the largest KL stays above
    assert free_bits > 0
    objective, grads = vae.objective_grad(x, eps=eps, kl=case["kl"], beta=0.7, free_bits=free_bits)
    ref.zero_grad()
    expected = ref.objective(x, eps, case["kl"], 0.7, free_bits)
    expected.backward()
    assert_close(objective, expected.item(), 1e-10, 1e-10, "objective")
    for name, p in ref.named_parameters():
        assert_close(grads[name], p.grad.numpy(), 1e-8, 1e-10, f"grad {name}")


@pytest.mark.parametrize("case", [c for c in CASES if c.get("logvar_out_of_range")], ids=case_id)
def test_clamped_decoder_logvar_has_zero_gradient(case):
    """Decoder log-variances outside [-10, 10] are clamped: their gradient is exactly zero
    (as in torch.clamp) while the in-range entries get a nonzero gradient."""
    vae, ref, _, x, eps = build(case)
    _, grads = vae.elbo_grad(x, eps=eps, kl=case["kl"])
    g = grads["decoder.logvar"]
    assert g[0] == 0.0 and g[1] == 0.0
    assert np.all(g[2:] != 0.0)
    np.testing.assert_array_equal(torch_grads(ref, x, eps, case["kl"])["decoder.logvar"][:2], 0.0)


@pytest.mark.parametrize("case", [CASES[2], CASES[4]], ids=case_id)
def test_float32_model_matches_float64_reference(case):
    """A float32 model agrees with the float64 reference on its own (float32) parameters,
    data and noise to ~1e-4 relative, for the terms and the gradients."""
    vae, _, _, x, eps = build(case, dtype="float32")
    x32, eps32 = x.astype(np.float32), eps.astype(np.float32)
    ref = TorchVAE(case["x_dim"], case["z_dim"], **config(case)).load_elbokit_parameters(
        vae.parameters())
    r, grads = vae.elbo_grad(x32, eps=eps32, kl=case["kl"])
    with torch.no_grad():
        terms = ref.elbo_terms(x32, eps32, case["kl"])
    for name, exp in zip(TERMS, terms):
        assert rel_err(getattr(r, name), exp.numpy()) < 1e-4, name
    for name, exp in torch_grads(ref, x32, eps32, case["kl"]).items():
        assert rel_err(grads[name], exp) < 1e-4, f"grad {name}"


@pytest.mark.parametrize("case", [CASES[1], CASES[2], CASES[3]], ids=case_id)
def test_log_likelihood_matches_torch_with_engine_noise(case):
    """L_K equals the reference's for the engine's noise layout:
    eps[k, b] = ek.random.normal((n, K, z_dim), seed, stream=2)[b, k]."""
    vae, ref, _, x, _ = build(case)
    n, K, seed = case["n"], 5, 3
    eps_k = ek.random.normal((n, K, case["z_dim"]), seed, stream=2).transpose(1, 0, 2)
    got = vae.log_likelihood(x, k=K, seed=seed)
    with torch.no_grad():
        expected = ref.log_likelihood(x, eps_k).numpy()
    assert_close(got, expected, 1e-9, 1e-10, "log_likelihood")
    # Jensen: L_K >= the MC ELBO on the same K samples, strictly unless all weights are equal.
    assert np.all(got > vae.elbo(x, eps=eps_k, kl="mc").elbo)


# ------------------------------------------------------------------ training
@pytest.fixture(scope="module")
def digits():
    return ek.datasets.digits()


def fit_both(x_train, x_test, **options):
    """Train elbokit with fit and the torch replica from the same initial weights.

    Returns the elbokit VAE, the trained TorchVAE, fit's history and the replica's
    per-epoch lists of (step loss, batch size)."""
    vae = ek.VAE(x_dim=64, z_dim=4, hidden=(64,), likelihood="bernoulli", activation="relu",
                 dtype="float64", seed=0)
    ref = TorchVAE.from_elbokit(vae)
    hist = vae.fit(x_train, validation=x_test, seed=0, progress=False, **options)
    steps = train_like_elbokit(ref, x_train, seed=0, **options)
    return vae, ref, hist, steps


def assert_training_agrees(vae, ref, hist, steps, x_test, n_samples, kl):
    """Final parameters agree to 1e-6 relative per array; the held-out ELBO on the same eps,
    and fit's own val_elbo (noise of stream STREAMS["validation"]), to 1e-4 nats; every step
    loss to 1e-8 relative and train_loss is their batch-size-weighted epoch mean."""
    got, expected = vae.parameters(), ref.numpy_parameters()
    assert set(got) == set(expected)
    for name in expected:
        assert rel_err(got[name], expected[name]) < 1e-6, name

    eps = ek.random.normal((n_samples, len(x_test), 4), 123, stream=0)
    with torch.no_grad():
        val_ref = ref.elbo_terms(x_test, eps, kl)[0].mean().item()
    assert abs(vae.elbo(x_test, eps=eps, kl=kl).elbo.mean() - val_ref) < 1e-4

    eps_val = ek.random.normal((n_samples, len(x_test), 4), 0, stream=ek.random.STREAMS["validation"])
    with torch.no_grad():
        fit_val_ref = ref.elbo_terms(x_test, eps_val, kl)[0].mean().item()
    assert len(hist["val_elbo"]) == len(steps)
    assert abs(hist["val_elbo"][-1] - fit_val_ref) < 1e-4

    losses = np.array([loss for epoch in steps for loss, _ in epoch])
    assert_close(hist["step_loss"], losses, 1e-8, 1e-10, "step_loss")
    epoch_means = [sum(loss * b for loss, b in epoch) / sum(b for _, b in epoch) for epoch in steps]
    assert_close(hist["train_loss"], epoch_means, 1e-8, 1e-10, "train_loss")


def test_fit_adam_matches_torch_replica(digits):
    """Two epochs of Adam (analytic KL, 1 sample) land on the torch replica's weights,
    which also proves the shuffling and per-step noise streams are as documented."""
    x_train, x_test = digits
    opts = dict(epochs=2, batch_size=64, lr=1e-3, optimizer="adam", n_samples=1, kl="analytic")
    vae, ref, hist, steps = fit_both(x_train, x_test, **opts)
    assert_training_agrees(vae, ref, hist, steps, x_test, 1, "analytic")
    initial = ek.VAE(x_dim=64, z_dim=4, hidden=(64,), likelihood="bernoulli", activation="relu",
                     dtype="float64", seed=0).parameters()
    assert rel_err(vae.parameters()["encoder.0.weight"], initial["encoder.0.weight"]) > 1e-3


def test_fit_sgd_with_every_option_matches_torch_replica(digits):
    """SGD with momentum, beta annealing, free bits, gradient clipping, MC KL and two samples
    for one epoch matches the torch replica (clip_grad_norm_, clamp-based free bits)."""
    x_train, x_test = digits
    opts = dict(epochs=1, batch_size=64, lr=1e-3, optimizer="sgd", momentum=0.9, beta=0.5,
                warmup_steps=10, free_bits=0.1, clip_norm=5.0, n_samples=2, kl="mc")
    vae, ref, hist, steps = fit_both(x_train, x_test, **opts)
    assert_training_agrees(vae, ref, hist, steps, x_test, 2, "mc")
    # The options are live in this run: some steps are clipped, some KL dimensions sit below
    # the free-bits floor, and beta ramps from 0 to 0.5.
    assert hist["grad_norm"][0] > opts["clip_norm"]
    assert np.min(hist["kl_terms"][0]) < opts["free_bits"]
    assert hist["beta"][-1] == pytest.approx(0.5)
