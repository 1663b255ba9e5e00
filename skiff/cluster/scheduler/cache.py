"""The scheduler's picture of the cluster: every node and every pod placed on one, including pods it has
*assumed* onto a node while their binding is still in flight.

Assuming is what lets the scheduler run ahead of the API: the next pod sees the resources, ports and
spreading counts of the previous one the moment it was chosen, not when the bind's watch event returns.
A confirmed pod (seen bound in the watch) replaces its assumed copy; a failed bind forgets it; an assumed
pod whose confirmation never comes expires ``ASSUMED_TTL`` seconds after its bind finished, as in kube.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

from skiff.cluster.scheduler.nodeinfo import NodeInfo
from skiff.cluster.scheduler.podinfo import ZONE_LABEL, PodInfo
from skiff.cluster.scheduler.tables import SlotTables, VerdictTable

ASSUMED_TTL = 30.0


class SchedulerCache:
    def __init__(self) -> None:
        self.nodes: dict[str, NodeInfo] = {}  # nodes whose Node object is known
        self.node_list: list[NodeInfo] = []  # the same, in a stable order the sampling walks round
        self._ghosts: dict[str, NodeInfo] = {}  # pods bound to nodes not (yet) seen
        self.pods: dict[str, PodInfo] = {}  # every placed pod by key; PodInfo.node_name says where
        self.assumed: dict[str, float] = {}  # key -> expiry (inf while its bind is in flight)
        self.owner_hosts: dict[str, Counter[str]] = {}  # owner uid -> pods per node name
        self.owner_zones: dict[str, Counter[str]] = {}  # owner uid -> pods per zone
        self.affinity_pods: dict[str, PodInfo] = {}  # placed pods with pod (anti-)affinity terms
        self.soft_taint_nodes = 0  # nodes with PreferNoSchedule taints: when none, that score is moot
        self.zoned_nodes = 0  # nodes with a zone label: when none, spreading over zones is moot
        self.tables = SlotTables()  # memos per node slot: verdicts per pod class, pods per owner

    # Nodes ---------------------------------------------------------------------------------------------------

    def set_node(self, node: Mapping[str, Any]) -> NodeInfo:
        name = (node.get("metadata") or {}).get("name") or ""
        info = self.nodes.get(name)
        if info is None:
            info = self._ghosts.pop(name, None) or NodeInfo(name)
            self.nodes[name] = info
            info.index = len(self.node_list)
            self.node_list.append(info)
            self.tables.node_added()
            for pod in info.pods.values():  # pods that arrived before their node
                if pod.owner:
                    self.tables.owner_moved(pod.owner, info.index, 1)
            info.set_node(node)
            self._reindex_zone(info, info.labels.get(ZONE_LABEL), 1)
        else:
            self.soft_taint_nodes -= bool(info.soft_taints)
            self.zoned_nodes -= ZONE_LABEL in info.labels
            old_zone = info.labels.get(ZONE_LABEL)
            info.set_node(node)
            self.tables.node_changed(info.index)
            if info.labels.get(ZONE_LABEL) != old_zone:
                self._reindex_zone(info, old_zone, -1)
                self._reindex_zone(info, info.labels.get(ZONE_LABEL), 1)
        self.soft_taint_nodes += bool(info.soft_taints)
        self.zoned_nodes += ZONE_LABEL in info.labels
        return info

    def remove_node(self, name: str) -> None:
        info = self.nodes.pop(name, None)
        if info is None:
            return
        self.node_list.remove(info)
        for index, remaining in enumerate(self.node_list):
            remaining.index = index
        info.index = -1
        self.tables.renumbered(len(self.node_list))
        self.soft_taint_nodes -= bool(info.soft_taints)
        self.zoned_nodes -= ZONE_LABEL in info.labels
        if info.pods:  # its pods stay counted until their own deletion arrives
            self._reindex_zone(info, info.labels.get(ZONE_LABEL), -1)
            info.labels = {}
            self._ghosts[name] = info

    def _reindex_zone(self, node: NodeInfo, zone: str | None, delta: int) -> None:
        """Count (or uncount) the pods of ``node`` in ``zone``, when its zone label appears or changes."""
        if zone is None:
            return
        for pod in node.pods.values():
            if pod.owner:
                self._count(self.owner_zones, pod.owner, zone, delta)

    def _node_for(self, name: str) -> NodeInfo:
        info = self.nodes.get(name) or self._ghosts.get(name)
        if info is None:
            info = self._ghosts[name] = NodeInfo(name)
        return info

    # Pods ----------------------------------------------------------------------------------------------------

    def add_pod(self, pod: PodInfo) -> None:
        """A pod placed on ``pod.node_name``, confirmed by the API (it replaces an assumed copy)."""
        self.remove_pod(pod.key)
        self._place(pod)

    def assume(self, pod: PodInfo, node_name: str) -> None:
        pod.node_name = node_name
        self.remove_pod(pod.key)
        self._place(pod)
        self.assumed[pod.key] = math.inf

    def finish_binding(self, key: str, now: float | None = None) -> None:
        if key in self.assumed:
            self.assumed[key] = (time.monotonic() if now is None else now) + ASSUMED_TTL

    def forget(self, key: str) -> None:
        """A bind failed: the assumed pod frees its node again."""
        if key in self.assumed:
            self.remove_pod(key)

    def is_assumed(self, key: str) -> bool:
        return key in self.assumed

    def expire_assumed(self, now: float | None = None) -> list[str]:
        now = time.monotonic() if now is None else now
        expired = [key for key, deadline in self.assumed.items() if deadline <= now]
        for key in expired:
            self.remove_pod(key)
        return expired

    def remove_pod(self, key: str) -> PodInfo | None:
        pod = self.pods.pop(key, None)
        self.assumed.pop(key, None)
        if pod is None:
            return None
        node = self._node_for(pod.node_name)
        node.remove_pod(key)
        self._changed(node, pod.owner, -1)
        if pod.owner:
            self._count(self.owner_hosts, pod.owner, pod.node_name, -1)
            zone = node.labels.get(ZONE_LABEL)
            if zone is not None:
                self._count(self.owner_zones, pod.owner, zone, -1)
        self.affinity_pods.pop(key, None)
        if not node.pods and pod.node_name in self._ghosts:
            del self._ghosts[pod.node_name]
        return pod

    def _place(self, pod: PodInfo) -> None:
        node = self._node_for(pod.node_name)
        node.add_pod(pod)
        self._changed(node, pod.owner, 1)
        self.pods[pod.key] = pod
        if pod.owner:
            self._count(self.owner_hosts, pod.owner, pod.node_name, 1)
            zone = node.labels.get(ZONE_LABEL)
            if zone is not None:
                self._count(self.owner_zones, pod.owner, zone, 1)
        if pod.has_pod_affinity:
            self.affinity_pods[pod.key] = pod

    def _changed(self, node: NodeInfo, owner: str | None, delta: int) -> None:
        """A pod came or went: the node's memos are stale."""
        if node.index >= 0:
            self.tables.node_changed(node.index)
            if owner:
                self.tables.owner_moved(owner, node.index, delta)

    @staticmethod
    def _count(index: dict[str, Counter[str]], owner: str, where: str, delta: int) -> None:
        counts = index.setdefault(owner, Counter())
        counts[where] += delta
        if counts[where] <= 0:
            del counts[where]
            if not counts:
                del index[owner]

    # Views ---------------------------------------------------------------------------------------------------

    def verdict_table(self, class_key: str) -> VerdictTable:
        return self.tables.verdict_table(class_key)

    def owner_counts(self, owner: str) -> list[int]:
        """Pods of ``owner`` per node, in node-list order."""
        return self.tables.owner_counts(owner, self.node_list, self.owner_hosts.get(owner) or {})

    def placed(self) -> Iterator[tuple[PodInfo, NodeInfo]]:
        """Every placed pod with the node it is on (ghost nodes included: they have no labels)."""
        for pod in self.pods.values():
            yield pod, self._node_for(pod.node_name)

    def placed_with_affinity(self) -> list[tuple[PodInfo, NodeInfo]]:
        return [(pod, self._node_for(pod.node_name)) for pod in self.affinity_pods.values()]
