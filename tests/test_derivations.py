"""The derivation tracer (ek.derivations, ek.trace): every line of every derivation traced on the
exact models agrees with its closed form within 4 s.e. and every relation holds; a derivation with
a sign error is reported as failing; the lessons; bad input."""
import math

import numpy as np
import pytest

import elbokit as ek
from elbokit import derivations as D


@pytest.fixture(scope="module")
def g1d():
    m = ek.exact.Gaussian1D(a=0.3, b=0.1, c=1.2, d=0.5, v=0.5, w=0.4)  # q is not the posterior: the gap > 0
    x = 0.5 + 1.3 * ek.random.normal(12, seed=3)
    return m, x


@pytest.fixture(scope="module")
def ppca():
    rng = np.random.default_rng(0)
    W, mu = rng.normal(size=(5, 2)), rng.normal(size=5)
    m = ek.exact.LinearGaussian(2).set_parameters(W, mu, 0.3)
    x = rng.normal(size=(10, 2)) @ W.T + mu + math.sqrt(0.3) * rng.normal(size=(10, 5))  # data from the model
    return m, x


@pytest.fixture(scope="module")
def mog():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(size=(30, 2)) + [3, 0], rng.normal(size=(30, 2)) - [3, 1]])
    return ek.exact.GaussianMixture(3, seed=0).fit(x, iterations=2), x


@pytest.fixture(scope="module")
def vae_digits():
    train, test = ek.datasets.digits()
    vae = ek.VAE(64, 4, hidden=(64,), seed=0)
    vae.fit(train, epochs=5, batch_size=32, lr=3e-3, progress=False, active_units=False)
    return vae, test[:16]


def _check_exact_lines(res):
    """Every Monte-Carlo row with a closed form agrees with it; every relation holds."""
    assert res.ok, res.failures()
    for r in res.rows:
        if r.estimate.exact is not None and r.estimate.units is not None:
            assert r.agrees, r.text


@pytest.mark.parametrize("name", ["jensen", "gap", "reconstruction_kl", "surgery"])
def test_gaussian1d_every_line_exact(g1d, name):
    m, x = g1d
    res = ek.trace(name, m, x, n_samples=400, seed=1)
    _check_exact_lines(res)
    # every line of the one-dimensional model has its closed form beside it
    assert all(r.estimate.exact is not None for r in res.rows), [r.text for r in res.rows if r.estimate.exact is None]
    if name in ("jensen", "gap"):
        lp = float(np.mean(m.log_marginal(x)))
        assert abs(res.lines[0].estimate.value - lp) < 1e-12
        assert abs(res.lines[-1].estimate.exact - float(np.mean(m.elbo(x)))) < 1e-12


def test_gaussian1d_gap_is_the_jensen_gap(g1d):
    m, x = g1d
    res = ek.trace("jensen", m, x, n_samples=400, seed=1)
    jensen = [r for r in res.lines if r.relation == "≥"][0]
    gap = float(np.mean(m.gap(x)))
    assert gap > 0.05
    assert abs(jensen.difference - gap) < 4 * jensen.difference_se + 1e-9


@pytest.mark.parametrize("name", ["jensen", "gap", "reconstruction_kl", "surgery"])
def test_ppca_every_line(ppca, name):
    m, x = ppca
    res = ek.trace(name, m, x, n_samples=300, seed=2)
    _check_exact_lines(res)
    if name == "gap":  # the mean-field q of a pPCA with a non-diagonal M: a strictly positive gap
        terms = [r for r in res.rows if r.is_term]
        assert terms[1].estimate.exact > 0.01
        assert abs(res.lines[0].estimate.value - m.log_likelihood(x).mean()) < 1e-12


@pytest.mark.parametrize("name", ["gap", "reconstruction_kl", "em", "surgery"])
def test_mixture_every_line(mog, name):
    m, x = mog
    q = None
    if name == "gap":  # a q that is not the posterior
        q = 0.7 * m.responsibilities(x) + 0.1
    res = ek.trace(name, m, x, n_samples=200, seed=0, q=q)
    _check_exact_lines(res)
    assert all(r.estimate.exact is not None for r in res.rows)
    if name == "em":
        lp_new, _, _, lp_old = (r.estimate.exact for r in res.lines)
        assert lp_new > lp_old  # two EM rounds in: one more still gains
    if name == "gap":
        assert [r for r in res.rows if r.is_term][1].estimate.exact > 0.01


@pytest.mark.parametrize("structure", ["markov", "topdown"])
def test_hvae_levels(structure):
    rng = np.random.default_rng(0)
    x = (rng.uniform(size=(12, 6)) > 0.5).astype(float)
    h = ek.HVAE(6, z_dims=(3, 2), hidden=(8,), structure=structure, dtype="float64", seed=1)
    res = ek.trace("hvae", h, x, n_samples=64, seed=0)
    assert res.ok, res.failures()
    levels = [r for r in res.rows if r.is_term and r.text.startswith("level")]
    assert len(levels) == 4
    # the traced ELBO against the engine's own estimate with independent noise
    ref = h.elbo(x, n_samples=256, seed=7)
    last = res.lines[-1].estimate
    se_ref = math.sqrt(np.var(np.asarray(h.elbo(np.tile(x, (64, 1)), seed=7).elbo).reshape(64, 12), axis=0, ddof=1).sum() / 64) / 12
    assert abs(last.value - ref.mean()) < 4 * math.hypot(last.se, se_ref / 2)


@pytest.mark.parametrize("structure", ["markov", "topdown"])
def test_linear_hvae_every_line_exact(structure):
    """A linear Gaussian HVAE (hidden=(), constant variances) has a closed-form ELBO, level terms and
    log p(x): every Monte-Carlo line and term agrees with them."""
    rng = np.random.default_rng(0)
    h = ek.HVAE(4, z_dims=(3, 2), hidden=(), structure=structure, likelihood="gaussian", dtype="float64",
                decoder_var=0.5, seed=1)
    p = h.parameters()
    for k in p:
        if k.endswith("logvar.weight"):
            p[k] = np.zeros_like(p[k])
        elif k.endswith("logvar.bias"):
            p[k] = 0.3 * rng.normal(size=p[k].shape)
    h.set_parameters(p)
    x = rng.normal(size=(6, 4))
    res = ek.trace("hvae", h, x, n_samples=400, seed=0)
    _check_exact_lines(res)
    assert all(r.estimate.exact is not None for r in res.rows)
    # the closed-form log p(x) against naive Monte Carlo over the engine's ancestral samples of p
    means = h.sample(100000, seed=0)                                   # E[x | z_1] for z ~ p
    v = h.decoder_variance()
    logpx = -0.5 * (np.log(2 * np.pi * v) + (x[:, None, :] - means[None]) ** 2 / v).sum(axis=2)   # (n, 1e5)
    mx = logpx.max(axis=1, keepdims=True)
    naive = (mx[:, 0] + np.log(np.exp(logpx - mx).mean(axis=1))).mean()
    assert abs(naive - res.lines[0].estimate.value) < 0.02
    # with a non-zero log-variance weight the model is not linear-Gaussian: no closed form
    p["decoder.1.logvar.weight"] = np.ones_like(p["decoder.1.logvar.weight"])
    h.set_parameters(p)
    assert D.hvae_linear_closed_form(h) is None


def test_linear_diffusion_every_line_exact():
    """A diffusion model with an affine network (hidden=()) has a closed-form ELBO: every form, and
    every step's KL, agrees with it."""
    rng = np.random.default_rng(0)
    m = ek.Diffusion(3, timesteps=8, hidden=(), dtype="float64", seed=0)
    p = m.parameters()
    p["net.out.weight"][:, :3] += 0.6 * np.eye(3)
    m.set_parameters(p)
    x = rng.normal(size=(6, 3))
    res = ek.trace("diffusion", m, x, n_samples=64, seed=0)
    _check_exact_lines(res)
    assert all(r.estimate.exact is not None for r in res.rows)
    steps = np.asarray(m.elbo(np.tile(x, (64, 1)), seed=0).steps).reshape(64, 6, 8)
    exact = D.diffusion_linear_closed_form(m)(x)["steps"]
    mean, se = steps.mean(axis=(0, 1)), np.sqrt(steps.var(axis=0, ddof=1).sum(axis=0) / 64) / 6
    assert (np.abs(mean - exact.mean(axis=0)) <= 4 * se + 1e-9).all()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_diffusion_forms(dtype):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3))
    m = ek.Diffusion(3, timesteps=6, schedule="cosine", hidden=(16,), dtype=dtype, seed=0)
    res = ek.trace("diffusion", m, x, n_samples=32, seed=0)
    assert res.ok, res.failures()
    b = res.lines[2].estimate
    assert abs(b.value - m.elbo(np.tile(x, (32, 1)), seed=0).mean()) < 1e-9 * abs(b.value) + 1e-12
    # the recomputed closed-form KLs and the weighted ε-MSE reproduce form B sample by sample
    assert np.allclose(res.lines[3].estimate.units, b.units, rtol=1e-4 if dtype == "float32" else 1e-10)
    assert np.allclose(res.lines[4].estimate.units, b.units, rtol=1e-4 if dtype == "float32" else 1e-10)


def test_vae_trained(vae_digits):
    vae, x = vae_digits
    res = ek.trace("reconstruction_kl", vae, x, n_samples=32, seed=0)
    assert res.ok, res.failures()
    res = ek.trace("jensen", vae, x, n_samples=64, seed=0)
    rel = {r.index: r.holds for r in res.lines if r.relation}
    assert rel[2] is not False   # the naive estimate: true, or undecided for want of effective samples
    assert rel[3] is True and rel[4] is True and rel[5] is True
    assert "min ESS" in res.lines[1].estimate.note
    # the importance-sampled log p(x) line against the engine's L_K
    lk = vae.log_likelihood(x, k=2000, seed=0).mean()
    assert abs(res.lines[0].estimate.value - lk) < 0.5
    res = ek.trace("surgery", vae, x, n_samples=32, seed=0)
    assert res.ok, res.failures()
    assert abs(res.lines[0].estimate.value - ek.surgery(vae, x).average_kl) < 1e-5


def test_a_sign_error_is_reported_as_failing(g1d):
    m, x = g1d
    wrong = D.Derivation("wrong", "ELBO = reconstruction + KL (a sign error)", (
        D.Step(r"\mathrm{ELBO}", "ELBO", lambda c: D.mc(c.lj - c.lq, "q", c.elbo_terms[0]), "=", "a sign error"),
        D.Step(r"\mathbb{E}_q[\log p(x|z)] + \mathrm{KL}", "reconstruction + KL",
               lambda c: D.mc(c.engine[0] + c.engine[2][None, :], "q")),
    ), ("Gaussian1D",), "§2")
    res = ek.trace(wrong, m, x, n_samples=200, seed=0)
    assert not res.ok and res.lines[0].holds is False
    assert "fails" in res.failures()[0] and "FAILING" in repr(res)
    # a reversed inequality fails too: ELBO ≥ log p(x) is false when the gap is positive
    rev = D.Derivation("reversed", "ELBO ≥ log p", (
        D.Step("ELBO", "ELBO", lambda c: D.exact(c.elbo_terms[0]), "≥", "wrong"),
        D.Step("log p", "log p", lambda c: D.exact(c.log_marginal)),
    ), ("Gaussian1D",), "§2")
    assert ek.trace(rev, m, x, n_samples=2).lines[0].holds is False
    # and a wrong closed form beside a correct Monte-Carlo line disagrees
    bad_exact = D.Derivation("bad_exact", "a wrong closed form", (
        D.Step("ELBO", "ELBO", lambda c: D.mc(c.lj - c.lq, "q", c.elbo_terms[0] + 0.1)),), ("Gaussian1D",), "§2")
    r = ek.trace(bad_exact, m, x, n_samples=400)
    assert r.rows[0].agrees is False and not r.ok


def test_displays(g1d):
    m, x = g1d
    res = ek.trace("jensen", m, x, n_samples=50)
    text, html, tex = repr(res), res._repr_html_(), res.to_latex()
    assert "Jensen" in text and "all relations hold" in text
    assert html.startswith("<p>") and "<table>" in html and html.count("<tr") == len(res.rows) + 1
    assert tex.startswith(r"\begin{align*}") and r"\ge" in tex and tex.count(r"\\") == len(res.lines) - 1
    assert f"{res.lines[0].estimate.value:.5f}" in tex
    assert D.names() == ["jensen", "gap", "reconstruction_kl", "hvae", "diffusion", "em", "surgery"]


def test_bad_input(g1d, mog):
    m, x = g1d
    with pytest.raises(ValueError, match="derivation must be one of 'jensen'"):
        ek.trace("elbo_by_magic", m, x)
    with pytest.raises(ValueError, match="model must be one of GaussianMixture for the derivation 'em', got Gaussian1D"):
        ek.trace("em", m, x)
    with pytest.raises(ValueError, match="model must be one of Gaussian1D, LinearGaussian, GaussianMixture .* got VAE"):
        ek.trace("gap", ek.VAE(4, 2, hidden=()), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="n_samples must be an integer >= 2, got 0"):
        ek.trace("jensen", m, x, n_samples=0)
    with pytest.raises(ValueError, match=r"x must be a 1-D array of shape \(n,\).*got shape \(3, 2\)"):
        ek.trace("jensen", m, np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"x must have shape \(n, 4\), got \(3, 5\)"):
        ek.trace("jensen", ek.VAE(4, 2, hidden=()), np.zeros((3, 5)))
    with pytest.raises(ValueError, match=r"x must have shape \(n, 2\), got \(4, 3\)"):
        ek.trace("gap", mog[0], np.zeros((4, 3)))
    with pytest.raises(ValueError, match="data='continuous'"):
        ek.trace("diffusion", ek.Diffusion(2, timesteps=3, hidden=(4,), data="discrete256"), np.zeros((2, 2)))


def test_naive_against_importance(g1d, vae_digits):
    m, x = g1d
    r = D.naive_vs_importance(m, x, ks=(1, 10, 100), n_repeats=8, seed=0)
    assert r.importance_std[-1] < r.naive_std[-1] and r.importance_std[-1] < r.importance_std[0]
    assert abs(r.importance_mean[-1] - r.log_p) < 0.05
    vae, xv = vae_digits
    r = D.naive_vs_importance(vae, xv[:4], ks=(10, 100), n_repeats=3)
    assert r.log_p is None and (r.naive_std > 2 * r.importance_std).all()  # the prior rarely hits the data
    with pytest.raises(ValueError, match="n_repeats must be an integer >= 2"):
        D.naive_vs_importance(m, x, n_repeats=1)


def test_amortization_gap(vae_digits):
    vae, x = vae_digits
    r = D.amortization_gap(vae, x[:3], steps=60, lr=0.05, n_samples=8, n_eval=400, k=1000)
    assert r.amortization_gap > 0 and r.approximation_gap > -0.2
    assert "amortization gap" in repr(r)
    with pytest.raises(ValueError, match="vae must be an ek.VAE, got Gaussian1D"):
        D.amortization_gap(ek.exact.Gaussian1D(), x)


def test_learned_prior(vae_digits, g1d):
    vae, x = vae_digits
    r = D.learned_prior(vae, x, n_components=3, n_samples=16)
    kl = [m for m, _ in r.kl.values()]
    assert kl[2] < kl[0] and kl[1] < kl[0]  # the aggregate posterior and the fitted MoG both beat N(0, I)
    m, xg = g1d
    r = D.learned_prior(m, xg, n_components=2, n_samples=400)
    res = ek.trace("surgery", m, xg, n_samples=400, seed=0)
    mi_exact = [t for t in res.rows if t.text == "mutual information"][0].estimate.exact
    agg, se = r.kl["aggregate posterior"]
    assert abs(agg - mi_exact) < 4 * se


def test_cli_trace(vae_digits, tmp_path, capsys):
    from elbokit.cli import main
    vae, _ = vae_digits
    path = str(tmp_path / "model.elbokit")
    vae.save(path)
    tex = tmp_path / "trace.tex"
    assert main(["trace", "reconstruction_kl", "--model", path, "--data", "digits", "--n", "16", "--n-samples", "8",
                 "--latex", str(tex)]) == 0
    out = capsys.readouterr().out
    assert "trace of 'reconstruction_kl'" in out and "all relations hold" in out
    assert tex.read_text().startswith(r"\begin{align*}")
    assert main(["trace", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(n in out for n in D.names())
    assert main(["trace", "em", "--model", path]) == 2
    assert "model must be one of GaussianMixture" in capsys.readouterr().err
    assert main(["trace", "jensen"]) == 2
    assert "--model FILE" in capsys.readouterr().err
