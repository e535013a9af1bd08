"""Corrupt and interrupted model files: ek.load on truncated, bit-flipped and foreign files raises
ValueError (or, for a flip in a field no reader checks, loads the same model); a save killed
mid-write leaves the previous file intact and loadable."""
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, strategies as st  # noqa: E402

import elbokit as ek  # noqa: E402

MODELS = [ek.VAE(4, 2, hidden=(3,), seed=1), ek.HVAE(4, (2, 2), hidden=(3,), seed=1),
          ek.Diffusion(2, timesteps=4, hidden=(3,), emb_dim=2, seed=1), ek.Flow(2, hidden=(3,), seed=1),
          ek.Autoencoder(4, 2, hidden=(3,), seed=1)]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("saved")
    out = []
    for m in MODELS:
        p = d / f"{type(m).__name__}.elbokit"
        m.save(p)
        out.append((m, p.read_bytes()))
    return out


def same_model(a, b):
    pa, pb = a.parameters(), b.parameters()
    return type(a) is type(b) and a.config == b.config and pa.keys() == pb.keys() and \
        all(np.array_equal(pa[k], pb[k]) for k in pa)


def load_bytes(tmp_path, data: bytes, name="m.elbokit"):
    p = tmp_path / name
    p.write_bytes(data)
    return ek.load(p)


def check_damaged(tmp_path, original, data):
    try:
        m = load_bytes(tmp_path, data)
    except ValueError as e:
        assert "m.elbokit" in str(e)
        return "rejected"
    assert same_model(m, original), "a damaged file loaded as a different model"
    return "same"


@given(which=st.integers(0, len(MODELS) - 1), cut=st.floats(0, 1, exclude_max=True))
def test_truncated_files_raise(saved, tmp_path_factory, which, cut):
    original, data = saved[which]
    n = int(cut * len(data))
    with pytest.raises(ValueError, match="not a readable elbokit model file|damaged"):
        load_bytes(tmp_path_factory.mktemp("t"), data[:n])


@given(which=st.integers(0, len(MODELS) - 1), flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True),
                                                                       st.integers(0, 7)), min_size=1, max_size=3))
def test_bit_flips_raise_or_load_the_same_model(saved, tmp_path_factory, which, flips):
    original, data = saved[which]
    b = bytearray(data)
    for pos, bit in flips:
        b[int(pos * len(b))] ^= 1 << bit
    check_damaged(tmp_path_factory.mktemp("f"), original, bytes(b))


def _npz(**arrays):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _with_header(header, params=None):
    arrays = {"__elbokit__": np.array(json.dumps(header))}
    for k, v in (params or {}).items():
        arrays["param/" + k] = v
    return _npz(**arrays)


def _zip(**files):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for k, v in files.items():
            z.writestr(k, v)
    return buf.getvalue()


GOOD = {"format": "elbokit-model", "version": 1, "class": "VAE", "config": dict(x_dim=4, z_dim=2, hidden=[3])}
FOREIGN = {
    "empty": b"",
    "text": b"hello, this is not a model\n",
    "png": b"\x89PNG\r\n\x1a\n" + bytes(100),
    "npy": (lambda: (lambda b: (np.save(b, np.arange(5)), b.getvalue())[1])(io.BytesIO()))(),
    "npz without header": _npz(a=np.arange(3)),
    "zip of text": _zip(**{"__elbokit__.npy": "not npy", "x.txt": "hi"}),
    "pickled object header": _npz(__elbokit__=np.array([{"a": 1}], dtype=object)),
    "header not json": _npz(__elbokit__=np.array("{not json")),
    "header a list": _with_header([1, 2]),
    "wrong format": _with_header({**GOOD, "format": "other"}),
    "wrong version": _with_header({**GOOD, "version": 99}),
    "unknown class": _with_header({**GOOD, "class": "GAN"}),
    "class not a string": _with_header({**GOOD, "class": ["VAE"]}),
    "config missing": _with_header({k: v for k, v in GOOD.items() if k != "config"}),
    "config a list": _with_header({**GOOD, "config": [4, 2]}),
    "config bad value": _with_header({**GOOD, "config": dict(x_dim=-4, z_dim=2)}),
    "config unknown key": _with_header({**GOOD, "config": dict(x_dim=4, z_dim=2, depth=3)}),
    "parameters missing": _with_header(GOOD),
    "parameters of the wrong shape": _with_header(GOOD, {k: np.zeros(3) for k in ek.VAE(4, 2, hidden=(3,)).parameters()}),
    "NaN parameters": _with_header(GOOD, {k: np.full(v.shape, np.nan) for k, v in ek.VAE(4, 2, hidden=(3,)).parameters().items()}),
}


@pytest.mark.parametrize("kind", list(FOREIGN))
def test_foreign_files_raise(tmp_path, kind):
    with pytest.raises(ValueError, match="m.elbokit"):
        load_bytes(tmp_path, FOREIGN[kind])


def test_a_good_file_of_the_test_loads(tmp_path):
    """The foreign files above differ from a loadable one only where they say."""
    params = ek.VAE(4, 2, hidden=(3,), seed=3).parameters()
    m = load_bytes(tmp_path, _with_header(GOOD, params))
    assert all(np.array_equal(m.parameters()[k], params[k]) for k in params)


CHILD = textwrap.dedent("""
    import sys, time
    import numpy as np
    import elbokit as ek
    from elbokit import io as eio

    def slow_savez(f, **arrays):  # writes half an archive, then stalls until killed
        f.write(b"PK\\x03\\x04" + bytes(4096))
        f.flush()
        print("writing", flush=True)
        time.sleep(60)

    eio.np.savez = slow_savez
    ek.VAE(4, 2, hidden=(3,), seed=2).save(sys.argv[1])
""")


def test_a_save_killed_mid_write_leaves_the_previous_file(tmp_path):
    path = tmp_path / "model.elbokit"
    before = ek.VAE(4, 2, hidden=(3,), seed=1)
    before.save(path)
    data = path.read_bytes()
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "writing"
        temps = [f for f in os.listdir(tmp_path) if f.startswith(".elbokit-")]
        assert len(temps) == 1 and os.path.getsize(tmp_path / temps[0]) >= 4096  # killed while writing
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert path.read_bytes() == data
    assert same_model(ek.load(path), before)
    # the next save replaces the file (and the stale temporary file does not disturb it)
    after = ek.VAE(4, 2, hidden=(3,), seed=5)
    after.save(path)
    assert same_model(ek.load(path), after)
