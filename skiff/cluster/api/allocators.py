"""Service ClusterIP and NodePort allocation.

The Services in the store are the record of what is taken: on first use the allocator reads them all,
then keeps its in-memory view current as this server assigns and releases addresses (it is the only
writer of Services' IPs). ``10.43.0.1``, the range's first address, belongs to the ``kubernetes``
Service; the next ones are handed out in order, wrapping around past released ones.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from typing import Any

from skiff.cluster.api.status import FieldError
from skiff.cluster.store import Store

NODE_PORTS = range(30000, 32768)


class ServiceAllocator:
    def __init__(self, store: Store, service_cidr: str) -> None:
        self.network = ipaddress.ip_network(service_cidr, strict=False)
        self._store = store
        self._ips: set[str] = set()
        self._ports: set[int] = set()
        self._loaded = False
        self._lock = asyncio.Lock()
        self._next_ip = 2  # offset into the range: .1 is the kubernetes Service's
        self._next_port = NODE_PORTS.start

    @property
    def first_ip(self) -> str:
        return str(self.network.network_address + 1)

    async def _load(self) -> None:
        if self._loaded:
            return
        items, _, _ = await self._store.list("/registry/services/")
        for kv in items:
            self._take_all(json.loads(kv.value).get("spec") or {})
        self._loaded = True

    def _take_all(self, spec: dict[str, Any]) -> None:
        for ip in spec.get("clusterIPs") or [spec.get("clusterIP")]:
            if ip and ip != "None":
                self._ips.add(ip)
        for port in spec.get("ports") or []:
            if isinstance(port, dict) and port.get("nodePort"):
                self._ports.add(port["nodePort"])

    async def assign(self, service: dict[str, Any], old: dict[str, Any] | None) -> list[FieldError]:
        """Fill ``spec.clusterIP(s)`` and node ports (keeping ``old``'s); errors for taken or foreign ones."""
        spec = service.setdefault("spec", {})
        old_spec = (old or {}).get("spec") or {}
        async with self._lock:
            await self._load()
            errors = self._assign_ip(spec, old_spec)
            errors += self._assign_ports(spec, old_spec)
        return errors

    def _assign_ip(self, spec: dict[str, Any], old_spec: dict[str, Any]) -> list[FieldError]:
        if spec.get("type") == "ExternalName":
            return []
        wanted = spec.get("clusterIP") or (spec.get("clusterIPs") or [None])[0]
        if not wanted and old_spec.get("clusterIP"):
            wanted = old_spec["clusterIP"]
        elif wanted and wanted != "None" and wanted != old_spec.get("clusterIP"):
            try:
                inside = ipaddress.ip_address(wanted) in self.network
            except ValueError:
                return [FieldError("spec.clusterIPs[0]", "Invalid", "must be a valid IP address", wanted)]
            if not inside:
                return [FieldError("spec.clusterIPs[0]", "Invalid", "failed to allocate IP "
                                   f"{wanted}: the provided IP ({wanted}) is not in the valid range. The range of "
                                   f"valid IPs is {self.network}", wanted)]
            if wanted in self._ips:
                return [FieldError("spec.clusterIPs[0]", "Invalid", f"failed to allocate IP {wanted}: "
                                   "provided IP is already allocated", wanted)]
            self._ips.add(wanted)
        elif not wanted:
            wanted = self._next_free_ip()
            if wanted is None:
                return [FieldError("spec.clusterIPs", "Invalid", "range is full")]
        spec["clusterIP"], spec["clusterIPs"] = wanted, [wanted]
        if wanted != "None":
            spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        return []

    def _next_free_ip(self) -> str | None:
        size = self.network.num_addresses - 2
        for step in range(size):
            offset = (self._next_ip - 1 + step) % size + 1
            candidate = str(self.network.network_address + offset)
            if candidate not in self._ips:
                self._ips.add(candidate)
                self._next_ip = offset + 1
                return candidate
        return None

    def _assign_ports(self, spec: dict[str, Any], old_spec: dict[str, Any]) -> list[FieldError]:
        if spec.get("type") not in ("NodePort", "LoadBalancer"):
            return []
        before = {(p.get("port"), p.get("protocol")): p.get("nodePort") for p in old_spec.get("ports") or []}
        kept = {p for p in before.values() if p}
        errors: list[FieldError] = []
        for i, port in enumerate(spec.get("ports") or []):
            wanted = port.get("nodePort") or before.get((port.get("port"), port.get("protocol")))
            if wanted:
                if wanted not in NODE_PORTS:
                    errors.append(FieldError(f"spec.ports[{i}].nodePort", "Invalid",
                                             "provided port is not in the valid range. The range of valid ports is "
                                             "30000-32767", wanted))
                    continue
                if wanted in self._ports and wanted not in kept:
                    errors.append(FieldError(f"spec.ports[{i}].nodePort", "Invalid",
                                             "provided port is already allocated", wanted))
                    continue
                self._ports.add(wanted)
            else:
                wanted = self._next_free_port()
            port["nodePort"] = wanted
        return errors

    def _next_free_port(self) -> int:
        for step in range(len(NODE_PORTS)):
            candidate = NODE_PORTS.start + (self._next_port - NODE_PORTS.start + step) % len(NODE_PORTS)
            if candidate not in self._ports:
                self._ports.add(candidate)
                self._next_port = candidate + 1
                return candidate
        raise RuntimeError("node port range is full")

    def release(self, service: dict[str, Any], keep: dict[str, Any] | None = None) -> None:
        """Give back what ``service`` held (minus what ``keep``, its successor, still holds)."""
        spec = service.get("spec") or {}
        still = (keep or {}).get("spec") or {}
        kept_ips = set(still.get("clusterIPs") or [])
        kept_ports = {p.get("nodePort") for p in still.get("ports") or []}
        for ip in spec.get("clusterIPs") or []:
            if ip not in kept_ips:
                self._ips.discard(ip)
        for port in spec.get("ports") or []:
            if isinstance(port, dict) and port.get("nodePort") not in kept_ports:
                self._ports.discard(port.get("nodePort"))
