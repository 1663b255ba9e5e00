"""``NodeServices``: what runs beside the kubelet in ``skiff agent`` (as in k3s's agent): the Service proxy and
the node-local cluster DNS, on one pair of informers (Services, EndpointSlices).

The DNS server listens on the node's InternalIP, on a port the kernel picks (``dns_port`` to fix it); the
proxy DNATs the ``kube-system/kube-dns`` Service's ports (ClusterIP ``--cluster-dns``, 10.43.0.10) to it,
for pods (prerouting) and for the node's own processes (output). So each node answers its pods' DNS
itself, as with NodeLocal DNSCache, and no DNS pod, image or cross-node hop is needed. Without the proxy
(``--disable-proxy``) nothing could reach it, so it is not started either.

The proxy starts once the informers have listed; a failure (``nft`` missing, say) is logged and retried,
while the kubelet keeps running. A DNS server that cannot listen (``--node-ip`` not an address of this host)
is logged and left out. ``stop()`` removes the proxy's table.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from dataclasses import dataclass

from skiff.aiotasks import cancel_and_wait
from skiff.cluster.client import ENDPOINT_SLICES, SERVICES, ApiClient, SharedInformers
from skiff.cluster.dns.server import DnsServer
from skiff.cluster.dns.zone import ClusterZone
from skiff.cluster.proxy.model import LocalTarget
from skiff.cluster.proxy.proxier import DEFAULT_TABLE, ProxyOptions, ServiceProxy
from skiff.errors import SkiffError

log = logging.getLogger(__name__)
DNS_SERVICE = ("kube-system", "kube-dns")
DEFAULT_CLUSTER_DNS = "10.43.0.10"
DEFAULT_DOMAIN = "cluster.local"


@dataclass
class NodeServiceOptions:
    node_name: str
    table: str = DEFAULT_TABLE
    cluster_dns: str | None = None  # the kube-dns ClusterIP the pods use; None: no DNS server here
    cluster_domain: str = DEFAULT_DOMAIN
    dns_port: int = 0
    retry: float = 5.0


class NodeServices:
    def __init__(self, client: ApiClient, options: NodeServiceOptions) -> None:
        ProxyOptions(options.node_name, table=options.table).check()
        self.client = client
        self.options = options
        self.informers = SharedInformers(client)
        self.proxy: ServiceProxy | None = None
        self.dns: DnsServer | None = None
        self.started = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self, node_ip: str) -> None:
        """Start in the background (retrying until it works)."""
        self._task = asyncio.create_task(self._run(node_ip), name=f"node-services-{self.options.node_name}")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        if self.dns is not None:
            await self.dns.stop()
            self.dns = None
        if self.proxy is not None:
            try:
                await self.proxy.stop()
            except (SkiffError, OSError) as exc:
                log.warning("proxy: removing table %s: %s", self.options.table, exc)
            self.proxy = None
        await self.informers.stop()

    async def _run(self, node_ip: str) -> None:
        services = self.informers.informer(SERVICES)
        slices = self.informers.informer(ENDPOINT_SLICES)
        local = None
        if self.options.cluster_dns:
            server = DnsServer(ClusterZone(services, slices, self.options.cluster_domain), node_ip,
                               self.options.dns_port)
            try:
                await server.start()
            except OSError as exc:  # the proxy still runs; kube-dns, without endpoints, is then rejected
                log.error("dns: cannot listen on %s:%d: %s; no cluster DNS on this node", node_ip,
                          self.options.dns_port, exc)
            else:
                self.dns = server
                if ipaddress.ip_address(node_ip).is_loopback:  # a DNAT from a bridge to 127/8 is martian
                    log.warning("dns: listening on %s: only this node's processes reach it, not its pods", node_ip)
                local = LocalTarget(*DNS_SERVICE, server.host, server.port)
                log.info("dns: serving %s on %s:%d (the kube-dns ClusterIP %s leads here)",
                         self.options.cluster_domain, server.host, server.port, self.options.cluster_dns)
        proxy = ServiceProxy(services, slices, ProxyOptions(self.options.node_name, table=self.options.table,
                                                            local=local))
        self.proxy = proxy  # from now on stop() removes the table, even if a start is cut short
        while True:
            try:
                await proxy.start()
                break
            except (SkiffError, OSError) as exc:
                log.error("proxy: cannot write table %s: %s; retrying", self.options.table, exc)
                await asyncio.sleep(self.options.retry)
        self.started.set()
