"""The node's pod network: a bridge network on the node's engine holding its pod CIDR, and routes to the other
nodes' pods (``podroutes``). It is what a CNI plugin and flannel's host-gw backend are for a kubelet.

The pod CIDR is ``--pod-cidr`` when given, else the Node's ``spec.podCIDR`` (the node IPAM controller assigns
it as soon as the Node exists; ``start`` waits ``cidr_wait`` seconds for it). With one, the agent makes (through
the Engine API, as everything it does on the engine) a bridge network named ``skiff-pods``: subnet = the pod
CIDR, gateway = its first address, no masquerade and ``gateway_mode_ipv4=routed`` so that pods on other nodes
reach its pods by their own addresses and see theirs; sandboxes go on it and the pod IP is their address
there. Without one (a server without IPAM, a plain dockerd with no ``--pod-cidr``) sandboxes stay on the
engine's default bridge, as before; a pod CIDR assigned later takes effect for the sandboxes made from then on.

Every Node is watched: on each change (and every ``resync`` seconds, should someone flush the table) the routes
to the others' pod CIDRs are brought up to date on a worker thread, and so is the masquerade for pod traffic
leaving every pod CIDR (``podegress``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging

from skiff.aiotasks import cancel_and_wait
from skiff.cluster.client import NODES, ApiClient, Informer
from skiff.cluster.kubelet import podegress, podroutes
from skiff.cluster.kubelet.runtime import EngineRuntime
from skiff.errors import SkiffError

log = logging.getLogger(__name__)
NETWORK_NAME = "skiff-pods"
NETWORK_LABEL = "io.skiff.pod-network"
NETWORK_OPTIONS = {"com.docker.network.bridge.enable_ip_masquerade": "false",
                   "com.docker.network.bridge.gateway_mode_ipv4": "routed"}


def gateway_of(cidr: str) -> str:
    return str(next(ipaddress.ip_network(cidr, strict=False).hosts()))


class PodNetwork:
    def __init__(self, client: ApiClient, runtime: EngineRuntime, node_name: str, pod_cidr: str | None = None,
                 *, cidr_wait: float = 1.0, resync: float = 30.0) -> None:
        self.runtime = runtime
        self.node_name = node_name
        self.configured_cidr = pod_cidr
        self.cidr_wait = cidr_wait
        self.resync = resync
        self.nodes = Informer(client, NODES)
        self.egress = podegress.PodEgress()
        self.pod_cidr: str | None = None  # set once the engine network exists
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def network(self) -> str | None:
        """The engine network sandboxes join (None: the engine's default)."""
        return NETWORK_NAME if self.pod_cidr else None

    async def start(self) -> None:
        for handler in (self.nodes.on_add, self.nodes.on_delete):
            handler(lambda _node: self._changed.set())
        self.nodes.on_update(lambda _old, _new: self._changed.set())
        self.nodes.start()
        await self.nodes.wait_synced()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cidr_wait
        while self._wanted_cidr() is None and loop.time() < deadline:
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), deadline - loop.time())
        await self._reconcile_logged()
        self._task = asyncio.create_task(self._follow(), name=f"pod-network-{self.node_name}")

    async def stop(self) -> None:
        """Stop following; the engine network and the routes stay (the pods keep running)."""
        await cancel_and_wait(self._task)
        self._task = None
        await self.nodes.stop()

    def _wanted_cidr(self) -> str | None:
        if self.configured_cidr:
            return self.configured_cidr
        node = self.nodes.get(None, self.node_name)
        return ((node or {}).get("spec") or {}).get("podCIDR")

    async def _follow(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._changed.wait(), self.resync)
                resync = False
            except TimeoutError:
                resync = True
            self._changed.clear()
            await self._reconcile_logged(resync=resync)

    async def _reconcile_logged(self, *, resync: bool = True) -> None:
        """A failure (the engine refusing the network, say) leaves sandboxes where they were; retried later."""
        try:
            await self._reconcile(resync=resync)
        except (SkiffError, OSError) as exc:
            log.warning("node %s: pod network: %s", self.node_name, exc)

    async def _reconcile(self, *, resync: bool) -> None:
        cidr = self._wanted_cidr()
        if cidr and cidr != self.pod_cidr:
            await self.ensure_engine_network(cidr)
            self.pod_cidr = cidr
            log.info("node %s: pods on %s (%s)", self.node_name, NETWORK_NAME, cidr)
        nodes = self.nodes.list()
        wanted = podroutes.wanted_routes(nodes, self.node_name, self.pod_cidr)
        await asyncio.to_thread(podroutes.sync_routes, wanted)
        if self.pod_cidr:
            await self.egress.sync(self.pod_cidr, podegress.pod_cidrs(nodes), force=resync)

    async def ensure_engine_network(self, cidr: str) -> None:
        """The ``skiff-pods`` network on the engine with subnet ``cidr``; one with another subnet is replaced
        when no container uses it (a Node re-created with a new pod CIDR)."""
        api = self.runtime.api
        subnet = str(ipaddress.ip_network(cidr, strict=False))
        for found in await self.runtime.call(api.networks, names=[NETWORK_NAME]):
            if found.get("Name") != NETWORK_NAME:
                continue
            doc = await self.runtime.call(api.inspect_network, found["Id"])
            subnets = [c.get("Subnet") for c in (doc.get("IPAM") or {}).get("Config") or ()]
            if subnets == [subnet]:
                return
            if doc.get("Containers"):
                log.warning("node %s: %s has subnet %s, not the pod CIDR %s, and containers on it: kept",
                            self.node_name, NETWORK_NAME, subnets, subnet)
                return
            await self.runtime.call(api.remove_network, found["Id"])
        ipam = {"Driver": "default", "Config": [{"Subnet": subnet, "Gateway": gateway_of(subnet)}]}
        await self.runtime.call(api.create_network, NETWORK_NAME, driver="bridge", options=NETWORK_OPTIONS,
                                ipam=ipam, labels={NETWORK_LABEL: "true"})

