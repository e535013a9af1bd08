"""The engine's counter-based random numbers (Philox4x32-10), exposed so that any noise the engine
draws can be reproduced exactly, for example to feed the same noise to a PyTorch model.

Number i of a (seed, stream) pair is a pure function of (seed, stream, i): results do not depend
on the number of threads. Streams used by the engine: ``STREAMS`` below.
"""
from __future__ import annotations

import numpy as np

from . import _core
from ._validation import MAX_ELEMENTS, check_int

__all__ = ["normal", "uniform", "permutation", "STREAMS"]

#: Streams of one seed used by the engine. fit's epoch e shuffles with stream ``shuffle + e`` and its
#: global step t draws noise (n_samples, batch, z_dim) from stream ``train_noise + t``.
STREAMS = {
    "user": 0,
    "sample": int(_core.STREAM_SAMPLE),
    "log_likelihood": int(_core.STREAM_LOG_LIKELIHOOD),
    "validation": int(_core.STREAM_VALIDATION),
    "shuffle": int(_core.STREAM_SHUFFLE),
    "train_noise": int(_core.STREAM_TRAIN_NOISE),
    "diffusion_elbo": int(_core.STREAM_DIFFUSION_ELBO),
    "diffusion_chain": int(_core.STREAM_DIFFUSION_CHAIN),
    "diffusion_val_time": int(_core.STREAM_DIFFUSION_VAL_TIME),
    "diffusion_time": int(_core.STREAM_DIFFUSION_TIME),
}


def _shape(shape) -> tuple:
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape),)
    try:
        shape = tuple(shape)
    except TypeError:
        raise ValueError(f"shape must be an integer or a tuple of integers >= 0, got {shape!r}") from None
    for i, s in enumerate(shape):
        check_int(f"shape[{i}]", s, minimum=0)
    if int(np.prod(shape, dtype=object)) > MAX_ELEMENTS:
        raise ValueError(f"shape must hold at most {MAX_ELEMENTS} numbers, got {shape}")
    return shape


def normal(shape, seed: int = 0, stream: int = 0) -> np.ndarray:
    """Standard normal numbers (float64) of the given shape, in C order."""
    shape = _shape(shape)
    check_int("seed", seed, 0)
    check_int("stream", stream, 0)
    return _core.normal(seed, stream, int(np.prod(shape, dtype=np.int64))).reshape(shape)


def uniform(shape, seed: int = 0, stream: int = 0) -> np.ndarray:
    """Uniform numbers in (0, 1) (float64) of the given shape."""
    shape = _shape(shape)
    check_int("seed", seed, 0)
    check_int("stream", stream, 0)
    return _core.uniform(seed, stream, int(np.prod(shape, dtype=np.int64))).reshape(shape)


def permutation(n: int, seed: int = 0, stream: int = 0) -> np.ndarray:
    """A permutation of 0..n-1 (int64), as fit's shuffling draws it."""
    check_int("n", n, 0, MAX_ELEMENTS)
    check_int("seed", seed, 0)
    check_int("stream", stream, 0)
    return _core.permutation(n, seed, stream)
