"""KL tools (MATH.md §1) against SciPy and numerical integration."""
import math

import numpy as np
import pytest
from scipy import integrate, special, stats

import elbokit as ek


def test_discrete_kl_entropy_cross_entropy_against_scipy(rng):
    p, q = rng.dirichlet(np.ones(6), size=4), rng.dirichlet(np.ones(6), size=4)
    assert np.allclose(ek.kl.discrete(p, q), [stats.entropy(a, b) for a, b in zip(p, q)], atol=1e-14)
    assert np.allclose(ek.kl.entropy(p), [stats.entropy(a) for a in p], atol=1e-14)
    assert np.allclose(ek.kl.cross_entropy(p, q), ek.kl.entropy(p) + ek.kl.discrete(p, q), atol=1e-14)
    assert np.allclose(ek.kl.discrete(p, q), special.rel_entr(p, q).sum(1), atol=1e-14)
    assert (ek.kl.discrete(p, q) > 0).all() and ek.kl.discrete(p[0], p[0]) == 0.0
    assert ek.kl.discrete(p[0], q[0]) != pytest.approx(ek.kl.discrete(q[0], p[0]))  # not symmetric


def test_discrete_kl_zero_conventions():
    assert ek.kl.discrete([0.5, 0.5, 0.0], [0.25, 0.25, 0.5]) == pytest.approx(math.log(2))  # 0 log 0 = 0
    assert ek.kl.discrete([0.5, 0.5], [1.0, 0.0]) == math.inf                                 # Q = 0 < P
    assert ek.kl.cross_entropy([0.5, 0.5], [1.0, 0.0]) == math.inf
    assert ek.kl.entropy([1.0, 0.0]) == 0.0


def test_gaussian_kl_against_numerical_integration_and_engine(rng):
    m1, l1, m2, l2 = 0.3, -0.4, -1.1, 0.7
    p = lambda z: stats.norm.pdf(z, m1, math.exp(l1 / 2))
    num = integrate.quad(lambda z: p(z) * (stats.norm.logpdf(z, m1, math.exp(l1 / 2))
                                          - stats.norm.logpdf(z, m2, math.exp(l2 / 2))), -30, 30)[0]
    assert ek.kl.gaussian(m1, l1, m2, l2) == pytest.approx(num, abs=1e-10)
    mu, lv = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    vae = ek.VAE(4, 3, hidden=(), dtype="float64")
    assert np.allclose(ek.kl.gaussian(mu, lv), 0.5 * (mu ** 2 + np.exp(lv) - 1 - lv).sum(1))
    # the engine's analytic KL of a VAE's posterior equals ek.kl.gaussian of its encodings
    x = rng.uniform(size=(5, 4))
    emu, elv = vae.encode(x)
    assert np.allclose(vae.elbo(x).kl, ek.kl.gaussian(emu, elv), atol=1e-12)


MIX = dict(weights=[0.3, 0.7], means=[-3.0, 2.5], stds=[0.8, 1.2])


def _quad_kl(mean, std, direction):
    w, m, s = (np.array(MIX[k]) for k in ("weights", "means", "stds"))
    p = lambda z: (w * stats.norm.pdf(z, m, s)).sum()
    q = lambda z: stats.norm.pdf(z, mean, std)
    logp = lambda z: special.logsumexp(np.log(w) + stats.norm.logpdf(z, m, s))
    logq = lambda z: stats.norm.logpdf(z, mean, std)
    if direction == "forward":
        f = lambda z: math.exp(logp(z)) * (logp(z) - logq(z))
    else:
        f = lambda z: math.exp(logq(z)) * (logq(z) - logp(z))
    return integrate.quad(f, -25, 25, limit=400, epsabs=1e-13, points=[-3.0, 0.0, 2.5])[0]


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_mixture_kl_against_numerical_integration(direction):
    for mean, std in ((0.0, 2.0), (2.0, 1.0), (-3.0, 0.7)):
        assert ek.kl.mixture_kl(mean, std, **MIX, direction=direction) == pytest.approx(
            _quad_kl(mean, std, direction), abs=1e-8)


def test_forward_fit_is_moment_matching_and_covers_the_modes():
    fit = ek.kl.fit_gaussian(**MIX, direction="forward")
    w, m, s = (np.array(MIX[k]) for k in ("weights", "means", "stds"))
    assert fit.mean == pytest.approx((w * m).sum(), abs=1e-12)
    assert fit.std ** 2 == pytest.approx((w * (s ** 2 + m ** 2)).sum() - fit.mean ** 2, abs=1e-12)
    for dm, ds in ((0.1, 0), (-0.1, 0), (0, 0.1), (0, -0.1)):  # a minimum of KL(p‖q) by quadrature
        assert _quad_kl(fit.mean + dm, fit.std + ds, "forward") > fit.kl
    assert fit.std > 2.5  # spans both modes


def test_reverse_fit_seeks_a_mode():
    fit = ek.kl.fit_gaussian(**MIX, direction="reverse")
    assert fit.mean == pytest.approx(2.5, abs=0.1) and fit.std == pytest.approx(1.2, abs=0.1)
    assert fit.kl == pytest.approx(-math.log(0.7), abs=0.01)  # ≈ −log π of the heavier mode
    for dm, ds in ((0.05, 0), (-0.05, 0), (0, 0.05), (0, -0.05)):
        assert _quad_kl(fit.mean + dm, fit.std + ds, "reverse") > fit.kl
    other = ek.kl.fit_gaussian(**MIX, direction="reverse", init=(-3.0, 1.0))  # the other local optimum
    assert other.mean == pytest.approx(-3.0, abs=0.1) and other.kl > fit.kl


@pytest.mark.parametrize("call,match", [
    (lambda: ek.kl.discrete([0.5, 0.6], [0.5, 0.5]), "p must sum to 1 along its last axis"),
    (lambda: ek.kl.discrete([1.5, -0.5], [0.5, 0.5]), "p must be non-negative, got minimum -0.5"),
    (lambda: ek.kl.discrete([0.5, 0.5], [0.2, 0.3, 0.5]), "p and q must have the same number of outcomes, got 2 and 3"),
    (lambda: ek.kl.entropy([]), "p must not be empty"),
    (lambda: ek.kl.entropy([np.nan, 1.0]), "p must contain only finite values"),
    (lambda: ek.kl.gaussian(np.zeros(3), np.zeros(2)), "must broadcast together"),
    (lambda: ek.kl.fit_gaussian([1.0], [0.0], [0.0]), "stds must be positive"),
    (lambda: ek.kl.fit_gaussian([1.0], [0.0], [1.0], direction="sideways"),
     "direction must be one of 'forward', 'reverse', got 'sideways'"),
    (lambda: ek.kl.fit_gaussian([0.5, 0.5], [0.0], [1.0, 1.0]), r"means must have shape \(2\), got \(1,\)"),
])
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call()
