"""Routes to the other nodes' pods (flannel's host-gw backend): for every other Node with a pod CIDR and an
InternalIP, the agent keeps ``<its podCIDR> via <its InternalIP>`` in the main table of its own network
namespace, so a pod's packet to a pod on another node leaves through the node's uplink to that node, which
hands it to its pod bridge. Nothing is encapsulated or NATed: it needs the nodes on one L2 segment (the
gateway must be on-link; the kernel refuses the route otherwise, which is logged and retried at the next sync).

The routes carry a protocol number of their own (``ROUTE_PROTOCOL``), so the agent recognises them without
keeping a record: a sync adds or replaces the wanted ones and deletes its others (a Node deleted, its podCIDR
or address changed). They stay when the agent stops, as flannel's and k3s's do: traffic between the other
nodes' pods keeps flowing while an agent restarts, and a restarted agent takes them over. Routes another
owner made to the same destination (a directly connected bridge, say) are never touched.

Everything here is blocking netlink (``skiff.netlink``): call it on a worker thread, off the loop.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from typing import Any

from skiff.netlink import Netlink, Route

log = logging.getLogger(__name__)
ROUTE_PROTOCOL = 77  # unassigned in iproute2's rt_protos: "ip route show proto 77" lists ours


@dataclass(frozen=True)
class PodRoute:
    destination: str  # a node's pod CIDR
    gateway: str  # the node's InternalIP


def internal_ip(node: dict[str, Any]) -> str | None:
    for address in (node.get("status") or {}).get("addresses") or ():
        if address.get("type") == "InternalIP" and address.get("address"):
            return str(address["address"])
    return None


def wanted_routes(nodes: list[dict[str, Any]], own_name: str, own_cidr: str | None) -> set[PodRoute]:
    """The route to each other node's pods (IPv4; nodes without a pod CIDR or an address have none)."""
    own = ipaddress.ip_network(own_cidr, strict=False) if own_cidr else None
    routes = set()
    for node in nodes:
        spec = node.get("spec") or {}
        gateway, cidr = internal_ip(node), spec.get("podCIDR")
        if node["metadata"]["name"] == own_name or not gateway or not cidr:
            continue
        try:
            network, address = ipaddress.ip_network(cidr, strict=False), ipaddress.ip_address(gateway)
        except ValueError:
            continue
        if network.version != 4 or address.version != 4 or (own is not None and network.overlaps(own)):
            continue
        routes.add(PodRoute(str(network), str(address)))
    return routes


def current_routes(nl: Netlink) -> dict[str, Route]:
    """Routes of the main table by destination CIDR (what the kernel holds now), the default route aside."""
    return {route.destination: route for route in nl.routes() if not route.destination.endswith("/0")}


def sync_routes(wanted: set[PodRoute]) -> set[PodRoute]:
    """Make the kernel hold exactly ``wanted`` among our routes; the routes in place afterwards."""
    placed: set[PodRoute] = set()
    with Netlink() as nl:
        current = current_routes(nl)
        for route in sorted(wanted, key=lambda r: r.destination):
            existing = current.get(route.destination)
            if existing is not None and existing.protocol != ROUTE_PROTOCOL:
                log.warning("pod routes: %s is already routed by someone else; not replacing it", route.destination)
                continue
            if existing is not None and existing.gateway == route.gateway:
                placed.add(route)
                continue
            try:
                nl.add_route(route.destination, gateway=route.gateway, replace=True, protocol=ROUTE_PROTOCOL)
                placed.add(route)
            except OSError as exc:  # the gateway is not on-link (another L2 segment): nothing to do here
                log.warning("pod routes: %s via %s: %s", route.destination, route.gateway, exc)
        keep = {r.destination for r in wanted}
        for destination, existing in current.items():
            if existing.protocol == ROUTE_PROTOCOL and destination not in keep:
                try:
                    nl.delete_route(destination, gateway=existing.gateway, protocol=ROUTE_PROTOCOL)
                except OSError as exc:
                    log.debug("pod routes: deleting %s: %s", destination, exc)
    return placed


def remove_all() -> None:
    """Delete every route of ours (for a node leaving the cluster for good)."""
    sync_routes(set())
