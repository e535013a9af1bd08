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


# Property-based tests (tests/test_fuzz_*.py): a fixed, deterministic profile by default, so that
# every run tries the same examples and a whole fuzz file stays within about a minute on 2 cores.
# ELBOKIT_HYPOTHESIS_PROFILE=asan selects fewer examples for the sanitizer run in .ci/run;
# "explore" draws fresh random examples, more of them (not for CI).
try:
    import os

    from hypothesis import HealthCheck, settings

    _common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                         HealthCheck.filter_too_much], print_blob=True)
    settings.register_profile("ci", derandomize=True, max_examples=60, database=None, **_common)
    settings.register_profile("asan", derandomize=True, max_examples=15, database=None, **_common)
    settings.register_profile("explore", max_examples=1000, **_common)
    settings.load_profile(os.environ.get("ELBOKIT_HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # hypothesis is in the "test" extra; without it the fuzz files are skipped
    pass


def pytest_addoption(parser):
    parser.addoption("--expect-sanitized", default=None, metavar="DIR",
                     help="fail unless elbokit is imported from DIR (the sanitizer build in .ci/run)")


def pytest_configure(config):
    where = config.getoption("--expect-sanitized", default=None)
    if where:
        import os

        if not os.path.abspath(ek.__file__).startswith(os.path.abspath(where)):
            raise pytest.UsageError(f"elbokit is imported from {ek.__file__}, not from the sanitizer build in {where}")
        os.environ["ELBOKIT_EXPECT_SANITIZED"] = where  # checked by the processes tests start (_mpi_job.py)
