"""Terminals: a pty made inside the container, its master handed out over a unix socket (SCM_RIGHTS)
exactly as runc does with ``--console-socket``, and the relay ``run``/``exec`` use in the foreground.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import socket
import struct
import termios

from skiff.runtime import linux


def pair() -> tuple[socket.socket, socket.socket]:
    """A private console socket for ``run``/``exec`` in the foreground: (our end, the container's)."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)


def connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    return sock


def setup_pty(console: socket.socket, mount_console: bool, size: dict | None = None) -> None:
    """Open a pty in the container, send its master away, make the slave our stdio and controlling tty.

    ``size`` is the spec's ``process.consoleSize``: set before the process starts, so a program that reads
    its terminal size at once (a shell prompt, a pager) sees the right one without waiting for a resize.
    """
    master, slave = os.openpty()
    if size and size.get("height") and size.get("width"):
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", int(size["height"]), int(size["width"]), 0, 0))
    if mount_console:
        # /dev/console is the pty, as on a real system; the file is the mount point.
        if not os.path.exists("/dev/console"):
            os.close(os.open("/dev/console", os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
        linux.mount(os.ttyname(slave), "/dev/console", "bind", linux.MS_BIND)
    socket.send_fds(console, [b"/dev/ptmx"], [master])
    os.close(master)
    console.close()
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    if slave > 2:
        os.close(slave)


def receive_master(sock: socket.socket) -> int:
    _, fds, _, _ = socket.recv_fds(sock, 1024, 1)
    if not fds:
        raise OSError("no pty master received on the console socket")
    return fds[0]


def _copy_winsize(source: int, target: int) -> None:
    try:
        size = fcntl.ioctl(source, termios.TIOCGWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
        fcntl.ioctl(target, termios.TIOCSWINSZ, size)
    except OSError:
        pass


def relay(master: int, child_exited) -> None:
    """Copy our stdin to the pty and the pty to our stdout until the container's output ends.

    ``child_exited()`` is polled so that a process that exits without closing the pty still ends us.
    """
    stdin_tty = os.isatty(0)
    saved = None
    if stdin_tty:
        saved = termios.tcgetattr(0)
        import tty

        tty.setraw(0)
        _copy_winsize(0, master)
        signal.signal(signal.SIGWINCH, lambda *_: _copy_winsize(0, master))
    inputs = [master, 0]
    try:
        while True:
            try:
                ready, _, _ = select.select(inputs, [], [], 0.2)
            except InterruptedError:
                continue
            if not ready and child_exited():
                _drain(master)
                return
            if master in ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every slave fd closed
                    return
                if not data:
                    return
                os.write(1, data)
            if 0 in ready:
                data = os.read(0, 65536)
                if data:
                    os.write(master, data)
                else:
                    inputs.remove(0)
    finally:
        if saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)


def _drain(master: int) -> None:
    while select.select([master], [], [], 0)[0]:
        try:
            data = os.read(master, 65536)
        except OSError:
            return
        if not data:
            return
        os.write(1, data)
