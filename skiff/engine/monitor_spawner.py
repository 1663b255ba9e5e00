"""The monitor spawner: one pre-imported Python process that forks every container's monitor.

A monitor started as a new interpreter spends ~40 ms importing before it can create the container,
and each one holds its own copy of everything it imported (~3.5 MiB PSS). The spawner imports the
monitor and Skiff's runtime once, freezes that heap out of the garbage collector's reach (so children
never write to those pages and they stay shared copy-on-write), then serves fork requests from the
daemon. A forked monitor is the same program as a launched one (``monitor.main``): it leaves the
spawner at once, in its own session, and from then on owns its container exactly as before.

The spawner belongs to the daemon that started it: it exits when the daemon's end of its socket
closes (the daemon stopped or died). Monitors it forked are not its children by then and carry on.

Protocol on the SOCK_SEQPACKET socket given as fd ``argv[1]`` (see ``monitor_client.MonitorSpawner``):
the spawner first sends ``ready``; then each request is one message, the monitor's arguments joined
by NUL, carrying two fds (SCM_RIGHTS): where the monitor's stdout (its one-line report) and stderr go.
"""

from __future__ import annotations

import _socket
import array
import gc
import os
import sys
import tempfile

_MAX_REQUEST = 64 << 10


def _preload() -> None:
    """Import everything a monitor and an in-process runtime call reach, so no child imports anything."""
    import skiff.engine.monitor
    import skiff.runtime.capabilities
    import skiff.runtime.cgroups
    import skiff.runtime.console
    import skiff.runtime.container
    import skiff.runtime.init
    import skiff.runtime.linux
    import skiff.runtime.process
    import skiff.runtime.rootfs
    import skiff.runtime.seccomp
    import skiff.runtime.spec

    skiff.engine.monitor.prctl_function()
    with tempfile.TemporaryDirectory(prefix="skiff-monitor-rehearsal-") as scratch:
        skiff.engine.monitor.rehearse(scratch)
    try:
        skiff.runtime.seccomp._lib()  # dlopen libseccomp once, here, rather than in every monitor
    except Exception:
        pass


def _malloc_stats() -> dict[int, int]:
    """Free blocks per pymalloc size class {block size: count}, from ``sys._debugmallocstats`` (which
    prints to the C stderr: read through a pipe put in its place for the call)."""
    read_end, write_end = os.pipe()
    saved = os.dup(2)
    try:
        os.dup2(write_end, 2)
        sys._debugmallocstats()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        text = f.read().decode()
    free: dict[int, int] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 5 and fields[0].isdigit():
            free[int(fields[1])] = int(fields[4])
    return free


def _fill_free_blocks() -> list[object]:
    """Objects that take every free block of the pools in use, kept for the spawner's life.

    What a forked monitor allocates would otherwise land in those free blocks, one here and one there
    across the inherited heap, and each one copies a whole page from the spawner. With the holes filled
    the child's allocations start new pools and share their pages with each other: about 0.3 MiB less
    per monitor, for a few hundred KiB once in the spawner.
    """
    filler: list[object] = []
    for size, count in _malloc_stats().items():
        if size <= 16:
            filler.extend(object() for _ in range(count))
        elif size <= 32:
            filler.extend(float(i) + 0.5 for i in range(count))
        else:  # a bytes object of length n asks for n + 33 bytes: aim at the top of this class
            filler.extend(bytes(size - 33) for _ in range(count))
    return filler


def _receive(sock: _socket.socket) -> tuple[list[str], list[int]] | None:
    """The next request (arguments, fds), or None when the daemon has gone."""
    fds = array.array("i")
    data, ancillary, _flags, _addr = sock.recvmsg(_MAX_REQUEST, _socket.CMSG_SPACE(2 * fds.itemsize))
    for level, kind, payload in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    if not data:
        for fd in fds:
            os.close(fd)
        return None
    return data.decode().split("\0"), list(fds)


def _fork_monitor(sock: _socket.socket, argv: list[str], stdout: int, stderr: int) -> None:
    pid = os.fork()
    if pid == 0:
        try:
            sock.close()
            os.dup2(stdout, 1)
            os.dup2(stderr, 2)
            os.close(stdout)
            os.close(stderr)
            from skiff.engine.monitor import main

            main(argv)  # forks away into its own session at once: our child exits right after
        finally:
            os._exit(1)
    os.close(stdout)
    os.close(stderr)
    os.waitpid(pid, 0)


def _die_with_parent() -> None:
    """prctl(PR_SET_PDEATHSIG, SIGKILL): the daemon's end of our socket may live on in processes it forked
    (netlink helpers), so EOF alone cannot tell us it died."""
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG


def serve(fd: int) -> None:
    parent = os.getppid()
    _die_with_parent()
    if os.getppid() != parent:
        os._exit(0)  # the daemon died before we could ask
    os.setsid()  # no terminal signals from the daemon's session; children inherit default dispositions
    os.chdir("/")
    _preload()
    gc.collect()
    filler = _fill_free_blocks()  # noqa: F841 (kept alive until the spawner exits)
    gc.freeze()  # everything so far moves to the permanent generation: never scanned, never written
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET, 0, fd)
    sock.send(b"ready")
    while (request := _receive(sock)) is not None:
        argv, fds = request
        if len(fds) != 2:
            for extra in fds:
                os.close(extra)
            continue
        _fork_monitor(sock, argv, fds[0], fds[1])
    os._exit(0)


if __name__ == "__main__":
    serve(int(sys.argv[1]))
