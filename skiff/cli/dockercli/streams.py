"""Hijacked attach/exec streams: forward stdin, demultiplex stdout/stderr, raw mode and resize for ``-t``."""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import struct
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any


def raw_socket(hijacked: Any) -> socket.socket:
    """docker-py's ``attach_socket``/``exec_start(socket=True)`` give a ``SocketIO`` over unix sockets."""
    return getattr(hijacked, "_sock", hijacked)


def _frames(sock: socket.socket, tty: bool) -> Iterator[tuple[int, bytes]]:
    """(stream, data) pairs: raw bytes for a tty, else Docker's 8-byte framed multiplexing."""
    if tty:
        while True:
            data = sock.recv(65536)
            if not data:
                return
            yield 1, data
    buf = b""
    while True:
        data = sock.recv(65536)
        if not data:
            return
        buf += data
        while len(buf) >= 8:
            stream, size = struct.unpack(">BxxxL", buf[:8])
            if len(buf) < 8 + size:
                break
            yield stream, buf[8:8 + size]
            buf = buf[8 + size:]


@contextlib.contextmanager
def raw_terminal(enabled: bool) -> Iterator[None]:
    if not enabled or not sys.stdin.isatty():
        yield
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def watch_resize(resize: Callable[[int, int], None]) -> Callable[[], None]:
    """Send the terminal's size now and on every SIGWINCH; returns the function that stops it."""

    def send(*_: object) -> None:
        size = shutil.get_terminal_size()
        with contextlib.suppress(Exception):
            resize(size.lines, size.columns)

    send()
    previous = signal.signal(signal.SIGWINCH, send)
    return lambda: signal.signal(signal.SIGWINCH, previous)


def proxy_signals(send: Callable[[int], None]) -> Callable[[], None]:
    """Forward the signals a user sends the CLI to the container; returns the function that stops it."""

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(Exception):
            send(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                                                       signal.SIGUSR1, signal.SIGUSR2)}
    return lambda: [signal.signal(s, h) for s, h in previous.items()] and None


def pump(hijacked: Any, tty: bool, stdin: bool) -> None:
    """Copy stdin to the stream (then half-close) and the stream to stdout/stderr until the stream ends."""
    sock = raw_socket(hijacked)
    if stdin:
        threading.Thread(target=_send_stdin, args=(sock,), daemon=True).start()
    out = {1: sys.stdout.buffer, 2: sys.stderr.buffer}
    try:
        for stream, data in _frames(sock, tty):
            target = out.get(stream, sys.stdout.buffer)
            target.write(data)
            target.flush()
    except OSError:
        pass


def _send_stdin(sock: socket.socket) -> None:
    fd = sys.stdin.fileno()
    try:
        while True:
            if sys.stdin.isatty():
                select.select([fd], [], [])
            data = os.read(fd, 65536)
            if not data:
                break
            sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
