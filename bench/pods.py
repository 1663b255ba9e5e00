"""A one-node cluster (`skiff server` with its in-process agent): pod startup latency, time to a Ready cluster,
and the agent's memory; the same kubelet on a private dockerd as the peer.

    python bench/pods.py [--pods 100] [--rate 2] [--ready-runs 3] [--dockerd PATH] [--no-peer]

1. Time to a Ready one-node cluster: from starting `skiff server` (process start) to its Node seen Ready
   through a watch (list, then watch from the list's revision), each run on a fresh data dir; the first run
   on each engine also makes the agent's sandbox image (`skiff/pause:3.10`, absent until then).
2. Pod startup latency, kube's SLI: from sending each pod's create request to the watch event that shows it
   Running with its container started. After one warm-up pod (the cluster in service, its scheduler up),
   N pods (busybox `sleep`, image present, `imagePullPolicy: Never`, no nodeName: the server's scheduler
   binds them) created at `--rate` pods/s (0: all at once) on the one node. p50, p90, p99 and max per
   engine, and the ratio skiff/dockerd. The default rate is one the node sustains on a small machine, so the
   figures are latency rather than a queue (kube's SLI is measured under a load the cluster sustains too);
   `--rate 0` shows the queue, with the time until all N ran.
3. Memory: `skiff agent` alone (VmRSS once Ready and idle 5 s, against a server run with `--disable-agent`),
   and the growth of `skiff server`'s own VmRSS with its in-process agent (idle 5 s after the node is
   Ready) over the same server with `--disable-agent`.

Goals: p99 <= 1 s, Ready cluster <= 5 s. kube's pod startup SLO (p99 <= 5 s, from the SIG Scalability SLO
definitions) is a published figure, not a peer run here; k3s is not installed here and is not compared.

Engines are private: `skiff engine` on its own roots, socket, bridge and address block (the test fixtures'
`Engines`), dockerd as in tests/cluster/kubelet/test_dockerd.py (its own roots and socket, no bridge, no
iptables). Traffic goes to loopback and the engines' own bridges only. Every pod, container, server, engine,
temp root and cgroup the run made is removed at the end. Needs root.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.cluster.api.conftest import TOKENS, ServerProcess  # noqa: E402
from tests.cluster.kubelet.test_dockerd import PlainDockerd, dockerd_binary  # noqa: E402
from tests.engine.conftest import Engines  # noqa: E402
from tests.image.testimages import busybox_docker_archive  # noqa: E402

IMAGE = "skiff-test/busybox:latest"
PAUSE = "skiff/pause:3.10"
NODE = "bench"
STANDALONE_NODE, STANDALONE_TOKEN = "n1", "node-token"  # the test servers' static token for system:node:n1
P99_GOAL, READY_GOAL = 1.0, 5.0
KUBE_SLO_P99 = 5.0  # kube's published pod startup SLO (stateless pods, image pull excluded)
IDLE = 5.0


def percentile(samples: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


# ------------------------------------------------------------------------------------------------ the API

class Api:
    """One kept-alive HTTPS connection to the server with the admin certificate."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.conn = self._connect()

    def _connect(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection("127.0.0.1", self.server.port, timeout=60,
                                           context=self.server.ssl_context())

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body)
        for attempt in range(2):
            try:
                self.conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
                response = self.conn.getresponse()
                payload = response.read()
                break
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = self._connect()
                if attempt:
                    raise
        if response.status >= 400:
            raise RuntimeError(f"{method} {path}: {response.status} {payload[:300]!r}")
        return json.loads(payload)

    def close(self) -> None:
        self.conn.close()


class Watch(threading.Thread):
    """A list, then a watch from its revision, on its own connection; ``seen(name)`` is the monotonic time the
    first event (or the list) showed ``done(object)`` for that name."""

    def __init__(self, server: ServerProcess, path: str, done: Callable[[dict[str, Any]], bool]) -> None:
        super().__init__(daemon=True)
        self.server, self.path, self.done = server, path, done
        self.times: dict[str, float] = {}
        self.changed = threading.Condition()
        self.ready = threading.Event()
        self.conn: http.client.HTTPSConnection | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported to the waiting thread
            self.error = exc
            self.ready.set()
            with self.changed:
                self.changed.notify_all()

    def _run(self) -> None:
        api = Api(self.server)
        listed = api.call("GET", self.path)
        api.close()
        for item in listed["items"]:
            self._note(item)
        self.conn = http.client.HTTPSConnection("127.0.0.1", self.server.port, timeout=3600,
                                                context=self.server.ssl_context())
        rv = listed["metadata"]["resourceVersion"]
        separator = "&" if "?" in self.path else "?"
        self.conn.request("GET", f"{self.path}{separator}watch=1&resourceVersion={rv}&allowWatchBookmarks=false")
        response = self.conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"watch {self.path}: {response.status}")
        self.ready.set()
        while line := response.readline():
            event = json.loads(line)
            if event.get("type") in ("ADDED", "MODIFIED"):
                self._note(event["object"])

    def _note(self, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        if name not in self.times and self.done(obj):
            with self.changed:
                self.times[name] = time.monotonic()
                self.changed.notify_all()

    def wait(self, names: set[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not names <= self.times.keys():
                if self.error is not None:
                    raise RuntimeError(f"watch failed: {self.error}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"{len(names - self.times.keys())} of {len(names)} not done in {timeout} s")
                self.changed.wait(left)

    def stop(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(OSError):
                if self.conn.sock is not None:
                    self.conn.sock.shutdown(2)
            self.conn.close()


def node_ready(node: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (node.get("status") or {}).get("conditions") or ())


def pod_running(pod: dict[str, Any]) -> bool:
    status = pod.get("status") or {}
    containers = status.get("containerStatuses") or []
    return (status.get("phase") == "Running" and bool(containers)
            and all("running" in (c.get("state") or {}) for c in containers))


# ------------------------------------------------------------------------------------------------ engines

class Engine:
    """A private engine the agent drives: its Engine API address, and how to clean it."""

    def __init__(self, name: str, host: str) -> None:
        self.name, self.host = name, host

    def client(self) -> Any:
        import docker

        return docker.APIClient(base_url=self.host, version="auto", timeout=300)

    def load(self, archive: Path) -> None:
        with self.client() as api:
            for message in api.load_image(archive.read_bytes()):
                if message.get("error"):
                    raise RuntimeError(f"{self.name}: load: {message['error']}")

    def remove_pause_image(self) -> None:
        with self.client() as api, contextlib.suppress(Exception):
            api.remove_image(PAUSE, force=True)

    def remove_all_containers(self) -> None:
        with self.client() as api:
            for container in api.containers(all=True):
                with contextlib.suppress(Exception):
                    api.remove_container(container["Id"], force=True)


def skiff_engine(work: Path, cleanups: list[Callable[[], None]]) -> Engine:
    work.mkdir()
    engines = Engines(work)
    cleanups.append(engines.stop_all)
    process = engines.start()
    return Engine("skiff engine", process.host)


def plain_dockerd(work: Path, binary: str, cleanups: list[Callable[[], None]]) -> Engine:
    work.mkdir()
    daemon = PlainDockerd(work, binary)
    cleanups.append(daemon.stop)
    daemon.start()
    return Engine("dockerd", daemon.host)


# ------------------------------------------------------------------------------------------------ servers

def one_node_server(root: Path, engine: Engine) -> ServerProcess:
    return ServerProcess(root, "--node-name", NODE, "--node-ip", "127.0.0.1", "--engine", engine.host,
                         "--kubelet-port", "0", "--disable-proxy", agent=True)


def time_to_ready(root: Path, engine: Engine) -> tuple[float, ServerProcess]:
    """Seconds from starting `skiff server` to its Node seen Ready through a watch; the server, still running."""
    server = one_node_server(root, engine)
    started = time.monotonic()
    server.start()  # returns once /readyz answers: the watch needs the API
    watch = Watch(server, f"/api/v1/nodes?fieldSelector=metadata.name%3D{NODE}", node_ready)
    watch.start()
    try:
        watch.wait({NODE}, timeout=60)
    finally:
        watch.stop()
    return watch.times[NODE] - started, server


def warm_up(server: ServerProcess, engine: Engine) -> None:
    """One pod to Running and deleted first: the scheduler (a child process of the server) may still be starting
    when the node turns Ready, and kube's SLI is about a cluster in service, not one coming up."""
    pod_startup(server, engine, 1, 0, prefix="warm")


def pod_startup(server: ServerProcess, engine: Engine, count: int, rate: float, prefix: str = "p") -> list[float]:
    """Each pod's seconds from its create request to the watch showing it Running, then every pod deleted."""
    api = Api(server)
    watch = Watch(server, "/api/v1/namespaces/default/pods", pod_running)
    watch.start()
    watch.ready.wait(30)
    created: dict[str, float] = {}
    names = [f"{prefix}{i:03d}" for i in range(count)]
    began = time.monotonic()
    try:
        for index, name in enumerate(names):
            if rate > 0:
                time.sleep(max(0.0, began + index / rate - time.monotonic()))
            created[name] = time.monotonic()
            api.call("POST", "/api/v1/namespaces/default/pods", pod(name))
        watch.wait(set(names), timeout=120 + count)
        if prefix == "p":
            print(f"  {engine.name}: {count} pods created in {created[names[-1]] - began:.1f} s, all Running after "
                  f"{max(watch.times.values()) - began:.1f} s", flush=True)
        return [watch.times[n] - created[n] for n in names]
    finally:
        watch.stop()
        delete_pods(api, names, engine)
        api.close()


def pod(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [
                {"name": "c", "image": IMAGE, "imagePullPolicy": "Never", "command": ["sleep", "3600"]}]}}


def delete_pods(api: Api, names: list[str], engine: Engine) -> None:
    """Delete the pods through the API (the agent stops and removes their containers), waiting for both."""
    for name in names:
        with contextlib.suppress(RuntimeError):
            api.call("DELETE", f"/api/v1/namespaces/default/pods/{name}", {"gracePeriodSeconds": 1})
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        left = api.call("GET", "/api/v1/namespaces/default/pods")["items"]
        with engine.client() as client:
            containers = [c for c in client.containers(all=True) if "io.kubernetes.pod.uid" in c["Labels"]]
        if not left and not containers:
            return
        time.sleep(0.5)
    print(f"pods: {len(left)} pods and {len(containers)} containers still there after 180 s", file=sys.stderr)


def server_rss(root: Path, engine: Engine, agent: bool) -> float:
    """The server's VmRSS, idle, with or without its agent (with it: once the node is Ready)."""
    if agent:
        _, server = time_to_ready(root, engine)
    else:
        server = ServerProcess(root)
        server.start()
    try:
        time.sleep(IDLE)
        assert server.process is not None
        return rss_mib(server.process.pid)
    finally:
        server.stop()


def standalone_agent_rss(root: Path, engine: Engine) -> float:
    """`skiff agent` alone against a server without an agent: VmRSS once registered and idle."""
    server = ServerProcess(root / "server")
    server.start()
    token = root / "token"
    token.write_text(STANDALONE_TOKEN + "\n")
    assert TOKENS[STANDALONE_TOKEN][0] == f"system:node:{STANDALONE_NODE}"
    log_path = root / "agent.log"
    command = [sys.executable, "-m", "skiff.cli.main", "agent", "--server", server.url, "--token-file", str(token),
               "--ca-file", str(server.data_dir / "tls" / "ca.crt"), "--node-name", STANDALONE_NODE,
               "--node-ip", "127.0.0.1", "--data-dir", str(root / "agent"), "--engine", engine.host,
               "--address", "127.0.0.1", "--kubelet-port", "0", "--disable-proxy"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with open(log_path, "ab") as log:
        agent = subprocess.Popen(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 60
        while b"registered" not in log_path.read_bytes():
            if agent.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"skiff agent did not register: {log_path.read_text()[-2000:]}")
            time.sleep(0.05)
        time.sleep(IDLE)
        return rss_mib(agent.pid)
    finally:
        agent.terminate()
        try:
            agent.wait(20)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
        server.stop()


# ------------------------------------------------------------------------------------------------ the run

def measure(engine: Engine, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"ready": []}
    engine.remove_pause_image()  # the first start makes it, as on a new machine
    server: ServerProcess | None = None
    for run in range(args.ready_runs):
        if server is not None:
            server.stop()
        seconds, server = time_to_ready(work / f"ready{run}", engine)
        result["ready"].append(seconds)
    assert server is not None
    try:
        warm_up(server, engine)
        result["pods"] = pod_startup(server, engine, args.pods, args.rate)
    finally:
        server.stop()
    return result


def report(results: dict[str, dict[str, Any]], memory: dict[str, float], args: argparse.Namespace) -> None:
    how = f"{args.pods} pods, created at {args.rate:g}/s" if args.rate > 0 else f"{args.pods} pods, all at once"
    print(f"\nload average (1/5/15 min) at the end: {'/'.join(f'{x:.1f}' for x in os.getloadavg())} "
          f"on {os.cpu_count()} CPUs (other work on the machine inflates every figure)")
    print(f"\npod startup latency, creation → Running seen through a watch ({how}; one node; image present):")
    print(f"  {'engine':<14}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}   (seconds)")
    for name, result in results.items():
        s = result["pods"]
        print(f"  {name:<14}{percentile(s, 50):8.3f}{percentile(s, 90):8.3f}{percentile(s, 99):8.3f}{max(s):8.3f}")
    if len(results) == 2:
        (_, a), (peer, b) = results.items()
        print(f"  ratio skiff/{peer}: p50 {percentile(a['pods'], 50) / percentile(b['pods'], 50):.2f}, "
              f"p99 {percentile(a['pods'], 99) / percentile(b['pods'], 99):.2f}")
    skiff_p99 = percentile(next(iter(results.values()))["pods"], 99)
    print(f"  goal p99 <= {P99_GOAL:g} s: {'met' if skiff_p99 <= P99_GOAL else 'NOT met'} ({skiff_p99:.3f} s). "
          f"kube's published SLO: p99 <= {KUBE_SLO_P99:g} s (a published figure, not a same-run peer)")
    print("\ntime to a Ready one-node cluster, `skiff server` process start → Node Ready seen through a watch:")
    for name, result in results.items():
        runs = ", ".join(f"{s:.2f}" for s in result["ready"])
        median = statistics.median(result["ready"])
        print(f"  {name:<14}runs: {runs} s (the first also made {PAUSE}); median {median:.2f} s")
    ready = statistics.median(next(iter(results.values()))["ready"])
    print(f"  goal <= {READY_GOAL:g} s: {'met' if ready <= READY_GOAL else 'NOT met'} ({ready:.2f} s). "
          "k3s is not installed here: no same-run figure")
    if memory:
        print("\nmemory (VmRSS, idle):")
        print(f"  skiff agent alone:                 {memory['agent']:6.1f} MiB")
        print(f"  skiff server --disable-agent:      {memory['server_alone']:6.1f} MiB")
        print(f"  skiff server with its agent:       {memory['server_agent']:6.1f} MiB "
              f"(+{memory['server_agent'] - memory['server_alone']:.1f} MiB)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pods", type=int, default=100, help="pods on the node (default 100)")
    p.add_argument("--rate", type=float, default=2.0, help="pods created per second; 0: all at once (default 2)")
    p.add_argument("--ready-runs", type=int, default=3, help="server starts timed per engine (default 3)")
    p.add_argument("--dockerd", help="the peer dockerd (default: PATH, then /tmp/dockerpkg/root/usr/sbin/dockerd)")
    p.add_argument("--no-peer", action="store_true", help="measure skiff alone")
    p.add_argument("--no-memory", action="store_true", help="skip the memory figures")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("pods: needs root (containers, mounts and cgroups)", file=sys.stderr)
        return 2
    if args.pods < 1 or args.pods > 110 or args.ready_runs < 1:
        p.error("--pods must be 1..110 (the node's pod capacity) and --ready-runs at least 1")
    work = Path(tempfile.mkdtemp(prefix="sp-", dir="/tmp"))  # short: unix socket paths fit in 108 bytes
    cleanups: list[Callable[[], None]] = []
    engines: list[Engine] = []
    try:
        archive = Path(busybox_docker_archive(str(work / "busybox.tar"), IMAGE))
        engines.append(skiff_engine(work / "s", cleanups))
        binary = None if args.no_peer else (args.dockerd or dockerd_binary())
        if binary:
            engines.append(plain_dockerd(work / "d", binary, cleanups))
        for engine in engines:
            engine.load(archive)
        results = {engine.name: measure(engine, work / engine.name.replace(" ", "-"), args) for engine in engines}
        memory: dict[str, float] = {}
        if not args.no_memory:
            skiff = engines[0]
            memory = {"agent": standalone_agent_rss(work / "mem-agent", skiff),
                      "server_alone": server_rss(work / "mem-server", skiff, agent=False),
                      "server_agent": server_rss(work / "mem-server-agent", skiff, agent=True)}
        report(results, memory, args)
        if not binary:
            print("\n(no dockerd found: skiff engine only)")
        return 0
    finally:
        for engine in reversed(engines):
            with contextlib.suppress(Exception):
                engine.remove_all_containers()
        for cleanup in reversed(cleanups):
            try:
                cleanup()
            except Exception as exc:  # keep cleaning up
                print(f"pods: cleanup: {exc}", file=sys.stderr)
        unmount_below(work)
        shutil.rmtree(work, ignore_errors=True)


def unmount_below(root: Path) -> None:
    """Whatever is still mounted under the run's root (agents' tmpfs volumes, a daemon's leftovers)."""
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in sorted((m for m in points if m.startswith(f"{root}/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


if __name__ == "__main__":
    sys.exit(main())
