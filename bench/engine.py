"""The engine against dockerd, through the real docker CLI: run latency, memory per container, daemon RSS.

    python bench/engine.py [--runs N] [--containers N] [--rounds N] [--dockerd PATH] [--docker PATH]
                           [--skiff-runtime skiff|runc|crun] [--no-peer]

Starts ``skiff engine`` (and dockerd, when one is found) on temporary data roots, exec roots and unix
sockets, loads an offline-built busybox (``tests/image/testimages.py``) into each with ``docker load``, then:

1. ``docker run --rm --network none busybox true`` N times per daemon, alternating, timed end to end (wall time);
   medians, p90 and the ratio skiff/dockerd.
2. Memory per running container: M ``docker run -d busybox sleep 3600`` per daemon (one daemon at a time);
   the drop in ``MemAvailable`` divided by M, and the PSS (``/proc/PID/smaps_rollup``) of every process
   the daemon added per container (Skiff: monitor + container init; dockerd: containerd shim + init).
3. Daemon RSS (``VmRSS``) idle and with the M containers (dockerd's containerd shown beside it).
4. ``docker logs`` throughput: a container logs ``--log-megabytes`` MB of 100-byte lines (json-file on both
   daemons); ``docker logs C`` is timed to the end of its output, median of 3, MB/s and the ratio.

dockerd is looked up as ``--dockerd``, then on PATH, then in ``/tmp/dockerpkg/root`` (an unpacked Debian
``docker.io``: ``apt-get download docker.io containerd tini`` and ``dpkg-deb -x`` each into that directory;
nothing is installed as a service). It runs with ``--bridge none --iptables=false --ip6tables=false
--ip-forward=false`` on its own roots, starts its own containerd under its exec root, and is stopped by pid.
Without a dockerd the Docker reference figures measured on this host are used, and the output says so.
Containers go under the ``/skiff-bench`` cgroup parent (dockerd's under ``/skiff-bench-docker``); every
container, daemon, temp root and those cgroups are removed at the end. Needs root.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.image.testimages import busybox_docker_archive  # noqa: E402

CGROUP_PARENT = "skiff-bench"
DOCKER_CGROUP_PARENT = "skiff-bench-docker"
IMAGE = "busybox:latest"
# dockerd runs with no bridge and no iptables (a benchmark must not touch the host's firewall), so both
# daemons run their containers with --network none: the same work on both sides, a netns with loopback only.
NETWORK = ("--network", "none")
BENCH_BRIDGE, BENCH_SUBNET, BENCH_NFT_TABLE = "skbench0", "10.233.0.0/24", "skiff_bench"
MIB = 1024 * 1024
UNPACKED_DOCKER = Path("/tmp/dockerpkg/root")
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0

LATENCY_GOAL = 0.5      # skiff median <= 0.5x dockerd's
MEMORY_GOAL = 0.5       # skiff per-container memory <= 0.5x Docker's
IDLE_RSS_GOAL = 60.0    # MiB
DOCKER_REF_PER_CONTAINER = 5.1  # MiB, MemAvailable drop per container, measured on this host
DOCKER_REF_SHIM_PSS = 2.6       # MiB, of which the containerd shim's PSS


def percentile(samples: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


# ------------------------------------------------------------------------------------------------ /proc

MEMINFO_PARTS = ("AnonPages", "Shmem", "SUnreclaim", "SReclaimable", "KernelStack", "PageTables")


def meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes, each field the median of five reads over half a second (they jitter)."""
    reads: dict[str, list[int]] = {}
    for _ in range(5):
        with open("/proc/meminfo") as f:
            for line in f:
                key, value = line.split(":", 1)
                reads.setdefault(key, []).append(int(value.split()[0]) * 1024)
        time.sleep(0.1)
    return {k: int(statistics.median(v)) for k, v in reads.items()}


def status_field(pid: int, field: str) -> int:
    """A ``kB`` field of /proc/PID/status in bytes (0 if the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return 0


def comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except (FileNotFoundError, ProcessLookupError):
        return "?"


def children(pid: int) -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and ppid(int(p)) == pid]


def all_pids() -> set[int]:
    return {int(p) for p in os.listdir("/proc") if p.isdigit()}


def pid_gone(pid: int) -> bool:
    return not os.path.exists(f"/proc/{pid}")


# ---------------------------------------------------------------------------------------------- daemons

class Daemon:
    """A daemon we start on private paths under ``root``, and the docker CLI pointed at it."""

    name = "?"

    def __init__(self, root: Path, docker: str) -> None:
        self.root = root
        root.mkdir(parents=True)
        self.data_root, self.exec_root = root / "data", root / "exec"
        self.socket = root / "docker.sock"
        self.pidfile = root / "daemon.pid"
        self.log = root / "daemon.log"
        self.config = root / "cli"
        self.config.mkdir()
        self.docker_bin = docker
        self.process: subprocess.Popen | None = None
        self.samples: list[float] = []

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def start(self) -> Daemon:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                            cwd=self.root, env=self.env(), start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            if self.socket.exists() and self.ping():
                return self
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not answer within {START_TIMEOUT}s:\n{self.log_tail()}")

    def ping(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(5)
                s.connect(str(self.socket))
                s.sendall(b"GET /_ping HTTP/1.0\r\nHost: localhost\r\n\r\n")
                return b" 200 " in s.recv(64)
        except OSError:
            return False

    def log_tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])
        except FileNotFoundError:
            return ""

    def docker(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.config), "DOCKER_HOST": self.host,
               "DOCKER_CONFIG": str(self.config), "DOCKER_CLI_HINTS": "false"}
        r = subprocess.run([self.docker_bin, *args], capture_output=True, text=True, timeout=timeout, env=env,
                           stdin=subprocess.DEVNULL)
        if check and r.returncode != 0:
            raise RuntimeError(f"[{self.name}] docker {' '.join(args)} exited {r.returncode}: {r.stderr.strip()}")
        return r

    def timed_run(self, *, record: bool = True) -> None:
        started = time.perf_counter()
        self.docker("run", "--rm", *NETWORK, IMAGE, "true")
        elapsed = time.perf_counter() - started
        if record:
            self.samples.append(elapsed)

    def helper_pids(self) -> list[int]:
        """Long-lived processes besides the daemon that serve every container (dockerd's containerd)."""
        return []

    def remove_all_containers(self) -> None:
        with contextlib.suppress(Exception):
            ids = self.docker("ps", "-aq", timeout=60).stdout.split()
            for i in range(0, len(ids), 25):
                self.docker("rm", "-f", *ids[i:i + 25], timeout=300, check=False)

    def stop(self) -> None:
        if self.process is None:
            return
        helpers = self.helper_pids()
        if self.process.poll() is None:
            self.remove_all_containers()
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()
        for pid in helpers:  # children it started: normally gone with it
            deadline = time.monotonic() + 10
            while not pid_gone(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process = None


class Skiff(Daemon):
    name = "skiff"

    def __init__(self, root: Path, docker: str, runtime: str = "skiff") -> None:
        super().__init__(root, docker)
        self.runtime = runtime

    def command(self) -> list[str]:
        return [sys.executable, "-m", "skiff.cli.main", "engine", "--data-root", str(self.data_root),
                "--exec-root", str(self.exec_root), "-H", self.host, "--pidfile", str(self.pidfile),
                "--cgroup-parent", f"/{CGROUP_PARENT}", "--runtime", self.runtime,
                # Its own default bridge, subnet and nft table, apart from any Skiff engine on this host.
                "--bridge", BENCH_BRIDGE, "--bip", BENCH_SUBNET, "--nft-table", BENCH_NFT_TABLE]

    def env(self) -> dict[str, str]:
        return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))

    def stop(self) -> None:
        super().stop()
        # The engine keeps its networks for the next start, as dockerd does; the bench's go with the bench.
        subprocess.run(["ip", "link", "delete", BENCH_BRIDGE], capture_output=True, check=False)
        subprocess.run(["nft", "delete", "table", "ip", BENCH_NFT_TABLE], capture_output=True, check=False)


class Dockerd(Daemon):
    name = "dockerd"

    def __init__(self, root: Path, docker: str, dockerd: str) -> None:
        super().__init__(root, docker)
        self.dockerd = dockerd
        (root / "daemon.json").write_text("{}\n")

    def command(self) -> list[str]:
        return [self.dockerd, "--data-root", str(self.data_root), "--exec-root", str(self.exec_root),
                "-H", self.host, "--pidfile", str(self.pidfile), "--config-file", str(self.root / "daemon.json"),
                "--bridge", "none", "--iptables=false", "--ip6tables=false", "--ip-forward=false",
                "--ip-masq=false", "--userland-proxy=false", "--cgroup-parent", f"/{DOCKER_CGROUP_PARENT}"]

    def env(self) -> dict[str, str]:
        # An unpacked package: containerd, its shim, docker-init beside dockerd (usr/sbin -> usr/bin).
        here = Path(self.dockerd).resolve().parent
        extra = [str(here), str(here.parent / "bin")]
        return dict(os.environ, PATH=os.pathsep.join([*extra, os.environ.get("PATH", "/usr/bin:/bin")]))

    def helper_pids(self) -> list[int]:
        if self.process is None:
            return []
        return [p for p in children(self.process.pid) if comm(p) == "containerd"]


def find_dockerd(explicit: str | None) -> str | None:
    for candidate in (explicit, shutil.which("dockerd"), str(UNPACKED_DOCKER / "usr/sbin/dockerd")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def unmount_under(root: Path) -> None:
    """Lazily unmount whatever a daemon left mounted under our temp root (deepest first), before rmtree."""
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4].replace("\\040", " ") for line in f]
    prefix = str(root) + "/"
    for point in sorted((m for m in points if m.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def remove_cgroups() -> None:
    """rmdir the bench's cgroup parents (v1 controllers and v2), deepest first."""
    base = Path("/sys/fs/cgroup")
    tops = []
    for name in (CGROUP_PARENT, DOCKER_CGROUP_PARENT):
        tops.append(base / name)
        if base.is_dir():
            tops += [d / name for d in base.iterdir() if d.is_dir()]
    for top in tops:
        if not top.is_dir():
            continue
        for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda t: -t[0].count("/")):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)


# ------------------------------------------------------------------------------------------- measuring

def measure_latency(daemons: list[Daemon], runs: int, warmup: int) -> None:
    for _ in range(warmup):
        for d in daemons:
            d.timed_run(record=False)
    for i in range(runs):
        for d in daemons if i % 2 == 0 else reversed(daemons):
            d.timed_run()


def measure_logs(d: Daemon, megabytes: int, repeats: int = 3) -> float:
    """MB/s of ``docker logs`` over a container that logged ``megabytes`` MB of 100-byte lines (median)."""
    size = megabytes * 1_000_000
    script = f"yes {'0123456789' * 9}abcdefghi | head -c {size}"  # 99 characters and a newline a line
    cid = d.docker("run", "-d", *NETWORK, IMAGE, "sh", "-c", script).stdout.strip()
    try:
        d.docker("wait", cid, timeout=300)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            out = d.docker("logs", cid, timeout=600).stdout
            times.append(time.perf_counter() - started)
            if len(out) != size:
                raise RuntimeError(f"[{d.name}] docker logs gave {len(out)} bytes, not {size}")
        return size / statistics.median(times) / 1e6
    finally:
        d.docker("rm", "-f", cid, check=False)


def measure_memory(d: Daemon, count: int) -> dict:
    """Start ``count`` sleeping containers on ``d``; what they cost; then remove them."""
    helpers = d.helper_pids()
    rss_idle = status_field(d.pid, "VmRSS")
    helpers_idle = sum(status_field(p, "VmRSS") for p in helpers)
    time.sleep(1.0)
    before_pids = all_pids()
    before = meminfo()
    ids = [d.docker("run", "-d", *NETWORK, IMAGE, "sleep", "3600").stdout.strip() for _ in range(count)]
    time.sleep(3.0)  # let the daemon and the monitors settle (lazy imports, first log writes)
    after = meminfo()
    inits = [int(x) for x in d.docker("inspect", "--format", "{{.State.Pid}}", *ids).stdout.split()]
    ours = {d.pid, *helpers}
    per_kind: dict[str, list[int]] = {}
    counted: set[int] = set()
    for init in inits:
        parent = ppid(init)
        for pid, kind in ((init, "container init"), (parent, f"parent of init ({comm(parent)})")):
            if pid in counted or pid in ours or pid <= 1:
                continue
            counted.add(pid)
            per_kind.setdefault(kind, []).append(pss(pid))
    # Anything else of ours that appeared meanwhile and is still alive (a runtime or helper per container?):
    # children of the daemon, its helpers or the per-container processes (not other users of the host).
    others: dict[str, list[int]] = {}
    for pid in all_pids() - before_pids - counted - ours:
        size = pss(pid)
        if size and ppid(pid) in ours | counted:
            others.setdefault(comm(pid), []).append(size)
    result = {
        "drop_per_container": (before["MemAvailable"] - after["MemAvailable"]) / count,
        "parts": {k: (after.get(k, 0) - before.get(k, 0)) / count for k in MEMINFO_PARTS},
        "pss_per_container": sum(sum(v) for v in per_kind.values()) / count,
        "pss_kinds": {k: (len(v), sum(v) / len(v)) for k, v in per_kind.items()},
        "other_new": {k: (len(v), sum(v) / len(v)) for k, v in others.items()},
        "rss_idle": rss_idle,
        "rss_loaded": status_field(d.pid, "VmRSS"),
        "helpers_idle": helpers_idle,
        "helpers_loaded": sum(status_field(p, "VmRSS") for p in helpers),
        "running": len(inits),
    }
    for i in range(0, len(ids), 25):
        d.docker("rm", "-f", *ids[i:i + 25], timeout=300)
    deadline = time.monotonic() + 30
    while any(not pid_gone(p) for p in counted) and time.monotonic() < deadline:
        time.sleep(0.1)
    return result


def median_result(results: list[dict]) -> dict:
    """Each number the median over the rounds (nested dicts field by field; tuples by position)."""
    first = results[0]
    out: dict = {"rounds": len(results)}
    for key, value in first.items():
        values = [r[key] for r in results]
        if isinstance(value, dict):
            keys = {k for v in values for k in v}
            inner = {k: [v[k] for v in values if k in v] for k in keys}
            out[key] = {k: (tuple(statistics.median(x) for x in zip(*v, strict=True)) if isinstance(v[0], tuple)
                            else statistics.median(v)) for k, v in inner.items()}
        else:
            out[key] = statistics.median(values)
    out["drop_each_round"] = [r["drop_per_container"] for r in results]
    return out


def daemon_growth(m: dict, count: int) -> float:
    return (m["rss_loaded"] - m["rss_idle"] + m["helpers_loaded"] - m["helpers_idle"]) / count


def kernel_part(m: dict) -> float:
    return sum(m["parts"][k] for k in ("SUnreclaim", "KernelStack", "PageTables"))


def bottom_up(m: dict, count: int) -> float:
    """Per container: PSS of its processes + the daemon's growth + host-wide kernel slab, stacks, page tables."""
    return m["pss_per_container"] + daemon_growth(m, count) + kernel_part(m)


def mib(n: float) -> str:
    return f"{n / MIB:6.2f} MiB"


def summary(d: Daemon) -> str:
    ms = [s * 1000 for s in d.samples]
    return (f"{d.name:>8}: median {statistics.median(ms):7.1f} ms   p90 {percentile(ms, 90):7.1f} ms   "
            f"min {min(ms):7.1f} ms   n={len(ms)}")


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def report(daemons: list[Daemon], memory: dict[str, dict], a: argparse.Namespace, peer_note: str) -> None:
    skiff = daemons[0]
    assert isinstance(skiff, Skiff)
    peer = daemons[1] if len(daemons) > 1 else None
    print(f"skiff engine --runtime {skiff.runtime}; peer: {peer_note}")
    print(f"\n1. `docker run --rm {' '.join(NETWORK)} {IMAGE} true` end to end (docker CLI wall time), "
          f"{a.runs} runs each, alternating")
    for d in daemons:
        print("  " + summary(d))
    ratio = None
    if peer is not None:
        ratio = statistics.median(skiff.samples) / statistics.median(peer.samples)
        p90 = percentile(skiff.samples, 90) / percentile(peer.samples, 90)
        print(f"  ratio skiff/dockerd: median {ratio:.2f}x   p90 {p90:.2f}x")

    print(f"\n2. memory per running container ({a.containers} x `docker run -d {IMAGE} sleep 3600`, "
          "one daemon at a time, "
          f"median of {a.rounds} rounds)")
    for name, m in memory.items():
        print(f"  {name:>8}: MemAvailable drop {mib(m['drop_per_container'])}/container   "
              f"PSS of its per-container processes {mib(m['pss_per_container'])}/container   "
              f"({m['running']:.0f} running)")
        print("            MemAvailable drop each round: " +
              ", ".join(f"{x / MIB:.2f}" for x in m["drop_each_round"]) + " MiB/container")
        for kind, (n, avg) in sorted(m["pss_kinds"].items()):
            print(f"            {kind:<40} x{n:<3.0f} PSS {mib(avg)} each")
        growth, kernel = daemon_growth(m, a.containers), kernel_part(m)
        print(f"            bottom-up: PSS {mib(m['pss_per_container'])} + daemon growth {mib(growth)} + kernel "
              f"(SUnreclaim+KernelStack+PageTables) {mib(kernel)} = {mib(bottom_up(m, a.containers))}")
        parts = "  ".join(f"{k} {v / 1024:+.0f}" for k, v in m["parts"].items())
        print(f"            meminfo deltas per container (KiB): {parts}")
        for kind, (n, avg) in sorted(m["other_new"].items()):
            print(f"            (other new process) {kind:<20} x{n:<3.0f} PSS {mib(avg)} each")

    print(f"\n3. daemon RSS (VmRSS), idle and with {a.containers} containers")
    for name, m in memory.items():
        line = f"  {name:>8}: idle {mib(m['rss_idle'])}   loaded {mib(m['rss_loaded'])}"
        if m["helpers_idle"]:
            line += (f"   (+ containerd: idle {mib(m['helpers_idle'])}, loaded {mib(m['helpers_loaded'])}; "
                     f"together idle {mib(m['rss_idle'] + m['helpers_idle'])})")
        print(line)

    s = memory[skiff.name]
    print("\ngoals (from the issue):")
    if ratio is not None:
        print(f"  run latency <= {LATENCY_GOAL}x dockerd's: {verdict(ratio <= LATENCY_GOAL)} ({ratio:.2f}x; "
              f"skiff {statistics.median(skiff.samples) * 1000:.1f} ms vs "
              f"dockerd {statistics.median(peer.samples) * 1000:.1f} ms)")  # type: ignore[union-attr]
    else:
        print(f"  run latency <= {LATENCY_GOAL}x dockerd's: not measured (no dockerd); "
              f"skiff median {statistics.median(skiff.samples) * 1000:.1f} ms")
    if peer is not None:
        docker_mem, source = memory[peer.name]["drop_per_container"] / MIB, "measured in this run"
        docker_shim = memory[peer.name]["pss_per_container"] / MIB
    else:
        docker_mem, docker_shim, source = DOCKER_REF_PER_CONTAINER, DOCKER_REF_SHIM_PSS, "reference figure, no dockerd"
    mine = s["drop_per_container"] / MIB
    print(f"  memory per container <= {MEMORY_GOAL}x Docker's: {verdict(mine <= MEMORY_GOAL * docker_mem)} "
          f"(skiff {mine:.2f} MiB vs Docker {docker_mem:.2f} MiB, {source}; ratio {mine / docker_mem:.2f}x; "
          f"per-container PSS skiff {s['pss_per_container'] / MIB:.2f} MiB vs Docker {docker_shim:.2f} MiB)")
    if peer is not None:
        mine_bu, docker_bu = bottom_up(s, a.containers), bottom_up(memory[peer.name], a.containers)
        print(f"    (bottom-up instead, less sensitive to other work on the host: skiff {mine_bu / MIB:.2f} MiB vs "
              f"Docker {docker_bu / MIB:.2f} MiB: {verdict(mine_bu <= MEMORY_GOAL * docker_bu)}, "
              f"ratio {mine_bu / docker_bu:.2f}x)")
        ref = mine <= MEMORY_GOAL * DOCKER_REF_PER_CONTAINER
        print(f"    (against the reference Docker figure {DOCKER_REF_PER_CONTAINER} MiB instead: {verdict(ref)}, "
              f"ratio {mine / DOCKER_REF_PER_CONTAINER:.2f}x)")
    idle = s["rss_idle"] / MIB
    print(f"  daemon idle RSS <= {IDLE_RSS_GOAL:.0f} MiB: {verdict(idle <= IDLE_RSS_GOAL)} (skiff {idle:.1f} MiB)")


def report_logs(rates: dict[str, float], megabytes: int) -> None:
    print(f"\ndocker logs of {megabytes} MB (100-byte lines), median of 3:")
    for name, rate in rates.items():
        print(f"  {name:<8} {rate:7.1f} MB/s")
    if len(rates) == 2:
        skiff, docker = rates.values()
        print(f"  ratio skiff/dockerd {skiff / docker:.2f} (higher is better)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=20, help="timed `docker run` per daemon (default 20)")
    p.add_argument("--warmup", type=int, default=2, help="unrecorded runs per daemon first (default 2)")
    p.add_argument("--containers", type=int, default=50, help="containers for the memory figures (default 50)")
    p.add_argument("--rounds", type=int, default=3,
                   help="memory rounds per daemon, alternating; medians are reported (default 3)")
    p.add_argument("--docker", default=shutil.which("docker") or "/usr/local/bin/docker", help="the docker CLI")
    p.add_argument("--dockerd", help=f"the peer dockerd (default: PATH, then {UNPACKED_DOCKER}/usr/sbin/dockerd)")
    p.add_argument("--skiff-runtime", default="skiff", help="the engine's --runtime: skiff|runc|crun (default skiff)")
    p.add_argument("--no-peer", action="store_true", help="measure skiff alone, against the reference figures")
    p.add_argument("--log-megabytes", type=int, default=20, help="logged volume for `docker logs` (default 20)")
    a = p.parse_args(argv)
    if os.geteuid() != 0:
        print("engine: needs root (containers and cgroups)", file=sys.stderr)
        return 2
    if not os.access(a.docker, os.X_OK):
        print(f"engine: the docker CLI is not at {a.docker}", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="sb-", dir="/tmp"))  # short: unix socket paths fit in 108 bytes
    had_run_containerd = os.path.exists("/run/containerd")
    daemons: list[Daemon] = []
    try:
        archive = busybox_docker_archive(str(work / "busybox.tar"), IMAGE)
        daemons.append(Skiff(work / "s", a.docker, a.skiff_runtime).start())
        dockerd = None if a.no_peer else find_dockerd(a.dockerd)
        if dockerd:
            daemons.append(Dockerd(work / "d", a.docker, dockerd).start())
            version = daemons[1].docker("version", "--format", "{{.Server.Version}}").stdout.strip()
            peer_note = f"dockerd {version} ({dockerd}) ran in this run"
        else:
            peer_note = ("no dockerd ran (" + ("--no-peer" if a.no_peer else "none installed") +
                         f"): Docker's reference figures for this host are used ({DOCKER_REF_PER_CONTAINER} MiB "
                         f"per container, shim PSS {DOCKER_REF_SHIM_PSS} MiB)")
        for d in daemons:
            d.docker("load", "-i", archive, timeout=300)
        measure_latency(daemons, a.runs, a.warmup)
        rounds: dict[str, list[dict]] = {d.name: [] for d in daemons}
        for r in range(a.rounds):
            for d in daemons if r % 2 == 0 else reversed(daemons):
                rounds[d.name].append(measure_memory(d, a.containers))
        memory = {name: median_result(results) for name, results in rounds.items()}
        report(daemons, memory, a, peer_note)
        report_logs({d.name: measure_logs(d, a.log_megabytes) for d in daemons}, a.log_megabytes)
        return 0
    finally:
        for d in reversed(daemons):
            try:
                d.stop()
            except Exception as e:  # keep cleaning up
                print(f"engine: stopping {d.name}: {e}", file=sys.stderr)
        unmount_under(work)
        shutil.rmtree(work, ignore_errors=True)
        remove_cgroups()
        if not had_run_containerd:  # the containerd shim keeps its sockets under /run/containerd/s
            for leftover in ("/run/containerd/s", "/run/containerd"):
                with contextlib.suppress(OSError):
                    os.rmdir(leftover)


if __name__ == "__main__":
    sys.exit(main())
