"""``ClusterZone``: the answers of the cluster domain, read from the Service and EndpointSlice caches
(the records CoreDNS's kubernetes plugin serves, per the Kubernetes DNS specification).

| name | answer |
|---|---|
| ``<svc>.<ns>.svc.<domain>`` | A: the ClusterIP (headless: the ready endpoints' addresses); ExternalName: CNAME |
| ``<host>.<svc>.<ns>.svc.<domain>`` | A: a headless Service's endpoint by its ``hostname`` (or its dashed address) |
| ``_<port>._<proto>.<svc>.<ns>.svc.<domain>`` | SRV per named port (target the Service, or each endpoint if headless) |
| ``<a-b-c-d>.<ns>.pod.<domain>`` | A: ``a.b.c.d`` (CoreDNS's ``pods insecure``, k3s's setting) |
| ``d.c.b.a.in-addr.arpa`` | PTR for ClusterIPs and endpoint addresses |

A name in the domain that does not exist is NXDOMAIN; an existing name asked for another type (AAAA, say) is
an empty NOERROR, so resolvers that ask A and AAAA together do not give up on the name. Both carry the
zone's SOA. Names outside the domain (and reverse names of unknown addresses) are REFUSED: the server is
authoritative for the cluster only and never forwards or recurses. TTL 5 s, as CoreDNS's default.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from skiff.cluster.client import Informer
from skiff.dnswire import (
    ANY,
    CNAME,
    NXDOMAIN,
    PTR,
    REFUSED,
    SOA,
    SRV,
    A,
    Answer,
    Question,
    Record,
    a_rdata,
    name_rdata,
    soa_rdata,
    srv_rdata,
)

Obj = dict[str, Any]
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
SLICES_BY_SERVICE = "dns-service"


@dataclass(frozen=True)
class EndpointRecord:
    ip: str
    hostname: str | None
    ports: dict[tuple[str, str], int]  # (port name, protocol lower-case) -> port

    @property
    def label(self) -> str:
        """Its name under the Service: the hostname, or the address with dashes (CoreDNS's rule)."""
        return self.hostname or self.ip.replace(".", "-")


class ClusterZone:
    def __init__(self, services: Informer, slices: Informer, domain: str = "cluster.local", ttl: int = 5) -> None:
        self.services = services
        self.slices = slices
        self.domain = domain.strip(".").lower()
        self.ttl = ttl
        self._serial = int(time.time())
        slices.add_index(SLICES_BY_SERVICE, _slice_service)

    # --- the entry point ------------------------------------------------------------------------------------

    def answer(self, q: Question) -> Answer:
        name = q.name.lower().strip(".")
        if name.endswith(".in-addr.arpa"):
            return self._reverse(q, name)
        if name != self.domain and not name.endswith("." + self.domain):
            return Answer(REFUSED, authoritative=False)
        labels = name[: -len(self.domain)].strip(".").split(".") if name != self.domain else []
        records = self._lookup(q, labels)
        if records is None:
            return self._negative(q, NXDOMAIN)
        own = [r for r in records if r.name.lower().strip(".") == name]
        wanted = list(dict.fromkeys(r for r in own if q.qtype in (r.rtype, ANY) or r.rtype == CNAME))
        if not wanted:
            return self._negative(q, 0)
        # SRV targets' addresses go along (the additional section), as CoreDNS does
        extra = [] if not any(r.rtype == SRV for r in wanted) else list(dict.fromkeys(
            r for r in records if r.rtype == A and r.name.lower().strip(".") != name))
        return Answer(answers=wanted, additional=extra)

    def _lookup(self, q: Question, labels: list[str]) -> list[Record] | None:
        """Every record of the name (any type), ``[]`` for a name that exists without records, None if none."""
        n = len(labels)
        if n == 0:
            return [Record(q.name, SOA, self.ttl, self._soa())]
        if labels in (["svc"], ["pod"]):
            return []
        if n == 2 and labels[1] in ("svc", "pod"):
            return [] if self._namespace_exists(labels[0]) else None
        if n >= 3 and labels[-1] == "svc":
            return self._service_name(q.name, labels[:-1])
        if n == 3 and labels[2] == "pod":
            ip = labels[0].replace("-", ".")
            return [Record(q.name, A, self.ttl, a_rdata(ip))] if _is_ipv4(ip) else None
        return None

    # --- Services -------------------------------------------------------------------------------------------

    def _service_name(self, qname: str, labels: list[str]) -> list[Record] | None:
        """``labels`` is the name under ``svc.<domain>``: [svc, ns], [host, svc, ns] or [_port, _proto, svc, ns]."""
        svc_name, namespace = labels[-2], labels[-1]
        svc = self.services.get(namespace, svc_name)
        if svc is None:
            return None
        if len(labels) == 2:
            return self._service_records(qname, svc)
        if len(labels) == 3:
            ep = next((e for e in self._endpoints(svc) if e.label == labels[0]), None) if _headless(svc) else None
            return [Record(qname, A, self.ttl, a_rdata(ep.ip))] if ep else None
        if len(labels) == 4 and labels[0].startswith("_") and labels[1].startswith("_"):
            return self._srv(qname, svc, labels[0][1:], labels[1][1:]) or None
        return None

    def _service_records(self, qname: str, svc: Obj) -> list[Record]:
        spec = svc.get("spec") or {}
        if spec.get("type") == "ExternalName":
            return [Record(qname, CNAME, self.ttl, name_rdata(spec.get("externalName") or ""))]
        if _headless(svc):
            records = [Record(qname, A, self.ttl, a_rdata(e.ip)) for e in self._endpoints(svc)]
        else:
            records = [Record(qname, A, self.ttl, a_rdata(spec["clusterIP"]))]
        for p in spec.get("ports") or ():  # SRV for the bare name: every named port (no additional A records)
            if p.get("name"):
                srv = self._srv(qname, svc, p["name"], (p.get("protocol") or "TCP").lower(), owner=qname)
                records += [r for r in srv if r.rtype == SRV]
        return records

    def _srv(self, qname: str, svc: Obj, port_name: str, proto: str, owner: str | None = None) -> list[Record]:
        spec, meta = svc.get("spec") or {}, svc["metadata"]
        base = f"{meta['name']}.{meta['namespace']}.svc.{self.domain}"
        port = next((p for p in spec.get("ports") or () if (p.get("name") or "").lower() == port_name.lower()
                     and (p.get("protocol") or "TCP").lower() == proto.lower()), None)
        if port is None:
            return []
        owner, proto = owner or qname, proto.lower()
        if not _headless(svc):
            return [Record(owner, SRV, self.ttl, srv_rdata(0, 100, int(port["port"]), base)),
                    Record(base, A, self.ttl, a_rdata(spec["clusterIP"]))]
        records: list[Record] = []
        endpoints = [e for e in self._endpoints(svc) if (port["name"], proto) in e.ports]
        for e in endpoints:
            target = f"{e.label}.{base}"
            weight = max(1, 100 // len(endpoints))
            records.append(Record(owner, SRV, self.ttl, srv_rdata(0, weight, e.ports[(port["name"], proto)], target)))
            records.append(Record(target, A, self.ttl, a_rdata(e.ip)))
        return records

    def _endpoints(self, svc: Obj) -> list[EndpointRecord]:
        """The ready endpoints of ``svc`` from all its slices (a headless Service's DNS answers)."""
        meta = svc["metadata"]
        seen: dict[str, EndpointRecord] = {}
        for s in self.slices.by_index(SLICES_BY_SERVICE, f"{meta['namespace']}/{meta['name']}"):
            if s.get("addressType", "IPv4") != "IPv4":
                continue
            ports = {(p.get("name") or "", (p.get("protocol") or "TCP").lower()): int(p["port"])
                     for p in s.get("ports") or () if p.get("port") is not None}
            for ep in s.get("endpoints") or ():
                if (ep.get("conditions") or {}).get("ready") is False:
                    continue
                for ip in ep.get("addresses") or ():
                    seen.setdefault(ip, EndpointRecord(ip, ep.get("hostname"), ports))
        return sorted(seen.values(), key=lambda e: ipaddress.IPv4Address(e.ip))

    def _namespace_exists(self, namespace: str) -> bool:
        return bool(self.services.list(namespace))

    # --- reverse names --------------------------------------------------------------------------------------

    def _reverse(self, q: Question, name: str) -> Answer:
        parts = name[: -len(".in-addr.arpa")].split(".")
        ip = ".".join(reversed(parts))
        if len(parts) != 4 or not _is_ipv4(ip):
            return Answer(REFUSED, authoritative=False)
        targets = list(self._names_of(ip))
        if not targets:
            return Answer(REFUSED, authoritative=False)
        if q.qtype not in (PTR, ANY):
            return self._negative(q, 0)
        return Answer(answers=[Record(q.name, PTR, self.ttl, name_rdata(t)) for t in targets])

    def _names_of(self, ip: str) -> Iterator[str]:
        for svc in self.services.list():
            meta, spec = svc["metadata"], svc.get("spec") or {}
            base = f"{meta['name']}.{meta['namespace']}.svc.{self.domain}"
            if spec.get("clusterIP") == ip:
                yield base
            elif _headless(svc):
                yield from (f"{e.label}.{base}" for e in self._endpoints(svc) if e.ip == ip)

    # --- negative answers -----------------------------------------------------------------------------------

    def _soa(self) -> bytes:
        return soa_rdata(f"ns.dns.{self.domain}", f"hostmaster.{self.domain}", self._serial, 7200, 1800, 86400,
                         self.ttl)

    def _negative(self, q: Question, rcode: int) -> Answer:
        return Answer(rcode, authority=[Record(self.domain, SOA, self.ttl, self._soa())])


def _slice_service(s: Obj) -> list[str]:
    meta = s.get("metadata") or {}
    owner = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
    return [f"{meta.get('namespace')}/{owner}"] if owner else []


def _headless(svc: Obj) -> bool:
    spec = svc.get("spec") or {}
    return spec.get("clusterIP") == "None" or (not spec.get("clusterIP") and spec.get("type") != "ExternalName")


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True
