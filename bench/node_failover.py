"""Node failover on hollow nodes: how long after a group of nodes dies they are NotReady, tainted, their pods
evicted and replaced, against the times kube's node lifecycle and taint eviction controllers promise.

    python bench/node_failover.py [--nodes 30] [--victims 3] [--replicas 300] [--grace 10] [--period 1]
                                  [--toleration 5] [--eviction-rate 0.1] [--keep-temp]

A real ``skiff server`` (scheduler and controllers in it; ``--node-monitor-grace-period``,
``--node-monitor-period``, ``--node-eviction-rate`` and the default toleration seconds from the flags above),
``--nodes`` hollow nodes in two ``skiff hollow-nodes`` processes (the ``--victims`` in their own), a
Deployment of ``--replicas``. The victims' process is SIGKILLed; from that moment the bench polls the API and
prints when the first and the last victim turned Unknown, got the unreachable:NoExecute taint, had every pod
deleted, and when all replicas were Ready again on the survivors.

The peer: there is no kube-controller-manager here. kube's promise is a formula, printed beside each figure:
NotReady between grace - lease interval (the last renewal came before the kill) and grace + monitor
period; taints one node per 1/eviction-rate seconds per zone (burst 1);
eviction toleration seconds after the taint. The figures to watch are the overshoot over that formula.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from control_plane import (  # the harness beside this file
    Child,
    Server,
    pod_template,
    ready_nodes,
    scratch_dir,
    wait_registered,
)

from skiff.cluster.client import DEPLOYMENTS, NODES, PODS, ApiClient, load_kubeconfig

LEASE_INTERVAL = 2.0  # seconds: a node's last renewal came up to this long before the kill


def hollow_group(root: Path, server: Server, prefix: str, count: int, cidr: str) -> Child:
    return Child(root, f"hollow-{prefix.rstrip('-')}", "hollow-nodes", "--kubeconfig", str(server.kubeconfig),
                 "--count", str(count), "--name-prefix", prefix, "--cluster-cidr", cidr,
                 "--lease-interval", str(LEASE_INTERVAL), "--cpu", "32", "--max-pods", "250")


def is_ready(obj: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (obj.get("status") or {}).get("conditions") or ())


class Timeline:
    """First and last moment (seconds after the kill) each victim, or each of its pods, reached a stage."""

    def __init__(self, killed_at: float) -> None:
        self.killed_at = killed_at
        self.marks: dict[str, dict[str, float]] = {}

    def mark(self, stage: str, key: str) -> None:
        self.marks.setdefault(stage, {}).setdefault(key, time.monotonic() - self.killed_at)

    def span(self, stage: str) -> tuple[float, float]:
        times = sorted(self.marks.get(stage, {}).values())
        return (times[0], times[-1]) if times else (float("nan"), float("nan"))


async def measure(args: argparse.Namespace, root: Path) -> None:
    server = Server(root, "--node-monitor-grace-period", str(args.grace), "--node-monitor-period", str(args.period),
                    "--node-eviction-rate", str(args.eviction_rate),
                    "--default-not-ready-toleration-seconds", str(args.toleration),
                    "--default-unreachable-toleration-seconds", str(args.toleration))
    server.wait_ready()
    survivors = hollow_group(root, server, "survivor-", args.nodes - args.victims, "10.64.0.0/12")
    victims = hollow_group(root, server, "victim-", args.victims, "10.96.0.0/12")
    try:
        async with ApiClient.from_config(load_kubeconfig(server.kubeconfig), pool_size=8) as client:
            wait_registered(survivors)
            wait_registered(victims)
            while await ready_nodes(client) < args.nodes:
                await asyncio.sleep(0.2)
            labels = {"app": "failover"}
            await client.create(DEPLOYMENTS, {
                "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "failover"},
                "spec": {"replicas": args.replicas, "selector": {"matchLabels": labels},
                         "template": pod_template(labels)}}, "default")
            while True:
                pods = (await client.list(PODS, "default", label_selector="app=failover"))["items"]
                if sum(is_ready(p) for p in pods) >= args.replicas:
                    break
                await asyncio.sleep(0.5)
            doomed = {p["metadata"]["name"] for p in pods if p["spec"]["nodeName"].startswith("victim-")}
            print(f"{args.replicas} replicas Ready on {args.nodes} nodes, {len(doomed)} on the {args.victims} "
                  f"victims; SIGKILL of their hollow-nodes process", flush=True)
            victims.process.send_signal(signal.SIGKILL)
            victims.process.wait()
            timeline = Timeline(time.monotonic())
            await follow(client, timeline, doomed, args)
            report(timeline, args)
    finally:
        survivors.stop()
        victims.stop()
        server.stop()


async def follow(client: ApiClient, timeline: Timeline, doomed: set[str], args: argparse.Namespace) -> None:
    deadline = time.monotonic() + args.grace + args.period + args.victims / args.eviction_rate + args.toleration + 120
    while time.monotonic() < deadline:
        for node in (await client.list(NODES))["items"]:
            name = node["metadata"]["name"]
            if not name.startswith("victim-"):
                continue
            if any(c.get("type") == "Ready" and c.get("status") == "Unknown" for c in node["status"]["conditions"]):
                timeline.mark("unknown", name)
            if any(t.get("key") == "node.kubernetes.io/unreachable" and t.get("effect") == "NoExecute"
                   for t in node["spec"].get("taints") or ()):
                timeline.mark("tainted", name)
        pods = (await client.list(PODS, "default", label_selector="app=failover"))["items"]
        for pod in pods:
            if pod["metadata"]["name"] in doomed and pod["metadata"].get("deletionTimestamp"):
                timeline.mark("evicted", pod["metadata"]["name"])
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        on_survivors = [p for p in live if (p["spec"].get("nodeName") or "").startswith("survivor-") and is_ready(p)]
        if len(timeline.marks.get("evicted", {})) == len(doomed) and len(on_survivors) >= args.replicas:
            timeline.mark("replaced", "all")
            return
        await asyncio.sleep(0.2)
    raise SystemExit(f"not recovered in time: {timeline.marks}")


def report(timeline: Timeline, args: argparse.Namespace) -> None:
    spacing = (args.victims - 1) / args.eviction_rate
    soonest = args.grace - LEASE_INTERVAL
    rows = [("NotReady (Unknown)", timeline.span("unknown"), (soonest, args.grace + args.period)),
            ("unreachable:NoExecute", timeline.span("tainted"), (soonest, args.grace + args.period + spacing)),
            ("pods deleted", timeline.span("evicted"),
             (soonest + args.toleration, args.grace + args.period + spacing + args.toleration)),
            ("all replicas Ready again", timeline.span("replaced"), (float("nan"), float("nan")))]
    print(f"\nseconds after the SIGKILL (grace {args.grace}s, monitor period {args.period}s, toleration "
          f"{args.toleration}s, {args.eviction_rate} nodes/s tainted)")
    print(f"{'stage':<26}{'first':>8}{'last':>8}   kube's formula (first..last)")
    for stage, (first, last), (low, high) in rows:
        formula = f"{low:.1f}..{high:.1f}" if low == low else "-"
        print(f"{stage:<26}{first:>8.1f}{last:>8.1f}   {formula}")
    overshoot = timeline.span("evicted")[1] - rows[2][2][1]
    print(f"\nlast eviction {overshoot:+.1f}s against kube's formula (2 CPUs shared; noisy)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=30)
    parser.add_argument("--victims", type=int, default=3)
    parser.add_argument("--replicas", type=int, default=300)
    parser.add_argument("--grace", type=float, default=10.0)
    parser.add_argument("--period", type=float, default=1.0)
    parser.add_argument("--toleration", type=int, default=5)
    parser.add_argument("--eviction-rate", type=float, default=0.1)
    parser.add_argument("--keep-temp", action="store_true")
    args = parser.parse_args()
    if not 0 < args.victims < args.nodes:
        parser.error("--victims must be between 1 and --nodes - 1")
    with scratch_dir("failover", args.keep_temp) as tmp:
        asyncio.run(measure(args, tmp))


if __name__ == "__main__":
    main()
