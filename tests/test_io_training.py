"""Saving and loading (atomic writes, clear errors) and the training loop's behaviour."""
import os

import numpy as np
import pytest

import elbokit as ek


def test_save_load_roundtrip(tmp_path):
    for kw in (dict(likelihood="bernoulli", dtype="float32"), dict(likelihood="gaussian", decoder_var=0.25, dtype="float64"),
               dict(likelihood="gaussian", dtype="float64", hidden=())):
        vae = ek.VAE(5, 2, seed=3, **{"hidden": (4, 3), **kw})
        p = vae.parameters()
        p["decoder.out.bias"] += 0.5
        vae.set_parameters(p)
        path = tmp_path / "m.elbokit"
        assert vae.save(path) == str(path)
        back = ek.load(path)
        assert back.config == vae.config
        q = back.parameters()
        assert set(q) == set(p) and all(np.array_equal(q[n], p[n]) and q[n].dtype == p[n].dtype for n in p)
        x = np.random.default_rng(0).uniform(size=(3, 5))
        assert np.array_equal(back.elbo(x, seed=1).elbo, vae.elbo(x, seed=1).elbo)
    assert [f for f in os.listdir(tmp_path) if f.startswith(".elbokit-")] == []  # no temporary left


def test_save_overwrites_atomically_and_rejects_missing_folder(tmp_path):
    path = tmp_path / "m.elbokit"
    a, b = ek.VAE(5, 2, seed=0), ek.VAE(5, 2, seed=1)
    a.save(path)
    b.save(path)
    assert np.array_equal(ek.load(path).parameters()["encoder.0.weight"], b.parameters()["encoder.0.weight"])
    with pytest.raises(ValueError, match="path must be in an existing folder"):
        a.save(tmp_path / "nope" / "m.elbokit")


def test_a_killed_save_loses_nothing_and_its_temporary_is_removed_by_the_next_write(tmp_path):
    """A process SIGKILLed while saving leaves the old file whole and its temporary behind; the next
    save into that folder removes it, and leaves a running writer's temporary, another host's and
    unrelated files."""
    import signal
    import subprocess
    import sys

    path = tmp_path / "m.elbokit"
    old = ek.VAE(5, 2, seed=0)
    old.save(path)
    killed = (f"import os, signal; from elbokit._atomic import atomic_write\n"
              f"with atomic_write({str(path)!r}) as f:\n"
              f"    f.write(b'half a model'); f.flush(); os.kill(os.getpid(), signal.SIGKILL)\n")
    p = subprocess.Popen([sys.executable, "-c", killed])
    assert p.wait(timeout=60) == -signal.SIGKILL
    stale = [f for f in os.listdir(tmp_path) if f.startswith(".elbokit-")]
    assert len(stale) == 1 and f"-{p.pid}-" in stale[0]  # the dead writer's temporary, named by its pid
    assert np.array_equal(ek.load(path).parameters()["encoder.0.weight"], old.parameters()["encoder.0.weight"])
    running = (f"import sys, time; from elbokit._atomic import atomic_write\n"
               f"with atomic_write({str(tmp_path / 'other.bin')!r}) as f:\n"
               f"    print('open', flush=True); time.sleep(60)\n")
    writer = subprocess.Popen([sys.executable, "-c", running], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "open"
        live = set(f for f in os.listdir(tmp_path) if f.startswith(".elbokit-")) - set(stale)
        assert len(live) == 1
        (tmp_path / ".elbokit-some_other_host-1-abc.tmp").write_bytes(b"x")
        (tmp_path / "notes.txt").write_text("keep")
        new = ek.VAE(5, 2, seed=1)
        new.save(path)
        left = set(os.listdir(tmp_path))
        assert stale[0] not in left
        assert live <= left and {".elbokit-some_other_host-1-abc.tmp", "notes.txt", "m.elbokit"} <= left
        assert len(left) == 4
        assert np.array_equal(ek.load(path).parameters()["encoder.0.weight"], new.parameters()["encoder.0.weight"])
    finally:
        writer.kill()
        writer.wait()


def test_load_rejects_truncated_and_foreign_files(tmp_path):
    path = tmp_path / "m.elbokit"
    ek.VAE(5, 2, seed=0).save(path)
    data = path.read_bytes()
    (tmp_path / "cut.elbokit").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="is not a readable elbokit model file"):
        ek.load(tmp_path / "cut.elbokit")
    (tmp_path / "text.elbokit").write_text("hello")
    with pytest.raises(ValueError, match="is not a readable elbokit model file"):
        ek.load(tmp_path / "text.elbokit")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="no elbokit header"):
        ek.load(tmp_path / "other.npz")
    with pytest.raises(FileNotFoundError, match="no model file"):
        ek.load(tmp_path / "missing.elbokit")


def test_fit_improves_the_elbo_and_records_history():
    train, test = ek.datasets.digits()
    vae = ek.VAE(64, 4, hidden=(32,), seed=0)
    before = vae.elbo(test, seed=0).mean()
    hist = vae.fit(train, epochs=4, batch_size=100, validation=test, progress=False, warmup_steps=30, free_bits=0.05)
    after = vae.elbo(test, seed=0).mean()
    assert after > before + 5
    assert hist.epochs == 4 and len(hist["step_loss"]) == 4 * 15 and hist["steps"] == 60
    assert hist["val_elbo"][-1] > hist["val_elbo"][0]
    # warm-up: beta_t = min(1, t / 30) at the last step t of each epoch (t = 14, 29, 44, 59)
    assert np.allclose(hist["beta"], [14 / 30, 29 / 30, 1.0, 1.0])
    assert hist["kl_terms"].shape == (4, 4) and hist["active_units"].shape == (4, 1)
    assert np.allclose(hist["train_elbo"], hist["train_reconstruction"] - hist["train_kl"])


def test_nonfinite_loss_stops_with_the_step_and_keeps_parameters():
    """A loss that overflows stops training with a warning naming the step; the parameters are
    those of the last finite step and the History records where it stopped."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)) * 1e3
    vae = ek.VAE(4, 2, hidden=(8,), likelihood="gaussian", decoder_var=1e-3, dtype="float32", seed=0)
    p0 = vae.parameters()
    with pytest.warns(ek.DivergenceWarning, match=r"training diverged at step \d+"):
        hist = vae.fit(x, epochs=50, batch_size=16, lr=10.0, optimizer="sgd", momentum=0.9, progress=False)
    p = vae.parameters()
    assert all(np.isfinite(a).all() for a in p.values())
    assert hist["diverged"] and hist["stopped_early"]
    step = hist["diverged_at_step"]
    assert step == hist["steps"] == len(hist["step_loss"]) < 50 * 4
    assert f"step {step} " in hist["divergence"]
    if step == 0:
        assert all(np.array_equal(p[n], p0[n]) for n in p)
    assert np.isfinite(hist["step_loss"]).all()


def test_clip_norm_bounds_the_first_update():
    """With clip_norm, an SGD step without momentum moves the parameters by at most lr * clip_norm."""
    train, _ = ek.datasets.digits()
    vae = ek.VAE(64, 4, hidden=(32,), seed=0)
    p0 = np.concatenate([a.ravel() for a in vae.parameters().values()])
    vae.fit(train[:50], epochs=1, batch_size=50, lr=0.1, optimizer="sgd", momentum=0.0, clip_norm=0.5, progress=False)
    p1 = np.concatenate([a.ravel() for a in vae.parameters().values()])
    assert np.linalg.norm(p1 - p0) == pytest.approx(0.05, rel=1e-3)


def test_active_units_and_decoder_variance():
    train, test = ek.datasets.digits()
    vae = ek.VAE(64, 6, hidden=(32,), seed=0)
    hist = vae.fit(train, epochs=3, batch_size=50, validation=test, progress=False)
    assert vae.active_units(test) == hist["active_units"][-1, 0]
    mu, _ = vae.encode(test)
    assert vae.active_units(test) == int((mu.astype(np.float64).var(axis=0) > 0.01).sum())
    g = ek.VAE(4, 2, likelihood="gaussian", dtype="float64", seed=0)
    p = g.parameters()
    p["decoder.logvar"] = np.array([0.0, 1.0, -12.0, 11.0])
    g.set_parameters(p)
    assert np.allclose(g.decoder_variance(), np.exp([0.0, 1.0, -10.0, 10.0]))
    with pytest.raises(ValueError, match="decoder_variance needs likelihood='gaussian'"):
        vae.decoder_variance()


def test_saved_files_get_ordinary_permissions(tmp_path):
    path = tmp_path / "m.elbokit"
    ek.VAE(3, 1, seed=0).save(path)
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == (0o666 & ~umask)


@pytest.mark.parametrize("make", [lambda: ek.VAE(64, 6, hidden=(32,), seed=0),
                                  lambda: ek.HVAE(64, z_dims=(6, 3), hidden=(32,), seed=0)])
def test_fit_without_active_units_trains_the_same(make):
    """fit(active_units=False) skips the per-epoch encoder pass: the history has no active units,
    and the training itself (steps, parameters) is bit for bit the same."""
    train, test = ek.datasets.digits()
    a, b = make(), make()
    ha = a.fit(train[:500], epochs=2, batch_size=50, validation=test[:100], progress=False)
    hb = b.fit(train[:500], epochs=2, batch_size=50, validation=test[:100], progress=False, active_units=False)
    assert len(ha["active_units"]) == 2 and hb["active_units"].size == 0
    assert np.array_equal(ha["step_loss"], hb["step_loss"]) and np.array_equal(ha["val_elbo"], hb["val_elbo"])
    pa, pb = a.parameters(), b.parameters()
    assert all(np.array_equal(pa[n], pb[n]) for n in pa)
    with pytest.raises(ValueError, match="active_units must be True or False, got str 'no'"):
        a.fit(train[:100], epochs=1, progress=False, active_units="no")
