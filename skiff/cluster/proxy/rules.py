"""The proxy's nftables table, written as one ``nft -f`` transaction (the layout of kube-proxy's nftables mode).

Base chains (family ``ip``):

- ``nat-prerouting`` (dstnat) and ``nat-output`` (-100) jump to ``services``: traffic from pods and other
  nodes, and from processes of the node. ``services`` looks the destination up in two verdict maps:
  ``service-ips`` (ClusterIP or load-balancer address . protocol . port) and, for the node's own non-loopback
  addresses (``fib daddr type local``), ``service-nodeports`` (protocol . nodePort).
- ``service-<hash>-<ns>/<svc>/<proto>/<port>``: marks the flow for masquerade, then sends it to one endpoint
  chain: a client with a live ClientIP-affinity entry to the endpoint it had, otherwise ``numgen random mod
  N`` through a vmap (even balancing, as kube-proxy).
- ``endpoint-<hash>-<id>__<ip>/<port>``: notes the client in the endpoint's affinity set (``update @set``,
  entries expire after ``timeoutSeconds``) and DNATs to the endpoint.
- ``nat-postrouting`` (srcnat) masquerades the marked flows (mark ``0x4000``, as kube). Every DNAT-ed flow is
  marked: without ``br_netfilter`` a pod's reply to a client on the same bridge would go straight to it,
  bypassing the host and its de-NAT, so the answer would come from the pod's address instead of the
  ClusterIP's; masqueraded, the reply comes back through the host. (The cost: backends see the node's
  address, not the client's, as with kube-proxy's ``--masquerade-all``.)
- ``filter-input``/``filter-forward``/``filter-output`` (-110, before the DNAT on output) reject new flows to
  Services that have no endpoint: ``no-endpoint-services`` and ``no-endpoint-nodeports`` → ``reject-chain``
  (TCP reset, ICMP port unreachable otherwise). ``cluster-ips-check`` (forward, and output after the DNAT)
  rejects traffic to a ClusterIP on a port the Service does not have.

Each Service port is a *fragment* (its chains, affinity sets and map elements). A sync rewrites only the
fragments that changed since the last one (kube-proxy's partial syncs): their map elements are replaced,
their chains flushed and refilled, the chains and sets of what is gone flushed and then deleted; all in one
transaction, so packets see the old table or the new one, never a mix. Affinity sets are never flushed (a
sync keeps the clients' entries). The first sync, and a full one (start, or after a failure), writes
everything, deleting the table first.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from dataclasses import dataclass, field

from skiff.cluster.proxy.model import Endpoint, ServicePort

MASQUERADE_MARK = 0x4000
BASE_CHAINS = {  # name: (type, hook, priority)
    "nat-prerouting": ("nat", "prerouting", -100),
    "nat-output": ("nat", "output", -100),
    "nat-postrouting": ("nat", "postrouting", 100),
    "filter-input": ("filter", "input", -110),
    "filter-forward": ("filter", "forward", -110),
    "filter-output": ("filter", "output", -110),
    "filter-output-post-dnat": ("filter", "output", -90),
}
REGULAR_CHAINS = ("services", "masquerading", "mark-for-masquerade", "reject-chain", "endpoints-check",
                  "cluster-ips-check")
MAPS = {  # name: nft type
    "service-ips": "ipv4_addr . inet_proto . inet_service : verdict",
    "service-nodeports": "inet_proto . inet_service : verdict",
    "no-endpoint-services": "ipv4_addr . inet_proto . inet_service : verdict",
    "no-endpoint-nodeports": "inet_proto . inet_service : verdict",
}


@functools.lru_cache(maxsize=1 << 16)  # every sync names every chain: the names of a big cluster cost 0.1 s
def _hash(text: str) -> str:
    """kube-proxy's chain-name hash: 8 base32 characters of the SHA-256."""
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:8]


def service_chain(sp: ServicePort) -> str:
    return f"service-{_hash(sp.id)}-{sp.id}"


def endpoint_chain(sp: ServicePort, ep: Endpoint) -> str:
    name = f"{sp.id}__{ep.ip}/{ep.port}"
    return f"endpoint-{_hash(name)}-{name}"


def affinity_set(sp: ServicePort, ep: Endpoint) -> str:
    name = f"{sp.id}__{ep.ip}/{ep.port}"
    return f"affinity-{_hash(name)}-{name}"


@dataclass
class Fragment:
    """What one Service port puts in the table: its chains (name -> rules), affinity sets (name -> declaration)
    and verdict-map elements ((map, key) -> verdict)."""

    chains: dict[str, list[str]] = field(default_factory=dict)
    sets: dict[str, str] = field(default_factory=dict)
    elements: dict[tuple[str, str], str] = field(default_factory=dict)


@dataclass
class State:
    """What a sync left in the table: the next one changes only what differs."""

    fragments: dict[str, Fragment] = field(default_factory=dict)  # ServicePort.id -> its fragment
    cluster_ips: set[str] = field(default_factory=set)


def fragment(sp: ServicePort) -> Fragment:
    f = Fragment()
    key = f"{sp.protocol} . {sp.port}"
    if sp.local_target is None and not sp.endpoints:
        for ip in [sp.cluster_ip, *sp.ingress_ips]:
            f.elements[("no-endpoint-services", f"{ip} . {key}")] = "goto reject-chain"
        if sp.node_port:
            f.elements[("no-endpoint-nodeports", f"{sp.protocol} . {sp.node_port}")] = "goto reject-chain"
        return f
    chain = service_chain(sp)
    f.chains[chain] = _service_rules(sp, f)
    for ip in [sp.cluster_ip, *sp.ingress_ips]:
        f.elements[("service-ips", f"{ip} . {key}")] = f"goto {chain}"
    if sp.node_port:
        f.elements[("service-nodeports", f"{sp.protocol} . {sp.node_port}")] = f"goto {chain}"
    return f


def ruleset(table: str, ports: list[ServicePort], previous: State | None = None, *,
            full: bool = False) -> tuple[str, State]:
    """The nft script bringing ``table`` from ``previous`` (what the last sync made) to ``ports``, and the
    state it makes. Without ``previous``, or with ``full``, the table is made anew (deleted first if ``full``);
    otherwise only the Service ports whose fragment changed are rewritten."""
    t = f"ip {table}"
    state = State({sp.id: fragment(sp) for sp in ports}, {sp.cluster_ip for sp in ports})
    old = previous if previous is not None and not full else State()
    old_sets = {name: decl for f in old.fragments.values() for name, decl in f.sets.items()}
    if any(old_sets.get(name, decl) != decl for f in state.fragments.values() for name, decl in f.sets.items()):
        return ruleset(table, ports, None, full=True)  # an affinity timeout changed: sets are not altered in place
    head: list[str] = []  # element deletions, declarations
    flush: list[str] = []
    rules: list[str] = []
    adds: list[str] = []
    stale: list[str] = []
    if previous is None or full:
        head += [f"add table {t}"] + ([f"delete table {t}", f"add table {t}"] if full else [])
        for name, (kind, hook, priority) in BASE_CHAINS.items():
            head.append(f"add chain {t} {name} {{ type {kind} hook {hook} priority {priority} ; policy accept ; }}")
        head += [f"add chain {t} {name}" for name in REGULAR_CHAINS]
        head.append(f"add set {t} cluster-ips {{ type ipv4_addr ; }}")
        head += [f"add map {t} {name} {{ type {kind} ; }}" for name, kind in MAPS.items()]
        flush += [f"flush chain {t} {name}" for name in [*BASE_CHAINS, *REGULAR_CHAINS]]
        flush += [f"flush set {t} cluster-ips"] + [f"flush map {t} {name}" for name in MAPS]
        rules += _base_rules(t)
    for ip in sorted(old.cluster_ips - state.cluster_ips):
        head.append(f"delete element {t} cluster-ips {{ {ip} }}")
    if state.cluster_ips - old.cluster_ips:
        adds.append(f"add element {t} cluster-ips {{ {', '.join(sorted(state.cluster_ips - old.cluster_ips))} }}")
    empty = Fragment()
    for sp_id in sorted(old.fragments.keys() | state.fragments.keys()):
        before, after = old.fragments.get(sp_id, empty), state.fragments.get(sp_id, empty)
        if before == after:
            continue
        for (kind, key), verdict in before.elements.items():
            if after.elements.get((kind, key)) != verdict:
                head.append(f"delete element {t} {kind} {{ {key} }}")
        for (kind, key), verdict in after.elements.items():
            if before.elements.get((kind, key)) != verdict:
                adds.append(f"add element {t} {kind} {{ {key} : {verdict} }}")
        head += [f"add set {t} {name} {{ {decl} }}" for name, decl in after.sets.items() if name not in before.sets]
        head += [f"add chain {t} {name}" for name in after.chains if name not in before.chains]
        for name, chain_rules in after.chains.items():
            if before.chains.get(name) != chain_rules:
                if name in before.chains:
                    flush.append(f"flush chain {t} {name}")
                rules += [f"add rule {t} {name} {rule}" for rule in chain_rules]
        # a chain is deleted empty and unreferenced: flushed with the rest, deleted at the end
        gone = [name for name in before.chains if name not in after.chains]
        flush += [f"flush chain {t} {name}" for name in gone]
        stale += [f"delete chain {t} {name}" for name in gone]
        stale += [f"delete set {t} {name}" for name in before.sets if name not in after.sets]
    script = "\n".join([*head, *flush, *rules, *adds, *stale])
    return (script + "\n" if script else ""), state


def delete_script(table: str) -> str:
    """Removes the table, whether or not it is there."""
    return f"add table ip {table}\ndelete table ip {table}\n"


def _base_rules(t: str) -> list[str]:
    mark = f"0x{MASQUERADE_MARK:x}"
    return [
        f"add rule {t} nat-prerouting jump services",
        f"add rule {t} nat-output jump services",
        f"add rule {t} nat-postrouting jump masquerading",
        f"add rule {t} masquerading meta mark & {mark} == 0 return",
        f"add rule {t} masquerading meta mark set meta mark xor {mark}",
        f"add rule {t} masquerading masquerade fully-random",
        f"add rule {t} mark-for-masquerade meta mark set meta mark | {mark}",
        f"add rule {t} services ip daddr . meta l4proto . th dport vmap @service-ips",
        f"add rule {t} services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport "
        "vmap @service-nodeports",
        f"add rule {t} filter-input ct state new jump endpoints-check",
        f"add rule {t} filter-forward ct state new jump endpoints-check",
        f"add rule {t} filter-output ct state new jump endpoints-check",
        f"add rule {t} filter-forward ct state new jump cluster-ips-check",
        f"add rule {t} filter-output-post-dnat ct state new jump cluster-ips-check",
        f"add rule {t} endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services",
        f"add rule {t} endpoints-check fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport "
        "vmap @no-endpoint-nodeports",
        f"add rule {t} cluster-ips-check ip daddr @cluster-ips goto reject-chain",
        f"add rule {t} reject-chain meta l4proto tcp reject with tcp reset",
        f"add rule {t} reject-chain reject",
    ]


def _service_rules(sp: ServicePort, f: Fragment) -> list[str]:
    """The service chain's rules; endpoint chains and affinity sets go into ``f``."""
    if sp.local_target is not None:
        # a server of this node (the cluster DNS): not masqueraded, the node answers from its own address
        target = sp.local_target
        return [f"meta l4proto {sp.protocol} dnat to {target.ip}:{target.port}"]
    rules = ["jump mark-for-masquerade"]
    targets = []
    for ep in sp.endpoints:
        ep_chain = endpoint_chain(sp, ep)
        targets.append(ep_chain)
        ep_rules = []
        if sp.affinity_timeout is not None:
            aff = affinity_set(sp, ep)
            f.sets[aff] = f"type ipv4_addr ; flags dynamic,timeout ; timeout {sp.affinity_timeout}s ;"
            rules.append(f"ip saddr @{aff} goto {ep_chain}")
            ep_rules.append(f"update @{aff} {{ ip saddr }}")
        ep_rules.append(f"meta l4proto {sp.protocol} dnat to {ep.ip}:{ep.port}")
        f.chains[ep_chain] = ep_rules
    if len(targets) == 1:
        rules.append(f"goto {targets[0]}")
    else:
        choices = ", ".join(f"{i} : goto {name}" for i, name in enumerate(targets))
        rules.append(f"numgen random mod {len(targets)} vmap {{ {choices} }}")
    return rules
