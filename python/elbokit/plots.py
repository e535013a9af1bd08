"""Figures for elbokit models: image grids, ELBO curves, the terms of a bound, and a one-page
report of a trained VAE.

matplotlib is imported inside the functions, so ``import elbokit`` does not need it. Without a
display (and without ``MPLBACKEND`` set) the first call selects the non-interactive "Agg" backend;
in a notebook the kernel's inline backend is kept. Every function that draws into one axes takes
``ax=None`` (a new figure) and returns the axes it drew into.

    import elbokit as ek
    from elbokit import plots
    fig = plots.vae_report_figure(vae, test, hist, image_shape=(8, 8))
    plots.save_figure(fig, "runs/vae/report.png")
"""
from __future__ import annotations

import math
import os
import sys

import numpy as np

from ._atomic import atomic_write

__all__ = ["plot_images", "plot_history", "plot_elbo_terms", "vae_report_figure", "save_figure", "use_agg", "close"]


# -- backend ------------------------------------------------------------------------------------
def _no_display() -> bool:
    """True on a Linux/BSD machine with neither an X nor a Wayland display."""
    if sys.platform.startswith(("win", "darwin")):
        return False
    return not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def use_agg() -> None:
    """Selects matplotlib's non-interactive "Agg" backend (for scripts and the command line).
    Closes nothing and is harmless when Agg is already in use."""
    import matplotlib

    matplotlib.use("Agg")


def close(fig) -> None:
    """Closes a figure made here (frees its memory when pyplot keeps track of it)."""
    _pyplot().close(fig)


def _pyplot():
    """matplotlib.pyplot, with Agg selected first when nothing chose a backend and there is no
    display (so that a headless script never tries to open a window)."""
    if "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND") and _no_display():
        use_agg()
    import matplotlib.pyplot as plt

    return plt


def _new_axes(ax, figsize):
    if ax is not None:
        return ax
    _, ax = _pyplot().subplots(figsize=figsize)
    return ax


# -- images -------------------------------------------------------------------------------------
def _mosaic(images: np.ndarray, ncols: int, pad: int, fill: float) -> np.ndarray:
    """Tiles images (N, h, w) row by row into one (rows*(h+pad)-pad, ncols*(w+pad)-pad) array."""
    n, h, w = images.shape
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    out = np.full((nrows * (h + pad) - pad, ncols * (w + pad) - pad), fill, dtype=np.float64)
    for i in range(n):
        r, c = divmod(i, ncols)
        out[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = images[i]
    return out


def _as_images(x, shape) -> np.ndarray:
    """(N, h, w) images from x (N, h*w) or (N, h, w); ValueError naming what does not fit."""
    a = np.asarray(x, dtype=np.float64)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"shape must be (height, width) of positive integers, got {shape!r}")
    if a.ndim == 3 and a.shape[1:] == shape:
        return a
    if a.ndim != 2 or a.shape[1] != shape[0] * shape[1]:
        raise ValueError(f"x must have shape (n, {shape[0] * shape[1]}) or (n, {shape[0]}, {shape[1]}) "
                         f"for images of shape {shape}, got {a.shape}")
    if a.shape[0] == 0:
        raise ValueError("x must hold at least one image, got 0 rows")
    return a.reshape(-1, *shape)


def plot_images(x, shape=(8, 8), ncols: int = 10, ax=None, title: str | None = None, vmin=None, vmax=None,
                cmap: str = "gray_r"):
    """Draws images as one grid.

    Parameters
    ----------
    x : array (n, h*w) or (n, h, w)
        The images, one per row; with 2 columns and ``shape`` not of size 2, the rows are taken
        as 2-D points and drawn as a scatter plot instead.
    shape : (h, w)
        Shape of one image, e.g. (8, 8) for digits, (28, 28) for Fashion-MNIST.
    ncols : int
        Images per row of the grid.
    ax : matplotlib Axes, optional
        Where to draw; a new figure when None.
    title : str, optional
    vmin, vmax : float, optional
        Grey-level range; by default [0, 1] when the images lie in it, else their range.
    cmap : str
        Colour map ("gray_r": ink is dark on white).

    Returns
    -------
    The matplotlib Axes.
    """
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 2 and a.shape[1] == 2 and int(np.prod(shape)) != 2:
        ax = _new_axes(ax, (4, 4))
        ax.scatter(a[:, 0], a[:, 1], s=4, alpha=0.6)
        ax.set_aspect("equal", adjustable="datalim")
        if title:
            ax.set_title(title)
        return ax
    images = _as_images(a, shape)
    lo, hi = float(images.min()), float(images.max())
    if vmin is None:
        vmin = 0.0 if lo >= 0.0 and hi <= 1.0 else lo
    if vmax is None:
        vmax = 1.0 if lo >= 0.0 and hi <= 1.0 else hi
    ncols = _positive_int("ncols", ncols)
    grid = _mosaic(images, ncols, pad=1, fill=np.nan)
    rows, cols = grid.shape
    ax = _new_axes(ax, (min(12.0, 0.12 * cols + 1), min(12.0, 0.12 * rows + 1)))
    import matplotlib

    cm = matplotlib.colormaps[cmap].with_extremes(bad="white")  # bad: the padding between images
    ax.imshow(np.ma.masked_invalid(grid), cmap=cm, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    if title:
        ax.set_title(title)
    return ax


def _positive_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


# -- training curves ----------------------------------------------------------------------------
def plot_history(hist, ax=None, title: str | None = "ELBO during training"):
    """ELBO per epoch: ``train_elbo`` and, when fit had a validation set, ``val_elbo``; the
    training objective (``-train_loss``) too when it differs from the ELBO (beta != 1, KL warm-up
    or free bits, where it is not a bound).

    Parameters
    ----------
    hist : History (or dict) returned by ``fit``.
    ax : matplotlib Axes, optional
    title : str, optional

    Returns
    -------
    The matplotlib Axes.
    """
    if "train_elbo" not in hist:
        raise ValueError(f"hist must be the History returned by fit (with 'train_elbo'), got keys {sorted(hist)}")
    ax = _new_axes(ax, (5, 3.5))
    train = np.asarray(hist["train_elbo"], dtype=np.float64)
    epochs = np.arange(1, train.shape[0] + 1)
    ax.plot(epochs, train, label="train ELBO")
    val = np.asarray(hist.get("val_elbo", ()), dtype=np.float64)
    if val.shape[0] == train.shape[0] and val.size:
        ax.plot(epochs, val, label="validation ELBO")
    loss = np.asarray(hist.get("train_loss", ()), dtype=np.float64)
    if loss.shape == train.shape and not np.allclose(-loss, train, rtol=1e-6, atol=1e-9):
        ax.plot(epochs, -loss, linestyle="--", label="objective (not a bound)")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per example")
    ax.legend(loc="lower right", fontsize="small")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    return ax


# -- the terms of a bound -----------------------------------------------------------------------
def plot_elbo_terms(result, ax=None, title: str | None = None):
    """Bar chart of the mean reconstruction term, KL and ELBO (nats per example) with their
    standard errors as error bars, for an ``ElboResult`` (``vae.elbo(x, ...)``).

    Returns
    -------
    The matplotlib Axes.
    """
    summary = result.summary()
    names = ["reconstruction", "kl", "elbo"]
    labels = ["reconstruction\nE_q[log p(x|z)]", "KL\nKL(q(z|x) || p(z))", "ELBO"]
    means = [summary[t][0] for t in names]
    errs = [0.0 if not math.isfinite(summary[t][1]) else summary[t][1] for t in names]
    ax = _new_axes(ax, (5, 3.5))
    bars = ax.bar(labels, means, yerr=errs, capsize=6, color=["tab:blue", "tab:orange", "tab:green"])
    for bar, m, e in zip(bars, means, errs):
        ax.annotate(f"{m:.2f} ± {e:.2f}", (bar.get_x() + bar.get_width() / 2, m), ha="center",
                    va="bottom" if m >= 0 else "top", fontsize="small",
                    xytext=(0, 3 if m >= 0 else -3), textcoords="offset points")
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_ylabel("nats per example (mean ± s.e.)")
    ax.set_title(title or f"ELBO terms, {result.elbo.shape[0]} examples, {result.n_samples} sample(s)")
    return ax


# -- a one-page report ------------------------------------------------------------------------------
def vae_report_figure(vae, x_test, hist=None, image_shape=None, n: int = 10, n_samples: int = 20, seed: int = 0,
                      title: str | None = None):
    """A figure summing up a trained VAE: the first ``n`` test examples above their
    reconstructions (decoder mean at z = mu(x)), ``n_samples`` samples from the model (decoder
    mean at z ~ N(0, I)), and the ELBO curve of ``hist``. For 2-D data (x_dim == 2) scatter plots
    of the whole test set against its reconstructions and against as many samples replace the
    images.

    Parameters
    ----------
    vae : VAE
    x_test : array (n_test, x_dim)
    hist : History from ``vae.fit``, optional (no curve without it).
    image_shape : (h, w), optional
        Shape of one image; default a square of side sqrt(x_dim).
    n, n_samples : int
        Examples reconstructed and samples drawn (image data).
    seed : int
        Seed of the samples.
    title : str, optional
        Figure title; default the model's repr.

    Returns
    -------
    matplotlib Figure.
    """
    plt = _pyplot()
    x = np.asarray(x_test, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != vae.x_dim or x.shape[0] == 0:
        raise ValueError(f"x_test must have shape (n, {vae.x_dim}) with n >= 1, got {x.shape}")
    if vae.x_dim == 2:
        return _report_2d(plt, vae, x, hist, seed, title)
    if image_shape is None:
        side = int(round(math.sqrt(vae.x_dim)))
        if side * side != vae.x_dim:
            raise ValueError(f"image_shape is needed for x_dim={vae.x_dim}, which is not a square")
        image_shape = (side, side)
    rows = 2 if hist is None else 3
    n = max(1, min(_positive_int("n", n), x.shape[0]))
    originals = x[:n]
    recon = np.asarray(vae.reconstruct(originals), dtype=np.float64)
    samples = np.asarray(vae.sample(_positive_int("n_samples", n_samples), seed=seed), dtype=np.float64)
    fig = plt.figure(figsize=(8, 2.6 * rows + 0.5), layout="constrained")
    axes = fig.subplots(rows, 1, height_ratios=[1.0, 1.0] + ([1.6] if hist is not None else []))
    lo, hi = float(min(originals.min(), 0.0)), float(max(originals.max(), 1.0))
    plot_images(np.concatenate([originals, recon]), image_shape, ncols=n, ax=axes[0], vmin=lo, vmax=hi,
                title="test examples (top) and their reconstructions (bottom)")
    plot_images(samples, image_shape, ncols=n, ax=axes[1], vmin=lo, vmax=hi,
                title="samples: decoder mean at z ~ N(0, I)")
    if hist is not None:
        plot_history(hist, ax=axes[2])
    fig.suptitle(title or repr(vae).replace(" with", "\nwith"), fontsize="small")
    return fig


def _report_2d(plt, vae, x, hist, seed, title):
    cols = 2 if hist is None else 3
    fig = plt.figure(figsize=(4.2 * cols, 4.2), layout="constrained")
    axes = fig.subplots(1, cols)
    recon = np.asarray(vae.reconstruct(x), dtype=np.float64)
    samples, name = _samples_2d(vae, x.shape[0], seed)
    for ax, other, name in ((axes[0], recon, "reconstructions"), (axes[1], samples, name)):
        ax.scatter(x[:, 0], x[:, 1], s=4, alpha=0.5, label="test data")
        ax.scatter(other[:, 0], other[:, 1], s=4, alpha=0.5, label=name)
        ax.set_aspect("equal", adjustable="datalim")
        ax.legend(loc="upper right", fontsize="small", markerscale=3)
        ax.set_title(f"test data and {name}")
    if hist is not None:
        plot_history(hist, ax=axes[2])
    fig.suptitle(title or repr(vae), fontsize="small")
    return fig


def _samples_2d(vae, n: int, seed: int):
    """(samples (n, 2), label): x ~ p(x|z), z ~ N(0, I) for a Gaussian decoder (its mean plus
    noise of the decoder's variance), else the decoder mean. Points show a density better than
    means, which shrink towards the middle."""
    from . import random as _random

    mean = np.asarray(vae.sample(n, seed=seed), dtype=np.float64)
    if vae.likelihood != "gaussian" or not hasattr(vae, "decoder_variance"):
        return mean, "samples (decoder mean)"
    noise = _random.normal(mean.shape, seed=seed, stream=_random.STREAMS["user"])
    return mean + np.sqrt(vae.decoder_variance()) * noise, "samples x ~ p(x|z)"


# -- saving ---------------------------------------------------------------------------------------
def save_figure(fig, path, dpi: int = 100) -> str:
    """Writes ``fig`` to ``path`` atomically: into a temporary file in the same folder, then
    ``os.replace``, so a reader never sees a half-written image. The format follows the
    extension (.png, .pdf, .svg, ...).

    Returns
    -------
    The path written (str).
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower().lstrip(".") or "png"
    with atomic_write(path, "wb", suffix="." + ext) as f:
        fig.savefig(f, format=ext, dpi=dpi)
    return path
