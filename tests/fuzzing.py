"""Shared pieces of the property-based tests (tests/test_fuzz_*.py): strategies for arrays and
scalars users pass by mistake, and the property every public call must have.

The property: a call either returns finite numbers with the documented shapes, or raises
ValueError / TypeError whose message names the argument. Anything else -- another exception (from
pybind11, NumPy internals, a MemoryError), a NaN or an infinity in the result -- fails the test.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from hypothesis import strategies as st

DTYPES = ("float64", "float32", "float16", "int64", "int8", "uint8", "bool", "object", "complex128", "str")
VALUES = ("normal", "unit", "unit", "zero", "nan", "inf", "-inf", "huge", "tiny", "big")
LAYOUTS = ("C", "F", "strided", "readonly", "list")


@dataclasses.dataclass(repr=False)
class Drawn:
    """An array input and whether the documentation says it is acceptable."""
    value: object
    valid: object  # True: must be accepted; False: must be rejected; None: either (huge magnitudes)
    desc: str
    in_unit: bool = False
    arr: object = None  # the values as a float64 array when they are numeric

    def __repr__(self):
        return self.desc


def _values(kind, shape, rng):
    if kind == "normal":
        return rng.normal(size=shape)
    if kind == "unit":
        return rng.uniform(size=shape)
    if kind == "zero":
        return np.zeros(shape)
    a = rng.uniform(size=shape)
    if a.size:
        idx = tuple(int(rng.integers(0, s)) for s in shape) if shape else ()
        a[idx] = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf, "huge": 1e300, "tiny": 1e-310,
                  "big": 1e6}[kind]
    return a


@st.composite
def arrays(draw, shape, unit_interval=False, finite_kinds=("normal", "unit", "zero", "tiny", "big")):
    """A mostly-right array input for a documented shape (a tuple; None = any positive length),
    perturbed in shape, dtype, layout and values. unit_interval: valid values lie in [0, 1]."""
    seed = draw(st.integers(0, 2 ** 16))
    rng = np.random.default_rng(seed)
    sizes = [draw(st.sampled_from([1, 2, 5])) if s is None else s for s in shape]
    how = draw(st.sampled_from(["right"] * 6 + ["empty", "wrong_width", "extra_dim", "fewer_dims", "scalar"]))
    if how == "empty":
        sizes[0] = 0
    elif how == "wrong_width" and len(sizes) >= 2:
        sizes[-1] = draw(st.sampled_from([0, 1, sizes[-1] + 1]))
        if sizes[-1] == shape[-1]:
            sizes[-1] += 2
    elif how == "extra_dim":
        sizes = sizes + [1]
    elif how == "fewer_dims":
        sizes = sizes[1:]
    elif how == "scalar":
        sizes = []
    shape_ok = how == "right" or (how == "wrong_width" and len(shape) < 2)
    if how == "wrong_width" and len(shape) < 2:
        how = "right"
    kind = draw(st.sampled_from(VALUES))
    dtype = draw(st.sampled_from(DTYPES[:4] * 3 + DTYPES))
    layout = draw(st.sampled_from(LAYOUTS))
    a = _values(kind, tuple(sizes), rng)
    finite = kind in finite_kinds
    if dtype == "float16":
        a = np.where(np.isfinite(a), np.clip(a, -6e4, 6e4), a)  # float16 overflows above 65504: keep "big" finite
    in_unit = bool(np.all((a >= 0) & (a <= 1))) if finite else False
    if dtype.startswith(("int", "uint")) or dtype == "bool":
        if not finite:
            dtype = "float64"
        elif dtype == "bool":
            a = a > 0.5
        else:
            a = np.clip(np.round(a), 0 if dtype == "uint8" else -100, 100)
        in_unit = bool(np.all((a >= 0) & (a <= 1))) if finite else False
    ok_dtype = dtype not in ("object", "complex128", "str")
    with np.errstate(over="ignore", invalid="ignore"):  # NaN/inf cast to integers or float16 on purpose
        a = np.asarray(a).astype(dtype)
    if layout == "F":
        a = np.asfortranarray(a)
    elif layout == "strided" and a.ndim >= 1:
        big = np.repeat(a, 2, axis=-1)
        a = big[..., ::2]
    elif layout == "readonly":
        a = a.copy()
        a.setflags(write=False)
    elif layout == "list":
        a = a.tolist()
        if dtype == "str":  # a list of str is a list of str
            ok_dtype = False
        elif dtype == "object":  # a list of Python numbers
            ok_dtype = True
    valid = shape_ok and ok_dtype and finite and (in_unit or not unit_interval)
    if kind in ("huge", "big") and shape_ok and ok_dtype and not unit_interval:
        valid = None  # finite, but an untrained model's log-variances overflow exp(): either outcome
    desc = f"<{how} {tuple(sizes)} {dtype} {kind} {layout}>"
    arr = np.asarray(a, dtype=np.float64) if ok_dtype else None
    return Drawn(a, valid, desc, in_unit, arr)


# Scalars a user might pass for an integer size: the valid ones and everything around them.
BAD_INTS = [0, -1, -(2 ** 63), 10 ** 9, 2 ** 63, 2 ** 64, 2.5, 3.0, float("nan"), float("inf"), "3", None, True,
            [2], np.int64(-5)]
BAD_FLOATS = [0.0, -1.0, float("nan"), float("inf"), -float("inf"), 1e308, 5e-324, "0.1", None, True, [0.1],
              np.float32(np.nan), 1j]


def ints(good, bad=BAD_INTS):
    """A valid integer from `good` (mostly) or one of the bad ones."""
    return st.one_of(st.sampled_from(list(good)), st.sampled_from(bad))


def floats(good, bad=BAD_FLOATS):
    return st.one_of(st.sampled_from(list(good)), st.sampled_from(bad))


def _leaves(x, path="result"):
    """Every numeric leaf of a result (arrays, numbers, dataclasses, dicts, tuples)."""
    if isinstance(x, np.ndarray):
        yield path, x
    elif isinstance(x, (bool, np.bool_, str)) or x is None:
        return
    elif isinstance(x, (int, float, np.number)):
        yield path, np.asarray(x)
    elif isinstance(x, dict):
        for k, v in x.items():
            yield from _leaves(v, f"{path}[{k!r}]")
    elif isinstance(x, (list, tuple)):
        for i, v in enumerate(x):
            yield from _leaves(v, f"{path}[{i}]")
    elif dataclasses.is_dataclass(x):
        for f in dataclasses.fields(x):
            yield from _leaves(getattr(x, f.name), f"{path}.{f.name}")


def assert_finite(result, allow_inf=()):
    """No NaN anywhere; no infinity except in leaves whose path contains one of allow_inf."""
    for path, a in _leaves(result):
        if a.dtype.kind not in "fc":
            continue
        assert not np.isnan(a).any() or "['val_" in "".join(allow_inf) and "['val_" in path, f"NaN in {path}"
        if not any(s in path for s in allow_inf):
            assert np.isfinite(a).all(), f"non-finite value in {path}"


class Outcome:
    ok = "ok"
    rejected = "rejected"


def check(call, names, valid, allow_inf=(), shapes=None):
    """Runs call(); the property of the module docstring. names: the argument names one of which a
    rejection must mention. valid: True if the documented contract accepts the input (the call must
    succeed), False if it does not (the call must raise), None for either. shapes(result) -> None checks the documented shapes. Returns
    "ok" or "rejected"."""
    import warnings

    import elbokit as ek
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = call()
    except (ValueError, TypeError) as e:
        msg = str(e)
        assert valid is not True, f"a valid input was rejected: {type(e).__name__}: {msg}"
        assert any(n in msg for n in names), f"{type(e).__name__} does not name any of {names}: {msg}"
        assert "incompatible function arguments" not in msg and "Unable to cast" not in msg, \
            f"a pybind11 error leaked out: {msg}"
        return Outcome.rejected
    assert valid is not False, "an invalid input was accepted"
    if any(issubclass(w.category, ek.NonFiniteWarning) for w in caught):
        allow_inf = tuple(allow_inf) + ("['val_",)  # a validation ELBO that overflows: warned, kept
    assert_finite(out, allow_inf)
    if shapes is not None:
        shapes(out)
    return Outcome.ok
