"""Masquerade for pod traffic leaving the pod network (flannel's ``ip-masq``, on in k3s by default).

A packet from one of this node's pods to an address in no node's pod CIDR (the node's own network, a registry
on a machine beside the cluster, the internet through the node's default route) leaves with the node's
address: the network beyond knows nothing of pod CIDRs and could not route the answer back. Between pods
nothing is translated: a pod sees the other's own address (the routes of ``podroutes`` carry it), and
Service traffic has had its DNAT (and, where needed, the proxy's masquerade) before this hook.

One nftables table of the agent's own, in the node's network namespace, written whole in one transaction
whenever the pod CIDRs change (and at every resync, should someone flush it)::

    table ip skiff-pod-egress {
        set pod-cidrs { type ipv4_addr; flags interval; elements = { <every node's pod CIDR> } }
        chain postrouting {
            type nat hook postrouting priority srcnat; policy accept;
            ip saddr <this node's pod CIDR> ip daddr != @pod-cidrs ip daddr != 224.0.0.0/4 masquerade fully-random
        }
    }

Like the routes, the table stays when the agent stops (new flows keep leaving while it restarts) and a
restarted agent takes it over; ``remove`` drops it (an agent's node torn down).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Any

from skiff.cluster.proxy import nft

TABLE = "skiff-pod-egress"
MULTICAST = "224.0.0.0/4"  # never masqueraded (flannel leaves it alone too)


def pod_cidrs(nodes: Iterable[dict[str, Any]]) -> set[str]:
    """Every IPv4 pod CIDR the Nodes hold (``spec.podCIDRs``, else ``spec.podCIDR``); malformed ones skipped."""
    found = set()
    for node in nodes:
        spec = node.get("spec") or {}
        for cidr in spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else []):
            try:
                network = ipaddress.ip_network(cidr, strict=False)
            except (TypeError, ValueError):
                continue
            if network.version == 4:
                found.add(str(network))
    return found


def script(own_cidr: str, pod_cidrs: Iterable[str]) -> str:
    """The nft transaction that makes the table exactly so (created when missing, its contents replaced)."""
    own = ipaddress.ip_network(own_cidr, strict=False)
    networks = {ipaddress.ip_network(c, strict=False) for c in pod_cidrs} | {own}
    elements = ", ".join(str(n) for n in ipaddress.collapse_addresses(n for n in networks if n.version == 4))
    return "\n".join([
        f"add table ip {TABLE}",
        f"delete table ip {TABLE}",
        f"table ip {TABLE} {{",
        f"  set pod-cidrs {{ type ipv4_addr; flags interval; elements = {{ {elements} }}; }}",
        "  chain postrouting {",
        "    type nat hook postrouting priority srcnat; policy accept;",
        f"    ip saddr {own} ip daddr != @pod-cidrs ip daddr != {MULTICAST} masquerade fully-random",
        "  }",
        "}",
        "",
    ])


class PodEgress:
    """Keeps the table in step with the pod CIDRs; writes only what changed, unless forced (a resync)."""

    def __init__(self, command: Sequence[str] = ("nft",)) -> None:
        self.command = command
        self._written: str | None = None

    async def sync(self, own_cidr: str, pod_cidrs: Iterable[str], *, force: bool = False) -> None:
        wanted = script(own_cidr, pod_cidrs)
        if wanted != self._written or force:
            await nft.apply(wanted, self.command)
            self._written = wanted

    async def remove(self) -> None:
        await nft.apply(f"add table ip {TABLE}\ndelete table ip {TABLE}\n", self.command)
        self._written = None
