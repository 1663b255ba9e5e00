"""The Endpoints and EndpointSlice controllers on hollow nodes: how far behind the pods they are, and how many
writes they make, while a Service's Deployment scales up, idles and scales down.

    python bench/endpoints.py [--nodes 30] [--replicas 1000] [--keep-temp]

A real ``skiff server`` (scheduler and controllers inside, as by default) and ``skiff hollow-nodes`` (the
harness of bench/control_plane.py). A Service selecting ``app=bench`` is made first, then a Deployment of
``--replicas``; one watch follows the pods, others the Service's Endpoints and slices. Printed per phase:
the writes each object type saw (watch events), and the lag from the moment the last pod became Ready (or was
deleted) to the moment both the Endpoints and the slices listed exactly the ready pods.

The peer: no kube-controller-manager on this machine; kube's controllers batch the same way (a work queue
deduplicating a Service's key while events arrive), and kube's EndpointSlice controller is held to "at most
one slice write per 100 endpoint changes" only loosely, so no ratio is printed: the figures to watch are the
writes per pod (about one Endpoints write per sync, not per pod) and the idle phase's zero.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from control_plane import (  # the harness, found beside this file
    Child,
    Server,
    hollow_nodes,
    pod_template,
    ready_nodes,
    scratch_dir,
    wait_registered,
)

from skiff.cluster.client import (
    DEPLOYMENTS,
    ENDPOINT_SLICES,
    ENDPOINTS,
    PODS,
    SERVICES,
    ApiClient,
    Resource,
    load_kubeconfig,
)

LABELS = {"app": "bench"}
PHASE_TIMEOUT = 600


def report(r: dict[str, Any]) -> None:
    print(f"{r['phase']:<20} {r['endpoints writes']:>17} {r['slice writes']:>13} {r['slices']:>7} "
          f"{r['lag']:>18.2f}s", flush=True)


class Follow:
    """One watch on ``res`` (filtered to the Service's objects) noting each event's object and time."""

    def __init__(self, client: ApiClient, res: Resource, label_selector: str | None = None,
                 field_selector: str | None = None) -> None:
        self.client, self.res = client, res
        self.label_selector, self.field_selector = label_selector, field_selector
        self.objects: dict[str, dict[str, Any]] = {}
        self.writes = 0
        self.changed_at = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        listed = await self.client.list(self.res, "default", label_selector=self.label_selector,
                                        field_selector=self.field_selector)
        self.objects = {o["metadata"]["name"]: o for o in listed["items"]}
        self._task = asyncio.create_task(self._follow(listed["metadata"]["resourceVersion"]))

    async def _follow(self, version: str) -> None:
        async for kind, obj in self.client.watch(self.res, "default", resource_version=version,
                                                 label_selector=self.label_selector,
                                                 field_selector=self.field_selector, allow_bookmarks=False):
            self.writes += 1
            self.changed_at = time.monotonic()
            if kind == "DELETED":
                self.objects.pop(obj["metadata"]["name"], None)
            else:
                self.objects[obj["metadata"]["name"]] = obj

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def _ready(pod: dict[str, Any]) -> bool:
    status = pod.get("status") or {}
    return bool(status.get("podIP")) and not pod["metadata"].get("deletionTimestamp") and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or ())


def ready_pod_ips(pods: Follow) -> set[str]:
    return {p["status"]["podIP"] for p in pods.objects.values() if _ready(p)}


def endpoints_ips(endpoints: Follow) -> set[str]:
    return {a["ip"] for e in endpoints.objects.values() for s in e.get("subsets") or ()
            for a in s.get("addresses") or ()}


def slice_ips(slices: Follow) -> set[str]:
    return {a for s in slices.objects.values() for e in s.get("endpoints") or () if e["conditions"].get("ready")
            for a in e["addresses"]}


async def phase(name: str, pods: Follow, endpoints: Follow, slices: Follow, want_pods: int,
                children: list[Child]) -> dict[str, Any]:
    """Until ``want_pods`` pods are ready and both objects list them; the writes and the lag."""
    writes = (endpoints.writes, slices.writes)
    deadline = time.monotonic() + PHASE_TIMEOUT
    while True:
        for child in children:
            child.check()
        ips = ready_pod_ips(pods)
        if len(ips) == want_pods and endpoints_ips(endpoints) == ips and slice_ips(slices) == ips:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"{name}: not done in {PHASE_TIMEOUT}s ({len(ips)} ready pods; Endpoints list "
                             f"{len(endpoints_ips(endpoints))}, slices {len(slice_ips(slices))})")
        await asyncio.sleep(0.05)
    lag = max(endpoints.changed_at, slices.changed_at) - pods.changed_at
    return {"phase": name, "endpoints writes": endpoints.writes - writes[0], "slice writes": slices.writes - writes[1],
            "slices": len(slices.objects), "lag": max(lag, 0.0)}


async def run(root: Path, nodes: int, replicas: int) -> None:
    server = Server(root)
    server.wait_ready()
    hollow = hollow_nodes(root, server, nodes)
    try:
        async with ApiClient.from_config(load_kubeconfig(server.kubeconfig), pool_size=16) as client:
            wait_registered(hollow)
            while await ready_nodes(client) < nodes:
                hollow.check()
                await asyncio.sleep(0.2)
            await client.create(SERVICES, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "bench"},
                                           "spec": {"selector": LABELS, "ports": [{"port": 80}]}}, "default")
            pods = Follow(client, PODS, label_selector="app=bench")
            endpoints = Follow(client, ENDPOINTS, field_selector="metadata.name=bench")
            slices = Follow(client, ENDPOINT_SLICES, label_selector="kubernetes.io/service-name=bench")
            for follow in (pods, endpoints, slices):
                await follow.start()
            deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "bench"},
                          "spec": {"replicas": replicas, "selector": {"matchLabels": LABELS},
                                   "template": pod_template(LABELS)}}
            print(f"{'phase':<20} {'Endpoints writes':>17} {'slice writes':>13} {'slices':>7} "
                  f"{'lag after last pod':>19}", flush=True)
            await client.create(DEPLOYMENTS, deployment, "default")
            report(await phase(f"scale 0 -> {replicas}", pods, endpoints, slices, replicas, [server, hollow]))
            before = (endpoints.writes, slices.writes)
            await asyncio.sleep(10)
            report({"phase": "idle 10 s", "endpoints writes": endpoints.writes - before[0],
                    "slice writes": slices.writes - before[1], "slices": len(slices.objects), "lag": 0.0})
            half = replicas // 2
            await client.patch(DEPLOYMENTS, "bench", {"spec": {"replicas": half}}, namespace="default")
            report(await phase(f"scale {replicas} -> {half}", pods, endpoints, slices, half, [server, hollow]))
            for follow in (pods, endpoints, slices):
                await follow.stop()
    finally:
        hollow.stop()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=30)
    parser.add_argument("--replicas", type=int, default=1000)
    parser.add_argument("--keep-temp", action="store_true")
    args = parser.parse_args()
    print("peer: no kube-controller-manager here; figures are Skiff's alone (2 shared CPUs, noisy).")
    with scratch_dir("endpoints", args.keep_temp) as tmp:
        asyncio.run(run(tmp, args.nodes, args.replicas))


if __name__ == "__main__":
    main()
