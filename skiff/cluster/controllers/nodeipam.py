"""The node IPAM controller: every Node gets a pod CIDR (``spec.podCIDR``/``spec.podCIDRs``) cut from the
cluster CIDR, as kube-controller-manager does with ``--allocate-node-cidrs`` (its range allocator).

The Nodes in the API are the record: what is taken is whatever the Nodes' ``spec.podCIDRs`` say (plus the
allocations this process has written but not seen come back yet), so a restarted controller, or a second one
after a failover, picks up exactly where the last left off, and a deleted Node's range is free again as soon
as the Node is gone. A Node that already has a pod CIDR (its agent's ``--pod-cidr``, hollow nodes) keeps it and
that range counts as taken. The cluster CIDR is split into ``/node_cidr_mask_size`` blocks (``/24``: 256
addresses, room for the 110 pods a node runs) handed out lowest first.

One worker: two allocations never race inside the process; between processes the patch carries the Node's
resourceVersion, so a Node changed meanwhile is a conflict and is synced again.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from typing import Any

from skiff.cluster.client import NODES, ApiClient, ApiStatusError, Controller
from skiff.cluster.client.informer import SharedInformers
from skiff.cluster.controllers.events import EventRecorder
from skiff.cluster.controllers.objects import Obj, is_deleting
from skiff.errors import Conflict, InvalidArgument

log = logging.getLogger(__name__)
DEFAULT_CLUSTER_CIDR = "10.42.0.0/16"
DEFAULT_NODE_MASK = 24
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class CidrPlan:
    """How the cluster CIDR is cut: ``cluster`` into blocks of ``/mask``."""

    cluster: Network
    mask: int

    @classmethod
    def parse(cls, cluster_cidr: str, mask: int = DEFAULT_NODE_MASK) -> CidrPlan:
        try:
            cluster = ipaddress.ip_network(cluster_cidr, strict=True)
        except ValueError as exc:
            raise InvalidArgument(f"invalid cluster CIDR {cluster_cidr!r}: {exc}") from None
        if not cluster.prefixlen <= mask <= cluster.max_prefixlen:
            raise InvalidArgument(f"node CIDR mask /{mask} does not fit in the cluster CIDR {cluster}")
        return cls(cluster, mask)

    @property
    def size(self) -> int:
        return 1 << (self.mask - self.cluster.prefixlen)

    def block(self, index: int) -> Network:
        step = 1 << (self.cluster.max_prefixlen - self.mask)
        return ipaddress.ip_network((int(self.cluster.network_address) + index * step, self.mask))

    def index_of(self, cidr: str) -> int | None:
        """The block ``cidr`` is (or lies in); None when it is not inside the cluster CIDR."""
        try:
            net = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            return None
        if net.version != self.cluster.version or not net.subnet_of(self.cluster):  # type: ignore[arg-type]
            return None
        offset = int(net.network_address) - int(self.cluster.network_address)
        return offset >> (self.cluster.max_prefixlen - self.mask)

    def first_free(self, taken: set[int]) -> Network | None:
        for index in range(self.size):
            if index not in taken:
                return self.block(index)
        return None


def pod_cidrs_of(node: Obj) -> list[str]:
    spec = node.get("spec") or {}
    return list(spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else []))


class NodeIpamController(Controller):
    name = "node-ipam"
    workers = 1

    def __init__(self, client: ApiClient, informers: SharedInformers, options: Any = None) -> None:
        self.nodes = informers.informer(NODES)
        super().__init__(client, [self.nodes])
        self.plan = CidrPlan.parse(getattr(options, "cluster_cidr", None) or DEFAULT_CLUSTER_CIDR,
                                   getattr(options, "node_cidr_mask_size", None) or DEFAULT_NODE_MASK)
        self.enabled = bool(getattr(options, "allocate_node_cidrs", False))
        self.events = EventRecorder(client, "cidrAllocator")
        self.pending: dict[str, str] = {}  # node name -> a CIDR written but not yet seen in the cache
        self.nodes.on_add(self._node_changed)
        self.nodes.on_update(lambda old, new: self._node_changed(new))
        self.nodes.on_delete(lambda node: self.pending.pop(node["metadata"]["name"], None))

    async def run(self) -> None:
        """Nothing to do unless asked to allocate (kube's --allocate-node-cidrs is off by default too)."""
        if not self.enabled:
            log.info("%s: off (--allocate-node-cidrs not given)", self.name)
            return
        await super().run()

    def _node_changed(self, node: Obj) -> None:
        name = node["metadata"]["name"]
        if pod_cidrs_of(node):
            self.pending.pop(name, None)
        elif not is_deleting(node):
            self.enqueue(name)

    def taken(self) -> set[int]:
        cidrs = [c for node in self.nodes.list() for c in pod_cidrs_of(node)] + list(self.pending.values())
        return {index for c in cidrs if (index := self.plan.index_of(c)) is not None}

    async def sync(self, key: str) -> None:
        node = self.nodes.get(None, key)
        if node is not None:
            node = {**node, "apiVersion": "v1", "kind": "Node"}  # list items may lack them; events need them
        if node is None or is_deleting(node) or pod_cidrs_of(node) or key in self.pending:
            return
        cidr = self.plan.first_free(self.taken())
        if cidr is None:
            self.events.warning(node, "CIDRNotAvailable", f"Node {key} status is now: CIDRNotAvailable")
            raise Conflict(f"no pod CIDR left in {self.plan.cluster} for node {key}")
        patch = {"metadata": {"resourceVersion": node["metadata"]["resourceVersion"]},
                 "spec": {"podCIDR": str(cidr), "podCIDRs": [str(cidr)]}}
        try:
            await self.client.patch(NODES, key, patch)
        except ApiStatusError as exc:
            if exc.not_found:
                return
            raise  # a conflict: the Node changed meanwhile; retried on the fresh object
        self.pending[key] = str(cidr)
        log.info("node %s: pod CIDR %s", key, cidr)
        self.events.normal(node, "CIDRAssignmentSucceeded", f"Node {key} was assigned pod CIDR {cidr}")
