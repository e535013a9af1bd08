"""Exactly solvable models (MATH.md §5) against independent computations: numerical integration
(scipy.integrate), scikit-learn's PCA and GaussianMixture, and the engine's Monte-Carlo ELBO."""
import math

import numpy as np
import pytest
from scipy import integrate, stats
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture as SkGM

import elbokit as ek
from elbokit.exact import Gaussian1D, GaussianMixture, LinearGaussian


# ---- the one-dimensional Gaussian --------------------------------------------------------------
MODELS = [Gaussian1D(a=0.3, b=0.1, c=1.2, d=0.5, v=0.4, w=0.2), Gaussian1D(a=-1.0, b=2.0, c=0.2, d=-1.0, v=2.0, w=3.0),
          Gaussian1D.with_exact_posterior(c=0.7, d=0.3, v=0.5)]


@pytest.mark.parametrize("g", MODELS, ids=["generic", "far", "exact-posterior"])
def test_gaussian1d_against_numerical_integration(g):
    for x in (-1.3, 0.2, 2.5):
        joint = lambda z: stats.norm.pdf(x, g.c * z + g.d, math.sqrt(g.v)) * stats.norm.pdf(z)
        px = integrate.quad(joint, -np.inf, np.inf, epsabs=1e-13)[0]
        assert g.log_marginal(x)[0] == pytest.approx(math.log(px), abs=1e-9)
        m, w = g.encoder(x)
        q = lambda z: stats.norm.pdf(z, m[0], math.sqrt(w[0]))
        elbo = integrate.quad(lambda z: q(z) * (math.log(joint(z)) - math.log(q(z))), m[0] - 20 * math.sqrt(w[0]),
                              m[0] + 20 * math.sqrt(w[0]), epsabs=1e-12)[0]
        assert g.elbo(x)[0] == pytest.approx(elbo, abs=1e-8)
        pm, pv = g.posterior(x)
        mean_num = integrate.quad(lambda z: z * joint(z) / px, -np.inf, np.inf)[0]
        var_num = integrate.quad(lambda z: (z - mean_num) ** 2 * joint(z) / px, -np.inf, np.inf)[0]
        assert (pm[0], pv[0]) == pytest.approx((mean_num, var_num), abs=1e-8)
        # the identity log p(x) = ELBO + KL(q ‖ p(z|x)), gap >= 0
        assert g.log_marginal(x)[0] == pytest.approx(g.elbo(x)[0] + g.gap(x)[0], abs=1e-12)
        assert g.gap(x)[0] >= 0


def test_gaussian1d_gap_vanishes_at_exact_posterior_and_mc_matches():
    g = Gaussian1D.with_exact_posterior(c=1.5, d=-0.2, v=0.3)
    x = np.linspace(-3, 3, 7)
    assert np.abs(g.gap(x)).max() < 1e-12
    assert np.allclose(g.elbo(x), g.log_marginal(x), atol=1e-12)
    h = MODELS[0]
    est, se = h.elbo_mc(x, n_samples=20000, seed=3)
    assert np.all(np.abs(est - h.elbo(x)) < 4 * se)


def test_gaussian1d_expectations_over_data_and_textbook_limit():
    g = MODELS[0]
    xs = ek.random.normal(200000, seed=5) * 1.7 + 0.4
    e = g.expected(0.4, 1.7)
    assert e["elbo"] == pytest.approx(g.elbo(xs).mean(), abs=0.02)
    assert e["log_marginal"] == pytest.approx(g.log_marginal(xs).mean(), abs=0.02)
    # textbook solution a = 1/s, b = -m/s, c = s, d = m: the limit v -> 0 with w matched
    m, s = 0.4, 1.7
    gaps = []
    for v in (1e-1, 1e-2, 1e-3):
        t = Gaussian1D.with_exact_posterior(c=s, d=m, v=v)
        gaps.append(abs(t.a - 1 / s) + abs(t.b + m / s))
        assert t.expected(m, s)["gap"] == pytest.approx(0.0, abs=1e-12)
    assert gaps[2] < gaps[1] < gaps[0] < 0.05
    assert t.expected(m, s)["log_marginal"] == pytest.approx(-0.5 * (math.log(2 * math.pi * s * s) + 1), abs=1e-3)


# ---- probabilistic PCA -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ppca_data():
    rng = np.random.default_rng(0)
    W = rng.normal(size=(6, 2)) * [2.0, 1.0]
    z = rng.normal(size=(800, 2))
    return z @ W.T + 0.5 * rng.normal(size=(800, 6)) + rng.normal(size=6)


def test_ppca_maximum_likelihood_matches_sklearn(ppca_data):
    x = ppca_data
    lg = LinearGaussian(2).fit(x)
    pca = PCA(n_components=2).fit(x)
    # sklearn's noise_variance_ uses the unbiased covariance (divisor n - 1); the ML one divides by n
    n = x.shape[0]
    assert lg.variance == pytest.approx(pca.noise_variance_ * (n - 1) / n, rel=1e-10)
    P1 = lg.weight @ np.linalg.pinv(lg.weight)
    P2 = pca.components_.T @ pca.components_
    assert np.abs(P1 - P2).max() < 1e-10
    ll = lg.log_likelihood(x)
    assert ll.mean() == pytest.approx(stats.multivariate_normal(lg.mean, lg.covariance()).logpdf(x).mean(), abs=1e-10)
    # the ML fit beats a perturbed one
    other = LinearGaussian(2).set_parameters(lg.weight * 1.05, lg.mean, lg.variance * 0.95)
    assert other.log_likelihood(x).mean() < ll.mean()


def test_ppca_posterior_against_bayes_rule(ppca_data):
    lg = LinearGaussian(2).fit(ppca_data)
    x = ppca_data[:3]
    mean, cov = lg.posterior(x)
    W, mu, v = lg.weight, lg.mean, lg.variance
    # joint Gaussian of (z, x): conditioning formula
    Sxx = W @ W.T + v * np.eye(6)
    K = W.T @ np.linalg.inv(Sxx)
    assert np.allclose(mean, (x - mu) @ K.T, atol=1e-10)
    assert np.allclose(cov, np.eye(2) - K @ W, atol=1e-10)


def test_linear_vae_closed_form_elbo_matches_engine_monte_carlo(ppca_data, rng):
    x = ppca_data[:50]
    vae = ek.VAE(6, 2, hidden=(), likelihood="gaussian", dtype="float64", seed=2)
    p = vae.parameters()
    p["decoder.logvar"] = 0.3 * rng.normal(size=6)
    vae.set_parameters(p)
    elbo, rec, kl = LinearGaussian.vae_elbo(vae, x)
    r = vae.elbo(x, n_samples=20000, seed=1)
    assert np.allclose(kl, r.kl, atol=1e-10)
    se = (r.reconstruction - rec).std() / math.sqrt(50)
    assert abs((r.reconstruction - rec).mean()) < 4 * se + 1e-3


def test_linear_vae_at_ppca_optimum_has_zero_gap(ppca_data):
    x = ppca_data
    lg = LinearGaussian(2).fit(x)
    vae = ek.VAE(6, 2, hidden=(), likelihood="gaussian", dtype="float64", decoder_var=lg.variance)
    vae.set_parameters(lg.vae_parameters())
    elbo, _, _ = LinearGaussian.vae_elbo(vae, x)
    assert np.allclose(elbo, lg.log_likelihood(x), atol=1e-9)
    assert vae.elbo(x, n_samples=200, seed=0).mean() == pytest.approx(lg.log_likelihood(x).mean(), abs=0.02)


def test_trained_linear_vae_approaches_ppca_maximum_likelihood(ppca_data):
    x = ppca_data
    lg = LinearGaussian(2).fit(x)
    best = lg.log_likelihood(x).mean()
    vae = ek.VAE(6, 2, hidden=(), likelihood="gaussian", dtype="float64", decoder_var=lg.variance, seed=0)
    vae.fit(x, epochs=300, batch_size=100, lr=1e-2, progress=False, seed=0)
    vae.fit(x, epochs=200, batch_size=100, lr=1e-3, progress=False, seed=1)  # a smaller step to settle
    elbo = LinearGaussian.vae_elbo(vae, x)[0].mean()
    assert elbo <= best + 1e-9  # a bound on the isotropic model's maximum likelihood
    assert best - elbo < 0.01, (best, elbo)  # measured: 0.0025 nats per example


# ---- mixture of Gaussians ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mix_data():
    rng = np.random.default_rng(1)
    centers = np.array([[0, 0], [4, 1], [1, 5]])
    return np.concatenate([rng.normal(size=(150, 2)) @ np.diag([1, 0.5]) + c for c in centers])


def test_em_is_monotone_and_elbo_equals_log_likelihood_after_e_step(mix_data):
    gm = GaussianMixture(3, seed=0).fit(mix_data, iterations=40)
    h = np.array([gm.initial_log_likelihood] + gm.history)
    assert (np.diff(h) >= -1e-12).all()
    assert np.allclose(gm.elbo_after_e_step, h[:-1], atol=1e-12)
    assert np.allclose(gm.elbo(mix_data), gm.log_likelihood(mix_data), atol=1e-12)
    q = np.full((mix_data.shape[0], 3), 1 / 3)
    assert (gm.elbo(mix_data, q) <= gm.log_likelihood(mix_data) + 1e-12).all()
    assert np.allclose(gm.responsibilities(mix_data).sum(1), 1)


def test_em_matches_sklearn_step_for_step(mix_data):
    ours = GaussianMixture(3, seed=2)
    ours.init(mix_data)
    sk = SkGM(3, covariance_type="full", max_iter=25, tol=0.0, reg_covar=1e-6, weights_init=ours.weights_,
              means_init=ours.means_, precisions_init=np.linalg.inv(ours.covariances_), init_params="random")
    with pytest.warns(Warning):  # no convergence at tol = 0
        sk.fit(mix_data)
    ours.fit(mix_data, iterations=25, init=False)
    assert np.allclose(ours.means_, sk.means_, atol=1e-8)
    assert np.allclose(ours.covariances_, sk.covariances_, atol=1e-8)
    assert np.allclose(ours.weights_, sk.weights_, atol=1e-8)
    assert np.allclose(ours.log_likelihood(mix_data), sk.score_samples(mix_data), atol=1e-8)


def test_variational_em_is_monotone_and_below_log_likelihood(mix_data):
    gm = GaussianMixture(3, seed=0).fit_variational(mix_data, iterations=40, steps=5, lr=2.0)
    e = np.array(gm.elbo_history)
    assert (np.diff(e) >= -1e-12).all()
    assert (e <= np.array(gm.history) + 1e-12).all()
    exact = GaussianMixture(3, seed=0).fit(mix_data, iterations=40)
    assert gm.history[-1] == pytest.approx(exact.history[-1], abs=0.01)


@pytest.mark.parametrize("call,match", [
    (lambda: Gaussian1D(v=0.0), "v must be positive, got 0.0"),
    (lambda: Gaussian1D(w=-1.0), "w must be positive, got -1.0"),
    (lambda: Gaussian1D().elbo(np.array([np.nan])), "x must contain only finite values, got nan"),
    (lambda: Gaussian1D().elbo([]), "x must not be empty"),
    (lambda: LinearGaussian(0), "latent_dim must be an integer >= 1, got 0"),
    (lambda: LinearGaussian(3).fit(np.ones((5, 3))), "latent_dim must be smaller than the data dimension 3, got 3"),
    (lambda: LinearGaussian(1).log_likelihood(np.ones((2, 2))), "the model is not fitted"),
    (lambda: LinearGaussian(1).fit(np.random.default_rng(0).normal(size=(9, 3))).log_likelihood(np.ones((2, 2))),
     r"x must have shape \(n, 3\), got \(2, 2\)"),
    (lambda: GaussianMixture(0), "n_components must be an integer >= 1, got 0"),
    (lambda: GaussianMixture(5).fit(np.ones((3, 2))), "x must have at least n_components = 5 rows, got 3"),
    (lambda: GaussianMixture(2).fit(np.random.default_rng(0).normal(size=(9, 2)), iterations=0),
     "iterations must be an integer >= 1, got 0"),
    (lambda: GaussianMixture(2).fit(np.random.default_rng(0).normal(size=(9, 2)), 2).elbo(
        np.zeros((1, 2)), q=np.array([[0.7, 0.7]])), "q must have non-negative rows that sum to 1"),
])
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call()
