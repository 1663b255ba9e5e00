"""Published ports against dockerd's: throughput and connection rate through a published port vs straight to the
container's address, each path measured on both daemons in the same run.

    python bench/network.py [--rounds N] [--transfers N] [--size MiB] [--seconds S]
                            [--dockerd PATH] [--docker PATH] [--no-peer]

Every daemon runs in a network namespace of its own that the bench makes (its *host*: neither daemon touches the
real host's links or firewall), and a second namespace plays a client machine, joined to the daemon's by a veth
pair, with its default route through the daemon's end. In each daemon one container publishes ``-p 8080:80`` and
serves, with busybox ``httpd`` from a tmpfs, a file of ``--size`` MiB (throughput: one HTTP GET streaming it, MB/s
at the client) and a two-byte one (connection rate: connect, GET, read to the end, close; one client, sequential,
for ``--seconds``). The client is this process, on a thread that entered the namespace it measures from. Paths:

  direct     client namespace -> the container's address, port 80 (routed by the daemon's namespace; no NAT)
  kernel     client namespace -> the daemon namespace's address, port 8080 (DNAT: Skiff's nftables rules,
             dockerd's iptables ones)
  host       daemon namespace -> the container's address, port 80 (one hop: the baseline of the next one)
  loopback   daemon namespace -> 127.0.0.1:8080, which the kernel cannot DNAT: the userland proxy (Skiff's relay
             on the daemon's event loop; dockerd's docker-proxy process)

Rounds alternate between the daemons and, within a round, the paths take turns GET by GET and slice by slice of
the connection-rate time (load elsewhere on the host then falls on every path alike). Medians are printed, then
kernel/direct and loopback/host within each daemon (the issue's goal: the kernel path at least 0.8x the direct
one) and skiff/dockerd per path. dockerd is found as in ``bench/engine.py`` (``--dockerd``, PATH,
``/tmp/dockerpkg/root``); without one Skiff's figures are printed alone.
Every container, daemon, namespace (with the links, bridges and rules in it), temp root and cgroup is removed at
the end. Traffic goes only to addresses inside the namespaces the bench made, and to their loopback. Needs root.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.engine import IMAGE, Daemon, Dockerd, Skiff, find_dockerd, unmount_under  # noqa: E402
from tests.image.testimages import busybox_docker_archive  # noqa: E402

PUBLISHED = 8080                 # the host port, as the example; a fresh namespace always has it free
CONTAINER_PORT = 80
SMALL = "/s"                     # the connection-rate request's file (two bytes)
BIG = "/big"                     # the throughput request's file
SMALL_REQUEST = f"GET {SMALL} HTTP/1.0\r\n\r\n".encode()
CGROUP_PARENT = "skiff-bench-net"
DOCKER_CGROUP_PARENT = "skiff-bench-net-docker"
KERNEL_GOAL = 0.8                # the kernel path >= 0.8x the direct one
RATE_SLICES = 3                  # the connection-rate time of a path and round, in this many interleaved slices
CLONE_NEWNET = 0x40000000
MB = 1_000_000
T = TypeVar("T")


# ---------------------------------------------------------------------------------------------- namespaces


class Netns:
    """A named network namespace the bench made (and deletes, with everything in it)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.path = f"/run/netns/{name}"

    def create(self) -> Netns:
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True)
        self.ip("link", "set", "lo", "up")
        return self

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True, check=False)

    def ip(self, *args: str) -> None:
        subprocess.run(["ip", "-n", self.name, *args], check=True, capture_output=True)

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()`` on a fresh thread that entered this namespace (setns(2) moves only the calling thread)."""
        outcome: dict[str, object] = {}

        def body() -> None:
            try:
                fd = os.open(self.path, os.O_RDONLY)
                try:
                    if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), f"setns({self.path})")
                finally:
                    os.close(fd)
                outcome["value"] = fn()
            except BaseException as e:  # handed to the caller's thread
                outcome["error"] = e

        thread = threading.Thread(target=body, name=f"in-{self.name}")
        thread.start()
        thread.join()
        if "error" in outcome:
            raise outcome["error"]  # type: ignore[misc]
        return outcome["value"]  # type: ignore[return-value]


@dataclass
class Site:
    """A daemon's namespace and a client's, joined by a veth pair (``10.238.N.0/29``: daemon .1, client .2 and .3).

    The client has an address per path it measures from, so that one path's connections (whose conntrack entries
    linger in TIME_WAIT for two minutes) never share a tuple with the other's: that would measure the kernel's
    clash handling, not the path."""

    daemon: Netns
    client: Netns
    daemon_address: str
    client_addresses: tuple[str, str]
    bip: str  # the daemon's default bridge: CIDR of its gateway address

    @classmethod
    def make(cls, tag: str, n: int) -> Site:
        daemon, client = Netns(f"skbn-{tag}-{os.getpid()}"), Netns(f"skbn-{tag}c-{os.getpid()}")
        site = cls(daemon, client, f"10.238.{n}.1", (f"10.238.{n}.2", f"10.238.{n}.3"), f"10.238.{10 + n}.1/24")
        daemon.create()
        client.create()
        daemon.ip("link", "add", "uplink", "type", "veth", "peer", "name", "eth0", "netns", client.name)
        daemon.ip("addr", "add", f"{site.daemon_address}/29", "dev", "uplink")
        daemon.ip("link", "set", "uplink", "up")
        for address in site.client_addresses:
            client.ip("addr", "add", f"{address}/29", "dev", "eth0")
        client.ip("link", "set", "eth0", "up")
        client.ip("route", "add", "default", "via", site.daemon_address)
        return site

    def delete(self) -> None:
        self.client.delete()
        self.daemon.delete()


# ---------------------------------------------------------------------------------------------- daemons


class NetnsSkiff(Skiff):
    """``skiff engine`` born in the site's daemon namespace (nsenter execs it: the pid is the engine's)."""

    def __init__(self, root: Path, docker: str, site: Site) -> None:
        super().__init__(root, docker)
        self.site = site

    def command(self) -> list[str]:
        return ["nsenter", f"--net={self.site.daemon.path}", *super().command(), "--bridge", "skbn0",
                "--bip", self.site.bip, "--nft-table", "skiff_bench_net", "--cgroup-parent", f"/{CGROUP_PARENT}"]

    def stop(self) -> None:
        Daemon.stop(self)  # its bridge and table live in the namespace, which goes at the end (not the host's)


class NetnsDockerd(Dockerd):
    """dockerd born in the site's daemon namespace, publishing as it does by default: iptables DNAT and
    docker-proxy, on its own docker0 (all inside that namespace)."""

    def __init__(self, root: Path, docker: str, dockerd: str, site: Site) -> None:
        super().__init__(root, docker, dockerd)
        self.site = site

    def command(self) -> list[str]:
        return ["nsenter", f"--net={self.site.daemon.path}", self.dockerd, "--data-root", str(self.data_root),
                "--exec-root", str(self.exec_root), "-H", self.host, "--pidfile", str(self.pidfile),
                "--config-file", str(self.root / "daemon.json"), "--bip", self.site.bip, "--ip6tables=false",
                "--cgroup-parent", f"/{DOCKER_CGROUP_PARENT}"]


# ---------------------------------------------------------------------------------------------- the client


@dataclass
class Route:
    """One way to the server: from which namespace and source address (the kernel's choice when empty), to which
    address and port."""

    name: str
    where: Netns
    source: str
    host: str
    port: int

    def connect(self, timeout: float) -> socket.socket:
        s = socket.socket()
        try:
            s.settimeout(timeout)
            if self.source:
                s.bind((self.source, 0))
            s.connect((self.host, self.port))
        except BaseException:
            s.close()
            raise
        return s


def throughput(route: Route, size: int) -> float:
    """MB/s of one HTTP GET of the big file, request to last byte."""
    buf = memoryview(bytearray(1 << 20))
    started = time.perf_counter()
    with route.connect(30) as s:
        s.sendall(f"GET {BIG} HTTP/1.0\r\n\r\n".encode())
        total = 0
        while n := s.recv_into(buf):
            total += n
    elapsed = time.perf_counter() - started
    if total < size:
        raise RuntimeError(f"{route.host}:{route.port}{BIG}: {total} bytes, expected {size} and headers")
    return total / elapsed / MB


def get_small(route: Route) -> None:
    """One short connection: connect, GET the small file, read to the end, close."""
    with route.connect(10) as s:
        s.sendall(SMALL_REQUEST)
        while s.recv(4096):
            pass


def connection_rate(route: Route, seconds: float) -> float:
    """Connections per second of ``get_small``, one after another."""
    count, started = 0, time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        get_small(route)
        count += 1
    return count / (time.perf_counter() - started)


@dataclass
class Target:
    """A daemon with its serving container, and what was measured on each path."""

    daemon: Daemon
    site: Site
    container_ip: str = ""
    mbps: dict[str, list[float]] = field(default_factory=dict)
    rate: dict[str, list[float]] = field(default_factory=dict)

    def paths(self) -> list[Route]:
        direct_source, kernel_source = self.site.client_addresses
        return [Route("direct", self.site.client, direct_source, self.container_ip, CONTAINER_PORT),
                Route("kernel", self.site.client, kernel_source, self.site.daemon_address, PUBLISHED),
                Route("host", self.site.daemon, "", self.container_ip, CONTAINER_PORT),
                Route("loopback", self.site.daemon, "", "127.0.0.1", PUBLISHED)]


def serve(target: Target, size_mib: int) -> None:
    """Start the server container and wait until it answers on every path."""
    script = (f"dd if=/dev/zero of=/www{BIG} bs=1M count={size_mib} 2>/dev/null && printf ok > /www{SMALL} && "
              f"exec httpd -f -p {CONTAINER_PORT} -h /www")
    d = target.daemon
    cid = d.docker("run", "-d", "-p", f"{PUBLISHED}:{CONTAINER_PORT}", "--tmpfs", "/www", IMAGE, "sh", "-c",
                   script).stdout.strip()
    target.container_ip = d.docker("inspect", "-f", "{{.NetworkSettings.IPAddress}}", cid).stdout.strip()
    for path in target.paths():
        deadline = time.monotonic() + 30
        while True:
            try:
                path.where.call(lambda p=path: get_small(p))
                break
            except OSError as e:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"[{d.name}] {path.name} {path.host}:{path.port} never answered: {e}") from e
                time.sleep(0.2)


def measure_round(target: Target, a: argparse.Namespace, record: bool = True) -> None:
    """Every path in turn, several times over (one GET, one slice of the connection-rate time each), so that
    load elsewhere on the host falls on all paths alike rather than on whichever ran at that moment."""
    size = a.size * 1024 * 1024
    for _ in range(a.transfers):
        for path in target.paths():
            speed = path.where.call(lambda p=path: throughput(p, size))
            if record:
                target.mbps.setdefault(path.name, []).append(speed)
    for _ in range(RATE_SLICES):
        for path in target.paths():
            rate = path.where.call(lambda p=path: connection_rate(p, a.seconds / RATE_SLICES))
            if record:
                target.rate.setdefault(path.name, []).append(rate)


# ---------------------------------------------------------------------------------------------- report


PATH_LABELS = {
    "direct": "direct: client ns -> container IP:80",
    "kernel": "kernel: client ns -> published :8080 (DNAT)",
    "host": "host: daemon ns -> container IP:80",
    "loopback": "loopback: 127.0.0.1:8080 (userland proxy)",
}


def med(values: list[float]) -> float:
    return statistics.median(values)


def report(targets: list[Target], a: argparse.Namespace, peer_note: str) -> None:
    skiff = targets[0]
    peer = targets[1] if len(targets) > 1 else None
    print(f"peer: {peer_note}")
    print(f"{a.rounds} rounds, alternating daemons; throughput: {a.transfers} GETs of {a.size} MiB per path and round; "
          f"connection rate: {a.seconds:g} s of sequential connect+GET+close per path and round in {RATE_SLICES} "
          "interleaved slices; medians\n")
    names = [t.daemon.name for t in targets]
    head = f"{'path':<46}" + "".join(f"{n + ' MB/s':>15}" for n in names)
    head += "".join(f"{n + ' conn/s':>16}" for n in names)
    if peer:
        head += f"{'MB/s s/d':>10}{'conn/s s/d':>12}"
    print(head)
    for name, label in PATH_LABELS.items():
        line = f"{label:<46}" + "".join(f"{med(t.mbps[name]):15.0f}" for t in targets)
        line += "".join(f"{med(t.rate[name]):16.0f}" for t in targets)
        if peer:
            line += f"{med(skiff.mbps[name]) / med(peer.mbps[name]):9.2f}x"
            line += f"{med(skiff.rate[name]) / med(peer.rate[name]):11.2f}x"
        print(line)
    print("\nwithin each daemon:")
    for t in targets:
        k_tp = med(t.mbps["kernel"]) / med(t.mbps["direct"])
        k_rate = med(t.rate["kernel"]) / med(t.rate["direct"])
        l_tp = med(t.mbps["loopback"]) / med(t.mbps["host"])
        l_rate = med(t.rate["loopback"]) / med(t.rate["host"])
        print(f"  {t.daemon.name:>8}: kernel/direct throughput {k_tp:.2f}x, connections {k_rate:.2f}x;   "
              f"loopback proxy/host direct throughput {l_tp:.2f}x, connections {l_rate:.2f}x")
    k_tp = med(skiff.mbps["kernel"]) / med(skiff.mbps["direct"])
    k_rate = med(skiff.rate["kernel"]) / med(skiff.rate["direct"])
    met = "met" if min(k_tp, k_rate) >= KERNEL_GOAL else "NOT met"
    print(f"\ngoal (from the issue): Skiff's kernel path >= {KERNEL_GOAL}x the direct path: {met} "
          f"(throughput {k_tp:.2f}x, connection rate {k_rate:.2f}x)")


# ---------------------------------------------------------------------------------------------- main


def remove_cgroups() -> None:
    """rmdir the bench's cgroup parents (cgroup v2 and every v1 controller), deepest first."""
    base = Path("/sys/fs/cgroup")
    tops = [base / n for n in (CGROUP_PARENT, DOCKER_CGROUP_PARENT)]
    if base.is_dir():
        tops += [d / n for d in base.iterdir() if d.is_dir() for n in (CGROUP_PARENT, DOCKER_CGROUP_PARENT)]
    for top in filter(Path.is_dir, tops):
        for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda t: -t[0].count("/")):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="measuring rounds per daemon, alternating (default 5)")
    p.add_argument("--transfers", type=int, default=3, help="throughput GETs per path and round (default 3)")
    p.add_argument("--size", type=int, default=256, help="MiB streamed by one throughput GET (default 256)")
    p.add_argument("--seconds", type=float, default=1.5, help="connection-rate time per path and round (default 1.5)")
    p.add_argument("--docker", default=shutil.which("docker") or "/usr/local/bin/docker", help="the docker CLI")
    p.add_argument("--dockerd", help="the peer dockerd (default: PATH, then /tmp/dockerpkg/root/usr/sbin/dockerd)")
    p.add_argument("--no-peer", action="store_true", help="measure skiff alone")
    a = p.parse_args(argv)
    if os.geteuid() != 0:
        print("network: needs root (namespaces, containers)", file=sys.stderr)
        return 2
    for tool in ("nsenter", "ip"):
        if shutil.which(tool) is None:
            print(f"network: {tool} is not installed", file=sys.stderr)
            return 2

    work = Path(tempfile.mkdtemp(prefix="sbn-", dir="/tmp"))  # short: unix socket paths fit in 108 bytes
    had_run_containerd = os.path.exists("/run/containerd")
    sites: list[Site] = []
    daemons: list[Daemon] = []  # every daemon made, started or not: each is stopped at the end
    targets: list[Target] = []
    try:
        archive = busybox_docker_archive(str(work / "busybox.tar"), IMAGE)
        sites.append(Site.make("s", 1))
        daemons.append(NetnsSkiff(work / "s", a.docker, sites[0]))
        dockerd = None if a.no_peer else find_dockerd(a.dockerd)
        if dockerd:
            sites.append(Site.make("d", 2))
            daemons.append(NetnsDockerd(work / "d", a.docker, dockerd, sites[1]))
        targets = [Target(d.start(), site) for d, site in zip(daemons, sites, strict=True)]
        if dockerd:
            version = targets[1].daemon.docker("version", "--format", "{{.Server.Version}}").stdout.strip()
            peer_note = f"dockerd {version} ({dockerd}), iptables DNAT + docker-proxy, in this run"
        else:
            peer_note = "none (" + ("--no-peer" if a.no_peer else "no dockerd installed") + ")"
        for t in targets:
            t.daemon.docker("load", "-i", archive, timeout=300)
            serve(t, a.size)
            measure_round(t, a, record=False)  # warm-up: caches, conntrack, the proxies' first connections
        for r in range(a.rounds):
            for t in targets if r % 2 == 0 else reversed(targets):
                measure_round(t, a)
        report(targets, a, peer_note)
        return 0
    finally:
        for d in reversed(daemons):
            try:
                d.stop()
            except Exception as e:  # keep cleaning up
                print(f"network: stopping {d.name}: {e}", file=sys.stderr)
        for site in sites:
            site.delete()
        unmount_under(work)
        shutil.rmtree(work, ignore_errors=True)
        remove_cgroups()
        if not had_run_containerd:  # the containerd shim keeps its sockets under /run/containerd/s
            for leftover in ("/run/containerd/s", "/run/containerd"):
                with contextlib.suppress(OSError):
                    os.rmdir(leftover)


if __name__ == "__main__":
    sys.exit(main())
