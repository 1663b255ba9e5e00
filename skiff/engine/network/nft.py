"""The engine's nftables table (one per engine, ``--nft-table``, family ``ip``), driven through ``nft -j``.

What it holds, and why:
- ``postrouting`` (nat): masquerade for traffic leaving a non-internal network (unless the network turns it
  off: ``enable_ip_masquerade=false`` or ``gateway_mode_ipv4=routed``); and hairpin masquerade for
  DNATed traffic that goes back into the bridge it came from (a container reaching a published port of a
  neighbour through the host's address would otherwise get replies from the wrong address).
- ``forward`` (filter): published ports are open to everyone (``ct status dnat accept``); otherwise a
  network's bridge forwards to no other bridge of ours (isolation), and an internal network to nothing at all;
  a ``routed`` network accepts what arrives from other interfaces (other hosts routing to its subnet).
- ``prerouting``/``output`` (nat): DNAT of published ports, for traffic arriving at any local address and for
  traffic the host itself sends to its non-loopback addresses (loopback is the userland proxy's job).

Rules of networks and of published ports are added with ``--echo`` to learn their handles, and deleted by
handle. The whole table is rebuilt in one transaction when the daemon starts (``rebuild``), from the
networks and running containers' ports it has on disk: exact after any crash, with no window of missing
rules for the containers that kept running.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass

from skiff import errors

log = logging.getLogger(__name__)

FAMILY = "ip"
BRIDGES_SET = "bridges"


@dataclass(frozen=True)
class NetworkRules:
    """What the table needs to know of a network."""

    bridge: str
    subnet: str  # CIDR
    internal: bool
    masquerade: bool = True  # ``com.docker.network.bridge.enable_ip_masquerade``
    routed: bool = False  # ``com.docker.network.bridge.gateway_mode_ipv4=routed``: reachable by routing, no NAT


@dataclass(frozen=True)
class PortRule:
    """One published port: traffic to ``host_ip`` (``0.0.0.0``: any local address) ``host_port``/``proto`` goes
    to ``container_ip:container_port``."""

    proto: str
    host_ip: str
    host_port: int
    container_ip: str
    container_port: int


Handle = tuple[str, int]  # (chain, rule handle)


def _match(left: dict, right: object, op: str = "==") -> dict:
    return {"match": {"op": op, "left": left, "right": right}}


def _meta(key: str) -> dict:
    return {"meta": {"key": key}}


def _payload(protocol: str, field: str) -> dict:
    return {"payload": {"protocol": protocol, "field": field}}


def _prefix(cidr: str) -> dict:
    address, _, length = cidr.partition("/")
    return {"prefix": {"addr": address, "len": int(length or 32)}}


_LOCAL = _match({"fib": {"result": "type", "flags": ["daddr"]}}, "local")
_DNATED = _match({"ct": {"key": "status"}}, "dnat", "in")


class NftTable:
    """One engine's table; every method is one ``nft`` transaction."""

    def __init__(self, name: str, nft: str = "nft") -> None:
        self.name = name
        self.nft = nft

    # ---- building blocks

    def _rule(self, chain: str, *expr: dict) -> dict:
        return {"add": {"rule": {"family": FAMILY, "table": self.name, "chain": chain, "expr": list(expr)}}}

    def _skeleton(self) -> list[dict]:
        t = {"family": FAMILY, "table": self.name}
        chains = [("prerouting", "nat", "prerouting", -100), ("output", "nat", "output", -100),
                  ("postrouting", "nat", "postrouting", 100), ("forward", "filter", "forward", 0)]
        commands: list[dict] = [{"add": {"table": {"family": FAMILY, "name": self.name}}}]
        commands += [{"add": {"chain": {**t, "name": name, "type": kind, "hook": hook, "prio": prio,
                                        "policy": "accept"}}} for name, kind, hook, prio in chains]
        commands.append({"add": {"set": {**t, "name": BRIDGES_SET, "type": "ifname"}}})
        commands.append(self._rule("forward", _DNATED, {"accept": None}))
        return commands

    def _network_commands(self, net: NetworkRules) -> list[dict]:
        br, oif, iif = net.bridge, _meta("oifname"), _meta("iifname")
        saddr = _match(_payload("ip", "saddr"), _prefix(net.subnet))
        commands = [{"add": {"element": {"family": FAMILY, "table": self.name, "name": BRIDGES_SET,
                                         "elem": [br]}}}]
        commands.append(self._rule("postrouting", saddr, _match(oif, br), _DNATED, {"masquerade": None}))
        if net.internal:
            commands.append(self._rule("forward", _match(iif, br), _match(oif, br, "!="), {"drop": None}))
            commands.append(self._rule("forward", _match(oif, br), _match(iif, br, "!="), {"drop": None}))
        else:
            if net.masquerade and not net.routed:
                commands.append(self._rule("postrouting", saddr, _match(oif, br, "!="), {"masquerade": None}))
            commands.append(self._rule("forward", _match(iif, br), _match(oif, br, "!="),
                                       _match(oif, "@" + BRIDGES_SET), {"drop": None}))
            if net.routed:  # what other hosts route to the subnet comes in (isolation from our bridges stays)
                commands.append(self._rule("forward", _match(iif, "@" + BRIDGES_SET, "!="), _match(oif, br),
                                           {"accept": None}))
        return commands

    def _port_commands(self, p: PortRule) -> list[dict]:
        dport = _match(_payload(p.proto, "dport"), p.host_port)
        dnat = {"dnat": {"addr": p.container_ip, "port": p.container_port}}
        to_address = [] if p.host_ip in ("", "0.0.0.0") else [_match(_payload("ip", "daddr"), p.host_ip)]
        not_loopback = _match(_payload("ip", "daddr"), _prefix("127.0.0.0/8"), "!=")
        return [self._rule("prerouting", *to_address, _LOCAL, dport, dnat),
                self._rule("output", not_loopback, *to_address, _LOCAL, dport, dnat)]

    # ---- transactions

    async def _apply(self, commands: list[dict]) -> list[Handle]:
        """Run one transaction; the handles of the rules it added, in order."""
        proc = await asyncio.create_subprocess_exec(
            self.nft, "-j", "-e", "-f", "-", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate(json.dumps({"nftables": commands}).encode())
        if proc.returncode != 0:
            raise errors.SystemFailure(f"nft: {err.decode(errors='replace').strip()}")
        handles: list[Handle] = []
        try:
            echoed = json.loads(out or b"{}").get("nftables") or []
        except ValueError:
            echoed = []
        for item in echoed:
            rule = (item.get("add") or {}).get("rule")
            if rule is not None:
                handles.append((rule["chain"], rule["handle"]))
        return handles

    async def rebuild(self, networks: list[NetworkRules], ports: list[list[PortRule]]
                      ) -> tuple[list[list[Handle]], list[list[Handle]]]:
        """Replace the table with one holding exactly ``networks`` and the groups of ``ports``; returns the
        handles of each network's rules and of each port group's."""
        commands = [{"add": {"table": {"family": FAMILY, "name": self.name}}},
                    {"delete": {"table": {"family": FAMILY, "name": self.name}}}, *self._skeleton()]
        sizes: list[int] = []
        for net in networks:
            part = [c for c in self._network_commands(net) if "rule" in c["add"]]
            sizes.append(len(part))
            commands += self._network_commands(net)
        port_sizes = []
        for group in ports:
            part = [c for p in group for c in self._port_commands(p)]
            port_sizes.append(len(part))
            commands += part
        handles = (await self._apply(commands))[1:]  # the first is the skeleton's forward rule
        return _split(handles, sizes), _split(handles[sum(sizes):], port_sizes)

    async def add_network(self, net: NetworkRules) -> list[Handle]:
        return await self._apply(self._network_commands(net))

    async def remove_network(self, net: NetworkRules, handles: list[Handle]) -> None:
        commands = self._deletes(handles)
        commands.append({"delete": {"element": {"family": FAMILY, "table": self.name, "name": BRIDGES_SET,
                                                "elem": [net.bridge]}}})
        await self._apply_quietly(commands)

    async def add_ports(self, ports: list[PortRule]) -> list[Handle]:
        if not ports:
            return []
        return await self._apply([c for p in ports for c in self._port_commands(p)])

    async def delete_rules(self, handles: list[Handle]) -> None:
        if handles:
            await self._apply_quietly(self._deletes(handles))

    def _deletes(self, handles: list[Handle]) -> list[dict]:
        return [{"delete": {"rule": {"family": FAMILY, "table": self.name, "chain": chain, "handle": handle}}}
                for chain, handle in handles]

    async def _apply_quietly(self, commands: list[dict]) -> None:
        """Deletions: one that fails (the rule is gone already) must not keep the others from happening."""
        try:
            await self._apply(commands)
        except errors.SystemFailure:
            for command in commands:
                try:
                    await self._apply([command])
                except errors.SystemFailure as e:
                    log.debug("%s", e)

    async def delete(self) -> None:
        """Remove the whole table (missing is fine)."""
        await self._apply_quietly([{"add": {"table": {"family": FAMILY, "name": self.name}}},
                                   {"delete": {"table": {"family": FAMILY, "name": self.name}}}])


def _split(handles: list[Handle], sizes: list[int]) -> list[list[Handle]]:
    groups, start = [], 0
    for size in sizes:
        groups.append(handles[start:start + size])
        start += size
    return groups
