"""A private network for the proxy and DNS tests: a "node" namespace with a bridge, hosts on it.

    node netns  <prefix>-node: bridge br0 10.77.0.1/24, ip_forward on, a default route via 10.77.0.254 (nobody:
                traffic to a ClusterIP that nothing DNATs has a route, as on a real node, and goes nowhere)
    host netns  <prefix>-<name>: eth0 10.77.0.N/24 on br0 (the node end of its veth), default via 10.77.0.1

Every host is on the node's one bridge, as pods are: a client and a backend on the same bridge is the
hairpin case the proxy's masquerade exists for. ``br_netfilter(on)`` sets the node's
``net.bridge.bridge-nf-call-iptables`` (per namespace; on by default where the module is loaded).
``close()`` kills the processes started here and deletes the namespaces (their veths go with them) and their
/etc/netns directories. Nothing is routed out.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
SUBNET = "10.77.0"
GATEWAY = f"{SUBNET}.1"
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def ip(*args: str, netns: str | None = None) -> None:
    command = ["ip", *(["-n", netns] if netns else []), *args]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {result.stderr.strip()}")


class NetLab:
    def __init__(self, tag: str) -> None:
        self.prefix = f"skp{os.getpid() % 100000}{tag}"
        self.node = f"{self.prefix}-node"
        self.namespaces: list[str] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        self.hosts: dict[str, str] = {}  # name -> address
        try:
            self._add_netns(self.node)
            ip("link", "add", "br0", "type", "bridge", netns=self.node)
            ip("addr", "add", f"{GATEWAY}/24", "dev", "br0", netns=self.node)
            ip("link", "set", "br0", "up", netns=self.node)
            ip("route", "add", "default", "via", f"{SUBNET}.254", netns=self.node)  # nobody: ARP fails, dropped
            self.run(self.node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        except BaseException:
            self.close()
            raise

    def _add_netns(self, name: str) -> None:
        ip("netns", "add", name)
        self.namespaces.append(name)
        ip("link", "set", "lo", "up", netns=name)

    def add_host(self, name: str) -> str:
        """A namespace on the bridge; its address."""
        ns = f"{self.prefix}-{name}"
        address = f"{SUBNET}.{len(self.hosts) + 2}"
        self._add_netns(ns)  # listed first: close() removes it even if the rest fails
        port = f"v{len(self.hosts)}"
        ip("link", "add", port, "netns", self.node, "type", "veth", "peer", "name", "eth0", "netns", ns)
        ip("link", "set", port, "master", "br0", "up", netns=self.node)
        # as the bridge CNI's hairpinMode: with br_netfilter the DNAT happens on the bridge, and a flow DNAT-ed
        # back to its sender leaves by the port it came in on
        ip("link", "set", port, "type", "bridge_slave", "hairpin", "on", netns=self.node)
        ip("addr", "add", f"{address}/24", "dev", "eth0", netns=ns)
        ip("link", "set", "eth0", "up", netns=ns)
        ip("route", "add", "default", "via", GATEWAY, netns=ns)
        self.hosts[name] = address
        return address

    def br_netfilter(self, on: bool) -> bool:
        """Whether bridged traffic goes through the IP hooks in the node namespace; False: no such switch."""
        if not Path("/proc/sys/net/bridge/bridge-nf-call-iptables").exists():
            return False
        self.run(self.node, "sysctl", "-qw", f"net.bridge.bridge-nf-call-iptables={int(on)}")
        return True

    def ns(self, name: str) -> str:
        return self.node if name == "node" else f"{self.prefix}-{name}"

    def run(self, where: str, *command: str, timeout: float = 10.0, check: bool = True) -> subprocess.CompletedProcess:
        ns = where if where.startswith(self.prefix) else self.ns(where)
        result = subprocess.run(["ip", "netns", "exec", ns, *command], capture_output=True, text=True,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} in {ns}: {result.returncode}: {result.stderr.strip()}")
        return result

    def spawn(self, where: str, *command: str) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(["ip", "netns", "exec", self.ns(where), *command], stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.processes.append(process)
        return process

    def http_server(self, where: str, body: str, directory: Path, port: int = 8080) -> None:
        """busybox httpd answering ``body`` on ``port``, until close()."""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "index.html").write_text(body)
        self.spawn(where, "busybox", "httpd", "-f", "-p", str(port), "-h", str(directory))
        self.wait_port(where, self.hosts[where], port)

    def wait_port(self, where: str, address: str, port: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.in_netns(where, lambda: socket.create_connection((address, port), timeout=1).close())
                return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"nothing listens on {address}:{port} in {where}")

    def fetch(self, where: str, url: str, timeout: int = 3) -> str | None:
        """``busybox wget`` from ``where``: the body, or None when the connection failed."""
        result = self.wget(where, url, timeout)
        return result.stdout if result.returncode == 0 else None

    def wget(self, where: str, url: str, timeout: int = 3) -> subprocess.CompletedProcess:
        # coreutils' timeout, not wget's -T: Debian's static busybox 1.35 wget crashes with -T
        return self.run(where, "timeout", str(timeout), "busybox", "wget", "-q", "-O", "-", url, check=False,
                        timeout=timeout + 5)

    def resolv_conf(self, where: str, text: str) -> None:
        """/etc/resolv.conf as ``ip netns exec`` shows it to processes in ``where`` (/etc/netns/<ns>/)."""
        directory = Path("/etc/netns") / self.ns(where)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "resolv.conf").write_text(text)

    def in_netns(self, where: str, fn: Callable[[], T]) -> T:
        """``fn()`` on a thread that entered ``where``'s namespace (sockets it makes stay there)."""
        result: list[T] = []
        errors: list[BaseException] = []

        def body() -> None:
            fd = os.open(f"/run/netns/{self.ns(where)}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
                result.append(fn())
            except BaseException as exc:
                errors.append(exc)
            finally:
                os.close(fd)

        thread = threading.Thread(target=body)
        thread.start()
        thread.join()
        if errors:
            raise errors[0]
        return result[0]

    def bound_sockets(self, where: str, address: str, port: int) -> tuple[socket.socket, socket.socket]:
        """A UDP and a listening TCP socket on ``address:port`` inside ``where``."""
        def make() -> tuple[socket.socket, socket.socket]:
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind((address, port))
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind((address, port))
            tcp.listen(64)
            return udp, tcp
        return self.in_netns(where, make)

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait()
        for ns in reversed(self.namespaces):
            with contextlib.suppress(RuntimeError):
                ip("netns", "delete", ns)
            shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)
