"""The U-Net ε-network of image diffusion models (cpp/include/elbokit/unet.hpp): the diffusion
losses, ELBO and gradients with net="unet" against central finite differences in float64 and
against a PyTorch U-Net (tests/torch_unet.py) on the same weights, steps and noise; determinism
over threads; sampling; bad input."""
import numpy as np
import pytest

import elbokit as ek
from test_gradients import rel_err
from torch_diffusion import denoising_terms, from_elbokit

IMG = (1, 4, 4)
KW = dict(image_shape=IMG, net="unet", channels=(4, 8), groups=2, emb_dim=4, timesteps=12, seed=3)


def make(dtype="float64", **kw):
    return ek.Diffusion(**dict(KW, dtype=dtype, **kw))


def batch(rng, data="continuous", n=6, T=12):
    D = int(np.prod(IMG))
    if data == "discrete256":
        x = rng.integers(0, 256, size=(n, D)) * (2 / 255) - 1
        x[0, :2] = [-1.0, 1.0]
    else:
        x = rng.normal(size=(n, D))
    t = np.concatenate([[1, 2, T], rng.integers(1, T + 1, size=n - 3)])
    return x, t, rng.normal(size=(n, D))


def fd_flat(f, m, idx, h=1e-6):
    """Central differences of f() with respect to the flat parameters at the indices idx."""
    p0 = m._core.get_flat()
    out = np.empty(len(idx))
    for k, i in enumerate(idx):
        p = p0.copy()
        p[i] += h
        m._core.set_flat(p)
        fp = f()
        p[i] -= 2 * h
        m._core.set_flat(p)
        fm = f()
        out[k] = (fp - fm) / (2 * h)
    m._core.set_flat(p0)
    return out


def flat_grad(m, g):
    flat = np.zeros(m.num_parameters)
    for n, s, o, k in m._layout:
        flat[o:o + k] = g[n].reshape(-1)
    return flat


def test_parameters_have_the_torch_unet_names_and_shapes():
    m = make()
    ref = from_elbokit(m)
    mine = {k: v.shape for k, v in m.parameters().items()}
    theirs = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert mine == theirs
    p = m.parameters()  # torch's default initialization: GroupNorm weight 1, bias 0; conv U(±1/√fan_in)
    assert np.all(p["net.norm_out.weight"] == 1) and np.all(p["net.norm_out.bias"] == 0)
    w = p["net.down.1.res.conv1.weight"]
    assert np.abs(w).max() <= 1 / np.sqrt(4 * 9) and np.abs(w).max() > 0.8 / np.sqrt(4 * 9)


@pytest.mark.parametrize("prediction,data,kind,variance", [
    ("epsilon", "continuous", "simple", "large"), ("epsilon", "continuous", "elbo", "small"),
    ("v", "continuous", "hybrid", "large"), ("x0", "discrete256", "elbo", "large"),
    ("epsilon", "continuous", "elbo", "learned"), ("epsilon", "discrete256", "elbo", "learned")])
def test_loss_gradient_matches_finite_differences_and_torch(prediction, data, kind, variance, rng):
    """With variance="learned" the U-Net has 2·C output channels: the prediction, then v."""
    m = make(prediction=prediction, data=data, variance=variance)
    x, t, eps = batch(rng, data)
    J, g = m.loss_grad(x, t, eps, kind)
    gf = flat_grad(m, g)
    # finite differences at 3 entries of every tensor (the largest-gradient one and two random ones)
    idx = []
    for n, s, o, k in m._layout:
        idx += [o + int(np.argmax(np.abs(g[n]).reshape(-1)))] + list(o + rng.integers(0, k, size=2))
    fd = fd_flat(lambda: m.loss(x, t, eps, kind).mean(), m, idx)
    assert rel_err(fd, gf[idx]) < 1e-6
    ref = from_elbokit(m)
    Jt, per_t, gt = ref.loss_grad(x, t, eps, kind)
    assert np.allclose(m.loss(x, t, eps, kind), per_t, rtol=1e-10, atol=1e-10)
    errs = {n: rel_err(gt[n], g[n]) for n in gt}
    assert max(errs.values()) < 1e-9, sorted(errs.items(), key=lambda e: -e[1])[:3]


@pytest.mark.parametrize("variance", ["large", "learned"])
def test_gradient_of_a_batch_run_as_two_halves_matches_torch(variance, rng):
    """36 rows: the U-Net's forward and backward run as two halves of 18, one per thread
    (module.hpp: split_rows), the gradients added in half order."""
    m = make(variance=variance)
    x, t, eps = batch(rng, n=36)
    J, g = m.loss_grad(x, t, eps, "hybrid")
    Jt, per_t, gt = from_elbokit(m).loss_grad(x, t, eps, "hybrid")
    assert np.allclose(m.loss(x, t, eps, "hybrid"), per_t, rtol=1e-10, atol=1e-10)
    errs = {n: rel_err(gt[n], g[n]) for n in gt}
    assert max(errs.values()) < 1e-9, sorted(errs.items(), key=lambda e: -e[1])[:3]


def test_denoising_elbo_matches_torch(rng):
    """Form B with the engine's own noise, recomputed by the PyTorch model step by step."""
    m = make()
    x, _, _ = batch(rng, n=3)
    r = m.elbo(x, form="denoising", seed=5)
    step, _, _ = denoising_terms(m, x, seed=5)
    assert np.allclose(r.steps[:, 1:], step[:, 1:], rtol=1e-9, atol=1e-10)
    assert np.allclose(r.reconstruction, -step[:, 0], rtol=1e-9)


def test_float32_forward_close_to_float64(rng):
    m64, m32 = make(), make("float32")
    m32.set_parameters(m64.parameters())
    x, t, eps = batch(rng)
    l64, l32 = m64.loss(x, t, eps, "simple"), m32.loss(x, t, eps, "simple")
    assert np.allclose(l32, l64, rtol=1e-4)
    e64 = m64.predict(m64.q_sample(x, t, eps), t)["eps"]
    e32 = m32.predict(m32.q_sample(x, t, eps).astype(np.float32), t)["eps"]
    assert np.abs(e32 - e64).max() < 1e-5 * max(1.0, np.abs(e64).max())


def test_bit_identical_over_threads(rng):
    x = rng.normal(size=(40, 16))
    res = []
    for n in (1, 2, 3):
        ek.set_num_threads(n)
        try:
            m = make("float32")
            h = m.fit(x, epochs=2, batch_size=16, progress=False)
            e = m.elbo(x[:5], seed=1).elbo
            s = m.sample(7, method="ddim", steps=5, seed=2)
            # 32 rows or more: the U-Net's rows run as two halves, one per thread (module.hpp: split_rows)
            h2 = m.fit(x, epochs=1, batch_size=40, progress=False)
            s2 = m.sample(36, method="ddpm", seed=3)
        finally:
            ek.set_num_threads(2)
        res.append((m._core.get_flat(), np.asarray(h["train_loss"]), e, s, np.asarray(h2["train_loss"]), s2))
    for r in res[1:]:
        for a, b in zip(res[0], r):
            assert np.array_equal(a, b)


def test_training_lowers_the_loss_and_samples_have_the_image_shape(rng):
    train, _ = ek.datasets.digits()
    x = 2 * train[:256] - 1
    m = ek.Diffusion(image_shape=(1, 8, 8), net="unet", channels=(8, 16), groups=4, timesteps=50, seed=0)
    before = m.elbo(x[:32], seed=0).elbo.mean()
    h = m.fit(x, epochs=3, batch_size=32, lr=2e-3, progress=False)
    after = m.elbo(x[:32], seed=0).elbo.mean()
    assert h["train_loss"][-1] < h["train_loss"][0] and after > before
    s = m.sample(5, method="ddpm", seed=1)
    assert s.shape == (5, 64) and np.isfinite(s).all()
    assert m.sample(4, method="ddim", steps=10, seed=1).shape == (4, 64)


def test_save_and_load_round_trip(tmp_path, rng):
    m = make()
    path = m.save(tmp_path / "unet.elbokit")
    m2 = ek.load(path)
    assert m2.config == m.config
    x, t, eps = batch(rng)
    assert np.array_equal(m.loss(x, t, eps, "elbo"), m2.loss(x, t, eps, "elbo"))


@pytest.mark.parametrize("kw,match", [
    (dict(image_shape=(1, 6, 6), channels=(4, 8, 8)), r"sides must be divisible by 2\^\(levels − 1\) = 4"),
    (dict(groups=3), r"groups .*num_groups must be a positive divisor of the channels 4, got 3"),
    (dict(channels=()), r"channels must hold at least one width"),
    (dict(channels=(4, 0)), r"channels\[1\] must be an integer >= 1, got 0"),
    (dict(image_shape=(1, 4)), r"image_shape must be \(C, H, W\)"),
    (dict(net="resnet"), r"net must be one of 'mlp', 'unet', got 'resnet'"),
])
def test_bad_configurations_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        ek.Diffusion(**dict(KW, **kw))


def test_bad_input_raises(rng):
    m = make()
    x, t, eps = batch(rng)
    with pytest.raises(ValueError, match=r"x must have shape \(n, 16\)"):
        m.loss(x[:, :15], t, eps[:, :15], "simple")
    bad = x.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"finite"):
        m.loss(bad, t, eps, "simple")
    with pytest.raises(ValueError, match=r"x_dim must equal C·H·W = 16"):
        ek.Diffusion(x_dim=15, **KW)
