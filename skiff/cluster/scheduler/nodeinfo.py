"""A node as the scheduler sees it: what it offers (allocatable), what its pods already ask for, the host
ports they hold, its labels and taints, and the pods on it.

A node that is not Ready carries the taint the node lifecycle controller would give it
(``node.kubernetes.io/not-ready`` or ``unreachable``, NoSchedule), so readiness is decided by the taint
filter and pods that tolerate it may still land there, as in kube.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from skiff.cluster.scheduler.podinfo import PodInfo, Taint
from skiff.cluster.scheduler.quantity import resource_value
from skiff.errors import InvalidArgument

NOT_READY_TAINT = "node.kubernetes.io/not-ready"
UNREACHABLE_TAINT = "node.kubernetes.io/unreachable"
UNSCHEDULABLE_TAINT = "node.kubernetes.io/unschedulable"


@dataclass(slots=True)
class NodeInfo:
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)  # what matchFields can name: metadata.name
    unschedulable: bool = False
    hard_taints: tuple[Taint, ...] = ()  # NoSchedule and NoExecute
    soft_taints: tuple[Taint, ...] = ()  # PreferNoSchedule
    allocatable_cpu: int = 0
    allocatable_memory: int = 0
    allocatable_pods: int = 0
    allocatable_scalar: dict[str, int] = field(default_factory=dict)
    requested_cpu: int = 0
    requested_memory: int = 0
    nonzero_cpu: int = 0
    nonzero_memory: int = 0
    requested_scalar: dict[str, int] = field(default_factory=dict)
    used_ports: dict[tuple[str, int], list[str]] = field(default_factory=dict)  # (protocol, port) -> host IPs
    pods: dict[str, PodInfo] = field(default_factory=dict)
    index: int = -1  # the position in the cache's node list (-1: not in it), where its memos are kept

    def set_node(self, node: Mapping[str, Any]) -> None:
        """Take labels, taints and allocatable from a Node object (the pods stay)."""
        meta, spec, status = node.get("metadata") or {}, node.get("spec") or {}, node.get("status") or {}
        self.labels = dict(meta.get("labels") or {})
        self.fields = {"metadata.name": self.name}
        self.unschedulable = bool(spec.get("unschedulable"))
        taints = [Taint(t.get("key") or "", t.get("value") or "", t.get("effect") or "")
                  for t in spec.get("taints") or ()]
        readiness = _readiness_taint(status.get("conditions") or ())
        if readiness is not None and all(t.key != readiness.key for t in taints):
            taints.append(readiness)
        self.hard_taints = tuple(t for t in taints if t.effect in ("NoSchedule", "NoExecute"))
        self.soft_taints = tuple(t for t in taints if t.effect == "PreferNoSchedule")
        allocatable = status.get("allocatable") or status.get("capacity") or {}
        values = {}
        for name, value in allocatable.items():
            try:
                values[name] = resource_value(name, value)
            except InvalidArgument:
                continue  # a resource nobody can request from this node
        self.allocatable_cpu = values.pop("cpu", 0)
        self.allocatable_memory = values.pop("memory", 0)
        self.allocatable_pods = values.pop("pods", 0)
        self.allocatable_scalar = values

    def add_pod(self, pod: PodInfo) -> None:
        self.pods[pod.key] = pod
        self._account(pod, 1)

    def remove_pod(self, key: str) -> PodInfo | None:
        pod = self.pods.pop(key, None)
        if pod is not None:
            self._account(pod, -1)
        return pod

    def _account(self, pod: PodInfo, sign: int) -> None:
        self.requested_cpu += sign * pod.milli_cpu
        self.requested_memory += sign * pod.memory
        self.nonzero_cpu += sign * pod.nonzero_cpu
        self.nonzero_memory += sign * pod.nonzero_memory
        for name, value in pod.scalar:
            self.requested_scalar[name] = self.requested_scalar.get(name, 0) + sign * value
        for protocol, ip, port in pod.host_ports:
            ips = self.used_ports.setdefault((protocol, port), [])
            if sign > 0:
                ips.append(ip)
            else:
                ips.remove(ip)
                if not ips:
                    del self.used_ports[(protocol, port)]

    def port_conflict(self, pod: PodInfo) -> bool:
        """Whether one of ``pod``'s host ports is taken: the same protocol and port on the same address, or
        on any address when either side binds 0.0.0.0."""
        for protocol, ip, port in pod.host_ports:
            for held in self.used_ports.get((protocol, port), ()):
                if held == ip or held == "0.0.0.0" or ip == "0.0.0.0":
                    return True
        return False


def _readiness_taint(conditions: Any) -> Taint | None:
    ready = next((c for c in conditions if c.get("type") == "Ready"), None)
    status = (ready or {}).get("status")
    if status == "True":
        return None
    return Taint(UNREACHABLE_TAINT if status == "Unknown" else NOT_READY_TAINT, "", "NoSchedule")
