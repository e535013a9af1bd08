"""Atomic file writes: a temporary file in the target's folder, flushed and fsynced, then renamed
over the target, so a reader never sees a half-written file and an interrupted write loses nothing."""
from __future__ import annotations

import contextlib
import os
import tempfile

__all__ = ["atomic_write"]


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb", suffix: str = ".tmp"):
    """``with atomic_write(path, "w") as f: ...`` writes path atomically with the permissions open()
    would give a new file (0666 & ~umask)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"path must be in an existing folder, got {path!r} ({folder} does not exist)")
    fd, tmp = tempfile.mkstemp(prefix=".elbokit-", suffix=suffix, dir=folder)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
