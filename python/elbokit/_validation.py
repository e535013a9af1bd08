"""Input checks shared by the Python layer: every rejection is a ValueError that names the
argument, what was expected and what came."""
from __future__ import annotations

import numbers

import numpy as np

from . import _core

__all__ = ["as_matrix", "as_array", "check_int", "check_float", "check_bool", "check_choice", "check_widths", "DTYPES",
           "check_count", "check_num_params", "mlp_params", "MAX_INT", "MAX_ELEMENTS"]

DTYPES = {"float32": np.float32, "float64": np.float64}
# The engine's integers are int64 (Eigen's Index, seeds, steps); a Python int beyond them is
# rejected here rather than by the bindings' conversion.
MAX_INT = 2 ** 63 - 1
# Most numbers in one array or parameter vector the engine allocates on request (sample(n), a
# model's parameters): 2^31 - 1, the products' (32-bit BLAS) and a float32 vector's 8 GiB limit.
MAX_ELEMENTS = 2 ** 31 - 1
# Arrays of at least this many entries get their range from the engine in one parallel pass.
_RANGE_IN_ENGINE = 1 << 16


def _describe(x) -> str:
    if isinstance(x, np.ndarray):
        return f"an array of shape {x.shape} and dtype {x.dtype}"
    if isinstance(x, (list, tuple)) and len(x) > 8:
        return f"a {type(x).__name__} of {len(x)} items"
    return f"{type(x).__name__} {x!r}"[:120]


def as_array(name: str, x, dtype, ndim: int | None = None, shape: tuple | None = None,
             return_range: bool = False):
    """A C-contiguous array of `dtype`; checks rank, shape (None entries are free), emptiness and
    finiteness. With return_range, returns (array, min, max)."""
    try:
        a = np.asarray(x)
    except Exception as e:  # ragged lists and the like
        raise ValueError(f"{name} must be a numeric array, got {_describe(x)} ({e})") from None
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise ValueError(f"{name} must be a numeric array, got dtype {a.dtype}")
    if np.iscomplexobj(a):
        raise ValueError(f"{name} must be real, got dtype {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        want = "(" + ", ".join("n" if s is None else str(s) for s in shape) + ")" if shape else f"{ndim}-D"
        raise ValueError(f"{name} must be a {ndim}-D array of shape {want}, got shape {a.shape}")
    if shape is not None:
        for got, want in zip(a.shape, shape):
            if want is not None and got != want:
                wants = "(" + ", ".join("n" if s is None else str(s) for s in shape) + ")"
                raise ValueError(f"{name} must have shape {wants}, got {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {a.shape}")
    a = np.ascontiguousarray(a, dtype=dtype)
    # min and max propagate NaN and show infinities: both finite means every entry is. A large
    # float array is read once, on the engine's threads (value_range); a small one by NumPy's two
    # reductions (without the temporary of isfinite(a).all()).
    if a.size >= _RANGE_IN_ENGINE and a.dtype in (np.float32, np.float64):
        lo, hi = _core.value_range(a.reshape(-1))
    else:
        lo, hi = a.min(), a.max()
    if not (np.isfinite(lo) and np.isfinite(hi)):
        bad = np.argwhere(~np.isfinite(a))[0]
        raise ValueError(f"{name} must contain only finite values, got {a[tuple(bad)]} at index {tuple(int(i) for i in bad)}")
    return (a, float(lo), float(hi)) if return_range else a


def as_matrix(name: str, x, cols: int, dtype) -> np.ndarray:
    """An (n, cols) C-contiguous matrix of `dtype` with n >= 1 and finite values. float64 data given
    to a float32 model is converted in value; its shape is never changed."""
    return as_array(name, x, dtype, ndim=2, shape=(None, cols))


def check_int(name: str, v, minimum: int = 1, maximum: int = MAX_INT) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {_describe(v)}")
    if v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {v}")
    if v > maximum:
        raise ValueError(f"{name} must be an integer <= {maximum}, got {v}")
    return int(v)


def check_count(name: str, n, row: int, minimum: int = 1) -> int:
    """A number of rows n of a result with `row` numbers each: n * row <= MAX_ELEMENTS."""
    n = check_int(name, n, minimum)
    if n * max(row, 1) > MAX_ELEMENTS:
        raise ValueError(f"{name} must be at most {MAX_ELEMENTS // max(row, 1)} (the result would hold {name} x {row} "
                         f"numbers, at most {MAX_ELEMENTS}), got {n}")
    return n


def mlp_params(widths) -> int:
    """Parameters of a chain of linear layers widths[0] -> widths[1] -> ... (weights and biases)."""
    return sum((a + 1) * b for a, b in zip(widths[:-1], widths[1:]))


def check_num_params(names: str, count: int) -> None:
    """A model of `count` parameters must fit the engine's flat parameter vector (MAX_ELEMENTS)."""
    if count > MAX_ELEMENTS:
        raise ValueError(f"{names} ask for about {count} parameters; a model holds at most {MAX_ELEMENTS}")


def check_float(name: str, v, minimum: float | None = None, positive: bool = False, maximum: float | None = None) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {_describe(v)}")
    v = float(v)
    if not np.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    if positive and not v > 0:
        raise ValueError(f"{name} must be positive, got {v}")
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {v}")
    return v


def check_bool(name: str, v) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {_describe(v)}")
    return bool(v)


def check_choice(name: str, v, choices) -> str:
    if v not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {allowed}, got {v!r}")
    return v


def check_widths(name: str, v, allow_empty: bool = True) -> tuple:
    """A tuple of positive layer widths from an int or an iterable of ints."""
    if isinstance(v, numbers.Integral) and not isinstance(v, bool):
        v = (v,)
    try:
        v = tuple(v)
    except TypeError:
        raise ValueError(f"{name} must be a tuple of positive integers, got {v!r}") from None
    if not v and not allow_empty:
        raise ValueError(f"{name} must hold at least one positive integer, got ()")
    return tuple(check_int(f"{name}[{i}]", h, 1) for i, h in enumerate(v))


def check_image_shape(name: str, v) -> tuple:
    """(C, H, W): three positive integers, the shape of one image (channels first)."""
    if v is None or isinstance(v, (str, bytes)) or not hasattr(v, "__len__") or len(v) != 3:
        raise ValueError(f"{name} must be (C, H, W), three positive integers (channels, height, width), got {v!r}")
    return tuple(check_int(f"{name}[{i}]", s, 1) for i, s in enumerate(v))
