"""The control plane at scale on hollow nodes: time to a large Deployment all Running, scheduler throughput,
memory.

    python bench/control_plane.py [--nodes 1000] [--replicas 10000] [--throughput-nodes 1000,5000]
                                  [--throughput-pods 5000] [--skip-deployment] [--skip-throughput] [--standalone]
                                  [--keep-temp]

Every phase starts a real ``skiff server`` on a temp data dir and a free loopback port (as bench/apiserver.py
does) and ``skiff hollow-nodes`` against it:

* **deployment**: the server as it runs by default (scheduler and controllers inside); ``--nodes`` hollow nodes
  (the time until all are registered and Ready), then a Deployment of ``--replicas`` (the time until every pod
  is Running, with a pod IP, on a hollow node). Falls back to a ReplicaSet, then to bare pods, when the
  controllers for the one before are missing (the output says which was used).
* **throughput**, as kube's scheduler_perf measures it: nodes registered (by hollow nodes, then stopped: no
  kubelet traffic, no heartbeats during the measurement, as in scheduler_perf), ``--throughput-pods``
  pending pods (scheduler_perf's default pod: 100m CPU, 500Mi), then the scheduler starts and the rate of binds
  from the first to the last is measured by a watch. The scheduler is the one ``skiff server`` runs by default
  (its child process; the server is restarted on the same data dir with the scheduler on). The controllers stay
  off, as in scheduler_perf (which runs none): with no kubelets their node lifecycle controller would soon
  taint every node unreachable. ``--standalone`` also measures ``skiff scheduler`` started by hand beside a
  server without one. Printed per run: the server's and the scheduler's CPU per bound pod.

The peer: there is no kube-scheduler on this machine (``which kube-scheduler`` finds none), so the figure
printed beside Skiff's is a *published* one, kube-scheduler's own scheduler_perf threshold for this workload,
680-810 pods/s (SchedulingBasic at 5,000 nodes), not a measurement made in the same run on the same machine;
the goal is at least 1,000 pods/s at 5,000 nodes on this 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from skiff.cluster.client import (  # noqa: E402 - after the path set-up above
    DEPLOYMENTS,
    NODES,
    PODS,
    REPLICASETS,
    ApiClient,
    load_kubeconfig,
)

PEER_PODS_PER_SECOND = (680, 810)  # kube-scheduler's scheduler_perf thresholds (SchedulingBasic, 5000 nodes)
GOAL_PODS_PER_SECOND = 1000
POD_CPU, POD_MEMORY = "100m", "500Mi"  # scheduler_perf's pod-default.yaml
NODE_CPU, NODE_MEMORY, NODE_PODS = "4", "32Gi", 110  # scheduler_perf's node-default.yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def child_pid(parent: int, command: str) -> int:
    """The pid of ``parent``'s child process running ``skiff <command>`` (skiff server's scheduler, say)."""
    for _ in range(100):
        try:
            with open(f"/proc/{parent}/task/{parent}/children") as f:
                children = [int(pid) for pid in f.read().split()]
        except OSError:
            children = []
        for pid in children:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if command.encode() in argv:
                return pid
        time.sleep(0.1)
    raise SystemExit(f"skiff server (pid {parent}) started no {command} process")


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


class Child:
    """A ``skiff`` subprocess with its log in the phase's directory; stopped by pid."""

    def __init__(self, root: Path, name: str, *args: str) -> None:
        self.log_path = root / f"{name}.log"
        self.log_start = self.log_path.stat().st_size if self.log_path.exists() else 0  # a restart appends
        env = dict(os.environ, PYTHONPATH=str(REPO))
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "skiff.cli.main", *args], stdout=log, stderr=log,
                                            stdin=subprocess.DEVNULL, env=env, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_text(self) -> str:
        """What this run of the process has logged."""
        with open(self.log_path, "rb") as f:
            f.seek(self.log_start)
            return f.read().decode(errors="replace")

    def log_tail(self) -> str:
        return self.log_text()[-2000:]

    def check(self) -> None:
        if self.process.poll() is not None:
            raise SystemExit(f"{self.log_path.stem} exited with {self.process.returncode}:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Server(Child):
    def __init__(self, root: Path, *flags: str, port: int | None = None) -> None:
        self.root, self.port = root, port or free_port()
        self.data = root / "data"
        self.kubeconfig = self.data / "cred" / "admin.kubeconfig"
        super().__init__(root, "server", "server", "--data-dir", str(self.data), "--listen",
                         f"127.0.0.1:{self.port}", "--compact-retain", "100000", "--disable-agent", *flags)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        marker = f"serving https://127.0.0.1:{self.port}"
        while time.monotonic() < deadline:
            self.check()
            if marker in self.log_text():
                return
            time.sleep(0.05)
        raise SystemExit("skiff server did not start")


def hollow_nodes(root: Path, server: Server, count: int, lease_interval: float = 10.0) -> Child:
    return Child(root, f"hollow-{count}", "hollow-nodes", "--kubeconfig", str(server.kubeconfig), "--count",
                 str(count), "--cpu", NODE_CPU, "--memory", NODE_MEMORY, "--max-pods", str(NODE_PODS),
                 "--cluster-cidr", "10.128.0.0/9", "--lease-interval", str(lease_interval))


def wait_registered(hollow: Child, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hollow.check()
        if "registered" in hollow.log_text():
            return
        time.sleep(0.1)
    raise SystemExit(f"hollow nodes did not register in {timeout}s")


def pod_template(labels: dict[str, str]) -> dict[str, Any]:
    return {"metadata": {"labels": labels},
            "spec": {"containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10",
                                     "resources": {"requests": {"cpu": POD_CPU, "memory": POD_MEMORY}}}]}}


async def ready_nodes(client: ApiClient) -> int:
    listed = await client.list(NODES)
    return sum(1 for n in listed["items"] for c in (n.get("status") or {}).get("conditions") or ()
               if c.get("type") == "Ready" and c.get("status") == "True")


class PodWatch:
    """Follows every pod in a namespace through one watch: when each was bound and when it was Running."""

    def __init__(self, client: ApiClient, namespace: str) -> None:
        self.client, self.namespace = client, namespace
        self.bound: dict[str, float] = {}
        self.listed_bound = 0  # pods already bound when the watch began (their times are the list's)
        self.running: dict[str, float] = {}
        self.seen: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        listed = await self.client.list(PODS, self.namespace)
        for pod in listed["items"]:
            self._note(pod)
        self.listed_bound = len(self.bound)
        self._task = asyncio.create_task(self._follow(listed["metadata"]["resourceVersion"]))

    async def _follow(self, version: str) -> None:
        async for kind, pod in self.client.watch(PODS, self.namespace, resource_version=version,
                                                 allow_bookmarks=False):
            if kind in ("ADDED", "MODIFIED"):
                self._note(pod)

    def _note(self, pod: dict[str, Any]) -> None:
        name, now = pod["metadata"]["name"], time.monotonic()
        self.seen.add(name)
        if (pod.get("spec") or {}).get("nodeName") and name not in self.bound:
            self.bound[name] = now
        status = pod.get("status") or {}
        if status.get("phase") == "Running" and status.get("podIP") and name not in self.running:
            self.running[name] = now

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass


async def wait_until(predicate: Any, timeout: float, what: str, children: list[Child]) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        for child in children:
            child.check()
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.1)


# Phase 1: a Deployment on hollow nodes -----------------------------------------------------------------------

async def deployment_phase(root: Path, nodes: int, replicas: int) -> dict[str, Any]:
    server = Server(root)
    server.wait_ready()
    hollow: Child | None = None
    try:
        started = time.monotonic()
        hollow = hollow_nodes(root, server, nodes)
        async with ApiClient.from_config(load_kubeconfig(server.kubeconfig), pool_size=16) as client:
            wait_registered(hollow)
            while await ready_nodes(client) < nodes:
                hollow.check()
                await asyncio.sleep(0.2)
            nodes_seconds = time.monotonic() - started
            watch = PodWatch(client, "default")
            await watch.start()
            began = time.monotonic()
            workload = await create_workload(client, replicas, watch)
            await wait_until(lambda: len(watch.running) >= replicas, 3600, f"{replicas} Running pods", [server, hollow])
            running_seconds = time.monotonic() - began
            await watch.stop()
            components = {"server": server.pid, "scheduler": child_pid(server.pid, "scheduler"),
                          "controller-manager": child_pid(server.pid, "controller-manager"), "hollow nodes": hollow.pid}
            result = {"nodes": nodes, "nodes_seconds": nodes_seconds, "replicas": replicas, "workload": workload,
                      "running_seconds": running_seconds,
                      "rss": {name: rss_mib(pid) for name, pid in components.items()},
                      "cpu": {name: cpu_seconds(pid) for name, pid in components.items()}}
            return result
    finally:
        if hollow is not None:
            hollow.stop()
        server.stop()


async def create_workload(client: ApiClient, replicas: int, watch: PodWatch) -> str:
    """A Deployment when its controller runs, else a ReplicaSet, else bare pods; which one it was."""
    labels = {"app": "bench"}
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "bench"},
                  "spec": {"replicas": replicas, "selector": {"matchLabels": labels}, "template": pod_template(labels)}}
    await client.create(DEPLOYMENTS, deployment, "default")
    if await _appears(lambda: watch.seen, 15):
        return "Deployment"
    await client.delete(DEPLOYMENTS, "bench", "default")
    replica_set = {**deployment, "kind": "ReplicaSet"}
    await client.create(REPLICASETS, replica_set, "default")
    if await _appears(lambda: watch.seen, 15):
        return "ReplicaSet (no Deployment controller yet)"
    await client.delete(REPLICASETS, "bench", "default")
    await create_pods(client, replicas, "default", labels)
    return "bare pods (no ReplicaSet controller yet)"


async def _appears(seen: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if seen():
            return True
        await asyncio.sleep(0.1)
    return False


async def create_pods(client: ApiClient, count: int, namespace: str, labels: dict[str, str]) -> None:
    gate = asyncio.Semaphore(32)

    async def one(i: int) -> None:
        pod = {"apiVersion": "v1", "kind": "Pod", **pod_template(labels)}
        pod["metadata"] = {**pod["metadata"], "name": f"pod-{i}"}
        async with gate:
            await client.create(PODS, pod, namespace)
    await asyncio.gather(*(one(i) for i in range(count)))


# Phase 2: scheduler throughput -------------------------------------------------------------------------------

async def prepare_throughput(root: Path, nodes: int, pods: int) -> tuple[Server, float]:
    """A server with ``nodes`` registered nodes and ``pods`` pending pods, nothing scheduling them; registering
    the nodes' time."""
    server = Server(root, "--disable-scheduler", "--disable-controllers")
    server.wait_ready()
    started = time.monotonic()
    hollow = hollow_nodes(root, server, nodes, lease_interval=60)
    try:
        wait_registered(hollow)
    finally:
        hollow.stop()  # scheduler_perf's nodes have no kubelet: nothing but the scheduler writes while measuring
    registered = time.monotonic() - started
    async with ApiClient.from_config(load_kubeconfig(server.kubeconfig), pool_size=32) as client:
        await create_pods(client, pods, "default", {"app": "throughput"})
    return server, registered


async def measure_binds(server: Server, pods: int, scheduler_pid: Any, children: list[Child]) -> dict[str, float]:
    """Binds per second as a watch sees them, first to last; CPU seconds per bound pod of the server and of the
    scheduler (from /proc: CPU time, not wall-clock, since the machine's 2 cores are shared)."""
    async with ApiClient.from_config(load_kubeconfig(server.kubeconfig), pool_size=4) as client:
        watch = PodWatch(client, "default")
        await watch.start()
        began = time.monotonic()
        first: dict[str, float] = {}  # CPU seconds of both processes when the first bind was seen (not start-up)

        def all_bound() -> bool:
            if not first and len(watch.bound) > watch.listed_bound:
                first.update(server=cpu_seconds(server.pid), scheduler=cpu_seconds(scheduler_pid()),
                             bound=len(watch.bound))
            return len(watch.bound) >= pods
        await wait_until(all_bound, 600, f"{pods} bound pods", children)
        pid = scheduler_pid()
        binds = len(watch.bound) - first.get("bound", 0)
        server_cpu, scheduler_cpu = (cpu_seconds(server.pid) - first.get("server", 0),
                                     cpu_seconds(pid) - first.get("scheduler", 0))
        await watch.stop()
    # binds seen as they happened (those before the watch began have no time of their own)
    times = sorted(watch.bound.values())[watch.listed_bound:]
    span = times[-1] - times[0] if times else 0.0
    return {"pods_per_second": (len(times) - 1) / span if span > 0 else float("inf"), "span": span,
            "start_to_all_bound": times[-1] - began, "scheduler_rss": rss_mib(pid), "server_rss": rss_mib(server.pid),
            "scheduler_ms_per_pod": scheduler_cpu / max(1, binds) * 1000,
            "server_ms_per_pod": server_cpu / max(1, binds) * 1000}


async def throughput_in_server(root: Path, nodes: int, pods: int) -> dict[str, float]:
    """The default set-up: the scheduler ``skiff server`` runs (a child process of it). The server is restarted
    on the prepared data dir with its scheduler on; binds are timed from the first to the last."""
    server, registered = await prepare_throughput(root, nodes, pods)
    port = server.port
    server.stop()
    server = Server(root, "--disable-controllers", port=port)
    try:
        server.wait_ready()
        scheduler = child_pid(server.pid, "scheduler")
        result = await measure_binds(server, pods, lambda: scheduler, [server])
    finally:
        server.stop()
    return {**result, "registered_seconds": registered}


async def throughput_standalone(root: Path, nodes: int, pods: int) -> dict[str, float]:
    """``skiff scheduler`` in its own process beside the server (the second core for it)."""
    server, registered = await prepare_throughput(root, nodes, pods)
    scheduler: Child | None = None
    try:
        scheduler = Child(root, "scheduler", "scheduler", "--kubeconfig", str(server.kubeconfig))
        result = await measure_binds(server, pods, lambda: scheduler.pid, [server, scheduler])
    finally:
        if scheduler is not None:
            scheduler.stop()
        server.stop()
    return {**result, "registered_seconds": registered}


# Report ------------------------------------------------------------------------------------------------------

def report_deployment(r: dict[str, Any]) -> None:
    print(f"\n1. {r['nodes']} hollow nodes registered and Ready in {r['nodes_seconds']:.1f}s; "
          f"{r['replicas']} replicas ({r['workload']}) all Running in {r['running_seconds']:.1f}s "
          f"({r['replicas'] / r['running_seconds']:.0f} pods/s end to end: created, scheduled, bound, Running)")
    print("   RSS MiB: " + ", ".join(f"{name} {mib:.0f}" for name, mib in r["rss"].items()) + "; CPU s: " +
          ", ".join(f"{name} {seconds:.0f}" for name, seconds in r["cpu"].items()))


def report_throughput(rows: list[tuple[int, str, dict[str, float]]]) -> None:
    low, high = PEER_PODS_PER_SECOND
    print("\n2. Scheduler throughput (scheduler_perf's way: pending pods, registered nodes without kubelets; "
          "pods bound per second, first bind to last, as a watch sees them)")
    print(f"   peer column: kube-scheduler's PUBLISHED scheduler_perf threshold ({low}-{high} pods/s, SchedulingBasic "
          "at 5000 nodes), not a same-run measurement: kube-scheduler is not installed here")
    print("   CPU ceiling: the rate if the server and the scheduler each had a core to themselves, 1000 / the larger "
          "of their CPU ms per pod (derived, not measured: on a shared machine the measured rate is lower)")
    print(f"{'nodes':>6}  {'scheduler':<22}{'pods/s':>8}{'vs 680-810 (published)':>24}{'server ms/pod':>15}"
          f"{'sched ms/pod':>14}{'CPU ceiling':>13}{'sched RSS MiB':>15}{'server RSS MiB':>16}"
          f"   goal >= {GOAL_PODS_PER_SECOND} at 5000")
    for nodes, where, r in rows:
        rate = r["pods_per_second"]
        ratio = f"{rate / high:.2f}-{rate / low:.2f}x"
        ceiling = 1000 / max(r["server_ms_per_pod"], r["scheduler_ms_per_pod"], 1e-9)
        goal = ("met" if rate >= GOAL_PODS_PER_SECOND else "missed") if nodes >= 5000 else ""
        print(f"{nodes:>6}  {where:<22}{rate:>8.0f}{ratio:>24}{r['server_ms_per_pod']:>15.2f}"
              f"{r['scheduler_ms_per_pod']:>14.2f}{ceiling:>13.0f}{r['scheduler_rss']:>15.0f}{r['server_rss']:>16.0f}"
              f"   {goal}")


async def main_async(args: argparse.Namespace, tmp: Path) -> None:
    peer = shutil.which("kube-scheduler")
    print(f"peer: kube-scheduler {'at ' + peer if peer else 'is not installed here'}; its published scheduler_perf "
          f"threshold ({PEER_PODS_PER_SECOND[0]}-{PEER_PODS_PER_SECOND[1]} pods/s, SchedulingBasic at 5000 nodes) "
          f"stands in as the peer figure (a published figure, not a same-run peer). {os.cpu_count()} CPUs, shared "
          f"(load average now {os.getloadavg()[0]:.1f}); figures are noisy, CPU per pod less so.")
    if not args.skip_deployment:
        report_deployment(await deployment_phase(tmp / "deployment", args.nodes, args.replicas))
    if not args.skip_throughput:
        rows = []
        setups = [("in skiff server", throughput_in_server)]
        if args.standalone:
            setups.append(("skiff scheduler alone", throughput_standalone))
        for nodes in args.throughput_nodes:
            for where, measure in setups:
                root = tmp / f"throughput-{len(rows)}-{nodes}-{where.split()[-1]}"
                root.mkdir(parents=True)
                rows.append((nodes, where, await measure(root, nodes, args.throughput_pods)))
                print(f"   ... {nodes} nodes, {where}: {rows[-1][2]['pods_per_second']:.0f} pods/s "
                      f"(nodes registered in {rows[-1][2]['registered_seconds']:.0f}s)", flush=True)
        report_throughput(rows)


@contextlib.contextmanager
def scratch_dir(name: str, keep: bool) -> Iterator[Path]:
    """A temporary directory for one bench run, removed at the end unless ``keep`` (``--keep-temp``)."""
    tmp = Path(tempfile.mkdtemp(prefix=f"skiff-bench-{name}-"))
    try:
        yield tmp
    finally:
        if keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--replicas", type=int, default=10000)
    parser.add_argument("--throughput-nodes", default="1000,5000", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--throughput-pods", type=int, default=5000)
    parser.add_argument("--skip-deployment", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--standalone", action="store_true",
                        help="also measure `skiff scheduler` started by hand beside a server without one")
    parser.add_argument("--keep-temp", action="store_true")
    args = parser.parse_args()
    with scratch_dir("control-plane", args.keep_temp) as tmp:
        (tmp / "deployment").mkdir()
        asyncio.run(main_async(args, tmp))


if __name__ == "__main__":
    main()
