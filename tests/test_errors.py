"""Bad input gets a ValueError naming the argument, what was expected and what came."""
import numpy as np
import pytest

import elbokit as ek


@pytest.fixture(scope="module")
def vae():
    return ek.VAE(6, 2, hidden=(5,), dtype="float64", seed=0)


X = np.full((4, 6), 0.5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(x_dim=0, z_dim=2), "x_dim must be an integer >= 1, got 0"),
    (dict(x_dim=6, z_dim=-1), "z_dim must be an integer >= 1, got -1"),
    (dict(x_dim=6.5, z_dim=2), "x_dim must be an integer"),
    (dict(x_dim=6, z_dim=2, hidden=(4, 0)), r"hidden\[1\] must be an integer >= 1, got 0"),
    (dict(x_dim=6, z_dim=2, hidden="abc"), r"hidden\[0\] must be an integer"),
    (dict(x_dim=6, z_dim=2, likelihood="poisson"), "likelihood must be one of 'bernoulli', 'gaussian', got 'poisson'"),
    (dict(x_dim=6, z_dim=2, activation="swish"), "activation must be one of .*got 'swish'"),
    (dict(x_dim=6, z_dim=2, dtype="float16"), "dtype must be one of 'float32', 'float64', got 'float16'"),
    (dict(x_dim=6, z_dim=2, seed=-1), "seed must be an integer >= 0, got -1"),
    (dict(x_dim=6, z_dim=2, likelihood="gaussian", decoder_var=-1.0), "decoder_var must be positive"),
    (dict(x_dim=6, z_dim=2, likelihood="gaussian", decoder_var="fixed"), "decoder_var must be one of 'learned'"),
])
def test_constructor_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ek.VAE(**kwargs)


@pytest.mark.parametrize("x,match", [
    (np.full((4, 5), 0.5), r"x must have shape \(n, 6\), got \(4, 5\)"),
    (np.full(6, 0.5), r"x must be a 2-D array of shape \(n, 6\), got shape \(6,\)"),
    (np.full((2, 4, 6), 0.5), "x must be a 2-D array"),
    (np.zeros((0, 6)), r"x must not be empty, got shape \(0, 6\)"),
    (np.where(np.eye(4, 6) > 0, np.nan, 0.5), "x must contain only finite values, got nan at index"),
    (np.where(np.eye(4, 6) > 0, np.inf, 0.5), "x must contain only finite values, got inf"),
    (np.full((4, 6), 1.5), r"x must lie in \[0, 1\] for a Bernoulli likelihood"),
    ([["a"] * 6], "x must be a numeric array"),
])
def test_bad_data_rejected_everywhere(vae, x, match):
    for call in (lambda: vae.elbo(x), lambda: vae.elbo_grad(x), lambda: vae.log_likelihood(x, k=3),
                 lambda: vae.encode(x), lambda: vae.reconstruct(x), lambda: vae.fit(x, epochs=1, progress=False)):
        with pytest.raises(ValueError, match=match):
            call()


@pytest.mark.parametrize("kwargs,match", [
    (dict(kl="exact"), "kl must be one of 'analytic', 'mc', got 'exact'"),
    (dict(n_samples=0), "n_samples must be an integer >= 1, got 0"),
    (dict(seed=-3), "seed must be an integer >= 0, got -3"),
    (dict(eps=np.zeros((2, 3, 2))), r"eps must have shape \(n, 4, 2\), got \(2, 3, 2\)"),
    (dict(eps=np.zeros((4, 2))), "eps must be a 3-D array"),
    (dict(eps=np.full((1, 4, 2), np.nan)), "eps must contain only finite values"),
    (dict(eps=np.zeros((2, 4, 2)), n_samples=3), "n_samples must equal eps.shape"),
])
def test_elbo_options_rejected(vae, kwargs, match):
    with pytest.raises(ValueError, match=match):
        vae.elbo(X, **kwargs)


@pytest.mark.parametrize("kwargs,match", [
    (dict(epochs=0), "epochs must be an integer >= 1, got 0"),
    (dict(batch_size=-5), "batch_size must be an integer >= 1, got -5"),
    (dict(lr=0.0), "lr must be positive, got 0.0"),
    (dict(lr=float("nan")), "lr must be finite"),
    (dict(optimizer="rmsprop"), "optimizer must be one of 'adam', 'sgd', got 'rmsprop'"),
    (dict(beta=-1.0), "beta must be >= 0.0, got -1.0"),
    (dict(warmup_steps=-2), "warmup_steps must be an integer >= 0, got -2"),
    (dict(free_bits=-0.1), "free_bits must be >= 0.0"),
    (dict(n_samples=0), "n_samples must be an integer >= 1"),
    (dict(kl="sampled"), "kl must be one of 'analytic', 'mc'"),
    (dict(clip_norm=0.0), "clip_norm must be positive"),
    (dict(momentum=1.0), "momentum must be <= "),
    (dict(validation=np.zeros((3, 5))), r"validation must have shape \(n, 6\)"),
])
def test_fit_options_rejected(vae, kwargs, match):
    before = vae.parameters()
    with pytest.raises(ValueError, match=match):
        vae.fit(X, progress=False, **kwargs)
    after = vae.parameters()
    assert all(np.array_equal(before[n], after[n]) for n in before)  # nothing lost


def test_other_calls_rejected(vae):
    with pytest.raises(ValueError, match="k must be an integer >= 1, got 0"):
        vae.log_likelihood(X, k=0)
    with pytest.raises(ValueError, match="n must be an integer >= 1, got 0"):
        vae.sample(0)
    with pytest.raises(ValueError, match=r"z must have shape \(n, 2\), got \(3, 3\)"):
        vae.decode(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="shape\\[0\\] must be an integer >= 0"):
        ek.random.normal((-1, 2))
    with pytest.raises(ValueError, match="n must be a positive integer"):
        ek.set_num_threads(0)


def test_set_parameters_checks_names_shapes_and_values(vae):
    p = vae.parameters()
    q = dict(p)
    del q["encoder.mu.bias"]
    with pytest.raises(ValueError, match=r"missing \['encoder.mu.bias'\]"):
        vae.set_parameters(q)
    with pytest.raises(ValueError, match=r"unexpected \['extra'\]"):
        vae.set_parameters({**p, "extra": np.zeros(1)})
    with pytest.raises(ValueError, match=r"params\['encoder.0.weight'\] must have shape \(5, 6\), got \(6, 5\)"):
        vae.set_parameters({**p, "encoder.0.weight": np.zeros((6, 5))})
    bad = p["decoder.out.bias"].copy()
    bad[2] = np.inf
    with pytest.raises(ValueError, match=r"params\['decoder.out.bias'\] must contain only finite values"):
        vae.set_parameters({**p, "decoder.out.bias": bad})
    after = vae.parameters()
    assert all(np.array_equal(p[n], after[n]) for n in p)


def test_float64_data_to_float32_model_is_converted_not_reshaped():
    v32 = ek.VAE(6, 2, hidden=(5,), dtype="float32", seed=0)
    v64 = ek.VAE(6, 2, hidden=(5,), dtype="float64", seed=0)
    x = np.random.default_rng(0).uniform(size=(4, 6))
    r32, r64 = v32.elbo(x, seed=1), v64.elbo(x, seed=1)
    assert r32.elbo.shape == (4,)
    assert np.allclose(r32.elbo, r64.elbo, rtol=1e-5)
    assert v32.parameters()["encoder.0.weight"].dtype == np.float32
    # lists and integer arrays are accepted as data too
    assert np.allclose(v64.elbo(x.tolist(), seed=1).elbo, r64.elbo)


def test_overflowing_parameters_raise_instead_of_nan():
    vae = ek.VAE(3, 2, hidden=(), dtype="float32", seed=0)
    p = vae.parameters()
    p["encoder.logvar.bias"] = np.array([200.0, 0.0], dtype=np.float32)  # exp(200) = inf in float32
    vae.set_parameters(p)
    with pytest.raises(FloatingPointError, match="elbo produced NaN"):
        vae.elbo(np.full((2, 3), 0.5), seed=0)
