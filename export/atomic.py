"""Build folders atomically: write into a temporary sibling, rename when complete."""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path

from export.errors import ExportError


@contextlib.contextmanager
def atomic_dir(target: Path):
    """Yield a fresh temporary folder beside target; on success it replaces target, on failure it is removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    _sweep_stale(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    os.chmod(tmp, 0o755)
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno == errno.ENOSPC:
            raise ExportError(f"no space left on the device holding {target.parent}") from None
        if exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise ExportError(f"cannot write to {target.parent}: {exc.strerror}") from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _sweep_stale(target: Path) -> None:
    """Remove partial folders that an interrupted earlier run left beside target."""
    for stale in target.parent.glob(f".{target.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def export_lock(target: Path):
    """Hold an exclusive lock beside target so that two exports of the same folder never interleave."""
    import fcntl

    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        handle = open(target.parent / f".{target.name}.lock", "w")
    except OSError as exc:
        raise ExportError(f"cannot write to {target.parent}: {exc.strerror}") from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
