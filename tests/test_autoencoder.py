"""Autoencoders (MATH.md §9): the hand-written backward (reconstruction, denoising corruption,
contractive penalty) against finite differences and PyTorch autograd; the penalty against the
finite-difference Jacobian; training; interpolation; bad input."""
import numpy as np
import pytest
import torch

import elbokit as ek
from elbokit.autoencoder import interpolate
from test_gradients import fd_grad, rel_err

CASES = [
    # kind, hidden, activation, code_activation
    ("plain", (7,), "tanh", "identity"),
    ("plain", (6, 5), "softplus", "sigmoid"),
    ("denoising", (8,), "elu", "tanh"),
    ("contractive", (), "relu", "sigmoid"),
    ("contractive", (6,)[:0], "tanh", "tanh"),
    ("contractive", (), "relu", "identity"),
]
TORCH_ACT = {"tanh": torch.tanh, "softplus": torch.nn.functional.softplus, "elu": torch.nn.functional.elu,
             "relu": torch.relu, "sigmoid": torch.sigmoid, "identity": lambda t: t}


def make_ae(kind, hidden, activation, code_activation, seed=0):
    kw = {"noise_std": 0.2} if kind == "denoising" else {"contraction": 0.7} if kind == "contractive" else {}
    return ek.Autoencoder(5, 3, hidden=hidden, kind=kind, activation=activation, code_activation=code_activation,
                          dtype="float64", seed=seed, **kw)


def torch_loss(ae, x, noise, params):
    cfg = ae.config
    act, cact = TORCH_ACT[cfg["activation"]], TORCH_ACT[cfg["code_activation"]]
    nh = len(cfg["hidden"])

    def encoder(xx):
        h = xx
        for i in range(nh):
            h = act(h @ params[f"encoder.{i}.weight"].T + params[f"encoder.{i}.bias"])
        return cact(h @ params["encoder.code.weight"].T + params["encoder.code.bias"])

    xt = x + noise if noise is not None else x
    y = encoder(xt)
    h = y
    for i in range(nh):
        h = act(h @ params[f"decoder.{i}.weight"].T + params[f"decoder.{i}.bias"])
    out = h @ params["decoder.out.weight"].T + params["decoder.out.bias"]
    loss = ((x - out) ** 2).sum(1).mean()
    if cfg["kind"] == "contractive":  # ‖∂y/∂x‖_F² per example by autograd (create_graph for the backward)
        pen = torch.stack([torch.autograd.functional.jacobian(encoder, xt[b:b + 1], create_graph=True).pow(2).sum()
                           for b in range(x.shape[0])])
        loss = loss + cfg["contraction"] * pen.mean()
    return loss


@pytest.mark.parametrize("kind,hidden,activation,code_activation", CASES)
def test_loss_gradient_matches_finite_differences_and_pytorch(kind, hidden, activation, code_activation, rng):
    ae = make_ae(kind, hidden, activation, code_activation)
    x = rng.normal(size=(6, 5))
    noise = 0.2 * rng.normal(size=(6, 5)) if kind == "denoising" else None
    J, g = ae.loss_grad(x, noise)
    fd = fd_grad(lambda: ae.loss(x, noise)["loss"], ae.parameters(), ae.set_parameters)
    errs = {n: rel_err(fd[n], g[n]) for n in fd}
    assert max(errs.values()) < 1e-6, errs
    params = {n: torch.tensor(a, requires_grad=True) for n, a in ae.parameters().items()}
    lt = torch_loss(ae, torch.tensor(x), None if noise is None else torch.tensor(noise), params)
    assert lt.item() == pytest.approx(J, rel=1e-12)
    lt.backward()
    for n, t in params.items():
        assert rel_err(t.grad.numpy(), g[n]) < 1e-10, n


@pytest.mark.parametrize("code_activation", ["sigmoid", "tanh"])
def test_contractive_penalty_is_the_squared_frobenius_norm_of_the_jacobian(code_activation, rng):
    ae = make_ae("contractive", (), "relu", code_activation)
    x = rng.normal(size=(4, 5))
    pen = ae.loss(x)["penalty"]
    for b in range(4):
        jac = np.zeros((3, 5))
        for j in range(5):
            xp, xm = x[b:b + 1].copy(), x[b:b + 1].copy()
            xp[0, j] += 1e-6
            xm[0, j] -= 1e-6
            jac[:, j] = (ae.encode(xp) - ae.encode(xm))[0] / 2e-6
        assert pen[b] == pytest.approx((jac ** 2).sum(), rel=1e-7)


def test_training_lowers_reconstruction_error_and_is_thread_independent():
    train, test = ek.datasets.digits()
    res = []
    for nt in (1, 2):
        ek.set_num_threads(nt)
        ae = ek.Autoencoder(64, 8, hidden=(64,), kind="denoising", noise_std=0.2, seed=1)
        h = ae.fit(train[:600], epochs=8, batch_size=64, lr=3e-3, progress=False, validation=test)
        res.append((ae.parameters(), h))
    ek.set_num_threads(2)
    for n in res[0][0]:
        assert np.array_equal(res[0][0][n], res[1][0][n]), n
    h = res[0][1]
    assert h.train_loss[-1] < 0.6 * h.train_loss[0]
    # better than predicting the mean image
    base = ((test - train.mean(0)) ** 2).sum(1).mean()
    assert -h.val_elbo[-1] < 0.8 * base


@pytest.mark.parametrize("kind,hidden", [("plain", (32,)), ("contractive", ())])
def test_encode_decode_and_validation_run_in_row_chunks(kind, hidden):
    """encode, decode and the validation loss run in chunks of 256 rows on the threads (each row's
    numbers are its chunk's): the same bits as the chunks alone and for 1 and 2 threads; the
    validation loss is the mean of loss()'s per-row terms."""
    train, _ = ek.datasets.digits()
    ae = ek.Autoencoder(64, 8, hidden=hidden, kind=kind, seed=2)
    x = np.ascontiguousarray(train[:600])
    outs = []
    for nt in (1, 2):
        ek.set_num_threads(nt)
        outs.append((ae.encode(x), ae.decode(ae.encode(x))))
    ek.set_num_threads(2)
    assert np.array_equal(outs[0][0], outs[1][0]) and np.array_equal(outs[0][1], outs[1][1])
    code, rec = outs[1]
    for lo, hi in ((0, 256), (256, 512), (512, 600)):
        assert np.array_equal(ae.encode(x[lo:hi]), code[lo:hi]), (lo, hi)
        assert np.array_equal(ae.decode(code[lo:hi]), rec[lo:hi]), (lo, hi)
    h = ae.fit(x[:128], epochs=1, batch_size=128, progress=False, validation=x)
    terms = ae.loss(x)
    lam = ae.config["contraction"] if kind == "contractive" else 0.0
    assert -h.val_elbo[-1] == pytest.approx(terms["reconstruction"].mean() + lam * terms["penalty"].mean(), rel=1e-5)
    assert -h.val_elbo[-1] == pytest.approx(terms["loss"], rel=1e-5)


def test_contractive_penalty_lowers_code_sensitivity():
    train, _ = ek.datasets.digits()
    x = train[:400]
    pens = []
    for kind, kw in (("plain", {}), ("contractive", {"contraction": 1.0})):
        ae = ek.Autoencoder(64, 6, hidden=(), kind=kind, code_activation="sigmoid", seed=0, **kw)
        ae.fit(x, epochs=20, batch_size=64, lr=5e-3, progress=False)
        c = ek.Autoencoder(64, 6, hidden=(), kind="contractive", code_activation="sigmoid", contraction=1.0)
        c.set_parameters(ae.parameters())
        pens.append(c.loss(x)["penalty"].mean())
    assert pens[1] < 0.5 * pens[0], pens


def test_interpolation_for_autoencoder_and_vae(rng):
    ae = ek.Autoencoder(4, 2, hidden=(), dtype="float64")
    x = rng.uniform(size=(2, 4))
    codes, dec = interpolate(ae, x[0], x[1], n_steps=5)
    assert np.allclose(codes[0], ae.encode(x[:1])[0]) and np.allclose(codes[-1], ae.encode(x[1:])[0])
    assert np.allclose(dec, ae.decode(codes))
    vae = ek.VAE(4, 2, hidden=(3,), dtype="float64")
    codes, dec = interpolate(vae, x[0], x[1], n_steps=3)
    assert np.allclose(codes[1], 0.5 * (vae.encode(x[:1])[0][0] + vae.encode(x[1:])[0][0]))
    assert dec.shape == (3, 4)


def test_save_load_roundtrip(tmp_path, rng):
    ae = ek.Autoencoder(5, 2, hidden=(), kind="contractive", code_activation="tanh", contraction=0.3, dtype="float64")
    x = rng.normal(size=(3, 5))
    ae2 = ek.load(ae.save(tmp_path / "ae.elbokit"))
    assert ae2.config == ae.config and np.array_equal(ae2.loss(x)["penalty"], ae.loss(x)["penalty"])


@pytest.mark.parametrize("kwargs,match", [
    (dict(kind="sparse"), "kind must be one of 'plain', 'denoising', 'contractive', got 'sparse'"),
    (dict(kind="contractive", hidden=(4,)), r"hidden must be \(\) for kind='contractive'"),
    (dict(kind="contractive", hidden=(), contraction=-1.0), "contraction must be positive, got -1.0"),
    (dict(kind="denoising", noise_std=0.0), "noise_std must be positive, got 0.0"),
    (dict(kind="plain", noise_std=0.1), "noise_std is used by kind='denoising' only"),
    (dict(code_activation="relu"), "code_activation must be one of 'identity', 'sigmoid', 'tanh', got 'relu'"),
    (dict(code_dim=0), "code_dim must be an integer >= 1, got 0"),
])
def test_bad_construction_raises(kwargs, match):
    args = dict(x_dim=4, code_dim=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ek.Autoencoder(**args)


def test_bad_input_raises():
    ae = ek.Autoencoder(4, 2)
    with pytest.raises(ValueError, match=r"x must have shape \(n, 4\), got \(2, 3\)"):
        ae.encode(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"noise must have shape \(2, 4\), got \(1, 4\)"):
        ae.loss(np.zeros((2, 4)), noise=np.zeros((1, 4)))
    with pytest.raises(ValueError, match="code must contain only finite values, got inf"):
        ae.decode(np.array([[np.inf, 0.0]]))
    with pytest.raises(ValueError, match="n_steps must be an integer >= 2, got 1"):
        interpolate(ae, np.zeros(4), np.ones(4), n_steps=1)
