"""Diffusion training and the bound on trained models (MATH.md §7, §10): the training loop's noise
replayed by hand, EMA, the exactly solvable Gaussian case (ELBO below and close to the true
log p(x)), sample moments, decomposition A = B within standard errors with B of lower variance,
and honest bits/dim on 256-level images."""
import numpy as np
import pytest
from scipy.stats import norm

import elbokit as ek


@pytest.fixture
def one_thread():
    """Training tests run on one thread: the machine is shared, and results do not depend on it."""
    ek.set_num_threads(1)
    yield
    ek.set_num_threads(2)


def test_training_step_replays_with_the_documented_noise(rng):
    """One SGD step of fit equals theta - lr * loss_grad at t = 1 + floor(T u), u from
    STREAMS['diffusion_time'] + step, eps from STREAMS['train_noise'] + step, rows shuffled."""
    m = ek.Diffusion(2, timesteps=20, hidden=(8,), dtype="float64", seed=1)
    x = rng.normal(size=(16, 2))
    p0 = m.parameters()
    perm = ek.random.permutation(16, seed=3, stream=ek.random.STREAMS["shuffle"])
    u = ek.random.uniform(16, seed=3, stream=ek.random.STREAMS["diffusion_time"])
    t = 1 + np.floor(20 * u).astype(np.int64)
    eps = ek.random.normal((16, 2), seed=3, stream=ek.random.STREAMS["train_noise"])
    J, g = m.loss_grad(x[perm], t, eps, "hybrid")
    h = m.fit(x, epochs=1, batch_size=16, lr=0.1, optimizer="sgd", momentum=0.0, loss="hybrid", seed=3,
              progress=False)
    assert h["step_loss"][0] == pytest.approx(J, rel=1e-12)
    p1 = m.parameters()
    for k in p0:
        assert np.allclose(p1[k], p0[k] - 0.1 * g[k], rtol=1e-12, atol=1e-14), k


def test_ema_after_one_step(rng):
    """ema <- d_0 theta_0 + (1 - d_0) theta_1 with d_0 = min(decay, 1/10); the model ends with it."""
    x = rng.normal(size=(32, 2))
    a = ek.Diffusion(2, timesteps=20, hidden=(8,), dtype="float64", seed=1)
    b = ek.Diffusion(2, timesteps=20, hidden=(8,), dtype="float64", seed=1)
    p0 = a.parameters()
    a.fit(x, epochs=1, batch_size=32, progress=False)
    h = b.fit(x, epochs=1, batch_size=32, progress=False, ema=0.5)
    pa, pb = a.parameters(), b.parameters()
    for k in p0:
        assert np.array_equal(h["raw_parameters"][k], pa[k])
        assert np.allclose(pb[k], 0.1 * p0[k] + 0.9 * pa[k], rtol=1e-12, atol=1e-15)


@pytest.fixture(scope="module")
def gaussian_model():
    """A model trained on x ~ N(m, diag s^2) in 2-D, T = 100, sigma_t^2 = beta_t."""
    ek.set_num_threads(1)
    try:
        rng = np.random.default_rng(0)
        mean, std = np.array([1.0, -0.5]), np.array([0.5, 1.5])
        train = mean + std * rng.normal(size=(4000, 2))
        test = mean + std * rng.normal(size=(400, 2))
        m = ek.Diffusion(2, timesteps=100, hidden=(64, 64), variance="large", seed=0)
        m.fit(train, epochs=60, batch_size=128, lr=2e-3, ema=0.99, progress=False, seed=1)
        return m, mean, std, test
    finally:
        ek.set_num_threads(2)


def test_elbo_of_gaussian_data_is_below_and_close_to_the_true_log_likelihood(gaussian_model, one_thread):
    m, mean, std, test = gaussian_model
    r = m.elbo(test, seed=3)
    gap = r.elbo - norm.logpdf(test, mean, std).sum(1)  # ELBO - log p(x) = -KL(q || p(x_1:T | x_0))
    g, se = ek.mean_stderr(gap)
    print(f"Gaussian data: ELBO - log p(x) = {g / 2:.4f} ± {se / 2:.4f} nats per dimension")
    assert g < 3 * se          # a bound: below log p(x) within standard error
    assert g / 2 > -0.25       # and close: less than 0.25 nats per dimension below


def test_samples_of_gaussian_data_have_its_mean_and_variance(gaussian_model, one_thread):
    m, mean, std, _ = gaussian_model
    n = 4000
    for method, kw in (("ddpm", {}), ("ddim", {"steps": 50})):
        s = m.sample(n, method=method, seed=4, **kw).astype(np.float64)
        assert np.all(np.abs(s.mean(0) - mean) < 0.1 * std + 4 * std / np.sqrt(n)), (method, s.mean(0))
        assert np.all(np.abs(s.var(0) / std ** 2 - 1) < 0.15), (method, s.var(0))


@pytest.fixture(scope="module")
def swiss_model():
    ek.set_num_threads(1)
    try:
        x = ek.datasets.swiss_roll(2000, seed=0)
        m = ek.Diffusion(2, timesteps=50, hidden=(64, 64), variance="large", seed=0)
        m.fit(x, epochs=40, batch_size=128, lr=2e-3, ema=0.99, progress=False)
        return m, x
    finally:
        ek.set_num_threads(2)


def test_both_decompositions_agree_and_denoising_has_lower_variance(swiss_model, one_thread):
    """Per data point, 500 draws of each form: means agree within 4 combined standard errors; the
    Monte-Carlo variance of the consistency form (A) is several times that of the denoising form (B)."""
    m, x = swiss_model
    R = 500
    xs = np.repeat(x[:4], R, axis=0)
    B = m.elbo(xs, form="denoising", seed=1).elbo.reshape(4, R)
    A = m.elbo(xs, form="consistency", seed=1).elbo.reshape(4, R)
    for a, b in zip(A, B):
        se = np.sqrt(a.var(ddof=1) / R + b.var(ddof=1) / R)
        assert abs(a.mean() - b.mean()) < 4 * se, (a.mean(), b.mean(), se)
        assert a.var() > 5 * b.var()


def test_the_decoupled_kl_form_of_math_md_is_not_the_elbo(swiss_model, one_thread):
    """MATH.md §7's decomposition A takes E_{q(x_{t-1}, x_{t+1}|x_0)} KL(q(x_t|x_{t-1}) || p(x_t|x_{t+1})),
    which draws x_t independently of x_{t+1}. Computed literally it is far from the consistency
    terms that do sum to the ELBO (x_t and x_{t+1} drawn from one chain): that formula is wrong."""
    m, x = swiss_model
    T, D, n = m.timesteps, 2, 300
    rng = np.random.default_rng(0)
    x0 = np.repeat(x[:1], n, axis=0)
    literal = np.zeros(n)
    for t in range(1, T):
        xp = m.q_sample(x0, t - 1, rng.normal(size=(n, D))) if t > 1 else x0     # x_{t-1} ~ q(.|x_0)
        xt = np.sqrt(m.alphas[t - 1]) * xp + np.sqrt(m.betas[t - 1]) * rng.normal(size=(n, D))
        xn = np.sqrt(m.alphas[t]) * xt + np.sqrt(m.betas[t]) * rng.normal(size=(n, D))  # x_{t+1}
        mu, var = m.p_mean_variance(xn, np.full(n, t + 1))
        mean_q = np.sqrt(m.alphas[t - 1]) * xp
        literal += 0.5 * (D * np.log(var / m.betas[t - 1]) +
                          ((m.betas[t - 1] + (mean_q - mu) ** 2) / var[:, None]).sum(1) - D)
    chain = m.elbo(x0, form="consistency", seed=2).steps.sum(1)
    lm, lse = ek.mean_stderr(literal)
    cm, cse = ek.mean_stderr(chain)
    print(f"consistency terms: chain {cm:.3f} ± {cse:.3f}, MATH.md literal {lm:.3f} ± {lse:.3f} nats")
    assert lm - cm > 20 * np.hypot(lse, cse)


def test_discrete_data_gives_an_honest_bits_per_dim(one_thread):
    """256-level images (the digits put on the 8-bit grid, 2*pixel/255 - 1; the data that ships with
    scikit-learn, so the test runs wherever the suite does): the discretized decoder makes every term
    a log-probability, so each example's ELBO is <= 0 (bits/dim > 0), and training lowers it."""
    train, test = ek.datasets.digits()
    train, test = (2 * np.round(255 * x) / 255 - 1 for x in (train[:600], test[:40]))
    m = ek.Diffusion(64, timesteps=40, hidden=(128,), data="discrete256", variance="large", seed=0)
    before = m.elbo(test, seed=1)
    m.fit(train, epochs=4, batch_size=64, lr=2e-3, progress=False)
    after = m.elbo(test, seed=1)
    print(f"8-bit digits bits/dim: {before.bits_per_dim():.3f} untrained, {after.bits_per_dim():.3f} trained")
    assert np.all(after.elbo <= 0) and np.all(before.elbo <= 0)
    assert np.all(after.steps >= 0) and np.all(after.reconstruction <= 0)
    assert after.bits_per_dim() < before.bits_per_dim() - 0.5
    assert after.bits_per_dim() == pytest.approx(-after.elbo.mean() / (64 * np.log(2)))
