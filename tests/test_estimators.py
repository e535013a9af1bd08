"""Estimators against closed forms and the bound's ordering (MATH.md §2, §3, §5, §10).

The one-dimensional Gaussian model of MATH.md §5 is a VAE with x_dim = z_dim = 1, no hidden layer
and a Gaussian decoder: encoder mu = a x + b, logvar = log w; decoder N(c z + d, v). Its ELBO,
log p(x) and gap KL(q || p(z|x)) are closed forms.
"""
import math

import numpy as np
import pytest

import elbokit as ek
from conftest import make_vae


def gaussian1d_vae(a, b, w, c, d, v):
    vae = ek.VAE(1, 1, hidden=(), likelihood="gaussian", dtype="float64")
    vae.set_parameters({
        "encoder.mu.weight": [[a]], "encoder.mu.bias": [b],
        "encoder.logvar.weight": [[0.0]], "encoder.logvar.bias": [math.log(w)],
        "decoder.out.weight": [[c]], "decoder.out.bias": [d], "decoder.logvar": [math.log(v)],
    })
    return vae


def closed_forms(x, a, b, w, c, d, v):
    """(elbo, log p(x), gap) per example for the 1-D Gaussian model."""
    m = a * x + b
    rec = -0.5 * (math.log(2 * math.pi) + math.log(v) + ((x - c * m - d) ** 2 + c * c * w) / v)
    kl = -0.5 * (1 + math.log(w) - m ** 2 - w)
    logp = -0.5 * (math.log(2 * math.pi) + np.log(c * c + v) + (x - d) ** 2 / (c * c + v))
    pm, pv = c * (x - d) / (c * c + v), v / (c * c + v)  # exact posterior p(z|x)
    gap = 0.5 * (np.log(pv) - math.log(w) + (w + (m - pm) ** 2) / pv - 1)
    return rec - kl, logp, gap


X = np.array([[-1.3], [0.2], [0.9], [2.5]])


def test_exact_posterior_makes_elbo_equal_log_likelihood():
    """With q = p(z|x) the ELBO equals log p(x) for every sample (zero-variance estimator)."""
    c, d, v = 1.7, 0.4, 0.3
    a, b, w = c / (c * c + v), -c * d / (c * c + v), v / (c * c + v)
    vae = gaussian1d_vae(a, b, w, c, d, v)
    _, logp, gap = closed_forms(X[:, 0], a, b, w, c, d, v)
    assert np.allclose(gap, 0, atol=1e-12)
    r = vae.elbo(X, n_samples=7, kl="mc", seed=3)
    assert np.allclose(r.elbo, logp, atol=1e-10)
    assert np.allclose(vae.log_likelihood(X, k=20, seed=1), logp, atol=1e-10)


def test_elbo_estimates_match_closed_form_and_identity():
    """log p(x) = ELBO + KL(q || p(z|x)); the estimates agree with the closed forms within 4 s.e."""
    a, b, w, c, d, v = 0.5, 0.1, 0.6, 1.2, -0.3, 0.5
    vae = gaussian1d_vae(a, b, w, c, d, v)
    elbo_cf, logp, gap = closed_forms(X[:, 0], a, b, w, c, d, v)
    assert np.allclose(logp, elbo_cf + gap, atol=1e-12)
    assert (gap > 0).all()
    for kl in ("analytic", "mc"):
        S = 20000
        eps = ek.random.normal((S, len(X), 1), seed=5)
        per_sample = np.stack([vae.elbo(X, eps=eps[s0:s0 + 1000], kl=kl).elbo for s0 in range(0, S, 1000)])
        # per_sample: 20 batch means of 1000 samples each -> mean and its standard error
        est, se = per_sample.mean(axis=0), per_sample.std(axis=0, ddof=1) / math.sqrt(per_sample.shape[0])
        assert (np.abs(est - elbo_cf) < 4 * se + 1e-12).all(), (kl, est, elbo_cf, se)
    # L_K climbs from the ELBO to log p(x)
    l1, l50, l5000 = (vae.log_likelihood(X, k=k, seed=2) for k in (1, 50, 5000))
    assert (np.abs(l5000 - logp) < 0.01).all(), (l5000, logp)
    assert (l5000 > elbo_cf).all()


def test_analytic_and_mc_kl_agree_within_standard_errors(rng):
    """Monte-Carlo KL (log q - log p at the samples) is unbiased for the analytic KL."""
    vae = make_vae("bernoulli", (16,), "tanh", x_dim=10, z_dim=4, rng=rng)
    p = vae.parameters()
    p["encoder.logvar.bias"] = np.array([-1.0, 0.5, 0.0, -2.0])
    vae.set_parameters(p)
    x0 = rng.uniform(size=(3, 10))
    x = np.repeat(x0, 3000, axis=0)  # each row an independent one-sample estimate
    ra = vae.elbo(x, kl="analytic", seed=11)
    rm = vae.elbo(x, kl="mc", seed=11)
    for i in range(3):
        rows = slice(i * 3000, (i + 1) * 3000)
        kl_a = ra.kl[rows][0]
        assert np.allclose(ra.kl[rows], kl_a)  # analytic: no noise
        m, se = ek.mean_stderr(rm.kl[rows])
        assert abs(m - kl_a) < 4 * se, (m, kl_a, se)
        assert rm.kl[rows].std() > ra.kl[rows].std()  # the analytic estimator has lower variance
        m_e, se_e = ek.mean_stderr(rm.elbo[rows] - ra.elbo[rows])
        assert abs(m_e) < 4 * se_e


def test_l1_is_the_elbo_at_the_same_samples(rng):
    """L_1 with K = 1 is log p(x, z) - log q(z|x) at one sample: the MC-KL ELBO at that noise."""
    vae = make_vae("bernoulli", (12,), "relu", x_dim=8, z_dim=3, rng=rng)
    x = rng.uniform(size=(6, 8))
    l1 = vae.log_likelihood(x, k=1, seed=9)
    eps = ek.random.normal((6, 1, 3), seed=9, stream=ek.random.STREAMS["log_likelihood"]).transpose(1, 0, 2)
    r = vae.elbo(x, eps=eps, kl="mc")
    assert np.allclose(l1, r.elbo, rtol=1e-12, atol=1e-10)


@pytest.fixture(scope="module")
def trained_digits_vae():
    train, test = ek.datasets.digits()
    vae = ek.VAE(64, 8, hidden=(64,), dtype="float64", seed=0)
    vae.fit(train, epochs=15, batch_size=64, lr=2e-3, progress=False, seed=0)
    return vae, test[:100]


def test_iwae_bounds_increase_with_k(trained_digits_vae):
    """L_1 <= L_5 <= L_50 on average, and L_K >= ELBO (MATH.md §3)."""
    vae, x = trained_digits_vae
    elbo = vae.elbo(x, n_samples=50, seed=4).elbo
    lk = {k: vae.log_likelihood(x, k=k, seed=7 + k) for k in (1, 5, 50)}
    for lo, hi in ((1, 5), (5, 50)):
        m, se = ek.mean_stderr(lk[hi] - lk[lo])
        assert m > 0 and m > 2 * se, (lo, hi, m, se)
    m, se = ek.mean_stderr(lk[50] - elbo)
    assert m > 0 and m > 2 * se
    m, se = ek.mean_stderr(lk[1] - elbo)  # L_1 is an unbiased ELBO estimate
    assert abs(m) < 4 * se


def test_log_likelihood_chunking_does_not_change_results(trained_digits_vae):
    """K = 9000 spans two decoder chunks; each example's noise is indexed by (example, sample), so
    evaluating a subset gives the same numbers as evaluating the whole set, up to float64 rounding:
    the matrix product's kernel for a row depends on how many rows the chunk has (a different
    summation order), so equality is to ~1e-15, not to the bit."""
    vae, x = trained_digits_vae
    full = vae.log_likelihood(x[:3], k=9000, seed=1)
    part = vae.log_likelihood(x[:1], k=9000, seed=1)
    np.testing.assert_allclose(full[:1], part, rtol=1e-13, atol=0)
    small = vae.log_likelihood(x[:40], k=30, seed=2)
    np.testing.assert_allclose(small[:5], vae.log_likelihood(x[:5], k=30, seed=2), rtol=1e-13, atol=0)
    # a different seed changes the numbers by far more than that rounding
    other = vae.log_likelihood(x[:5], k=30, seed=3)
    assert np.abs(other - small[:5]).max() > 1e-6
