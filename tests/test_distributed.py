"""Data-parallel training on MPI (elbokit.distributed): R processes on this machine's loopback
train the same weights as one process, evaluate sharded, and a failed process ends the job.

The jobs are tests/_mpi_job.py run under ``mpirun -n R --oversubscribe`` (and
``--allow-run-as-root`` as root, as in CI). Without mpirun or mpi4py the MPI tests skip, except
where ELBOKIT_REQUIRE_MPI=1 (set by .ci/run, which installs both): there they fail."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import elbokit as ek

HERE = os.path.dirname(os.path.abspath(__file__))
JOB = os.path.join(HERE, "_mpi_job.py")


def _mpi_ready() -> str | None:
    """None when mpirun and mpi4py are here, else what is missing."""
    if shutil.which("mpirun") is None:
        return "mpirun not found (apt-get install openmpi-bin libopenmpi-dev)"
    if not ek.distributed.available():
        return "mpi4py with an MPI library not importable (pip install 'elbokit[mpi]')"
    return None


_missing = _mpi_ready()
if _missing and os.environ.get("ELBOKIT_REQUIRE_MPI") == "1":
    raise RuntimeError(f"ELBOKIT_REQUIRE_MPI=1 but {_missing}")
needs_mpi = pytest.mark.skipif(_missing is not None, reason=str(_missing))


def _env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("ELBOKIT_MPI_TIMEOUT", None)
    env.update(extra)
    return env


def _mpirun(n: int, *argv) -> list:
    cmd = ["mpirun", "-n", str(n), "--oversubscribe"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    return cmd + list(argv)


def _run(cmd, timeout=240, **env):
    p = subprocess.run(cmd, env=_env(**env), capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{' '.join(cmd)} exited {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The one-process run of every model (plain python, distributed=False)."""
    out = tmp_path_factory.mktemp("single")
    _run([sys.executable, JOB, "train", str(out), "--single"])
    return dict(np.load(out / "rank0.npz"))


def _rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


@needs_mpi
@pytest.mark.parametrize("ranks", [2, 4])
def test_training_and_evaluation_match_one_process(single, tmp_path, ranks):
    """After 50 float64 steps (VAE, HVAE both structures, diffusion with EMA, the conv VAE, the U-Net
    diffusion model, the autoencoder and the flow) the weights of R processes equal one process's
    within 1e-10 relative (summation order only), the R processes hold bit-identical weights, the
    histories agree (the per-epoch validation terms, computed sharded, too), and the sharded ELBO and
    L_K equal the one-process values."""
    _run(_mpirun(ranks, sys.executable, JOB, "train", str(tmp_path)))
    runs = [dict(np.load(tmp_path / f"rank{r}.npz")) for r in range(ranks)]
    assert set(runs[0]) == set(single)
    for key, ref in single.items():
        for r in range(1, ranks):
            assert np.array_equal(runs[r][key], runs[0][key]), f"{key}: process {r} differs from process 0"
        assert runs[0][key].shape == ref.shape, key
        assert _rel(runs[0][key], ref) < 1e-10, f"{key}: {_rel(runs[0][key], ref):.3g} relative to one process"
    # the weights moved: the comparison is not between two untrained models
    assert _rel(single["vae.weights"], np.asarray(ek.VAE(64, 4, hidden=(32,), dtype="float64", seed=0)._core.get_flat())) > 1e-3


@needs_mpi
def test_checkpoint_written_by_process_0_loads(tmp_path):
    """fit(checkpoint=...) on 2 processes: one file, the final weights, loadable."""
    _run(_mpirun(2, sys.executable, JOB, "train", str(tmp_path)))
    m = ek.load(tmp_path / "vae_checkpoint.elbokit")
    final = np.load(tmp_path / "rank0.npz")["checkpoint.weights"]
    assert np.array_equal(np.asarray(m._core.get_flat()), final)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".elbokit-")]  # no temporary left


@needs_mpi
def test_argument_errors_raise_on_every_process(tmp_path):
    """Errors of distributed training are ValueErrors raised identically on every process (no
    hang, no abort), and the processes stay usable after them."""
    _run(_mpirun(2, sys.executable, JOB, "errors", str(tmp_path)), timeout=120)
    got = [json.loads((tmp_path / f"errors{r}.json").read_text()) for r in range(2)]
    assert got[0] == got[1]
    e = got[0]
    assert "batch_size must be at least the number of processes (2)" in e["batch_size"] and "got 1" in e["batch_size"]
    assert "free_bits must be 0 in distributed training" in e["free_bits"] and "0.5" in e["free_bits"]
    assert "the initial parameters must be the same on every process" in e["seed"]
    assert "x's shape must be the same on every process" in e["data"]
    assert "options must be the same on every process" in e["options"]
    assert "checkpoint must be a path in an existing folder" in e["checkpoint"]
    assert "distributed must be" in e["distributed"] and "'yes'" in e["distributed"]
    assert "at least one row per process (2)" in e["few_rows"] and "got 1 rows" in e["few_rows"]
    assert np.isfinite(e["after"])


def _start_long_fit(tmp_path, mode, **env):
    proc = subprocess.Popen(_mpirun(2, sys.executable, JOB, mode, str(tmp_path)), env=_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc


def _wait_for(path, proc, seconds=90):
    t0 = time.monotonic()
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise AssertionError(f"the job ended before {path} appeared:\n{proc.stdout.read()[-3000:]}")
        if time.monotonic() - t0 > seconds:
            proc.kill()
            raise AssertionError(f"{path} did not appear within {seconds} s")
        time.sleep(0.05)


def _finish(proc, seconds):
    try:
        out, _ = proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"the job did not end within {seconds} s:\n{out[-3000:]}")
    return out


def _checkpoint_intact(path):
    m = ek.load(path)
    assert isinstance(m, ek.VAE)
    assert np.all(np.isfinite(m._core.get_flat()))
    x = ek.datasets.digits()[1][:20]
    assert np.all(np.isfinite(m.elbo(x).elbo))


@needs_mpi
def test_killed_process_ends_the_job_and_the_checkpoint_loads(tmp_path):
    """SIGKILL one of two processes in the middle of training: the job ends within 30 s with a
    non-zero exit code and mpirun's message naming the process; the last checkpoint loads."""
    ck = tmp_path / "checkpoint.elbokit"
    proc = _start_long_fit(tmp_path, "longfit")
    _wait_for(ck, proc)
    _wait_for(tmp_path / "pid1", proc)
    time.sleep(0.3)  # a few more epochs, checkpoints rewritten
    os.kill(int((tmp_path / "pid1").read_text()), signal.SIGKILL)
    t0 = time.monotonic()
    out = _finish(proc, 30)
    assert time.monotonic() - t0 < 30
    assert proc.returncode != 0
    assert "rank 1" in out and "signal 9" in out, out[-2000:]
    _checkpoint_intact(ck)


@needs_mpi
def test_failing_process_aborts_the_job_with_its_error(tmp_path):
    """An exception on one process (here in its 70th allreduce) prints which process failed and
    why, and MPI_Abort ends the other, which waits in the collective; the checkpoint loads."""
    proc = _start_long_fit(tmp_path, "raise")
    out = _finish(proc, 60)
    assert proc.returncode != 0
    assert "elbokit.distributed: VAE.fit failed on process 1 of 2: RuntimeError: injected failure" in out, out[-2000:]
    _checkpoint_intact(tmp_path / "checkpoint.elbokit")


@needs_mpi
def test_stalled_process_times_out(tmp_path):
    """A process that stops answering (SIGSTOP in its 70th allreduce): the other's watchdog aborts
    the job after ELBOKIT_MPI_TIMEOUT = 2 s with a message saying so; the checkpoint loads."""
    proc = _start_long_fit(tmp_path, "stall", ELBOKIT_MPI_TIMEOUT="2")
    t0 = time.monotonic()
    out = _finish(proc, 60)
    assert proc.returncode != 0
    assert "process 0 of 2 waited more than 2 s in collective" in out, out[-2000:]
    assert time.monotonic() - t0 < 60
    _checkpoint_intact(tmp_path / "checkpoint.elbokit")


@needs_mpi
def test_cli_distributed_train_matches_one_process(tmp_path):
    """`mpirun -n 2 elbokit train vae --distributed --checkpoint`: process 0 alone prints and writes
    model.elbokit, checkpoint.elbokit, report.png and metrics.json; the held-out ELBO and L_K (sharded)
    equal the one-process run's up to float32 summation order."""
    args = ["train", "vae", "--data", "digits", "--epochs", "2", "--k", "50", "--hidden", "32", "--no-progress",
            "--checkpoint", "--dtype", "float64"]
    one = tmp_path / "one"
    two = tmp_path / "two"
    _run([sys.executable, "-m", "elbokit.cli", *args, "--out", str(one)])
    p = _run(_mpirun(2, sys.executable, "-m", "elbokit.cli", *args, "--distributed", "--out", str(two)))
    assert p.stdout.count("held-out digits") == 1  # process 0 speaks for the job
    assert sorted(os.listdir(two)) == ["checkpoint.elbokit", "metrics.json", "model.elbokit", "report.png"]
    m1 = json.loads((one / "metrics.json").read_text())["held_out"]
    m2 = json.loads((two / "metrics.json").read_text())["held_out"]
    for term in ("elbo", "reconstruction", "kl", "log_likelihood"):
        assert m2[term]["mean"] == pytest.approx(m1[term]["mean"], rel=1e-10), term
    w1 = np.asarray(ek.load(one / "model.elbokit")._core.get_flat())
    w2 = np.asarray(ek.load(two / "model.elbokit")._core.get_flat())
    assert _rel(w2, w1) < 1e-10


@needs_mpi
def test_info_reports_mpi():
    p = _run([sys.executable, "-m", "elbokit.cli", "info"])
    line = [ln for ln in p.stdout.splitlines() if ln.strip().startswith("mpi ")]
    assert line and "available: mpi4py" in line[0] and "MPI" in line[0], p.stdout


_NO_MPI = "import sys; sys.modules['mpi4py'] = None\n"


def test_without_mpi4py_distributed_says_what_to_install(tmp_path):
    """Without mpi4py elbokit imports and trains as before; distributed=True raises a RuntimeError
    saying what to install, `elbokit info` says MPI is not available, `--distributed` exits 2."""
    code = _NO_MPI + (
        "import elbokit as ek\n"
        "assert not ek.distributed.available() and ek.distributed.size() == 1 and ek.distributed.rank() == 0\n"
        "x = ek.datasets.digits()[0][:64]\n"
        "ek.VAE(64, 2, hidden=(8,)).fit(x, epochs=1, progress=False)\n"
        "try:\n"
        "    ek.VAE(64, 2, hidden=(8,)).fit(x, epochs=1, progress=False, distributed=True)\n"
        "except RuntimeError as e:\n"
        "    assert 'pip install' in str(e) and 'mpi4py' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('no error')\n"
        "from elbokit import cli\n"
        "assert cli.main(['info']) == 0\n"
        f"assert cli.main(['train', 'vae', '--epochs', '1', '--distributed', '--out', {str(tmp_path / 'o')!r}]) == 2\n"
    )
    p = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "not available" in p.stdout
    assert "--distributed needs mpi4py" in p.stderr


@needs_mpi
def test_one_process_distributed_is_the_plain_fit():
    """distributed=True in a process started without mpirun (a group of one): the same weights,
    bit for bit, as distributed=False."""
    code = (
        "import numpy as np, elbokit as ek\n"
        "x = ek.datasets.digits()[0][:200]\n"
        "a = ek.VAE(64, 3, hidden=(16,), dtype='float64'); a.fit(x, epochs=1, batch_size=32, progress=False)\n"
        "b = ek.VAE(64, 3, hidden=(16,), dtype='float64'); b.fit(x, epochs=1, batch_size=32, progress=False, distributed=True)\n"
        "assert np.array_equal(a._core.get_flat(), b._core.get_flat())\n"
        "assert np.array_equal(a.log_likelihood(x[:9], k=8), b.log_likelihood(x[:9], k=8, distributed=True))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr


def test_shard_bounds():
    for n in (1, 7, 128, 1000):
        for R in (1, 2, 3, 4, 7):
            if n < R:
                continue
            parts = [ek.distributed.shard(n, r, R) for r in range(R)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(parts[r][1] == parts[r + 1][0] for r in range(R - 1))
            sizes = [hi - lo for lo, hi in parts]
            assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_timeout_settings(monkeypatch):
    monkeypatch.setenv("ELBOKIT_MPI_TIMEOUT", "12.5")
    assert ek.distributed.timeout() == 12.5
    for bad in ("soon", "0", "-3", "inf"):
        monkeypatch.setenv("ELBOKIT_MPI_TIMEOUT", bad)
        with pytest.raises(ValueError, match="ELBOKIT_MPI_TIMEOUT must be a positive number"):
            ek.distributed.timeout()
    ek.distributed.set_timeout(7)
    try:
        assert ek.distributed.timeout() == 7.0
        with pytest.raises(ValueError, match="seconds must be a positive number"):
            ek.distributed.set_timeout(0)
    finally:
        ek.distributed.set_timeout(None)
