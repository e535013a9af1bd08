"""Reproducibility: a seed fixes every random number whatever the number of threads; results are
bit-identical with 1 and 2 OpenMP threads (the engine's tiles do not depend on the thread count)."""
import numpy as np
import pytest

import elbokit as ek


def test_philox_known_answers():
    """Philox4x32-10 known-answer vectors (Salmon et al. 2011, Random123)."""
    assert ek._core.philox4x32_10([0, 0, 0, 0], [0, 0]) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert ek._core.philox4x32_10([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2) == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    assert ek._core.philox4x32_10([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0]) == \
        [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]


def test_normal_numbers_are_standard_normal_and_seeded():
    a = ek.random.normal(200000, seed=3)
    assert abs(a.mean()) < 4 / np.sqrt(a.size) and abs(a.var() - 1) < 4 * np.sqrt(2 / a.size)
    assert np.array_equal(a, ek.random.normal(200000, seed=3))
    assert not np.array_equal(a[:10], ek.random.normal(10, seed=4))
    assert not np.array_equal(a[:10], ek.random.normal(10, seed=3, stream=1))
    assert np.array_equal(a[:10], ek.random.normal((2, 5), seed=3).ravel())
    p = ek.random.permutation(1000, seed=1)
    assert np.array_equal(np.sort(p), np.arange(1000)) and not np.array_equal(p, np.arange(1000))


def _box_muller_reference(seed, stream, n):
    """Numbers 0..n-1 of (seed, stream) from the Philox words by NumPy's log, cos and sin: Box-Muller
    on block i gives numbers 2i and 2i+1 (rng.hpp)."""
    words = np.array([ek._core.philox4x32_10([i & 0xFFFFFFFF, i >> 32, stream & 0xFFFFFFFF, stream >> 32],
                                              [seed & 0xFFFFFFFF, seed >> 32]) for i in range((n + 1) // 2)],
                     dtype=np.uint64)

    def u01(a, b):
        return (((a >> np.uint64(5)) << np.uint64(26)) | (b >> np.uint64(6))).astype(np.float64) * 2.0 ** -53 + 2.0 ** -54
    u1, u2 = u01(words[:, 0], words[:, 1]), u01(words[:, 2], words[:, 3])
    rad = np.sqrt(-2 * np.log(u1))
    out = np.stack([rad * np.cos(2 * np.pi * u2), rad * np.sin(2 * np.pi * u2)], axis=1).ravel()[:n]
    return out, np.repeat(rad, 2)[:n]


@pytest.mark.parametrize("seed,stream", [(0, 0), (3, 1), (2 ** 40 + 7, 2 ** 33 + 5)])
def test_normal_numbers_are_box_muller_on_philox(seed, stream):
    """The engine's normal numbers (eight Philox blocks per SIMD packet, its own log and sincos
    kernels on AVX-512) are Box-Muller on the Philox words to a few ulps of the radius."""
    n = 4001
    ref, rad = _box_muller_reference(seed, stream, n)
    got = ek._core.normal(seed, stream, n)
    assert np.max(np.abs(got - ref) / rad) < 4e-15


def test_normal_numbers_do_not_depend_on_where_a_draw_starts():
    """Number i is the same whatever the draw it comes in: odd and even offsets, lengths around the
    eight-pair packets, single numbers."""
    full = ek._core.normal(11, 4, 200)
    for offset in (0, 1, 2, 7, 15, 16, 17, 31, 33):
        for n in (1, 2, 3, 15, 16, 17, 32, 33, 100):
            assert np.array_equal(ek._core.normal(11, 4, n, offset), full[offset:offset + n]), (offset, n)


def run_everything(threads):
    ek.set_num_threads(threads)
    try:
        rng = np.random.default_rng(0)
        x = rng.uniform(size=(300, 200))
        vae = ek.VAE(200, 16, hidden=(300, 120), dtype="float32", seed=5)
        r = vae.elbo(x, n_samples=3, seed=1)
        _, g = vae.elbo_grad(x, n_samples=2, seed=2, kl="mc")
        ll = vae.log_likelihood(x[:20], k=600, seed=3)
        hist = vae.fit(x, epochs=2, batch_size=150, progress=False, seed=4, validation=x[:50])
        return r.elbo, g, ll, hist["step_loss"], vae.parameters()
    finally:
        ek.set_num_threads(2)


def test_bit_identical_with_one_and_two_threads():
    one, two = run_everything(1), run_everything(2)
    assert np.array_equal(one[0], two[0])
    for n in one[1]:
        assert np.array_equal(one[1][n], two[1][n]), n
    assert np.array_equal(one[2], two[2])
    assert np.array_equal(one[3], two[3])
    for n in one[4]:
        assert np.array_equal(one[4][n], two[4][n]), n


def test_same_seed_same_model_different_seed_different():
    a, b, c = (ek.VAE(10, 2, hidden=(8,), seed=s) for s in (0, 0, 1))
    pa, pb, pc = a.parameters(), b.parameters(), c.parameters()
    assert all(np.array_equal(pa[n], pb[n]) for n in pa)
    assert not np.array_equal(pa["encoder.0.weight"], pc["encoder.0.weight"])
    # torch.nn.Linear's default init: U(-1/sqrt(in), 1/sqrt(in))
    w = ek.VAE(400, 2, hidden=(300,), seed=0).parameters()["encoder.0.weight"]
    bound = 1 / np.sqrt(400)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound
    assert abs(w.mean()) < 0.01 * bound and w.var() == pytest.approx(bound ** 2 / 3, rel=0.02)


# -- every model and every stochastic call, 1-4 threads ------------------------------------------
_rng = np.random.default_rng(7)
_X = _rng.uniform(size=(384, 96))          # sizes above the engine's parallel thresholds
_XG = _rng.normal(size=(384, 2))


def _vae():
    return ek.VAE(96, 8, hidden=(128,), dtype="float32", seed=3)


def _hvae(structure):
    return ek.HVAE(96, (8, 4), hidden=(64,), structure=structure, dtype="float32", seed=3)


def _diff():
    return ek.Diffusion(2, timesteps=20, hidden=(64, 64), emb_dim=8, seed=3)


STOCHASTIC = {
    "vae.elbo": lambda: _vae().elbo(_X, n_samples=3, seed=1).elbo,
    "vae.elbo_mc_grad": lambda: _vae().elbo_grad(_X, n_samples=2, kl="mc", seed=2)[1],
    "vae.log_likelihood": lambda: _vae().log_likelihood(_X[:24], k=300, seed=3),
    "vae.sample": lambda: _vae().sample(500, seed=4),
    "vae.reconstruct_sample": lambda: _vae().reconstruct(_X, sample=True, seed=5),
    "vae.fit": lambda: (lambda m: (m.fit(_X, epochs=2, batch_size=128, n_samples=2, validation=_X[:64], seed=4,
                                         progress=False)["step_loss"], m.parameters()))(_vae()),
    "hvae.elbo": lambda: _hvae("markov").elbo(_X, n_samples=2, kl="mc", seed=1).elbo,
    "hvae.log_likelihood": lambda: _hvae("topdown").log_likelihood(_X[:24], k=200, seed=3),
    "hvae.sample": lambda: _hvae("topdown").sample(400, seed=4),
    "hvae.fit": lambda: (lambda m: (m.fit(_X, epochs=1, batch_size=128, seed=4, progress=False)["step_loss"],
                                    m.parameters()))(_hvae("topdown")),
    "diffusion.elbo": lambda: _diff().elbo(_XG[:64], seed=1).elbo,
    "diffusion.elbo_consistency": lambda: _diff().elbo(_XG[:64], form="consistency", seed=1).elbo,
    "diffusion.sample_ddpm": lambda: _diff().sample(600, seed=2),
    "diffusion.sample_ddim_eta": lambda: _diff().sample(600, method="ddim", steps=7, eta=0.5, seed=2),
    "diffusion.fit_ema": lambda: (lambda m: (m.fit(_XG, epochs=2, batch_size=128, ema=0.9, loss="hybrid", seed=4,
                                                   validation=_XG[:64], progress=False)["step_loss"],
                                             m.parameters()))(_diff()),
    "flow.sample": lambda: ek.Flow(4, layers=("coupling", "planar"), hidden=(32,), seed=3).sample(500, seed=1),
    "flow.elbo_smoothed": lambda: ek.Flow(2, hidden=(16,), seed=3).elbo_smoothed(_XG[:32], 0.1, n_samples=20, seed=2),
    "flow.fit": lambda: (lambda m: (m.fit(_XG, epochs=2, batch_size=128, seed=4, progress=False)["step_loss"],
                                    m.parameters()))(ek.Flow(2, hidden=(32,), seed=3)),
    "autoencoder.denoising_fit": lambda: (lambda m: (m.fit(_X, epochs=2, batch_size=128, seed=4,
                                                           progress=False)["step_loss"], m.parameters()))(
        ek.Autoencoder(96, 8, hidden=(64,), kind="denoising", seed=3)),
    "surgery": lambda: ek.surgery(_vae(), _X[:128], seed=1, n_samples=2).average_kl,
    "estimators.vae_encoder": lambda: ek.estimators.vae_encoder(_vae(), _X[:16], n_samples=2, n_repeats=5, seed=1),
}


def _flatten(v):
    if isinstance(v, dict):
        return [a for k in sorted(v) for a in _flatten(v[k])]
    if isinstance(v, (list, tuple)):
        return [a for e in v for a in _flatten(e)]
    if hasattr(v, "__dataclass_fields__"):
        return [a for k in sorted(v.__dataclass_fields__) for a in _flatten(getattr(v, k))]
    return [np.asarray(v)] if isinstance(v, (np.ndarray, float, int, np.floating)) else []


@pytest.mark.parametrize("call", list(STOCHASTIC))
def test_every_stochastic_call_is_bit_identical_on_1_to_4_threads(call):
    results = []
    try:
        for threads in (1, 2, 3, 4):
            ek.set_num_threads(threads)
            results.append(_flatten(STOCHASTIC[call]()))
    finally:
        ek.set_num_threads(2)
    assert results[0] and all(a.size for a in results[0])
    for threads, r in zip((2, 3, 4), results[1:]):
        assert len(r) == len(results[0])
        for a, b in zip(results[0], r):
            assert np.array_equal(a, b, equal_nan=True), f"{call}: 1 and {threads} threads differ"
