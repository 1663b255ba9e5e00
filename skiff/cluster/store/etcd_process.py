"""A single-member etcd on loopback, run as a child process: for tests and benchmarks of the etcd backend.

It uses Debian's ``etcd`` binary (package ``etcd-server``) with a data directory of its own and free
loopback ports, waits until ``/health`` says so, and stops the process by its pid. ``kill()`` is a
SIGKILL and ``start()`` again reuses the data directory: a crash and restart, for durability tests.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from skiff.errors import SystemFailure, Unsupported

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port free on loopback right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def etcd_binary() -> str | None:
    return shutil.which("etcd")


class EtcdProcess:
    """One etcd member listening on loopback; ``url`` is what ``open_store`` takes."""

    def __init__(self, data_dir: str | os.PathLike[str], binary: str | None = None) -> None:
        found = binary or etcd_binary()
        if found is None:
            raise Unsupported("etcd is not installed (Debian package etcd-server)")
        self.binary = found
        self.data_dir = Path(data_dir)
        self.client_port, self.peer_port = free_port(), free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def client_url(self) -> str:
        return f"http://{LOOPBACK}:{self.client_port}"

    @property
    def url(self) -> str:
        return f"etcd://{LOOPBACK}:{self.client_port}"

    def command(self) -> list[str]:
        peer = f"http://{LOOPBACK}:{self.peer_port}"
        return [
            self.binary, "--name", "default", "--data-dir", str(self.data_dir / "member-data"),
            "--listen-client-urls", self.client_url, "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"default={peer}", "--log-level", "warn", "--logger", "zap",
        ]

    def start(self, timeout: float = 20.0) -> None:
        """Start (or restart on the same data) and wait until etcd reports itself healthy."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / "etcd.log", "ab")  # noqa: SIM115 - the child keeps writing to it
        with log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
        self._wait_healthy(timeout)

    def _wait_healthy(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemFailure(f"etcd exited with {self.process.returncode}: {self.log_tail()}")
            if self._healthy():
                return
            time.sleep(0.05)
        self.stop()
        raise SystemFailure(f"etcd did not become healthy in {timeout} s: {self.log_tail()}")

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.client_url}/health", timeout=1) as reply:
                return json.load(reply).get("health") == "true"
        except (OSError, urllib.error.URLError, ValueError):
            return False

    def kill(self) -> None:
        """SIGKILL, as a crash would; the data directory stays for ``start``."""
        self._signal_and_wait(signal.SIGKILL, 10.0)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        try:
            self._signal_and_wait(signal.SIGTERM, 10.0)
        except subprocess.TimeoutExpired:
            self.kill()

    def _signal_and_wait(self, sig: signal.Signals, timeout: float) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout)
        self.process = None

    def log_tail(self, size: int = 2000) -> str:
        try:
            return (self.data_dir / "etcd.log").read_bytes()[-size:].decode(errors="replace")
        except OSError:
            return ""
