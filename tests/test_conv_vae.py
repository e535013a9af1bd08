"""The conv VAE (ek.VAE(net="conv")) and the HVAE with a conv level 0, against the PyTorch float64
references of tests/torch_reference_conv.py on the same weights and noise: names and layouts, the
full ELBO and its gradient; torch's default initialization; bit-identical results for 1, 2 and 3
threads; save/load; bad input."""
import os
import sys

import numpy as np
import pytest
import torch

import elbokit as ek

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_torch_crosscheck import assert_close  # noqa: E402
from torch_reference_conv import TorchConvHVAE, TorchConvVAE  # noqa: E402

IMAGE = (1, 8, 8)


@pytest.fixture(scope="module")
def digits():
    return ek.datasets.digits()[0][:96]


def conv_vae(likelihood="bernoulli", channels=(4, 6), activation="tanh", dtype="float64", seed=3, z_dim=5,
             image_shape=IMAGE):
    vae = ek.VAE(None, z_dim, net="conv", image_shape=image_shape, channels=channels, likelihood=likelihood,
                 activation=activation, dtype=dtype, seed=seed)
    if likelihood == "gaussian":  # a non-zero decoder log-variance, so its gradient is exercised
        p = vae.parameters()
        p["decoder.logvar"] = 0.5 * np.random.default_rng(seed).normal(size=vae.x_dim)
        vae.set_parameters(p)
    return vae


def torch_grads(ref, x, eps, kl):
    ref.zero_grad()
    ref.elbo_terms(x, eps, kl)[0].mean().backward()
    return {k: p.grad.numpy().copy() for k, p in ref.named_parameters()}


@pytest.mark.parametrize("likelihood,activation,channels,kl,n", [
    ("bernoulli", "tanh", (4, 6), "analytic", 7),
    ("gaussian", "silu", (3,), "mc", 7),
    ("bernoulli", "relu", (2, 3, 4), "analytic", 7),
    ("bernoulli", "relu", (8, 16), "analytic", 7),  # float32: Winograd F(2x2, 2x2) for the 8 -> 16 layers
    # 32 rows or more: the step runs as two halves of the batch, one per thread (module.hpp: split_rows)
    ("bernoulli", "tanh", (4, 6), "analytic", 36),
    ("gaussian", "silu", (3,), "mc", 33),
])
def test_conv_vae_elbo_and_gradient_match_torch(digits, likelihood, activation, channels, kl, n):
    vae = conv_vae(likelihood, channels, activation)
    ref = TorchConvVAE.from_elbokit(vae)  # load_state_dict(strict=True): the names and layouts agree
    assert {k: tuple(v.shape) for k, v in ref.state_dict().items()} == {k: v.shape for k, v in vae.parameters().items()}
    x = digits[:n]
    eps = np.random.default_rng(0).normal(size=(2, n, vae.z_dim))
    r, grads = vae.elbo_grad(x, eps=eps, kl=kl)
    with torch.no_grad():
        elbo, rec, klv, _ = ref.elbo_terms(x, eps, kl)
    assert_close(r.reconstruction, rec.numpy(), 1e-10, 1e-10, "reconstruction")
    assert_close(r.kl, klv.numpy(), 1e-10, 1e-10, "kl")
    assert_close(r.elbo, elbo.numpy(), 1e-10, 1e-10, "elbo")
    expected = torch_grads(ref, x, eps, kl)
    assert set(grads) == set(expected)
    for name in expected:
        assert_close(grads[name], expected[name], 1e-8, 1e-10, f"grad {name}")
    # float32: the same model, forward within 1e-5 relative
    v32 = ek.VAE(None, vae.z_dim, net="conv", image_shape=IMAGE, channels=channels, likelihood=likelihood,
                 activation=activation, dtype="float32")
    v32.set_parameters(vae.parameters())
    assert_close(v32.elbo(x, eps=eps, kl=kl).elbo, elbo.numpy(), 1e-5, 1e-4, "float32 elbo")
    # and its gradient, within float32's precision of the largest entry of each parameter's gradient
    _, g32 = v32.elbo_grad(x, eps=eps, kl=kl)
    for name in expected:
        scale = float(np.max(np.abs(expected[name])))
        assert_close(g32[name], expected[name], 1e-4, 1e-5 * scale, f"float32 grad {name}")


def test_torch_conv_weights_load_by_name_and_init_is_torch_default():
    vae = conv_vae(channels=(4, 6), seed=11)
    p = vae.parameters()
    # torch's default: U(±1/√fan_in), fan_in = weight.size(1)·k·k (Conv2d C_in·16, ConvTranspose2d C_out·16)
    for name, fan in [("encoder.0", 1 * 16), ("encoder.1", 4 * 16), ("decoder.0", 4 * 16), ("decoder.out", 1 * 16),
                      ("decoder.fc", 5)]:
        bound = 1 / np.sqrt(fan)
        w = p[name + ".weight"]
        assert np.abs(w).max() <= bound and np.abs(w).max() > 0.8 * bound, name
        assert np.abs(p[name + ".bias"]).max() <= bound, name
    # a torch model's state_dict loads by name, and the model then computes torch's forward
    torch.manual_seed(0)
    ref = TorchConvVAE(IMAGE, (4, 6), 5, activation="tanh")
    vae.set_parameters(ref.state_dict())
    x = np.random.default_rng(1).uniform(size=(3, 64))
    mu, lv = vae.encode(x)
    with torch.no_grad():
        tmu, tlv = ref.encode(x)
        logits = ref.decode(torch.from_numpy(mu))
    assert_close(mu, tmu.numpy(), 1e-12, 1e-12, "mu")
    assert_close(lv, tlv.numpy(), 1e-12, 1e-12, "logvar")
    assert_close(vae.decode(mu, logits=True), logits.numpy(), 1e-12, 1e-12, "decode")


@pytest.mark.parametrize("structure,n", [("markov", 6), ("topdown", 6), ("topdown", 34)])  # 34: two halves
def test_hvae_conv_level0_matches_torch(digits, structure, n):
    h = ek.HVAE(None, z_dims=(4, 3), hidden=(8,), structure=structure, net="conv", image_shape=IMAGE,
                channels=(3, 5), activation="tanh", dtype="float64", seed=2)
    ref = TorchConvHVAE.from_elbokit(h)
    assert {k: tuple(v.shape) for k, v in ref.state_dict().items()} == {k: v.shape for k, v in h.parameters().items()}
    assert "encoder.0.0.weight" in h.parameters() and "decoder.0.fc.weight" in h.parameters()
    x = digits[:n]
    rng = np.random.default_rng(5)
    eps = [rng.normal(size=(2, n, z)) for z in (4, 3)]
    r, grads = h.elbo_grad(x, eps=eps)
    ref.zero_grad()
    elbo, rec, kl_levels = ref.elbo_terms(x, eps)
    elbo.mean().backward()
    assert_close(r.elbo, elbo.detach().numpy(), 1e-10, 1e-10, "elbo")
    assert_close(r.kl_levels, kl_levels.detach().numpy(), 1e-10, 1e-10, "kl_levels")
    for name, prm in ref.named_parameters():
        assert_close(grads[name], prm.grad.numpy(), 1e-8, 1e-10, f"grad {name}")


def test_hvae_one_level_conv_is_the_conv_vae(digits):
    """With L = 1 the HVAE with net="conv" is the conv VAE: same names, values and gradients."""
    kw = dict(net="conv", image_shape=IMAGE, channels=(3, 4), activation="tanh", dtype="float64", seed=4)
    v = ek.VAE(None, 3, **kw)
    h = ek.HVAE(None, z_dims=(3,), hidden=(), **kw)
    assert list(v.parameters()) == list(h.parameters())
    h.set_parameters(v.parameters())
    eps = np.random.default_rng(2).normal(size=(1, 5, 3))
    rv, gv = v.elbo_grad(digits[:5], eps=eps)
    rh, gh = h.elbo_grad(digits[:5], eps=[eps])
    assert_close(rh.elbo, rv.elbo, 1e-12, 1e-12, "elbo")
    for k in gv:
        assert_close(gh[k], gv[k], 1e-12, 1e-14, k)


def test_conv_vae_bit_identical_for_1_2_3_threads():
    """elbo_grad and a short fit on float32 16×16 images, shapes large enough to run in parallel."""
    x = np.random.default_rng(0).uniform(size=(48, 256)).astype(np.float32)
    eps = np.random.default_rng(1).normal(size=(1, 48, 4))
    before = ek.get_num_threads()
    out = []
    try:
        for n in (1, 2, 3):
            ek.set_num_threads(n)
            vae = conv_vae(channels=(16, 32), dtype="float32", z_dim=4, image_shape=(1, 16, 16), activation="relu")
            r, g = vae.elbo_grad(x, eps=eps)
            vae.fit(x, epochs=1, batch_size=24, progress=False, active_units=False)
            out.append([r.elbo, *g.values(), *vae.parameters().values()])
    finally:
        ek.set_num_threads(before)
    for other in out[1:]:
        for a, b in zip(out[0], other):
            assert a.tobytes() == b.tobytes()


def test_conv_vae_fit_save_load_and_sample(digits, tmp_path):
    vae = conv_vae(dtype="float32", channels=(4, 8))
    before = vae.elbo(digits, seed=1).mean()
    hist = vae.fit(digits, epochs=3, batch_size=32, lr=3e-3, progress=False)
    assert len(hist.train_elbo) == 3
    assert vae.elbo(digits, seed=1).mean() > before
    path = vae.save(tmp_path / "conv.elbokit")
    back = ek.load(path)
    assert back.config == vae.config and back.net == "conv" and back.image_shape == IMAGE
    for k, v in vae.parameters().items():
        assert np.array_equal(back.parameters()[k], v)
    assert np.array_equal(back.elbo(digits, seed=2).elbo, vae.elbo(digits, seed=2).elbo)
    s = vae.sample(4, seed=0)
    assert s.shape == (4, 64) and np.all((s >= 0) & (s <= 1))
    assert np.all(np.isfinite(vae.log_likelihood(digits[:4], k=8)))
    assert "net='conv'" in repr(vae)
    h = ek.HVAE(None, z_dims=(3, 2), net="conv", image_shape=IMAGE, channels=(2,), hidden=(4,), structure="topdown")
    back = ek.load(h.save(tmp_path / "h.elbokit"))
    assert back.config == h.config


def test_conv_vae_rejects_bad_input():
    with pytest.raises(ValueError, match=r"image_shape \(1, 28, 28\) with channels \(32, 64, 128\): the sides must "
                                         r"be divisible by 8"):
        ek.VAE(None, 4, net="conv", image_shape=(1, 28, 28), channels=(32, 64, 128))
    with pytest.raises(ValueError, match=r"x_dim must equal C·H·W = 64 for image_shape \(1, 8, 8\), got 63"):
        ek.VAE(63, 4, net="conv", image_shape=IMAGE)
    with pytest.raises(ValueError, match=r"hidden is for net='mlp'"):
        ek.VAE(None, 4, net="conv", image_shape=IMAGE, hidden=(16,))
    with pytest.raises(ValueError, match=r"image_shape must be given as \(C, H, W\) with net='conv', got None"):
        ek.VAE(None, 4, net="conv")
    with pytest.raises(ValueError, match=r"image_shape must be three positive integers \(C, H, W\), got \(8, 8\)"):
        ek.VAE(None, 4, net="conv", image_shape=(8, 8))
    with pytest.raises(ValueError, match=r"channels is for net='conv'"):
        ek.VAE(64, 4, channels=(4,))
    with pytest.raises(ValueError, match=r"net must be one of 'mlp', 'conv', got 'cnn'"):
        ek.VAE(64, 4, net="cnn")
    with pytest.raises(ValueError, match=r"x_dim must equal C·H·W = 64"):
        ek.HVAE(60, z_dims=(2,), net="conv", image_shape=IMAGE, channels=(2,))
    vae = conv_vae()
    with pytest.raises(ValueError, match=r"x must have shape \(n, 64\)|x must .*64"):
        vae.elbo(np.zeros((2, 63)))
    bad = np.full((2, 64), 0.5)
    bad[1, 3] = np.nan
    with pytest.raises(ValueError, match=r"x must contain only finite values"):
        vae.elbo(bad)


@pytest.mark.parametrize("structure", [None, "markov", "topdown"])
def test_encode_decode_of_many_rows_in_chunks_match_torch_and_threads(structure):
    """encode and decode of 600 rows (three of the engine's 256-row chunks, the last one short) equal
    the PyTorch reference on all rows at once, and are bit-identical for 1, 2 and 3 threads. The
    chunks bound the activations held: one chunk's per thread, not all N rows'."""
    rng = np.random.default_rng(7)
    x = rng.uniform(size=(600, 64))
    kw = dict(net="conv", image_shape=IMAGE, channels=(3, 5), activation="tanh", dtype="float64", seed=6)
    if structure is None:
        m = ek.VAE(None, 4, **kw)
        ref, zdim = TorchConvVAE.from_elbokit(m), 4
    else:
        m = ek.HVAE(None, z_dims=(4, 3), hidden=(8,), structure=structure, **kw)
        ref, zdim = TorchConvHVAE.from_elbokit(m), 4
    z = rng.normal(size=(600, zdim))
    eps = [rng.normal(size=(600, d)) for d in (4, 3)]
    before = ek.get_num_threads()
    out = []
    try:
        for n in (1, 2, 3):
            ek.set_num_threads(n)
            if structure is None:
                enc = list(m.encode(x))
            else:
                enc = [a for level in m.encode(x, eps=eps) for a in level]
            out.append(enc + [m.decode(z)])
    finally:
        ek.set_num_threads(before)
    for other in out[1:]:
        for a, b in zip(out[0], other):
            assert a.tobytes() == b.tobytes()
    with torch.no_grad():
        if structure is None:
            mu, lv = ref.encode(torch.from_numpy(x))
            expect = [mu.numpy(), lv.numpy()]
            dec = torch.sigmoid(ref.decode(torch.from_numpy(z))).numpy()
        else:
            chain = ref._chain(torch.from_numpy(x), [torch.from_numpy(e)[None] for e in eps])
            expect = [t.numpy().reshape(600, -1) for (_, mu, lv, _, _) in chain for t in (mu, lv)]
            dec = torch.sigmoid(ref._dec[0](torch.from_numpy(z))).numpy()
    for a, b in zip(out[0][:-1], expect):
        assert_close(a, b, 1e-10, 1e-12, "encode")
    assert_close(out[0][-1], dec, 1e-10, 1e-12, "decode")
