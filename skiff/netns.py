"""Network namespaces pinned at a path, and work done inside one.

A namespace made here is a bind mount of an nsfs file at a path of the caller's: the engine pins a container's
at ``EXEC-ROOT/netns/<container id>`` (it outlives the daemon and the container's processes, and the runtime
joins it by path, as runc, crun and Skiff's runtime all do); ``skiff cluster`` pins each node's at
``/run/netns/<name>``, where ``ip netns`` finds it too. ``enter`` also takes any nsfs path, such as a process's
``/proc/<pid>/ns/net`` (the kubelet's port-forward).

A network namespace belongs to a *thread*, so everything that must happen inside one (configuring
interfaces, opening a DNS server's or a port-forward's sockets) runs on a fresh thread that enters it with
setns(2) and then ends; no long-lived thread ever changes namespace. A socket stays in the namespace it was
created in, so sockets made that way serve from the caller's event loop afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MNT_DETACH = 0x2

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str, path: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}", path)


def on_own_thread(fn: Callable[[], T]) -> T:
    """Run ``fn`` on a new thread and return its result (or raise its exception): for work that changes the
    thread's namespace, so that no pooled thread is left in the wrong one."""
    outcome: list = []

    def body() -> None:
        try:
            outcome.append((True, fn()))
        except BaseException as e:  # handed back to the caller
            outcome.append((False, e))

    thread = threading.Thread(target=body, name="skiff-netns", daemon=True)
    thread.start()
    thread.join()
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


async def on_own_thread_async(fn: Callable[[], T]) -> T:
    """``on_own_thread`` without blocking the event loop."""
    return await asyncio.to_thread(on_own_thread, fn)


def create(path: str, setup: Callable[[], None] | None = None) -> None:
    """Make a new network namespace pinned at ``path``; ``setup`` runs inside it before the thread ends."""
    os.makedirs(os.path.dirname(path), mode=0o711, exist_ok=True)

    def body() -> None:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
        os.close(fd)
        try:
            _check(_libc.unshare(CLONE_NEWNET), "unshare", path)
            _check(_libc.mount(b"/proc/thread-self/ns/net", path.encode(), b"none", MS_BIND, None), "mount", path)
        except BaseException:
            os.unlink(path)
            raise
        if setup is not None:
            setup()

    on_own_thread(body)


def enter(path: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` inside the namespace at ``path`` (on a thread of its own)."""

    def body() -> T:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _check(_libc.setns(fd, CLONE_NEWNET), "setns", path)
        finally:
            os.close(fd)
        return fn()

    return on_own_thread(body)


def remove(path: str) -> None:
    """Unpin and delete the namespace file (the kernel frees the namespace, and the veth ends in it, once
    nothing else holds it). Missing is fine."""
    if _libc.umount2(path.encode(), MNT_DETACH) != 0:
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOENT):
            raise OSError(code, f"umount: {os.strerror(code)}", path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def is_pinned(path: str) -> bool:
    """Whether ``path`` is a live namespace mount (not just the empty file a crash may leave)."""
    try:
        return os.stat(path).st_dev != os.stat(os.path.dirname(path)).st_dev
    except OSError:
        return False
