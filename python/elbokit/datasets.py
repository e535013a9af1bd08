"""Datasets for elbokit: image sets (digits, Fashion-MNIST) and toy 2-D sets.

Pure Python + NumPy (scikit-learn only for the bundled digits); this module
does not need the compiled extension.

* :func:`digits` -- scikit-learn's 8x8 digits, scaled to [0, 1], fixed split.
* :func:`fashion_mnist` -- Fashion-MNIST read from local IDX files
  (:func:`read_idx` is the parser).
* :func:`two_moons`, :func:`swiss_roll`, :func:`ring_of_gaussians`,
  :func:`pinwheel` -- toy 2-D sets, each ``(n, 2)`` float64, deterministic
  for a seed, roughly zero-mean with unit-ish scale.
* :func:`load` -- dispatch by name, returning ``(train, test)``.
"""
import gzip
import numbers
import os

import numpy as np

__all__ = ["digits", "fashion_mnist", "read_idx", "two_moons", "swiss_roll",
           "ring_of_gaussians", "pinwheel", "load", "DATASETS",
           "DEFAULT_FASHION_MNIST_PATH"]

DEFAULT_FASHION_MNIST_PATH = "/usr/share/datasets/fashion-mnist"
_N_DIGITS = 1797


def _check_int(name, value, minimum=1, maximum=None):
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok or value < minimum or (maximum is not None and value > maximum):
        if minimum == 1 and maximum is None:
            what = "a positive integer"
        elif maximum is None:
            what = f"an integer >= {minimum}"
        else:
            what = f"an integer in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return int(value)


def _check_float(name, value, positive=False):
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not ok or not np.isfinite(value) or value < 0 or (positive and value == 0):
        what = "a finite number > 0" if positive else "a finite number >= 0"
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return float(value)


def _rng(seed):
    return np.random.default_rng(_check_int("seed", seed, minimum=0))


# --------------------------------------------------------------------- digits
def digits(seed=0, test_size=297, return_labels=False):
    """scikit-learn's bundled 8x8 digits, pixels divided by 16 (so in [0, 1]).

    The 1797 rows are permuted with ``np.random.default_rng(seed)``; the last
    `test_size` rows of that order form the test set, the rest the train set.

    Returns
    -------
    (train, test) : float64 arrays of shape (1797 - test_size, 64), (test_size, 64)
        or, with ``return_labels=True``, ``((x_train, y_train), (x_test, y_test))``
        where the labels are int64 arrays of shape (n,).
    """
    from sklearn.datasets import load_digits
    test_size = _check_int("test_size", test_size, 1, _N_DIGITS - 1)
    perm = _rng(seed).permutation(_N_DIGITS)
    bunch = load_digits()
    x = bunch.data.astype(np.float64) / 16.0
    y = bunch.target.astype(np.int64)
    tr, te = perm[:-test_size], perm[-test_size:]
    if return_labels:
        return (x[tr], y[tr]), (x[te], y[te])
    return x[tr], x[te]


# --------------------------------------------------------------- IDX / MNIST
def read_idx(path):
    """Read an IDX file (plain or gzip-compressed) of unsigned bytes.

    The header is a big-endian magic number ``0x000008NN`` (``0x08`` = uint8,
    ``NN`` = number of dimensions, e.g. 0x803 for images, 0x801 for labels)
    followed by ``NN`` big-endian uint32 sizes.

    Returns
    -------
    ndarray of uint8 with the header's shape, e.g. (n, 28, 28) or (n,).

    Raises
    ------
    ValueError
        On a bad magic number, a broken gzip stream, or a length that does
        not match the header.
    """
    path = os.fspath(path)
    with open(path, "rb") as fh:
        raw = fh.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise ValueError(f"{path}: corrupt gzip stream ({exc})") from exc
    if len(raw) < 4:
        raise ValueError(f"{path}: expected at least a 4-byte IDX header, "
                         f"got {len(raw)} bytes")
    magic = int.from_bytes(raw[:4], "big")
    ndim = raw[3]
    if raw[:3] != b"\x00\x00\x08" or ndim < 1:
        raise ValueError(f"{path}: expected an IDX magic number 0x000008NN "
                         f"(unsigned bytes, NN >= 1 dimensions, e.g. 0x00000803 "
                         f"for images, 0x00000801 for labels), got 0x{magic:08X}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: expected a {header}-byte header, "
                         f"got {len(raw)} bytes")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(raw) != expected:
        raise ValueError(f"{path}: header shape {shape} implies {expected} bytes, "
                         f"got {len(raw)} bytes")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape).copy()


def _find(folder, stem):
    for name in (stem, stem + ".gz"):
        candidate = os.path.join(folder, name)
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem!r} (or {stem}.gz) not found in {folder!r}. "
        f"On Debian/Ubuntu run `apt-get install dataset-fashion-mnist` (files go "
        f"to {DEFAULT_FASHION_MNIST_PATH}), or pass path= to a folder holding "
        f"train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte "
        f"and t10k-labels-idx1-ubyte (plain or .gz); the environment variable "
        f"ELBOKIT_FASHION_MNIST also sets the folder.")


def fashion_mnist(path=None, return_labels=False, dtype=np.float64, limit=None):
    """Fashion-MNIST from local IDX files, pixels divided by 255 (in [0, 1]).

    Parameters
    ----------
    path : str or path-like, optional
        Folder holding ``train-images-idx3-ubyte``, ``t10k-images-idx3-ubyte``
        (and ``*-labels-idx1-ubyte`` for labels), each plain or ``.gz``.
        Default: ``$ELBOKIT_FASHION_MNIST`` if set, else
        ``/usr/share/datasets/fashion-mnist`` (Debian ``dataset-fashion-mnist``).
    return_labels : bool
        Also return int64 labels of shape (n,).
    dtype : floating dtype of the images (default float64).
    limit : int or None
        Keep only the first `limit` rows of each split.

    Returns
    -------
    (train, test) : arrays of shape (60000, 784), (10000, 784)
        or ``((x_train, y_train), (x_test, y_test))`` with ``return_labels``.
    """
    if path is None:
        path = os.environ.get("ELBOKIT_FASHION_MNIST") or DEFAULT_FASHION_MNIST_PATH
    path = os.fspath(path)
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    if limit is not None:
        limit = _check_int("limit", limit)
    out = []
    for split in ("train", "t10k"):
        images_file = _find(path, f"{split}-images-idx3-ubyte")
        labels_file = _find(path, f"{split}-labels-idx1-ubyte") if return_labels else None
        images = read_idx(images_file)
        if images.ndim != 3:
            raise ValueError(f"{images_file}: expected 3-D images (n, rows, cols), "
                             f"got shape {images.shape}")
        x = images[:limit].reshape(len(images[:limit]), -1).astype(dtype) / dtype.type(255)
        if not return_labels:
            out.append(x)
            continue
        labels = read_idx(labels_file)
        if labels.shape != (images.shape[0],):
            raise ValueError(f"{labels_file}: expected labels of shape "
                             f"({images.shape[0]},), got {labels.shape}")
        out.append((x, labels[:limit].astype(np.int64)))
    return tuple(out)


# ------------------------------------------------------------------ toy 2-D
def two_moons(n=1000, noise=0.05, seed=0):
    """Two interleaving half circles (as sklearn's ``make_moons``), centred.

    Angles are drawn uniformly; Gaussian noise of std `noise` is added and the
    set is shifted by (-0.5, -0.25) so it is roughly zero-mean.

    Returns
    -------
    ndarray of shape (n, 2), float64, rows in random order.
    """
    n = _check_int("n", n)
    noise = _check_float("noise", noise)
    rng = _rng(seed)
    theta = rng.uniform(0.0, np.pi, n)
    upper = np.arange(n) < n - n // 2
    x = np.where(upper, np.cos(theta), 1.0 - np.cos(theta))
    y = np.where(upper, np.sin(theta), 0.5 - np.sin(theta))
    pts = np.stack([x - 0.5, y - 0.25], axis=1) + noise * rng.standard_normal((n, 2))
    return pts[rng.permutation(n)]


def swiss_roll(n=1000, noise=0.25, seed=0):
    """2-D swiss roll: ``t = 1.5*pi*(1 + 2u)``, ``u ~ U(0, 1)``, point ``t*(cos t, sin t)``.

    Gaussian noise of std `noise` is added in these raw units (as sklearn's
    ``make_swiss_roll``); the result is centred by the exact mean
    ``(2, 2/(3*pi))`` and divided by 5, giving std about 1.35 per coordinate.

    Returns
    -------
    ndarray of shape (n, 2), float64.
    """
    n = _check_int("n", n)
    noise = _check_float("noise", noise)
    rng = _rng(seed)
    t = 1.5 * np.pi * (1.0 + 2.0 * rng.random(n))
    pts = np.stack([t * np.cos(t), t * np.sin(t)], axis=1)
    pts += noise * rng.standard_normal((n, 2))
    return (pts - np.array([2.0, 2.0 / (3.0 * np.pi)])) / 5.0


def ring_of_gaussians(n=1000, n_modes=8, radius=2.0, std=0.1, seed=0):
    """Mixture of `n_modes` equal-weight isotropic Gaussians (std `std`) whose
    means are evenly spaced on a circle of radius `radius` around the origin.

    Returns
    -------
    ndarray of shape (n, 2), float64.
    """
    n = _check_int("n", n)
    n_modes = _check_int("n_modes", n_modes)
    radius = _check_float("radius", radius, positive=True)
    std = _check_float("std", std)
    rng = _rng(seed)
    angle = 2.0 * np.pi * rng.integers(0, n_modes, n) / n_modes
    centres = radius * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return centres + std * rng.standard_normal((n, 2))


def pinwheel(n=1000, n_arms=5, radial_std=0.3, tangential_std=0.05, rate=0.25, seed=0):
    """Pinwheel of Johnson et al. (2016, "Composing graphical models with
    neural networks"): Gaussian blobs at (1, 0) with stds (radial_std,
    tangential_std), rotated to one of `n_arms` evenly spaced arms and by an
    extra ``rate * exp(radial coordinate)``, which curls the arms. Unlike the
    original (which multiplies by 10) no rescaling is applied. Arms get
    ``n // n_arms`` or one more points; rows are in random order.

    Returns
    -------
    ndarray of shape (n, 2), float64.
    """
    n = _check_int("n", n)
    n_arms = _check_int("n_arms", n_arms)
    radial_std = _check_float("radial_std", radial_std)
    tangential_std = _check_float("tangential_std", tangential_std)
    if not (isinstance(rate, numbers.Real) and np.isfinite(rate)) or isinstance(rate, bool):
        raise ValueError(f"rate must be a finite number, got {rate!r}")
    rng = _rng(seed)
    feats = rng.standard_normal((n, 2)) * np.array([radial_std, tangential_std])
    feats[:, 0] += 1.0
    arm = rng.permutation(np.arange(n) % n_arms)
    angle = 2.0 * np.pi * arm / n_arms + rate * np.exp(feats[:, 0])
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([feats[:, 0] * c - feats[:, 1] * s,
                     feats[:, 0] * s + feats[:, 1] * c], axis=1)


# ------------------------------------------------------------------ dispatch
_TOY = {"two_moons": two_moons, "swiss_roll": swiss_roll, "ring": ring_of_gaussians,
        "ring_of_gaussians": ring_of_gaussians, "pinwheel": pinwheel}
DATASETS = ("digits", "fashion_mnist") + tuple(_TOY)


def load(name, **kw):
    """Load a dataset by name (one of :data:`DATASETS`) as ``(train, test)``.

    ``digits`` and ``fashion_mnist`` pass `kw` to their functions. For the
    toy 2-D sets, ``n`` (default 1000) train points are drawn with ``seed``
    (default 0) and ``max(1, n // 5)`` test points with ``seed + 1``; other
    keywords go to the generator.

    Returns
    -------
    (train, test) : e.g. arrays of shape (n, 2) and (n // 5, 2) for toy sets.
    """
    if name == "digits":
        return digits(**kw)
    if name == "fashion_mnist":
        return fashion_mnist(**kw)
    if name not in _TOY:
        raise ValueError(f"name must be one of {', '.join(DATASETS)}; got {name!r}")
    n = _check_int("n", kw.pop("n", 1000))
    seed = _check_int("seed", kw.pop("seed", 0), minimum=0)
    fn = _TOY[name]
    return fn(n, seed=seed, **kw), fn(max(1, n // 5), seed=seed + 1, **kw)
