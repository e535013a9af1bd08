"""Shared fixtures. Tests run on the installed package (CI: pip install ".[test]")."""
import numpy as np
import pytest

import elbokit as ek


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def make_vae(likelihood="bernoulli", hidden=(16,), activation="tanh", x_dim=7, z_dim=3, dtype="float64",
             seed=1, decoder_var="learned", rng=None, logvar_scale=0.5):
    """A small VAE; a Gaussian one gets a random (non-zero) decoder.logvar so its gradient is exercised."""
    vae = ek.VAE(x_dim, z_dim, hidden=hidden, likelihood=likelihood, activation=activation, dtype=dtype,
                 seed=seed, decoder_var=decoder_var)
    if likelihood == "gaussian" and decoder_var == "learned":
        rng = rng or np.random.default_rng(seed)
        p = vae.parameters()
        p["decoder.logvar"] = logvar_scale * rng.normal(size=x_dim)
        vae.set_parameters(p)
    return vae


def make_data(likelihood, n, x_dim, rng):
    return rng.uniform(size=(n, x_dim)) if likelihood == "bernoulli" else rng.normal(size=(n, x_dim))
