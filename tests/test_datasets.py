"""Tests for elbokit.datasets (pure Python; no compiled extension needed)."""
import gzip
import os

import numpy as np
import pytest
from sklearn.datasets import load_digits

from elbokit import datasets

TOY = [datasets.two_moons, datasets.swiss_roll, datasets.ring_of_gaussians,
       datasets.pinwheel]


# --------------------------------------------------------------------- digits
def test_digits_shapes_range_dtype():
    train, test = datasets.digits()
    assert train.shape == (1500, 64) and test.shape == (297, 64)
    assert train.dtype == np.float64 and test.dtype == np.float64
    both = np.concatenate([train, test])
    assert both.min() == 0.0 and both.max() == 1.0


def test_digits_split_follows_permutation_and_is_disjoint():
    data = load_digits().data / 16.0
    perm = np.random.default_rng(3).permutation(1797)
    (xtr, ytr), (xte, yte) = datasets.digits(seed=3, test_size=100, return_labels=True)
    np.testing.assert_array_equal(xtr, data[perm[:-100]])
    np.testing.assert_array_equal(xte, data[perm[-100:]])
    np.testing.assert_array_equal(yte, load_digits().target[perm[-100:]])
    assert ytr.shape == (1697,) and set(np.unique(ytr)) == set(range(10))
    # together the two splits are exactly the original rows, each once
    both = np.concatenate([xtr, xte])
    key = lambda a: a[np.lexsort(a.T[::-1])]  # noqa: E731
    np.testing.assert_array_equal(key(both), key(data))


def test_digits_deterministic_per_seed():
    a, _ = datasets.digits(seed=1)
    b, _ = datasets.digits(seed=1)
    c, _ = datasets.digits(seed=2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("bad", [0, 1797, -5, 2.5])
def test_digits_bad_test_size(bad):
    with pytest.raises(ValueError, match="test_size must be an integer in"):
        datasets.digits(test_size=bad)


# ----------------------------------------------------------------------- IDX
def _idx_bytes(arr, magic=None):
    arr = np.asarray(arr, dtype=np.uint8)
    magic = (0x0800 | arr.ndim) if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(
        int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.tobytes()


def _write(path, payload, gz=False):
    path = str(path) + (".gz" if gz else "")
    with open(path, "wb") as fh:
        fh.write(gzip.compress(payload) if gz else payload)
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_images_and_labels(tmp_path, gz):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 3, 5), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1], dtype=np.uint8)
    got_i = datasets.read_idx(_write(tmp_path / "img", _idx_bytes(images), gz))
    got_l = datasets.read_idx(_write(tmp_path / "lab", _idx_bytes(labels), gz))
    assert got_i.dtype == np.uint8 and got_i.shape == (4, 3, 5)
    np.testing.assert_array_equal(got_i, images)
    np.testing.assert_array_equal(got_l, labels)


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_truncated_or_too_long(tmp_path, gz):
    good = _idx_bytes(np.zeros((2, 2, 2)))
    short = _write(tmp_path / "short", good[:-3], gz)
    with pytest.raises(ValueError, match=r"short.*implies 24 bytes, got 21"):
        datasets.read_idx(short)
    long_ = _write(tmp_path / "long", good + b"\x00", gz)
    with pytest.raises(ValueError, match=r"implies 24 bytes, got 25"):
        datasets.read_idx(long_)
    header_only = _write(tmp_path / "hdr", good[:6], gz)
    with pytest.raises(ValueError, match="16-byte header"):
        datasets.read_idx(header_only)


def test_read_idx_wrong_magic_and_broken_gzip(tmp_path):
    bad = _write(tmp_path / "bad", _idx_bytes(np.zeros((2, 2)), magic=0x00000D02))
    with pytest.raises(ValueError, match=r"bad.*magic.*got 0x00000D02"):
        datasets.read_idx(bad)
    cut = _write(tmp_path / "cut.gz", gzip.compress(_idx_bytes(np.zeros(100)))[:-10])
    with pytest.raises(ValueError, match="corrupt gzip"):
        datasets.read_idx(cut)


# ------------------------------------------------------------- Fashion-MNIST
def _fake_fashion(folder, gz):
    rng = np.random.default_rng(1)
    data = {}
    for split, n in (("train", 7), ("t10k", 3)):
        img = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        img[0, 0, 0], img[0, 0, 1] = 0, 255
        lab = rng.integers(0, 10, n, dtype=np.uint8)
        _write(folder / f"{split}-images-idx3-ubyte", _idx_bytes(img), gz)
        _write(folder / f"{split}-labels-idx1-ubyte", _idx_bytes(lab), not gz)
        data[split] = (img, lab)
    return data


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_fake_set(tmp_path, gz):
    data = _fake_fashion(tmp_path, gz)
    train, test = datasets.fashion_mnist(path=tmp_path)
    assert train.shape == (7, 784) and test.shape == (3, 784)
    assert train.dtype == np.float64 and train.min() == 0.0 and train.max() == 1.0
    np.testing.assert_allclose(test * 255, data["t10k"][0].reshape(3, -1))
    (xtr, ytr), (xte, yte) = datasets.fashion_mnist(
        path=str(tmp_path), return_labels=True, dtype=np.float32, limit=5)
    assert xtr.shape == (5, 784) and xtr.dtype == np.float32 and xte.shape == (3, 784)
    np.testing.assert_array_equal(ytr, data["train"][1][:5])
    np.testing.assert_array_equal(yte, data["t10k"][1])


def test_fashion_mnist_env_override_and_missing(tmp_path, monkeypatch):
    _fake_fashion(tmp_path, gz=True)
    monkeypatch.setenv("ELBOKIT_FASHION_MNIST", str(tmp_path))
    assert datasets.fashion_mnist()[0].shape == (7, 784)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist") as info:
        datasets.fashion_mnist(path=empty)
    assert str(empty) in str(info.value) and "path=" in str(info.value)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte")  # labels only needed on request
    assert datasets.fashion_mnist(path=tmp_path)[1].shape == (3, 784)
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        datasets.fashion_mnist(path=tmp_path, return_labels=True)


def test_fashion_mnist_bad_arguments(tmp_path):
    _fake_fashion(tmp_path, gz=False)
    with pytest.raises(ValueError, match="limit must be a positive integer, got 0"):
        datasets.fashion_mnist(path=tmp_path, limit=0)
    with pytest.raises(ValueError, match="dtype must be a floating dtype"):
        datasets.fashion_mnist(path=tmp_path, dtype=np.uint8)


def test_fashion_mnist_default_path(monkeypatch):
    monkeypatch.delenv("ELBOKIT_FASHION_MNIST", raising=False)
    folder = datasets.DEFAULT_FASHION_MNIST_PATH
    names = ["train-images-idx3-ubyte", "t10k-images-idx3-ubyte"]
    present = all(os.path.isfile(os.path.join(folder, f)) or
                  os.path.isfile(os.path.join(folder, f + ".gz")) for f in names)
    if present:
        train, test = datasets.fashion_mnist(limit=100)
        assert train.shape == (100, 784) and test.shape == (100, 784)
        assert 0.0 <= train.min() and train.max() <= 1.0 and train.max() > 0.5
    else:
        with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
            datasets.fashion_mnist(limit=100)


# ------------------------------------------------------------------ toy 2-D
@pytest.mark.parametrize("fn", TOY)
def test_toy_shapes_determinism_scale(fn):
    a = fn(501, seed=4)
    assert a.shape == (501, 2) and a.dtype == np.float64
    assert np.all(np.isfinite(a))
    np.testing.assert_array_equal(a, fn(501, seed=4))
    assert not np.allclose(a, fn(501, seed=5))
    big = fn(20000, seed=0)
    assert np.all(np.abs(big.mean(axis=0)) < 0.25)
    assert np.all((big.std(axis=0) > 0.3) & (big.std(axis=0) < 2.5))


def test_ring_of_gaussians_near_radius_and_modes():
    pts = datasets.ring_of_gaussians(4000, n_modes=6, radius=3.0, std=0.05, seed=1)
    r = np.hypot(pts[:, 0], pts[:, 1])
    assert np.all(np.abs(r - 3.0) < 0.4)
    angle = np.mod(np.arctan2(pts[:, 1], pts[:, 0]), 2 * np.pi)
    mode = np.round(angle / (2 * np.pi / 6)).astype(int) % 6
    assert np.all(np.bincount(mode, minlength=6) > 500)


def test_two_moons_noise_free_on_circles():
    pts = datasets.two_moons(200, noise=0.0, seed=0) + np.array([0.5, 0.25])
    on_upper = np.isclose(np.hypot(pts[:, 0], pts[:, 1]), 1.0)
    on_lower = np.isclose(np.hypot(pts[:, 0] - 1.0, pts[:, 1] - 0.5), 1.0)
    assert np.all(on_upper | on_lower) and on_upper.sum() == 100


@pytest.mark.parametrize("call, match", [
    (lambda: datasets.two_moons(-3), "n must be a positive integer, got -3"),
    (lambda: datasets.swiss_roll(0), "n must be a positive integer, got 0"),
    (lambda: datasets.pinwheel(10.5), "n must be a positive integer, got 10.5"),
    (lambda: datasets.two_moons(noise=-0.1), "noise must be a finite number >= 0"),
    (lambda: datasets.swiss_roll(noise=np.inf), "noise must be a finite number >= 0"),
    (lambda: datasets.ring_of_gaussians(n_modes=0), "n_modes must be a positive"),
    (lambda: datasets.ring_of_gaussians(radius=0), "radius must be a finite number > 0"),
    (lambda: datasets.ring_of_gaussians(std=-1), "std must be a finite number >= 0"),
    (lambda: datasets.pinwheel(n_arms=-2), "n_arms must be a positive integer"),
    (lambda: datasets.pinwheel(radial_std=-1), "radial_std must be"),
    (lambda: datasets.pinwheel(rate=np.nan), "rate must be a finite number"),
    (lambda: datasets.two_moons(seed=-1), "seed must be an integer >= 0, got -1"),
])
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ------------------------------------------------------------------ dispatch
@pytest.mark.parametrize("name", ["two_moons", "swiss_roll", "ring",
                                  "ring_of_gaussians", "pinwheel"])
def test_load_toy(name):
    train, test = datasets.load(name, n=300, seed=2)
    assert train.shape == (300, 2) and test.shape == (60, 2)
    fn = {"ring": datasets.ring_of_gaussians}.get(name) or getattr(datasets, name)
    np.testing.assert_array_equal(train, fn(300, seed=2))
    np.testing.assert_array_equal(test, fn(60, seed=3))


def test_load_dispatch_and_unknown(tmp_path):
    train, test = datasets.load("digits", test_size=97)
    assert train.shape == (1700, 64) and test.shape == (97, 64)
    _fake_fashion(tmp_path, gz=True)
    assert datasets.load("fashion_mnist", path=tmp_path)[1].shape == (3, 784)
    lo, _ = datasets.load("ring", n=50, radius=5.0, std=0.0)
    np.testing.assert_allclose(np.hypot(lo[:, 0], lo[:, 1]), 5.0)
    with pytest.raises(ValueError, match=r"one of digits, fashion_mnist, two_moons.*'mnist'"):
        datasets.load("mnist")
    with pytest.raises(ValueError, match="n must be a positive integer, got -3"):
        datasets.load("pinwheel", n=-3)


def test_all_exports_exist():
    assert set(datasets.__all__) >= {"digits", "fashion_mnist", "read_idx", "two_moons",
                                     "swiss_roll", "ring_of_gaussians", "pinwheel", "load"}
    assert all(hasattr(datasets, name) for name in datasets.__all__)
