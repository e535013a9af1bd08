"""Diffusion model (MATH.md §7): schedules against their formulas, the encoder's closed forms
against moments and Bayes' rule, the denoising ELBO against PyTorch on the engine's noise,
sampling, save/load, determinism and bad input."""
import numpy as np
import pytest
import torch

import elbokit as ek
from torch_diffusion import cosine_betas, denoising_terms, from_elbokit, linear_betas


# ---- schedules --------------------------------------------------------------------------------
def test_linear_schedule_is_pinned_to_its_formula():
    m = ek.Diffusion(2, hidden=(4,), seed=0)
    assert m.timesteps == 1000 and m.betas.shape == (1000,)
    assert m.betas[0] == pytest.approx(1e-4, rel=1e-12) and m.betas[-1] == pytest.approx(0.02, rel=1e-12)
    assert np.allclose(m.betas, np.linspace(1e-4, 0.02, 1000), rtol=1e-12, atol=0)
    assert np.allclose(m.alphas, 1 - m.betas, rtol=1e-15)
    assert np.allclose(m.alphas_cumprod, np.cumprod(1 - m.betas), rtol=1e-12)
    assert np.allclose(m.snr, m.alphas_cumprod / (1 - m.alphas_cumprod), rtol=1e-12)
    assert np.all(np.diff(m.snr) < 0)  # SNR decreases with t
    assert m.alphas_cumprod[-1] < 1e-4  # q(x_T|x_0) ~ N(0, I)
    small = ek.Diffusion(2, timesteps=50, hidden=(4,))
    assert np.allclose(small.betas, linear_betas(50), rtol=1e-12)


def test_cosine_schedule_is_pinned_to_its_formula():
    T, s = 1000, 0.008
    m = ek.Diffusion(2, timesteps=T, schedule="cosine", hidden=(4,))
    f = lambda t: np.cos((t / T + s) / (1 + s) * np.pi / 2) ** 2  # noqa: E731
    t = np.arange(1, T + 1)
    unclipped = m.betas < 0.999
    assert np.allclose(m.alphas_cumprod[unclipped], (f(t) / f(0))[unclipped], rtol=1e-9)
    assert m.betas.max() == pytest.approx(0.999) and np.allclose(m.betas, cosine_betas(T), rtol=1e-12)
    # posterior variance beta~_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t, beta~_1 = 0
    assert m.posterior_variance[0] == 0
    assert np.allclose(m.posterior_variance[1:], (1 - m.alphas_cumprod[:-1]) / (1 - m.alphas_cumprod[1:]) * m.betas[1:])


def test_custom_betas_and_variance_choices():
    betas = np.linspace(0.01, 0.3, 20)
    small = ek.Diffusion(2, schedule=betas, hidden=(4,))
    large = ek.Diffusion(2, schedule=betas, hidden=(4,), variance="large")
    assert small.timesteps == 20 and np.array_equal(small.betas, betas)
    assert np.allclose(large.sigmas2, betas)
    # "small": beta~_t, and at t = 1 (where beta~_1 = 0) beta~_2
    assert small.sigmas2[0] == small.posterior_variance[1] and np.array_equal(small.sigmas2[1:], small.posterior_variance[1:])


# ---- the encoder's closed forms ----------------------------------------------------------------
def test_q_sample_moments_match_alphas_cumprod():
    m = ek.Diffusion(3, timesteps=100, hidden=(4,), dtype="float64")
    n = 40000
    x0 = np.tile([[1.5, -2.0, 0.5]], (n, 1))
    for t in (1, 30, 100):
        eps = ek.random.normal((n, 3), seed=t)
        xt = m.q_sample(x0, t, eps)
        ab = m.alphas_cumprod[t - 1]
        mean_se = np.sqrt((1 - ab) / n)
        assert np.all(np.abs(xt.mean(0) - np.sqrt(ab) * x0[0]) < 5 * mean_se)
        assert np.all(np.abs(xt.var(0) / (1 - ab) - 1) < 5 * np.sqrt(2 / n))
        assert np.allclose(xt, np.sqrt(ab) * x0 + np.sqrt(1 - ab) * eps, rtol=1e-14)


def test_q_posterior_is_bayes_rule():
    """q(x_{t-1}|x_t, x_0) ∝ q(x_t|x_{t-1}) q(x_{t-1}|x_0): the product of two Gaussians in x_{t-1},
    computed here by precision weighting, independently of the closed form (MATH.md §7)."""
    m = ek.Diffusion(2, timesteps=60, schedule="cosine", hidden=(4,), dtype="float64")
    rng = np.random.default_rng(0)
    x0, xt = rng.normal(size=(6, 2)), rng.normal(size=(6, 2))
    t = np.array([2, 5, 17, 33, 59, 60])
    mean, var = m.q_posterior(x0, xt, t)
    for i, ti in enumerate(t):
        a, b, abp = m.alphas[ti - 1], m.betas[ti - 1], m.alphas_cumprod[ti - 2]
        # likelihood of x_{t-1} from q(x_t|x_{t-1}) = N(sqrt(a) x_{t-1}, b): precision a/b, mean xt/sqrt(a)
        prec = a / b + 1 / (1 - abp)
        mu = (a / b * xt[i] / np.sqrt(a) + np.sqrt(abp) * x0[i] / (1 - abp)) / prec
        assert var[i] == pytest.approx(1 / prec, rel=1e-10)
        assert np.allclose(mean[i], mu, rtol=1e-10, atol=1e-12)
    # at t = 1 the posterior is the point mass at x0
    mean1, var1 = m.q_posterior(x0, xt, 1)
    assert np.allclose(mean1, x0, atol=1e-14) and np.all(var1 == 0)


def test_p_mean_variance_uses_the_eps_parameterization():
    m = ek.Diffusion(2, timesteps=40, hidden=(8,), dtype="float64", seed=2, variance="large")
    rng = np.random.default_rng(1)
    xt, t = rng.normal(size=(5, 2)), np.array([1, 4, 9, 20, 40])
    mean, var = m.p_mean_variance(xt, t)
    e = m.predict(xt, t)["eps"]
    ref = from_elbokit(m)
    with torch.no_grad():
        et = ref.eps_hat(torch.tensor(xt), torch.tensor(t)).numpy()
    assert np.allclose(e, et, rtol=1e-12)
    b, a, ab = m.betas[t - 1], m.alphas[t - 1], m.alphas_cumprod[t - 1]
    assert np.allclose(mean, (xt - (b / np.sqrt(1 - ab))[:, None] * e) / np.sqrt(a)[:, None], rtol=1e-12)
    assert np.allclose(var, b)
    for pred in ("x0", "v"):  # the same model reparameterized: x0_hat and eps_hat are consistent
        mp = ek.Diffusion(2, timesteps=40, hidden=(8,), dtype="float64", seed=2, prediction=pred)
        out = mp.predict(xt, t)
        assert np.allclose(xt, np.sqrt(ab)[:, None] * out["x0"] + np.sqrt(1 - ab)[:, None] * out["eps"], rtol=1e-10)


# ---- the denoising ELBO against PyTorch on the same noise -------------------------------------
@pytest.mark.parametrize("data,prediction", [("continuous", "epsilon"), ("discrete256", "v")])
def test_denoising_elbo_matches_torch_on_the_engines_noise(data, prediction, rng):
    T, D, n = 15, 3, 4
    m = ek.Diffusion(D, timesteps=T, hidden=(8,), data=data, prediction=prediction, dtype="float64", seed=4)
    x = rng.integers(0, 256, size=(n, D)) * 2 / 255 - 1 if data == "discrete256" else rng.normal(size=(n, D))
    r = m.elbo(x, seed=7)
    step, prior, (xs, ts, eps) = denoising_terms(m, x, seed=7)
    assert np.allclose(r.reconstruction, -step[:, 0], rtol=1e-10)
    assert np.allclose(r.steps[:, 1:], step[:, 1:], rtol=1e-10) and np.all(r.steps[:, 0] == 0)
    assert np.allclose(r.prior, prior, rtol=1e-10)
    assert np.allclose(r.elbo, -prior - step.sum(1), rtol=1e-10)
    # loss(kind="elbo") at each t is the one-step estimate prior + T * L_t
    per = m.loss(xs, ts, eps, "elbo").reshape(n, T)
    assert np.allclose(per, prior[:, None] + T * step, rtol=1e-10)


# ---- sampling ----------------------------------------------------------------------------------
def test_sampling_shapes_trajectory_and_ddim_subsequence():
    m = ek.Diffusion(2, timesteps=30, hidden=(8,), seed=0)
    x, traj, steps = m.sample(7, return_trajectory=True, seed=3)
    assert x.shape == (7, 2) and traj.shape == (31, 7, 2) and np.array_equal(steps, np.arange(30, -1, -1))
    assert np.array_equal(traj[-1], x) and np.array_equal(traj[0], ek.random.normal((7, 2), seed=3, stream=1).astype(np.float32))
    x2, traj2, steps2 = m.sample(7, method="ddim", steps=4, return_trajectory=True, seed=3)
    assert np.array_equal(steps2, [30, 20, 11, 1, 0]) and traj2.shape == (5, 7, 2)
    # deterministic DDIM (eta = 0): the same x_T gives the same sample whatever the seed of later noise
    assert np.array_equal(m.sample(7, method="ddim", steps=4, seed=3), x2)
    assert not np.array_equal(m.sample(7, method="ddim", steps=4, eta=1.0, seed=3), x2)
    assert not np.array_equal(m.sample(7, seed=4), x)


def test_ddim_with_all_steps_and_eta_one_is_ancestral_sampling():
    """DDIM with eta = 1 over every step has sigma_t^2 = beta~_t: the ancestral sampler with the
    'small' variance, step for step on the same noise (MATH.md §7)."""
    m = ek.Diffusion(2, timesteps=25, hidden=(8,), dtype="float64", seed=1)
    a = m.sample(50, method="ddpm", seed=2)
    b = m.sample(50, method="ddim", eta=1.0, seed=2)
    assert np.allclose(a, b, rtol=1e-9, atol=1e-9)


# ---- save / load, determinism ------------------------------------------------------------------
def test_save_and_load_round_trip(tmp_path):
    m = ek.Diffusion(3, schedule=np.linspace(0.01, 0.2, 12), hidden=(6,), prediction="v", data="discrete256",
                     variance="large", seed=3)
    path = m.save(tmp_path / "d.elbokit")
    m2 = ek.load(path)
    assert isinstance(m2, ek.Diffusion) and m2.config == m.config
    assert np.array_equal(m2.betas, m.betas)
    assert all(np.array_equal(v, m2.parameters()[k]) for k, v in m.parameters().items())


def run_everything(threads):
    ek.set_num_threads(threads)
    try:
        x = ek.datasets.swiss_roll(600, seed=0)
        m = ek.Diffusion(2, timesteps=100, hidden=(300, 200), seed=5)
        h = m.fit(x, epochs=2, batch_size=300, progress=False, seed=1, ema=0.9, validation=x[:100], loss="hybrid")
        r = m.elbo(x[:20], seed=2)
        ra = m.elbo(x[:20], form="consistency", seed=2)
        s = m.sample(500, seed=3)
        sd = m.sample(500, method="ddim", steps=10, eta=0.5, seed=3)
        return [h["step_loss"], h["val_elbo"], r.steps, ra.steps, s, sd] + list(m.parameters().values())
    finally:
        ek.set_num_threads(2)


def test_bit_identical_with_one_and_two_threads():
    one, two = run_everything(1), run_everything(2)
    for a, b in zip(one, two):
        assert np.array_equal(a, b)


# ---- bad input ---------------------------------------------------------------------------------
def test_bad_input_raises_value_errors():
    with pytest.raises(ValueError, match=r"schedule must hold betas in the open interval \(0, 1\), got 1.0 at step t = 3"):
        ek.Diffusion(2, schedule=[0.1, 0.2, 1.0])
    with pytest.raises(ValueError, match=r"schedule must hold betas in the open interval \(0, 1\), got -0.1"):
        ek.Diffusion(2, schedule=[-0.1, 0.2])
    with pytest.raises(ValueError, match="schedule must contain only finite values"):
        ek.Diffusion(2, schedule=[0.1, np.nan])
    with pytest.raises(ValueError, match="schedule must be one of 'linear', 'cosine', got 'quadratic'"):
        ek.Diffusion(2, schedule="quadratic")
    with pytest.raises(ValueError, match="timesteps must be an integer >= 2, got 1"):
        ek.Diffusion(2, timesteps=1)
    with pytest.raises(ValueError, match="timesteps must equal len\\(schedule\\) = 3"):
        ek.Diffusion(2, timesteps=5, schedule=[0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="x_dim must be an integer >= 1, got 0"):
        ek.Diffusion(0)
    with pytest.raises(ValueError, match="prediction must be one of 'epsilon', 'x0', 'v', got 'score'"):
        ek.Diffusion(2, prediction="score")
    with pytest.raises(ValueError, match="variance must be one of 'small', 'large', 'learned', got 'fixed'"):
        ek.Diffusion(2, variance="fixed")
    with pytest.raises(ValueError, match="emb_dim must be an even integer >= 2, got 5"):
        ek.Diffusion(2, emb_dim=5)
    m = ek.Diffusion(2, timesteps=10, hidden=(4,))
    x, e = np.zeros((3, 2)), np.zeros((3, 2))
    with pytest.raises(ValueError, match=r"t must hold steps in 1 ... T = 10, got 0 at position 1"):
        m.loss(x, [1, 0, 2], e)
    with pytest.raises(ValueError, match=r"t must hold steps in 1 ... T = 10, got 11 at position 2"):
        m.q_sample(x, [1, 2, 11], e)
    with pytest.raises(ValueError, match=r"t must be an integer or an array of shape \(3,\), got shape \(2,\)"):
        m.loss(x, [1, 2], e)
    with pytest.raises(ValueError, match="t must hold integer steps"):
        m.loss(x, [1.0, 2.0, 3.0], e)
    with pytest.raises(ValueError, match=r"eps must have shape \(3, 2\), got \(3, 3\)"):
        m.loss(x, 1, np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"x must have shape \(n, 2\), got \(3, 4\)"):
        m.loss(np.zeros((3, 4)), 1, e)
    with pytest.raises(ValueError, match="x must contain only finite values, got inf"):
        m.elbo(np.array([[0.0, np.inf]]))
    with pytest.raises(ValueError, match="x must not be empty"):
        m.elbo(np.zeros((0, 2)))
    with pytest.raises(ValueError, match="kind must be one of 'simple', 'elbo', 'hybrid', got 'vlb'"):
        m.loss(x, 1, e, kind="vlb")
    with pytest.raises(ValueError, match="form must be one of 'denoising', 'consistency', got 'A'"):
        m.elbo(x, form="A")
    with pytest.raises(ValueError, match="method must be one of 'ddpm', 'ddim', got 'euler'"):
        m.sample(3, method="euler")
    with pytest.raises(ValueError, match=r"steps must be an integer in 1 … T = 10, got 11"):
        m.sample(3, method="ddim", steps=11)
    with pytest.raises(ValueError, match="steps must be None .* for method 'ddpm', got 5"):
        m.sample(3, steps=5)
    with pytest.raises(ValueError, match="n must be an integer >= 1, got 0"):
        m.sample(0)
    with pytest.raises(ValueError, match="eta must be >= 0.0, got -1.0"):
        m.sample(3, method="ddim", eta=-1.0)
    with pytest.raises(ValueError, match="loss must be one of 'simple', 'elbo', 'hybrid', got 'l1'"):
        m.fit(x, loss="l1", progress=False)
    with pytest.raises(ValueError, match=r"ema must be in \[0, 1\), got 1.0"):
        m.fit(x, ema=1.0, progress=False)
    with pytest.raises(ValueError, match="epochs must be an integer >= 1, got 0"):
        m.fit(x, epochs=0, progress=False)
    d = ek.Diffusion(2, timesteps=10, hidden=(4,), data="discrete256")
    with pytest.raises(ValueError, match=r"x must lie on the 256 levels k\*2/255 - 1 of \[-1, 1\].*got 0.5 at index \(0, 1\)"):
        d.elbo(np.array([[1.0, 0.5]]))
    with pytest.raises(ValueError, match=r"x must lie on the 256 levels"):
        d.elbo(np.array([[1.0 + 2 / 255, 0.0 - 1 / 255]]))
    with pytest.raises(ValueError, match="a diffusion model takes none of them"):
        m._core.fit(x, None, {"epochs": 1, "beta": 0.5}, None, "simple", 0.0)
