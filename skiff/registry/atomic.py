"""Crash-safe file writes: temp file, fsync, rename, fsync of the directory.

A reader (or a registry restarted after SIGKILL or a power cut) sees either the old file or the whole
new one, never a torn one. Temp files live in one directory that the storage empties at start, so
a crash leaves no debris elsewhere.
"""

from __future__ import annotations

import os


def fsync_dir(path: str) -> None:
    """Make a rename or unlink inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: str, data: bytes, tmp_dir: str, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically (parents are created as needed)."""
    temp = os.path.join(tmp_dir, os.urandom(8).hex())
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    publish(temp, path)


def publish(temp: str, path: str) -> None:
    """Rename a complete, fsynced ``temp`` into place and make the rename durable."""
    parent = os.path.dirname(path)
    try:
        os.rename(temp, path)
    except FileNotFoundError:
        if not os.path.exists(temp):
            raise
        make_dirs(parent)
        os.rename(temp, path)
    fsync_dir(parent)


def make_dirs(path: str) -> None:
    """``os.makedirs``, with each new directory's entry made durable in its parent."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    make_dirs(parent)
    try:
        os.mkdir(path)
    except FileExistsError:
        return
    fsync_dir(parent)


def remove(path: str) -> bool:
    """Unlink ``path`` durably; False when it was not there."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    fsync_dir(os.path.dirname(path))
    return True
