"""Atomic file replacement, the one way Skiff writes a state file.

The new content goes to a temp file beside the target and is renamed over it, so a reader (or a
daemon restarted after SIGKILL) sees the old file or the new one, never a torn one. ``durable`` adds
the fsync that makes the new content survive a power cut too; files that describe processes (under
/run) or that every start writes anew skip it, since each fsync costs milliseconds on the start path.

Standard library only, and only ``os``: the runtime and the per-container monitor use it.
"""

from __future__ import annotations

import os


def write_atomically(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` (a new file gets ``mode``)."""
    target = os.fspath(path)
    tmp = f"{target}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, target)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename, create or unlink inside directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
