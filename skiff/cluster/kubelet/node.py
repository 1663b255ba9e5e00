"""The agent's Node: what the machine offers (CPUs, memory, 110 pods), where it is reached (InternalIP,
Hostname), what runs it (nodeInfo: the engine's version as ``skiff://<version>``), whether it is Ready (the
engine answers), and its Lease in ``kube-node-lease``, renewed every ``lease_interval`` seconds, which is the
heartbeat the node lifecycle controller watches.
"""

from __future__ import annotations

import datetime
import os
import platform
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skiff import __version__
from skiff.cluster.client import LEASES, NODES, ApiClient, ApiStatusError

LEASE_NAMESPACE = "kube-node-lease"
LEASE_DURATION = 40  # seconds: the kubelet's default nodeLeaseDurationSeconds
KUBELET_VERSION = "v1.32.0-skiff"
MAX_PODS = 110


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def memory_kib(meminfo: str = "/proc/meminfo") -> int:
    for line in Path(meminfo).read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1])
    raise ValueError(f"{meminfo} has no MemTotal")


def default_address() -> str:
    """The address this host's traffic leaves from: connecting a UDP socket picks the route's source address
    without sending anything. Loopback when the host has no route out."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 9))
            return probe.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _os_image() -> str:
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return "Linux"


@dataclass
class NodeIdentity:
    name: str
    address: str
    engine_version: str = "unknown"
    max_pods: int = MAX_PODS
    labels: dict[str, str] = field(default_factory=dict)
    pod_cidr: str | None = None
    kubelet_port: int = 10250  # where the agent serves the kubelet API (daemonEndpoints)

    def capacity(self) -> dict[str, str]:
        return {"cpu": str(os.cpu_count() or 1), "memory": f"{memory_kib()}Ki", "pods": str(self.max_pods),
                "ephemeral-storage": _disk_capacity()}

    def node_info(self) -> dict[str, str]:
        arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
        return {"machineID": _read("/etc/machine-id"), "systemUUID": _read("/sys/class/dmi/id/product_uuid"),
                "bootID": _read("/proc/sys/kernel/random/boot_id"), "kernelVersion": platform.release(),
                "osImage": _os_image(), "containerRuntimeVersion": f"skiff://{self.engine_version}",
                "kubeletVersion": KUBELET_VERSION, "kubeProxyVersion": KUBELET_VERSION,
                "operatingSystem": "linux", "architecture": arch}

    def base_labels(self) -> dict[str, str]:
        arch = self.node_info()["architecture"]
        return {"kubernetes.io/hostname": self.name, "kubernetes.io/os": "linux", "kubernetes.io/arch": arch,
                "beta.kubernetes.io/os": "linux", "beta.kubernetes.io/arch": arch, **self.labels}


def _disk_capacity() -> str:
    stat = os.statvfs("/")
    return f"{stat.f_blocks * stat.f_frsize // 1024}Ki"


def conditions(ready: bool, message: str, previous: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The node's conditions now; a condition whose status did not change keeps its lastTransitionTime."""
    stamp = now()
    before = {c.get("type"): c for c in previous or ()}
    wanted = [("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
              ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
              ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
              ("Ready", "True" if ready else "False", "KubeletReady" if ready else "KubeletNotReady", message)]
    result = []
    for kind, status, reason, text in wanted:
        old = before.get(kind) or {}
        since = old.get("lastTransitionTime") if old.get("status") == status else None
        result.append({"type": kind, "status": status, "reason": reason, "message": text,
                       "lastHeartbeatTime": stamp, "lastTransitionTime": since or stamp})
    return result


def node_status(identity: NodeIdentity, ready: bool, message: str,
                previous: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    capacity = identity.capacity()
    return {"capacity": capacity, "allocatable": dict(capacity), "conditions": conditions(ready, message, previous),
            "addresses": [{"type": "InternalIP", "address": identity.address},
                          {"type": "Hostname", "address": identity.name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": identity.kubelet_port}}, "nodeInfo": identity.node_info()}


class NodeRegistration:
    """Registers the Node and its Lease, then keeps both current (the caller times the calls)."""

    def __init__(self, client: ApiClient, identity: NodeIdentity) -> None:
        self.client = client
        self.identity = identity
        self.uid = ""
        self._conditions: list[dict[str, Any]] = []
        self._ready: bool | None = None

    async def register(self, ready: bool, message: str) -> dict[str, Any]:
        """Create the Node (with its status, as kube keeps it on create); a Node left by an earlier run of this
        agent is updated instead. Then the Lease."""
        identity = self.identity
        status = node_status(identity, ready, message)
        spec: dict[str, Any] = {}
        if identity.pod_cidr:
            spec = {"podCIDR": identity.pod_cidr, "podCIDRs": [identity.pod_cidr]}
        body = {"apiVersion": "v1", "kind": "Node", "spec": spec, "status": status,
                "metadata": {"name": identity.name, "labels": identity.base_labels(),
                             "annotations": {"node.alpha.kubernetes.io/ttl": "0"}}}
        try:
            node = await self.client.create(NODES, body)
        except ApiStatusError as exc:
            if not exc.already_exists:
                raise
            node = await self.client.patch(NODES, identity.name, {"metadata": {"labels": identity.base_labels()}})
            previous = (node.get("status") or {}).get("conditions")
            status = node_status(identity, ready, message, previous)
            node = await self.client.patch(NODES, identity.name, {"status": status}, subresource="status")
        self.uid = node["metadata"]["uid"]
        self._conditions, self._ready = status["conditions"], ready
        await self._ensure_lease()
        return node

    async def update_status(self, ready: bool, message: str) -> None:
        """Post the node's conditions (heartbeat times, and Ready as the engine's health says)."""
        status = node_status(self.identity, ready, message, self._conditions)
        await self.client.patch(NODES, self.identity.name, {"status": status}, subresource="status")
        self._conditions, self._ready = status["conditions"], ready

    @property
    def ready(self) -> bool | None:
        return self._ready

    async def renew_lease(self) -> None:
        try:
            await self.client.patch(LEASES, self.identity.name, {"spec": {"renewTime": micro_now(),
                                                                          "holderIdentity": self.identity.name}},
                                    namespace=LEASE_NAMESPACE)
        except ApiStatusError as exc:
            if not exc.not_found:
                raise
            await self._ensure_lease()

    async def _ensure_lease(self) -> None:
        name = self.identity.name
        spec = {"holderIdentity": name, "leaseDurationSeconds": LEASE_DURATION, "renewTime": micro_now()}
        lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                 "metadata": {"name": name, "namespace": LEASE_NAMESPACE,
                              "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": name,
                                                   "uid": self.uid}]},
                 "spec": spec}
        try:
            await self.client.create(LEASES, lease, LEASE_NAMESPACE)
        except ApiStatusError as exc:
            if not exc.already_exists:
                raise
            await self.client.patch(LEASES, name, {"spec": spec}, namespace=LEASE_NAMESPACE)


def runtime_version(version: dict[str, Any]) -> str:
    return str(version.get("Version") or __version__)
