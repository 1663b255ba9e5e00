"""``DaemonSetController``: one pod of a DaemonSet on every node that should run it (kube's ``daemon`` controller).

A node should run the pod when it matches the template's ``nodeSelector`` and required node affinity and its
NoSchedule/NoExecute taints are tolerated, counting the tolerations kube gives every daemon pod (not-ready,
unreachable, the pressure conditions, unschedulable). Each pod is made for its node as kube makes them: a
required node affinity on ``metadata.name`` and the scheduler binds it (so resources and ports are still
checked). Pods on nodes that should not run one, extra pods and failed pods are deleted.

Templates are told apart by the ``controller-revision-hash`` label (a hash of the template). ``RollingUpdate``
(the default) deletes old pods while at most ``maxUnavailable`` (1) nodes lack an available current pod; the
current pod then takes its place. ``OnDelete`` replaces a pod only when someone deletes it. Status carries
kube's counts, which ``kubectl rollout status ds/…`` and ``get ds`` read.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import logging
import math
import time
from typing import Any

from skiff.cluster.client import (
    DAEMONSETS,
    NODES,
    PODS,
    ApiClient,
    Controller,
    SharedInformers,
    object_key,
    split_key,
)
from skiff.cluster.controllers.claims import CONTROLLER_UID_INDEX, index_owned
from skiff.cluster.controllers.events import EventRecorder
from skiff.cluster.controllers.expectations import Expectations
from skiff.cluster.controllers.objects import (
    Obj,
    is_deleting,
    is_pod_active,
    is_pod_available,
    is_pod_ready,
    owner_reference,
    write_status,
)
from skiff.cluster.controllers.ownedpods import delete_pods, watch_owned_pods
from skiff.cluster.controllers.tainteviction import tolerates
from skiff.cluster.scheduler.terms import NodeSelector

log = logging.getLogger(__name__)
HASH_LABEL = "controller-revision-hash"
# what kube's daemon controller adds to every daemon pod, so a node's trouble does not evict its daemons
DAEMON_TOLERATIONS = [
    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"},
    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"},
    {"key": "node.kubernetes.io/disk-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/memory-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/pid-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"},
]


class DaemonSetController(Controller):
    name = "daemonset"
    workers = 2

    def __init__(self, client: ApiClient, informers: SharedInformers) -> None:
        self.daemonsets = informers.informer(DAEMONSETS)
        self.nodes = informers.informer(NODES)
        self.pods = informers.informer(PODS)
        super().__init__(client, [self.daemonsets, self.nodes, self.pods])
        index_owned(self.pods)
        self.expectations = Expectations()
        self.events = EventRecorder(client, "daemonset-controller")
        self.daemonsets.on_add(lambda ds: self.enqueue(object_key(ds)))
        self.daemonsets.on_update(lambda old, new: self.enqueue(object_key(new)))
        self.daemonsets.on_delete(lambda ds: self.expectations.forget(object_key(ds)))
        for register in (self.nodes.on_add, self.nodes.on_delete):
            register(lambda node: self._all())
        self.nodes.on_update(lambda old, new: self._all() if _placement(old) != _placement(new) else None)
        watch_owned_pods(self.pods, "DaemonSet", self.expectations, self.enqueue)

    def _all(self) -> None:
        for ds in self.daemonsets.list():
            self.enqueue(object_key(ds))

    async def sync(self, key: str) -> None:
        namespace, name = split_key(key)
        ds = self.daemonsets.get(namespace, name)
        if ds is None or is_deleting(ds):
            return
        pods = [p for p in self.pods.by_index(CONTROLLER_UID_INDEX, ds["metadata"]["uid"]) if not is_deleting(p)]
        placement = self._eligible_nodes(ds)
        if self.expectations.satisfied(key):
            await self._manage(key, ds, pods, *placement)
        await write_status(self.client, DAEMONSETS, ds, self._status(ds, pods, *placement))

    # --- placement ------------------------------------------------------------------------------------------

    def _eligible_nodes(self, ds: Obj) -> tuple[set[str], set[str]]:
        """The nodes that should run the daemon, and those where a pod already there may stay (a NoSchedule taint
        keeps new pods off but does not evict): one pass over the nodes a sync."""
        pod_spec = ds["spec"]["template"].get("spec") or {}
        wanted, staying = set(), set()
        for node in self.nodes.list():
            if should_run(pod_spec, node, staying=True):
                staying.add(node["metadata"]["name"])
                if should_run(pod_spec, node):
                    wanted.add(node["metadata"]["name"])
        return wanted, staying

    async def _manage(self, key: str, ds: Obj, pods: list[Obj], wanted: set[str], staying: set[str]) -> None:
        current = template_hash(ds)
        by_node: dict[str, list[Obj]] = {}
        for pod in pods:
            by_node.setdefault(_target_node(pod), []).append(pod)
        doomed: list[Obj] = []
        missing: list[str] = []
        for node in sorted(wanted | set(by_node)):
            here = sorted(by_node.get(node, []), key=lambda p: p["metadata"]["creationTimestamp"])
            failed = [p for p in here if (p.get("status") or {}).get("phase") == "Failed"]
            doomed += failed
            alive = [p for p in here if p not in failed]
            if node not in (staying if alive else wanted):
                doomed += alive
            elif not alive:
                missing.append(node)
            else:
                doomed += alive[1:]  # one pod a node: the oldest stays
        doomed += rolling_victims(ds, [by_node.get(n, []) for n in sorted(wanted | (staying & set(by_node)))],
                                  current, doomed, time.time())
        if doomed:
            await self._delete_pods(key, ds, doomed)
        if missing:
            await self._create_pods(key, ds, missing, current)

    async def _create_pods(self, key: str, ds: Obj, nodes: list[str], current: str) -> None:
        self.expectations.expect_creations(key, len(nodes))
        results = await asyncio.gather(*(self.client.create(PODS, pod_for_node(ds, node, current),
                                                            ds["metadata"]["namespace"]) for node in nodes),
                                       return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        for _ in errors:
            self.expectations.creation_observed(key)
        for made in results:
            if isinstance(made, dict):
                self.events.normal(ds, "SuccessfulCreate", f"Created pod: {made['metadata']['name']}")
        if errors:
            self.events.warning(ds, "FailedCreate", f"Error creating: {errors[0]}")
            raise errors[0]

    async def _delete_pods(self, key: str, ds: Obj, pods: list[Obj]) -> None:
        await delete_pods(self.client, self.expectations, key, pods, lambda pod: self.events.normal(
            ds, "SuccessfulDelete", f"Deleted pod: {pod['metadata']['name']}"))

    # --- status ---------------------------------------------------------------------------------------------

    def _status(self, ds: Obj, pods: list[Obj], wanted: set[str], staying: set[str]) -> Obj:
        wanted = wanted | ({p["spec"].get("nodeName") for p in pods} & staying)
        current = template_hash(ds)
        min_ready = int(ds["spec"].get("minReadySeconds") or 0)
        now = time.time()
        scheduled = {p["spec"].get("nodeName") for p in pods if p["spec"].get("nodeName") and is_pod_active(p)}
        on_wanted = [p for p in pods if is_pod_active(p) and p["spec"].get("nodeName") in wanted]
        ready = {p["spec"]["nodeName"] for p in on_wanted if is_pod_ready(p)}
        available = {p["spec"]["nodeName"] for p in on_wanted if is_pod_available(p, min_ready, now)}
        updated = {p["spec"]["nodeName"] for p in on_wanted if _labels(p).get(HASH_LABEL) == current}
        status = {
            "currentNumberScheduled": len(scheduled & wanted),
            "numberMisscheduled": len(scheduled - wanted),
            "desiredNumberScheduled": len(wanted),
            "numberReady": len(ready),
            "observedGeneration": ds["metadata"].get("generation", 0),
            "updatedNumberScheduled": len(updated),
            "numberAvailable": len(available),
            "numberUnavailable": len(wanted) - len(available),
        }
        if min_ready and any(not is_pod_available(p, min_ready, now) and is_pod_ready(p) for p in on_wanted):
            self.queue.add_after(object_key(ds), min_ready + 0.5)
        # kube omits the zero counts that have omitempty (the first four are always there)
        return {k: v for k, v in status.items() if v or k in ("currentNumberScheduled", "numberMisscheduled",
                                                              "desiredNumberScheduled", "numberReady")}


def rolling_victims(ds: Obj, per_node: list[list[Obj]], current: str, doomed: list[Obj], now: float) -> list[Obj]:
    """Old pods to delete now (``per_node``: each node's pods): old pods that are down anyway, and available
    ones while at most maxUnavailable nodes lack an available pod."""
    strategy = ds["spec"].get("updateStrategy") or {}
    if strategy.get("type", "RollingUpdate") != "RollingUpdate":
        return []
    limit = _max_unavailable(strategy, len(per_node))
    min_ready = int(ds["spec"].get("minReadySeconds") or 0)
    unavailable, old = 0, []
    for pods in per_node:
        alive = [p for p in pods if p not in doomed and is_pod_active(p)]
        if not any(is_pod_available(p, min_ready, now) for p in alive):
            unavailable += 1
        old += [p for p in alive if _labels(p).get(HASH_LABEL) != current]
    available_old = [p for p in old if is_pod_available(p, min_ready, now)]
    not_available_old = [p for p in old if p not in available_old]
    return not_available_old + available_old[:max(0, limit - unavailable)]


def template_hash(ds: Obj) -> str:
    encoded = json.dumps(ds["spec"].get("template") or {}, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest()[:10]


def should_run(pod_spec: Obj, node: Obj, staying: bool = False) -> bool:
    """Whether the daemon pod belongs on ``node``: its selector, required node affinity, and taints (``staying``:
    whether a pod already there may stay, which only NoExecute taints deny)."""
    labels = node["metadata"].get("labels") or {}
    if any(labels.get(k) != v for k, v in (pod_spec.get("nodeSelector") or {}).items()):
        return False
    required = ((pod_spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution")
    if required and not NodeSelector.compile(required).matches(labels, {"metadata.name": node["metadata"]["name"]}):
        return False
    tolerations = [*(pod_spec.get("tolerations") or ()), *DAEMON_TOLERATIONS]
    denying = ("NoExecute",) if staying else ("NoExecute", "NoSchedule")
    return all(any(tolerates(t, taint) for t in tolerations)
               for taint in (node.get("spec") or {}).get("taints") or () if taint.get("effect") in denying)


def pod_for_node(ds: Obj, node: str, current: str) -> Obj:
    """The daemon pod for ``node``: the template, owned by the DaemonSet, held to the node by a required node
    affinity on its name (the scheduler binds it), with the daemon tolerations added."""
    template = copy.deepcopy(ds["spec"].get("template") or {})
    template_meta = template.get("metadata") or {}
    spec = template.get("spec") or {}
    affinity = spec.setdefault("affinity", {})
    affinity["nodeAffinity"] = {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}]}}
    tolerations = list(spec.get("tolerations") or [])
    spec["tolerations"] = tolerations + [t for t in DAEMON_TOLERATIONS if t not in tolerations]
    metadata: Obj = {"generateName": f"{ds['metadata']['name']}-",
                     "labels": {**(template_meta.get("labels") or {}), HASH_LABEL: current},
                     "ownerReferences": [owner_reference(ds, "DaemonSet", "apps/v1")]}
    if template_meta.get("annotations"):
        metadata["annotations"] = template_meta["annotations"]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def _target_node(pod: Obj) -> str:
    """The node a daemon pod is for: where it is bound, else the name its node affinity holds it to."""
    if pod["spec"].get("nodeName"):
        return pod["spec"]["nodeName"]
    required = (((pod["spec"].get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    for term in required.get("nodeSelectorTerms") or ():
        for field in term.get("matchFields") or ():
            if field.get("key") == "metadata.name" and field.get("values"):
                return field["values"][0]
    return ""


def _max_unavailable(strategy: Obj, nodes: int) -> int:
    value: Any = (strategy.get("rollingUpdate") or {}).get("maxUnavailable", 1)
    if isinstance(value, str) and value.endswith("%"):
        return max(1, math.ceil(nodes * int(value[:-1]) / 100))  # kube's daemon controller rounds it up
    return max(1, int(value))


def _labels(pod: Obj) -> dict[str, str]:
    return pod["metadata"].get("labels") or {}


def _placement(node: Obj) -> Any:
    """What about a node decides which daemons it runs."""
    return (node["metadata"].get("labels"), (node.get("spec") or {}).get("taints"))
