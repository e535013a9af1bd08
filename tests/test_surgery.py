"""ELBO surgery (MATH.md §4): the identity on the estimates, the marginal KL against numerical
integration, the O(n²) kernel against a direct computation, the duck-typed model interface."""
import math

import numpy as np
import pytest
from scipy import integrate, special, stats

import elbokit as ek
from elbokit.surgery import log_aggregate_posterior


def test_kernel_matches_direct_logsumexp_and_is_thread_independent(rng):
    mu, lv, z = rng.normal(size=(300, 4)), 0.5 * rng.normal(size=(300, 4)), rng.normal(size=(500, 4))
    direct = special.logsumexp(stats.norm.logpdf(z[:, None, :], mu[None], np.exp(0.5 * lv)[None]).sum(-1), axis=1)
    out = []
    for nt in (1, 2):
        ek.set_num_threads(nt)
        out.append(log_aggregate_posterior(z, mu, lv))
    ek.set_num_threads(2)
    assert np.array_equal(out[0], out[1])
    assert np.allclose(out[0], direct - math.log(300), atol=1e-11)


class OneD:
    """A fixed one-dimensional 'encoder' given by encode_top, as a hierarchical VAE's top level."""

    def __init__(self, mu, lv):
        self.mu, self.lv = np.asarray(mu, float)[:, None], np.asarray(lv, float)[:, None]

    def encode_top(self, x):
        return self.mu[: len(x)], self.lv[: len(x)]


def test_marginal_kl_and_mutual_information_against_numerical_integration():
    mu, lv = np.array([-1.5, 0.2, 1.0]), np.array([-1.0, -0.5, -2.0])
    r = ek.surgery(OneD(mu, lv), np.zeros((3, 1)), seed=0, n_samples=40000)
    s = np.exp(0.5 * lv)
    qagg = lambda z: stats.norm.pdf(z, mu, s).mean()
    kl_marg = integrate.quad(lambda z: qagg(z) * (math.log(qagg(z)) - stats.norm.logpdf(z)), -12, 12, limit=200)[0]
    assert r.average_kl == pytest.approx(ek.kl.gaussian(mu[:, None], lv[:, None]).mean(), abs=1e-12)
    assert abs(r.marginal_kl - kl_marg) < 4 * r.marginal_kl_stderr
    assert abs(r.mutual_information - (r.average_kl - kl_marg)) < 4 * r.mutual_information_stderr
    assert abs(r.residual) < 4 * r.residual_stderr
    assert 0 < r.mutual_information < math.log(3)


def test_identity_holds_on_a_trained_vae_and_mi_is_bounded():
    train, test = ek.datasets.digits()
    vae = ek.VAE(64, 4, hidden=(64,), seed=0)
    vae.fit(train[:800], epochs=10, batch_size=64, lr=2e-3, progress=False)
    r = ek.surgery(vae, test, seed=1, n_samples=8)
    assert abs(r.residual) < 4 * r.residual_stderr + 1e-3
    assert r.average_kl == pytest.approx(r.marginal_kl + r.mutual_information, abs=4 * r.residual_stderr + 1e-3)
    assert 0 < r.mutual_information <= r.log_n and r.marginal_kl > -4 * r.marginal_kl_stderr
    assert r.average_kl == pytest.approx(vae.elbo(test).kl.mean(), rel=1e-5)
    # a callable giving the same posterior gives the same numbers
    r2 = ek.surgery(lambda x: vae.encode(x), test, seed=1, n_samples=8)
    assert r2.mutual_information == r.mutual_information
    # a subset of the encodings for log q_agg: close for a large subset
    r3 = ek.surgery(vae, test, seed=1, n_samples=8, n_aggregate=250)
    assert r3.n_aggregate == 250 and abs(r3.mutual_information - r.mutual_information) < 0.2


def test_identical_posteriors_carry_no_information():
    r = ek.surgery(OneD([0.7] * 50, [-1.0] * 50), np.zeros((50, 1)), seed=0, n_samples=10)
    assert abs(r.mutual_information) < 1e-12
    assert r.marginal_kl == pytest.approx(r.average_kl, abs=5 * r.marginal_kl_stderr)


@pytest.mark.parametrize("call,match", [
    (lambda: ek.surgery(object(), np.zeros((3, 2))), "model must have encode_top"),
    (lambda: ek.surgery(lambda x: x, np.zeros((3, 2))), r"model's model\(x\) must return \(mu, logvar\)"),
    (lambda: ek.surgery(lambda x: (np.zeros((3, 2)), np.zeros((3, 1))), np.zeros((3, 2))),
     r"logvar must have shape \(3, 2\), got \(3, 1\)"),
    (lambda: ek.surgery(lambda x: (np.zeros((1, 2)), np.zeros((1, 2))), np.zeros((1, 2))),
     "x must hold at least 2 points for the surgery, got 1"),
    (lambda: ek.surgery(OneD([0.0, 1.0], [0.0, 0.0]), np.zeros((2, 1)), n_samples=0),
     "n_samples must be an integer >= 1, got 0"),
    (lambda: ek.surgery(OneD([0.0, 1.0], [0.0, 0.0]), np.zeros((2, 1)), n_aggregate=3),
     "n_aggregate must be <= the number of points 2, got 3"),
    (lambda: ek.surgery(lambda x: (np.array([[np.nan]] * 2), np.zeros((2, 1))), None),
     "mu must contain only finite values"),
    (lambda: log_aggregate_posterior(np.zeros((2, 3)), np.zeros((4, 2)), np.zeros((4, 2))),
     r"z must have shape \(n, 2\), got \(2, 3\)"),
])
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_command_line_surgery(tmp_path, capsys):
    import json

    from elbokit.cli import main
    train, _ = ek.datasets.digits()
    vae = ek.VAE(64, 3, hidden=(32,), seed=0)
    vae.fit(train[:300], epochs=2, progress=False)
    path = vae.save(tmp_path / "m.elbokit")
    assert main(["surgery", str(path), "--data", "digits", "--n-samples", "2", "--json", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert "I_q[x; z]" in out
    d = json.loads((tmp_path / "s.json").read_text())
    assert d["average_kl"] == pytest.approx(d["marginal_kl"] + d["mutual_information"] + d["residual"], abs=1e-9)
    assert main(["surgery", str(tmp_path / "missing.elbokit")]) == 2


@pytest.mark.parametrize("structure", ["markov", "topdown"])
def test_surgery_on_the_hvae_top_level(structure):
    """ek.surgery takes an HVAE through encode_top: the identity average KL = marginal KL + I_q holds
    on the top level's Gaussians, and those are encode(x)[-1]."""
    train, test = ek.datasets.digits()
    h = ek.HVAE(64, z_dims=(6, 3), hidden=(32,), structure=structure, dtype="float64", seed=0)
    h.fit(train, epochs=3, batch_size=64, progress=False)
    mu, lv = h.encode_top(test)
    top = h.encode(test)[-1]
    assert np.array_equal(mu, top[0]) and np.array_equal(lv, top[1])
    r = ek.surgery(h, test, seed=0, n_samples=4)
    kl_top = (-0.5 * (1 + lv - mu ** 2 - np.exp(lv))).sum(axis=1).mean()
    assert r.average_kl == pytest.approx(kl_top, rel=1e-10)
    assert abs(r.residual) < 4 * r.residual_stderr + 1e-9
    assert 0 <= r.mutual_information <= r.log_n + 4 * r.mutual_information_stderr
