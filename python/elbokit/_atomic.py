"""Atomic file writes: a temporary file in the target's folder, flushed and fsynced, then renamed
over the target, so a reader never sees a half-written file and an interrupted write loses nothing.

The temporary's name, ``.elbokit-{host}-{pid}-{random}{suffix}``, says which process writes it. A
process killed while writing (SIGKILL, a lost machine) cannot remove its temporary; the next write
into the same folder from the same host removes the temporaries whose process no longer runs.
Temporaries of running processes, of other hosts (a shared folder) and every other file are left."""
from __future__ import annotations

import contextlib
import os
import re
import socket
import tempfile

__all__ = ["atomic_write"]


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:64] or "host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # another user's process (or unknown): treat as running
        return True
    return True


def remove_stale_temporaries(folder) -> list:
    """Removes the temporaries left in folder by this host's writers that no longer run (see the
    module's docstring); returns their paths."""
    pattern = re.compile(r"\.elbokit-" + re.escape(_host()) + r"-(\d+)-")
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        m = pattern.match(name)
        if not m or int(m.group(1)) == os.getpid() or _alive(int(m.group(1))):
            continue
        path = os.path.join(folder, name)
        with contextlib.suppress(OSError):  # another writer may remove it first
            os.unlink(path)
            removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb", suffix: str = ".tmp"):
    """``with atomic_write(path, "w") as f: ...`` writes path atomically with the permissions open()
    would give a new file (0666 & ~umask)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"path must be in an existing folder, got {path!r} ({folder} does not exist)")
    remove_stale_temporaries(folder)
    fd, tmp = tempfile.mkstemp(prefix=f".elbokit-{_host()}-{os.getpid()}-", suffix=suffix, dir=folder)
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
