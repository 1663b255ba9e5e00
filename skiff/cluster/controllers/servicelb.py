"""``ServiceLBController``: LoadBalancer Services get the nodes' addresses, as k3s's ServiceLB gives them.

k3s answers a LoadBalancer Service with a DaemonSet of ``svclb`` pods holding the port on every node
(hostPort) and writes the nodes' addresses into ``status.loadBalancer.ingress``. Here every node's proxy
already DNATs its own addresses on the Service's ports (``rules``: the ingress addresses are in
``service-ips``, the nodePort is on every node address), so no pod is needed: this controller only writes
the status, the Ready nodes' InternalIPs (all nodes' when none is Ready), sorted. One writer for the whole
cluster (it runs in the controller manager, which may write ``services/status``), not one per node.
Services with a ``spec.loadBalancerClass`` belong to another implementation and are left alone.
"""

from __future__ import annotations

import logging
from typing import Any

from skiff.cluster.client import NODES, SERVICES, ApiClient, Controller, SharedInformers, object_key, split_key

log = logging.getLogger(__name__)
Obj = dict[str, Any]


class ServiceLBController(Controller):
    name = "servicelb"

    def __init__(self, client: ApiClient, informers: SharedInformers) -> None:
        self.services = informers.informer(SERVICES)
        self.nodes = informers.informer(NODES)
        super().__init__(client, [self.services, self.nodes])
        self.services.on_add(self._service_changed)
        self.services.on_update(lambda old, new: self._service_changed(new))
        for handler in (self.nodes.on_add, self.nodes.on_delete):
            handler(lambda node: self._nodes_changed())
        self.nodes.on_update(lambda old, new: self._nodes_changed() if node_address(old) != node_address(new)
                             or node_ready(old) != node_ready(new) else None)

    def _service_changed(self, svc: Obj) -> None:
        if ours(svc):
            self.enqueue(object_key(svc))

    def _nodes_changed(self) -> None:
        for svc in self.services.list():
            self._service_changed(svc)

    def ingress(self) -> list[dict[str, str]]:
        nodes = self.nodes.list()
        ready = [n for n in nodes if node_ready(n)] or nodes
        addresses = {node_address(n) for n in ready} - {None}
        return [{"ip": ip} for ip in sorted(addresses)]  # type: ignore[type-var]

    async def sync(self, key: str) -> None:
        namespace, name = split_key(key)
        svc = self.services.get(namespace, name)
        if svc is None or not ours(svc):
            return
        desired = self.ingress()
        current = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        if [i.get("ip") for i in current] == [i["ip"] for i in desired]:  # the server may add fields (ipMode)
            return
        await self.client.patch(SERVICES, name, {"status": {"loadBalancer": {"ingress": desired}}},
                                namespace=namespace, subresource="status")
        log.info("servicelb: %s: ingress %s", key, ", ".join(i["ip"] for i in desired) or "none")


def ours(svc: Obj) -> bool:
    spec = svc.get("spec") or {}
    return spec.get("type") == "LoadBalancer" and not spec.get("loadBalancerClass")


def node_address(node: Obj) -> str | None:
    addresses = (node.get("status") or {}).get("addresses") or []
    return next((a["address"] for a in addresses if a.get("type") == "InternalIP" and ":" not in a["address"]), None)


def node_ready(node: Obj) -> bool:
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
