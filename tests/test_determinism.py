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
