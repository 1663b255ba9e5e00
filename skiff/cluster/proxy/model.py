"""What the proxy programs, computed from Services and EndpointSlices (pure: no I/O, no nft syntax).

One ``ServicePort`` per (Service, port): its ClusterIP, nodePort, load-balancer addresses, session affinity
and the endpoints traffic may go to. Endpoints come from every EndpointSlice labelled
``kubernetes.io/service-name``; a slice's port is matched to the Service's port by name (kube's rule). The
ready endpoints are used; when none is ready, the serving-and-terminating ones (kube-proxy's fallback, so
a rolling update does not drop connections while the new pods warm up). ``internalTrafficPolicy: Local``
keeps, for ClusterIP traffic, only the endpoints on this node.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
PROTOCOLS = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}


@dataclass(frozen=True, order=True)
class Endpoint:
    ip: str
    port: int


@dataclass
class ServicePort:
    namespace: str
    name: str  # the Service's name
    port_name: str  # the port's name ("" for a single unnamed port)
    protocol: str  # tcp, udp or sctp
    port: int
    cluster_ip: str
    node_port: int | None = None
    ingress_ips: list[str] = field(default_factory=list)  # status.loadBalancer.ingress[].ip
    affinity_timeout: int | None = None  # seconds, when sessionAffinity is ClientIP
    endpoints: list[Endpoint] = field(default_factory=list)
    local_target: Endpoint | None = None  # a node-local server answering for this port instead (cluster DNS)

    @property
    def id(self) -> str:
        """``ns/name/proto/portname``: what kube-proxy's chain names carry."""
        return f"{self.namespace}/{self.name}/{self.protocol}/{self.port_name}"


@dataclass(frozen=True)
class LocalTarget:
    """Traffic to the ports of Service ``namespace/name`` goes to ``address:port`` on this node (as NodeLocal
    DNSCache takes over the kube-dns ClusterIP on each node)."""

    namespace: str
    name: str
    address: str
    port: int


def service_ports(services: Iterable[Obj], slices: Iterable[Obj], *, node_name: str | None = None,
                  local: LocalTarget | None = None) -> list[ServicePort]:
    """Every proxied port of ``services`` with its endpoints from ``slices``, in a stable order."""
    by_service: dict[tuple[str, str], list[Obj]] = {}
    for s in slices:
        meta = s.get("metadata") or {}
        owner = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
        if owner and s.get("addressType", "IPv4") == "IPv4":
            by_service.setdefault((meta.get("namespace") or "", owner), []).append(s)
    out: list[ServicePort] = []
    for svc in services:
        meta, spec = svc.get("metadata") or {}, svc.get("spec") or {}
        namespace, name = meta.get("namespace") or "", meta["name"]
        if not _proxied(spec):
            continue
        svc_slices = by_service.get((namespace, name), [])
        only_node = node_name if spec.get("internalTrafficPolicy") == "Local" else None
        is_local = local is not None and (local.namespace, local.name) == (namespace, name)
        for p in spec.get("ports") or ():
            protocol = PROTOCOLS.get(p.get("protocol") or "TCP")
            if protocol is None:
                continue
            sp = ServicePort(namespace, name, p.get("name") or "", protocol, int(p["port"]), spec["clusterIP"],
                             node_port=p.get("nodePort") if spec.get("type") in ("NodePort", "LoadBalancer") else None,
                             ingress_ips=_ingress_ips(svc) if spec.get("type") == "LoadBalancer" else [],
                             affinity_timeout=_affinity_timeout(spec))
            if is_local:
                sp.local_target = Endpoint(local.address, local.port)  # type: ignore[union-attr]
            else:
                sp.endpoints = endpoints_for(svc_slices, sp.port_name, p.get("protocol") or "TCP", only_node)
            out.append(sp)
    out.sort(key=lambda sp: sp.id)
    return out


def _proxied(spec: Obj) -> bool:
    """ClusterIP, NodePort and LoadBalancer Services with an address (not headless, not ExternalName)."""
    ip = spec.get("clusterIP")
    return spec.get("type", "ClusterIP") != "ExternalName" and bool(ip) and ip != "None" and ":" not in ip


def _ingress_ips(svc: Obj) -> list[str]:
    ingress = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    return sorted({i["ip"] for i in ingress if i.get("ip") and ":" not in i["ip"]})


def _affinity_timeout(spec: Obj) -> int | None:
    if spec.get("sessionAffinity") != "ClientIP":
        return None
    config = (spec.get("sessionAffinityConfig") or {}).get("clientIP") or {}
    return int(config.get("timeoutSeconds") or 10800)  # kube's default: 3 hours


def endpoints_for(slices: Iterable[Obj], port_name: str, protocol: str, only_node: str | None) -> list[Endpoint]:
    """The endpoints of one Service port: the ready ones, else the serving-and-terminating ones."""
    ready: set[Endpoint] = set()
    fallback: set[Endpoint] = set()
    for s in slices:
        port = next((p.get("port") for p in s.get("ports") or () if (p.get("name") or "") == port_name
                     and (p.get("protocol") or "TCP") == protocol), None)
        if port is None:
            continue
        for ep in s.get("endpoints") or ():
            if only_node is not None and ep.get("nodeName") != only_node:
                continue
            conditions = ep.get("conditions") or {}
            targets = [Endpoint(ip, int(port)) for ip in ep.get("addresses") or ()]
            if conditions.get("ready") is not False:  # unset means ready
                ready.update(targets)
            elif conditions.get("serving") and conditions.get("terminating"):
                fallback.update(targets)
    return sorted(ready or fallback)
