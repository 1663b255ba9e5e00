"""Hollow nodes: many simulated nodes in one process, for testing and benchmarking the control plane at scale
without machines (Kubernetes' kubemark).

Each hollow node is a real Node object (capacity, allocatable, a Ready condition, addresses, a pod CIDR) whose
Lease in ``kube-node-lease`` is renewed every ``lease_interval`` seconds, the renewals of all nodes spread
evenly over the interval. One pod watch serves them all (pods with a node, filtered locally to ours): a pod
bound to a hollow node is marked Running and Ready with an address from its node's pod CIDR, without any
container (and Ready again when something else marked it not Ready: the node lifecycle controller does while
the node is silent); a pod being deleted gracefully is deleted for good (grace 0), as a kubelet confirms a
deletion once its containers are gone.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from skiff.aiotasks import cancel_and_wait
from skiff.cluster.client import LEASES, NODES, PODS, ApiClient, ApiStatusError, Informer, ShutDown, WorkQueue
from skiff.cluster.kubelet.status import qos_class  # the real kubelet's, as kubemark reuses it
from skiff.errors import InvalidArgument, SkiffError

log = logging.getLogger(__name__)
LEASE_NAMESPACE = "kube-node-lease"
LEASE_DURATION = 40  # seconds: the kubelet's default nodeLeaseDurationSeconds
NODE_ADDRESSES = ipaddress.ip_network("198.18.0.0/15")  # the benchmarking range (RFC 2544): never routed here
KUBELET_VERSION = "v1.32.0-hollow"
_TRANSIENT = (aiohttp.ClientError, OSError, TimeoutError)


@dataclass
class HollowOptions:
    count: int
    name_prefix: str = "hollow-node-"
    lease_interval: float = 10.0
    cpu: str = "4"
    memory: str = "16Gi"
    max_pods: int = 110
    cluster_cidr: str = "10.42.0.0/16"
    node_cidr_mask_size: int = 24
    zones: int = 0  # label nodes round-robin with topology.kubernetes.io/zone=zone-<i> (0: no zone labels)
    concurrency: int = 64  # API calls in flight at once (registration, heartbeats, pod status)
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class HollowNode:
    name: str
    index: int
    address: str
    pod_cidr: ipaddress.IPv4Network | ipaddress.IPv6Network
    pod_ips: dict[str, str] = field(default_factory=dict)  # pod uid -> address
    _next_host: int = 2  # .1 is the node's bridge by convention

    def allocate(self, uid: str) -> str:
        if uid in self.pod_ips:
            return self.pod_ips[uid]
        size = self.pod_cidr.num_addresses
        used = set(self.pod_ips.values())
        for _ in range(size):
            candidate = str(self.pod_cidr.network_address + self._next_host)
            self._next_host = self._next_host + 1 if self._next_host + 2 < size else 2
            if candidate not in used:
                self.pod_ips[uid] = candidate
                return candidate
        raise InvalidArgument(f"node {self.name}: pod CIDR {self.pod_cidr} is full")

    def claim(self, uid: str, address: str) -> None:
        """A pod already running here with ``address`` (after a restart of the hollow nodes)."""
        self.pod_ips[uid] = address

    def release(self, uid: str) -> None:
        self.pod_ips.pop(uid, None)


def pod_cidrs(cluster_cidr: str, mask_size: int, count: int) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The first ``count`` subnets of ``mask_size`` in ``cluster_cidr`` (InvalidArgument when too few)."""
    try:
        network = ipaddress.ip_network(cluster_cidr, strict=False)
    except ValueError:
        raise InvalidArgument(f"--cluster-cidr {cluster_cidr!r} is not a CIDR") from None
    if not network.prefixlen <= mask_size <= network.max_prefixlen - 2:
        raise InvalidArgument(f"--node-cidr-mask-size {mask_size} does not fit in {network}")
    available = 1 << (mask_size - network.prefixlen)
    if count > available:
        raise InvalidArgument(f"{network} holds {available} node CIDRs of /{mask_size}, not {count}: "
                              f"pass a larger --cluster-cidr or --node-cidr-mask-size")
    size = 1 << (network.max_prefixlen - mask_size)
    return [ipaddress.ip_network((int(network.network_address) + i * size, mask_size)) for i in range(count)]


def _needs_status(status: dict[str, Any]) -> bool:
    """Whether a pod's status is not yet what this node reports: not started, or Running but marked not Ready
    (by the node lifecycle controller while this node was silent; a kubelet reports it Ready again)."""
    phase = status.get("phase")
    if phase in ("Succeeded", "Failed"):
        return False
    return phase != "Running" or not any(c.get("type") == "Ready" and c.get("status") == "True"
                                         for c in status.get("conditions") or ())


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _micro_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class HollowNodes:
    def __init__(self, client: ApiClient, options: HollowOptions) -> None:
        if options.count < 1:
            raise InvalidArgument("--count must be at least 1")
        if options.count > NODE_ADDRESSES.num_addresses - 2:
            raise InvalidArgument(f"at most {NODE_ADDRESSES.num_addresses - 2} hollow nodes")
        self.client = client
        self.options = options
        cidrs = pod_cidrs(options.cluster_cidr, options.node_cidr_mask_size, options.count)
        self.nodes = {
            f"{options.name_prefix}{i}": HollowNode(f"{options.name_prefix}{i}", i,
                                                    str(NODE_ADDRESSES.network_address + i + 1), cidrs[i])
            for i in range(options.count)}
        self.pods = Informer(client, PODS, field_selector="spec.nodeName!=")
        self.work = WorkQueue("hollow-pods")
        self._calls = asyncio.Semaphore(options.concurrency)
        self._tasks: list[asyncio.Task[Any]] = []
        self.running = 0  # pods marked Running so far
        self.heartbeats = 0
        self.pods.on_add(self._pod_event)
        self.pods.on_update(lambda _old, new: self._pod_event(new))
        self.pods.on_delete(self._pod_gone)

    # Running ------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Register every node and its Lease, then heartbeat and run pods in the background."""
        await self.register()
        self.pods.start()
        self._tasks = [asyncio.create_task(self._heartbeat_forever(), name="hollow-heartbeats")]
        self._tasks += [asyncio.create_task(self._pod_worker(), name=f"hollow-pods-{i}")
                        for i in range(self.options.concurrency)]
        await self.pods.wait_synced()

    async def stop(self) -> None:
        self.work.shutdown()
        await cancel_and_wait(*self._tasks)
        self._tasks = []
        await self.pods.stop()

    async def register(self) -> None:
        await asyncio.gather(*(self._limited(self._register(node)) for node in self.nodes.values()))

    async def _limited(self, coroutine: Any) -> Any:
        async with self._calls:
            return await coroutine

    async def _register(self, node: HollowNode) -> None:
        """The Node (status included: kube keeps a Node's status on create) and its Lease; a node left by an
        earlier run is brought up to date instead."""
        body = self.node_object(node)
        try:
            made = await self.client.create(NODES, body)
        except ApiStatusError as exc:
            if not exc.already_exists:
                raise
            made = await self.client.patch(NODES, node.name, {"metadata": {"labels": body["metadata"]["labels"]},
                                                              "spec": {"podCIDR": body["spec"]["podCIDR"]}})
            await self.client.patch(NODES, node.name, {"status": body["status"]}, subresource="status")
        await self._create_lease(node, made["metadata"]["uid"])

    def node_object(self, node: HollowNode) -> dict[str, Any]:
        options, now = self.options, _now()
        labels = {"kubernetes.io/hostname": node.name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                  "node.kubernetes.io/instance-type": "hollow", **options.labels}
        if options.zones:
            labels["topology.kubernetes.io/zone"] = f"zone-{node.index % options.zones}"
        resources = {"cpu": options.cpu, "memory": options.memory, "pods": str(options.max_pods),
                     "ephemeral-storage": "100Gi"}
        conditions = [
            {"type": kind, "status": "False", "reason": f"KubeletHas{reason}", "message": message,
             "lastHeartbeatTime": now, "lastTransitionTime": now}
            for kind, reason, message in (("MemoryPressure", "SufficientMemory", "kubelet has sufficient memory"),
                                          ("DiskPressure", "NoDiskPressure", "kubelet has no disk pressure"),
                                          ("PIDPressure", "SufficientPID", "kubelet has sufficient PID available"))]
        conditions.append({"type": "Ready", "status": "True", "reason": "KubeletReady",
                           "message": "kubelet is posting ready status", "lastHeartbeatTime": now,
                           "lastTransitionTime": now})
        return {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": node.name, "labels": labels, "annotations": {"skiff.dev/hollow": "true"}},
            "spec": {"podCIDR": str(node.pod_cidr), "podCIDRs": [str(node.pod_cidr)]},
            "status": {
                "capacity": resources, "allocatable": dict(resources), "conditions": conditions,
                "addresses": [{"type": "InternalIP", "address": node.address}, {"type": "Hostname",
                                                                                 "address": node.name}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
                "nodeInfo": {"machineID": f"hollow{node.index:027d}", "systemUUID": f"hollow-{node.index}",
                             "bootID": f"hollow-{node.index}", "kernelVersion": "hollow",
                             "osImage": "Skiff hollow node",
                             "containerRuntimeVersion": "skiff://hollow", "kubeletVersion": KUBELET_VERSION,
                             "kubeProxyVersion": KUBELET_VERSION, "operatingSystem": "linux", "architecture": "amd64"},
            },
        }

    # Heartbeats ---------------------------------------------------------------------------------------------

    async def _heartbeat_forever(self) -> None:
        """Renew each node's Lease once per interval, node i at offset i/count of it, so the load is even."""
        nodes = list(self.nodes.values())
        interval = self.options.lease_interval
        step = interval / len(nodes)
        start = time.monotonic()
        pending: set[asyncio.Task[None]] = set()
        beat = 0
        while True:
            due = start + interval + beat * step
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            # everything due by now goes out together (a timer per node would cost more than the renewals)
            now = time.monotonic()
            while start + interval + beat * step <= now:
                node = nodes[beat % len(nodes)]
                beat += 1
                task = asyncio.create_task(self._limited(self._heartbeat(node)))
                pending.add(task)
                task.add_done_callback(pending.discard)

    async def _heartbeat(self, node: HollowNode) -> None:
        try:
            await self._renew(node)
            self.heartbeats += 1
        except (SkiffError, *_TRANSIENT) as exc:
            log.info("hollow node %s: lease renewal failed: %s", node.name, exc)

    async def _renew(self, node: HollowNode) -> None:
        await self.client.patch(LEASES, node.name, {"spec": {"renewTime": _micro_now()}}, namespace=LEASE_NAMESPACE)

    async def _create_lease(self, node: HollowNode, node_uid: str) -> None:
        spec = {"holderIdentity": node.name, "leaseDurationSeconds": LEASE_DURATION, "renewTime": _micro_now()}
        lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                 "metadata": {"name": node.name, "namespace": LEASE_NAMESPACE,
                              "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node.name,
                                                   "uid": node_uid}]},
                 "spec": spec}
        try:
            await self.client.create(LEASES, lease, LEASE_NAMESPACE)
        except ApiStatusError as exc:
            if not exc.already_exists:
                raise
            await self.client.patch(LEASES, node.name, {"spec": spec}, namespace=LEASE_NAMESPACE)

    # Pods ---------------------------------------------------------------------------------------------------

    def _pod_event(self, pod: dict[str, Any]) -> None:
        node = self.nodes.get((pod.get("spec") or {}).get("nodeName") or "")
        if node is None:
            return
        meta, status = pod["metadata"], pod.get("status") or {}
        if status.get("podIP") and status.get("phase") == "Running":
            node.claim(meta.get("uid") or "", status["podIP"])
        if meta.get("deletionTimestamp") or _needs_status(status):
            self.work.add(f"{meta.get('namespace')}/{meta['name']}")

    def _pod_gone(self, pod: dict[str, Any]) -> None:
        node = self.nodes.get((pod.get("spec") or {}).get("nodeName") or "")
        if node is not None:
            node.release(pod["metadata"].get("uid") or "")

    async def _pod_worker(self) -> None:
        while True:
            try:
                key = await self.work.get()
            except ShutDown:
                return
            try:
                await self._sync_pod(key)
                self.work.forget(key)
            except (SkiffError, *_TRANSIENT) as exc:
                log.info("hollow nodes: pod %s: %s", key, exc)
                self.work.add_rate_limited(key)
            finally:
                self.work.done(key)

    async def _sync_pod(self, key: str) -> None:
        pod = self.pods.get_by_key(key)
        if pod is None:
            return
        meta, spec = pod["metadata"], pod.get("spec") or {}
        node = self.nodes.get(spec.get("nodeName") or "")
        if node is None:
            return
        if meta.get("deletionTimestamp"):
            # no containers to stop: confirm the deletion at once, as the kubelet does when they are gone
            try:
                await self.client.delete(PODS, meta["name"], meta.get("namespace"), grace_period_seconds=0,
                                         preconditions={"uid": meta["uid"]})
            except ApiStatusError as exc:
                if not (exc.not_found or exc.conflict):
                    raise
            return
        if not _needs_status(pod.get("status") or {}):
            return
        try:
            await self.client.patch(PODS, meta["name"], {"status": self.running_status(pod, node)},
                                    namespace=meta.get("namespace"), subresource="status")
        except ApiStatusError as exc:
            if not exc.not_found:
                raise
            return
        self.running += 1

    def running_status(self, pod: dict[str, Any], node: HollowNode) -> dict[str, Any]:
        """The status a kubelet reports once every container has started and is ready."""
        now = _now()
        pod_ip = node.allocate(pod["metadata"].get("uid") or "")
        containers = (pod.get("spec") or {}).get("containers") or ()
        statuses = [{"name": c.get("name"), "image": c.get("image"), "imageID": f"hollow://{c.get('image')}",
                     "containerID": f"hollow://{pod['metadata'].get('uid')}/{c.get('name')}", "ready": True,
                     "started": True, "restartCount": 0, "state": {"running": {"startedAt": now}}}
                    for c in containers]
        conditions = [{"type": kind, "status": "True", "lastProbeTime": None, "lastTransitionTime": now}
                      for kind in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady",
                                   "PodScheduled")]
        return {"phase": "Running", "conditions": conditions, "hostIP": node.address,
                "hostIPs": [{"ip": node.address}], "podIP": pod_ip, "podIPs": [{"ip": pod_ip}], "startTime": now,
                "containerStatuses": statuses, "qosClass": qos_class(pod)}

