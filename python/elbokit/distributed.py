"""Data-parallel training and sharded evaluation over MPI processes, through mpi4py.

    mpirun -n 4 python train.py          # train.py: vae.fit(x, ..., distributed=True)
    mpirun -n 4 elbokit train vae --data fashion-mnist --distributed --out runs/vae

Every process holds the whole data set and the same initial parameters (same seed). For each
global minibatch [b0, b0 + bs) of the shared permutation, process r of R computes the rows
[b0 + floor(bs r / R), b0 + floor(bs (r + 1) / R)) with the random numbers those rows have in the
one-process draw (the counter-based generator is indexed by the row's place in the minibatch),
scales its gradient by its share of the rows, and an MPI allreduce sums the gradients (and the
step's loss and ELBO terms) before every process takes the same optimizer step. So R processes
compute the one-process training run up to the order of floating-point summation:

- bit-identical: the permutations, every random number, and the final weights across the R
  processes of one run (they all apply the same sums); not the per-example values, whose products
  run on fewer rows (their blocking may change the rounding);
- not bit-identical to one process: the batch-summed gradients, reduced in R partial sums and then
  added by MPI, and so everything after them (float64, nine models, 50 Adam steps: the weights
  differ from one process's by 5e-17 to 1e-15 relative; tests/test_distributed.py asserts < 1e-10).

Why mpi4py and not MPI inside the C++ engine: the engine stays free of MPI (one wheel that
imports and runs without an MPI library installed), the collective is one call per step on the
engine's own gradient buffer (no copy; its cost is measured in benchmarks/distributed.py), and
mpi4py follows whichever MPI runs the job (Debian's Open MPI here, MPICH, a cluster's).

A failed process does not leave the others hanging: an exception in a distributed ``fit`` prints
which process failed and why, then calls MPI_Abort, which ends every process of the job; a
process killed outright is detected by mpirun, which ends the rest; and a process that stops
answering (a stopped or wedged peer) is caught by a watchdog that aborts the job when one
collective has waited longer than ``timeout()`` seconds (``ELBOKIT_MPI_TIMEOUT``, default 300).
Checkpoints are written by process 0 only, atomically, so the last one stays intact whatever ends
the job.
"""
from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np

__all__ = ["available", "library", "world", "rank", "size", "shard", "timeout", "set_timeout", "Group"]

_DEFAULT_TIMEOUT = 300.0
_timeout = None


def _mpi():
    from mpi4py import MPI  # noqa: PLC0415 (optional dependency)

    return MPI


def available() -> bool:
    """True when mpi4py imports and finds an MPI library (``pip install elbokit[mpi]`` and an MPI
    implementation such as Debian's openmpi-bin)."""
    try:
        _mpi()
    except Exception:  # ImportError, or RuntimeError when libmpi is missing
        return False
    return True


def library() -> str | None:
    """The MPI library's name and version (first line of MPI_Get_library_version), or None."""
    try:
        return _mpi().Get_library_version().strip().splitlines()[0].split(",")[0].strip()
    except Exception:
        return None


def world():
    """mpi4py's COMM_WORLD; RuntimeError with what to install when MPI is not available."""
    try:
        return _mpi().COMM_WORLD
    except Exception as e:
        raise RuntimeError("distributed=True needs mpi4py and an MPI library: pip install 'elbokit[mpi]' "
                           "(mpi4py) and an MPI implementation (Debian: apt-get install openmpi-bin "
                           f"libopenmpi-dev); importing mpi4py.MPI failed with: {e}") from e


def rank() -> int:
    """This process's rank in COMM_WORLD (0 without MPI)."""
    return world().Get_rank() if available() else 0


def size() -> int:
    """The number of processes in COMM_WORLD (1 without MPI)."""
    return world().Get_size() if available() else 1


def shard(n: int, rank: int, size: int) -> tuple[int, int]:
    """Rows [lo, hi) of n that process ``rank`` of ``size`` holds: (floor(n r / R), floor(n (r + 1) / R))."""
    return n * rank // size, n * (rank + 1) // size


def timeout() -> float:
    """Seconds one collective may wait before the watchdog aborts the job."""
    if _timeout is not None:
        return _timeout
    v = os.environ.get("ELBOKIT_MPI_TIMEOUT")
    if v is None:
        return _DEFAULT_TIMEOUT
    try:
        t = float(v)
    except ValueError:
        raise ValueError(f"ELBOKIT_MPI_TIMEOUT must be a positive number of seconds, got {v!r}") from None
    if not t > 0 or not np.isfinite(t):
        raise ValueError(f"ELBOKIT_MPI_TIMEOUT must be a positive number of seconds, got {v!r}")
    return t


def set_timeout(seconds: float | None) -> None:
    """Sets the collective timeout (None: back to ELBOKIT_MPI_TIMEOUT or 300 s)."""
    global _timeout
    if seconds is not None:
        s = float(seconds)
        if not s > 0 or not np.isfinite(s):
            raise ValueError(f"seconds must be a positive number, got {seconds!r}")
        seconds = s
    _timeout = seconds


class Group:
    """COMM_WORLD for one distributed call: the allreduce the engine calls each step, the gather of
    sharded results, and the watchdog. ``with Group() as g: ...``."""

    def __init__(self, what: str = "elbokit"):
        self.comm = world()
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.what = what
        self.timeout = timeout()
        self._since = None  # monotonic time the current collective began, or None
        self._step = 0
        self._stop = threading.Event()
        self._watchdog = None

    # -- lifetime -----------------------------------------------------------------------------
    def __enter__(self) -> "Group":
        self._stop.clear()
        if self.size > 1:
            self._watchdog = threading.Thread(target=self._watch, name="elbokit-mpi-watchdog", daemon=True)
            self._watchdog.start()
        return self

    def __exit__(self, kind, exc, tb) -> None:
        self._stop.set()
        if self._watchdog is not None:
            self._watchdog.join()
        if exc is not None and self.size > 1 and not isinstance(exc, _Aborting):
            # the other processes wait in a collective this one will not join: end the job
            self.abort(f"{self.what} failed on process {self.rank} of {self.size}: {type(exc).__name__}: {exc}")

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            t0 = self._since
            if t0 is not None and time.monotonic() - t0 > self.timeout:
                self.abort(f"{self.what}: process {self.rank} of {self.size} waited more than {self.timeout:g} s "
                           f"in collective {self._step} (another process stopped, failed or was killed); "
                           f"set ELBOKIT_MPI_TIMEOUT to wait longer")

    def abort(self, message: str) -> None:
        """Prints message on stderr and ends every process of the job (MPI_Abort, exit code 1)."""
        sys.stderr.write(f"elbokit.distributed: {message}; aborting the MPI job\n")
        sys.stderr.flush()
        self.comm.Abort(1)

    def _enter(self) -> None:
        self._step += 1
        self._since = time.monotonic()

    def _leave(self) -> None:
        self._since = None

    # -- collectives --------------------------------------------------------------------------
    def allreduce(self, grad: np.ndarray, stats: np.ndarray) -> None:
        """Sums grad and stats over the processes, in place (the engine's buffers)."""
        MPI = _mpi()
        self._enter()
        try:
            self.comm.Allreduce(MPI.IN_PLACE, grad, op=MPI.SUM)
            self.comm.Allreduce(MPI.IN_PLACE, stats, op=MPI.SUM)
        finally:
            self._leave()

    def collective(self) -> tuple:
        """(rank, size, allreduce): what the engine's fit takes as ``comm``."""
        return (self.rank, self.size, self.allreduce)

    def gather(self, local):
        """The processes' arrays (or tuples of arrays), concatenated along axis 0 in rank order, on
        every process."""
        self._enter()
        try:
            parts = self.comm.allgather(local)
        finally:
            self._leave()
        if isinstance(local, tuple):
            return tuple(np.concatenate([p[i] for p in parts], axis=0) for i in range(len(local)))
        return np.concatenate(parts, axis=0)

    def check_same(self, name: str, value) -> None:
        """ValueError on every process unless value (hashable) is the same on all of them."""
        self._enter()
        try:
            values = self.comm.allgather(value)
        finally:
            self._leave()
        if any(v != values[0] for v in values):
            raise _Aborting(f"{name} must be the same on every process, got {values}")


class _Aborting(ValueError):
    """Raised identically on every process: no abort needed, every process sees the error."""


def sharded(what: str, n: int, compute):
    """compute(lo, hi) -> array or tuple of arrays for rows [lo, hi) of n, run on this process's
    shard; the result for all n rows, gathered on every process."""
    with Group(what) as g:
        g.check_same("the number of rows", int(n))
        if n < g.size:
            raise _Aborting(f"x must have at least one row per process ({g.size}) in distributed evaluation, "
                            f"got {n} rows")
        lo, hi = shard(n, g.rank, g.size)
        return g.gather(compute(lo, hi))
