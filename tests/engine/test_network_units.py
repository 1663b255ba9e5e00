"""The pure parts of networking: IPAM checks and allocation, port requests, the DNS wire format and answers."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct

import pytest

from skiff import dnswire, errors
from skiff.engine.network import Forbidden, dns, ipam
from skiff.engine.network.service import requested_ports


def test_ipam_config_errors_are_dockers_and_reported_together() -> None:
    with pytest.raises(errors.InvalidArgument) as e:
        ipam.parse_config([{"Subnet": "10.1.2.3/24", "Gateway": "10.9.0.1", "IPRange": "10.1.2.0/33"}])
    assert str(e.value) == ("invalid network config:\ninvalid subnet 10.1.2.3/24: it should be 10.1.2.0/24\n"
                            "invalid ip-range 10.1.2.0/33: invalid CIDR block notation\n"
                            "invalid gateway 10.9.0.1: it must be within the subnet")
    with pytest.raises(errors.InvalidArgument, match=r"invalid ip-range 10\.2\.0\.0/24: it must be within the subnet"):
        ipam.parse_config([{"Subnet": "10.1.0.0/16", "IPRange": "10.2.0.0/24"}])
    assert ipam.parse_config([{"Subnet": "10.1.0.0/16", "IPRange": "10.1.8.0/24", "Gateway": "10.1.0.254"}])


def test_overlapping_pools_are_forbidden() -> None:
    taken = [ipaddress.IPv4Network("10.1.0.0/16")]
    with pytest.raises(Forbidden, match="Pool overlaps with other one on this address space"):
        ipam.check_overlap(ipaddress.IPv4Network("10.1.128.0/24"), taken)
    ipam.check_overlap(ipaddress.IPv4Network("10.2.0.0/24"), taken)


def test_allocation_skips_network_gateway_and_broadcast_and_honours_the_range() -> None:
    pool = ipam.make_pool({"Subnet": "10.5.0.0/29", "IPRange": "10.5.0.4/30"})
    alloc = ipam.Allocator(pool)
    assert str(pool.gateway) == "10.5.0.1"
    assert [str(alloc.allocate("n", "id")) for _ in range(3)] == ["10.5.0.4", "10.5.0.5", "10.5.0.6"]
    with pytest.raises(errors.SystemFailure, match="no available IPv4 addresses"):
        alloc.allocate("n", "id")
    alloc.release(ipaddress.IPv4Address("10.5.0.5"))
    assert str(alloc.allocate("n", "id")) == "10.5.0.5"
    with pytest.raises(errors.Conflict, match="Address already in use"):
        alloc.reserve(ipaddress.IPv4Address("10.5.0.4"))
    assert ipam.mac_for(ipaddress.IPv4Address("10.5.0.4")) == "02:42:0a:05:00:04"


def test_default_pools_skip_what_is_taken() -> None:
    pools = ipam.DefaultPools.parse("base=10.7.0.0/22,size=24")
    taken = [ipaddress.IPv4Network("10.7.0.0/24"), ipaddress.IPv4Network("10.7.1.128/25")]
    assert str(pools.pick(taken)) == "10.7.2.0/24"
    with pytest.raises(errors.InvalidArgument):
        ipam.DefaultPools.parse("base=10.7.0.0/22,size=8")


def test_port_requests() -> None:
    config = {"ExposedPorts": {"80/tcp": {}, "53/udp": {}}}
    hc = {"PortBindings": {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080-8082"}]}, "PublishAllPorts": True}
    assert sorted(requested_ports(config, hc)) == [("tcp", 80, "127.0.0.1", [8080, 8081, 8082]),
                                                   ("udp", 53, "0.0.0.0", [0])]
    with pytest.raises(errors.InvalidArgument, match="invalid proto: icmp"):
        requested_ports({}, {"PortBindings": {"80/icmp": [{}]}})
    with pytest.raises(errors.InvalidArgument, match="invalid hostPort: 70000"):
        requested_ports({}, {"PortBindings": {"80/tcp": [{"HostPort": "70000"}]}})


def _query(name: str, qtype: int = dnswire.A, qid: int = 0x1234) -> bytes:
    return struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + dnswire.encode_name(name) + struct.pack(">HH", qtype, 1)


def _resolver() -> dns.Resolver:
    table = {"web": ["10.3.0.2", "10.3.0.3"]}
    return dns.Resolver(lambda asker, name: table.get(name), lambda asker, ip: "web.net" if ip == "10.3.0.2" else None,
                        lambda: [ipaddress.IPv4Network("10.3.0.0/24")])


def test_dns_answers_our_names_with_every_address() -> None:
    answer = _resolver().answer_locally("c", dnswire.parse_query(_query("Web")))  # names match in any case
    assert answer is not None
    qid, flags, qd, an = struct.unpack_from(">HHHH", answer)
    assert (qid, flags & 0x8000, flags & 0xF, qd, an) == (0x1234, 0x8000, dnswire.NOERROR, 1, 2)
    assert flags & (dnswire.AA | dnswire.RA | dnswire.RD) == dnswire.AA | dnswire.RA | dnswire.RD
    assert sorted(_answers(answer)) == [("Web", dnswire.A, socket.inet_aton("10.3.0.2")),
                                        ("Web", dnswire.A, socket.inet_aton("10.3.0.3"))]


def _answers(message: bytes) -> list[tuple[str, int, bytes]]:
    """The answer section's (name, type, rdata)."""
    count = struct.unpack_from(">H", message, 6)[0]
    _, offset = dnswire.read_name(message, 12)
    offset += 4
    found = []
    for _ in range(count):
        name, offset = dnswire.read_name(message, offset)
        rtype, _, _, length = struct.unpack_from(">HHIH", message, offset)
        offset += 10
        found.append((name, rtype, message[offset:offset + length]))
        offset += length
    return found


def test_dns_nodata_for_other_types_and_local_reverse_lookups() -> None:
    resolver = _resolver()
    aaaa = resolver.answer_locally("c", dnswire.parse_query(_query("web", dnswire.AAAA)))
    assert aaaa is not None and struct.unpack_from(">HHHH", aaaa)[3] == 0
    ptr = resolver.answer_locally("c", dnswire.parse_query(_query("2.0.3.10.in-addr.arpa", dnswire.PTR)))
    assert ptr is not None and dnswire.encode_name("web.net") in ptr
    unknown_local = resolver.answer_locally("c", dnswire.parse_query(_query("9.0.3.10.in-addr.arpa", dnswire.PTR)))
    assert unknown_local is not None and struct.unpack_from(">H", unknown_local, 2)[0] & 0xF == dnswire.NXDOMAIN
    loopback = resolver.answer_locally("c", dnswire.parse_query(_query("11.0.0.127.in-addr.arpa", dnswire.PTR)))
    assert loopback is not None  # never forwarded
    assert resolver.answer_locally("c", dnswire.parse_query(_query("example.org"))) is None  # forwarded


def test_dns_answers_malformed_queries_with_formerr_when_it_can() -> None:
    server = dns.DnsServer("c", "/nonexistent", _resolver(), [], forward=False)
    assert asyncio.run(server.handle(b"\x00")) is None  # not even an id to answer to
    answer = asyncio.run(server.handle(_query("web")[:-3]))
    assert answer is not None and struct.unpack_from(">HH", answer) == (0x1234, 0x8000 | 0x0100 | dnswire.FORMERR)


def test_upstreams_come_from_dns_flags_or_the_host() -> None:
    host = "nameserver 10.0.0.53\nnameserver ::1\nsearch example\n"
    assert dns.upstream_servers(host, []) == ["10.0.0.53"]
    assert dns.upstream_servers(host, ["192.0.2.1"]) == ["192.0.2.1"]
