"""The cluster DNS: ``ClusterZone``'s answers from a real ``skiff server``'s Services and EndpointSlices, and
``DnsServer`` asked by real resolvers (busybox ``nslookup``, glibc's ``getaddrinfo`` with a pod's
resolv.conf, a TCP query) in the lab's client namespace, through the proxy's DNAT of the kube-dns ClusterIP
to the server's address on the node (as in the agent)."""

from __future__ import annotations

import asyncio
import socket
import struct
import sys
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from skiff.cluster.client import ENDPOINT_SLICES, SERVICES, ApiClient, ApiNotFound, SharedInformers
from skiff.cluster.dns.server import DnsServer
from skiff.cluster.dns.zone import ClusterZone
from skiff.cluster.proxy.model import LocalTarget
from skiff.cluster.proxy.proxier import ProxyOptions, ServiceProxy
from skiff.dnswire import (
    AAAA,
    CNAME,
    NXDOMAIN,
    PTR,
    REFUSED,
    SOA,
    SRV,
    A,
    Answer,
    Question,
    read_name,
)
from tests.cluster.proxy.conftest import make_service, ready, set_endpoints, until
from tests.cluster.proxy.netlab import GATEWAY, NetLab
from tests.test_dnswire import query

pytestmark = pytest.mark.asyncio
DNS_IP = "10.43.0.10"
RESOLV = f"nameserver {DNS_IP}\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"


@pytest_asyncio.fixture
async def services(client: ApiClient) -> dict[str, dict]:
    web = await make_service(client, "web", [{"name": "http", "port": 80, "targetPort": 8080},
                                             {"name": "metrics", "port": 9100, "protocol": "UDP"}])
    await set_endpoints(client, "web", ready("10.1.0.2"), [{"name": "http", "port": 8080}])
    db = await make_service(client, "db", [{"name": "pg", "port": 5432}], clusterIP="None")
    await set_endpoints(client, "db", [*ready("10.1.0.5", hostname="db-0"), *ready("10.1.0.6"),
                                       {"addresses": ["10.1.0.7"], "conditions": {"ready": False}}],
                        [{"name": "pg", "port": 5432, "protocol": "TCP"}])
    ext = await make_service(client, "ext", [], type="ExternalName", externalName="db.example.org")
    try:
        dns = await client.get(SERVICES, "kube-dns", "kube-system")
    except ApiNotFound:  # the server makes it at start; older servers did not
        dns = await client.create(SERVICES, {"metadata": {"name": "kube-dns"}, "spec": {
            "clusterIP": DNS_IP, "ports": [{"name": "dns", "port": 53, "protocol": "UDP"},
                                           {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]}}, "kube-system")
    return {"web": web, "db": db, "ext": ext, "dns": dns}


@pytest_asyncio.fixture
async def zone(informers: SharedInformers, services: dict[str, dict]) -> ClusterZone:
    z = ClusterZone(informers.informer(SERVICES), informers.informer(ENDPOINT_SLICES))
    for informer in (z.services, z.slices):
        informer.start()
        await informer.wait_synced()
    await until(lambda: len(z._endpoints(services["db"])) == 2)
    return z


def ips(answer: Answer) -> list[str]:
    return [socket.inet_ntoa(r.rdata) for r in answer.answers if r.rtype == A]


async def test_service_names(zone: ClusterZone, services: dict[str, dict]) -> None:
    web_ip = services["web"]["spec"]["clusterIP"]
    assert ips(zone.answer(Question("web.default.svc.cluster.local", A))) == [web_ip]
    assert ips(zone.answer(Question("WEB.Default.SVC.cluster.local.", A))) == [web_ip]
    # headless: the ready endpoints, and each by its hostname or its dashed address
    assert ips(zone.answer(Question("db.default.svc.cluster.local", A))) == ["10.1.0.5", "10.1.0.6"]
    assert ips(zone.answer(Question("db-0.db.default.svc.cluster.local", A))) == ["10.1.0.5"]
    assert ips(zone.answer(Question("10-1-0-6.db.default.svc.cluster.local", A))) == ["10.1.0.6"]
    assert zone.answer(Question("10-1-0-7.db.default.svc.cluster.local", A)).rcode == NXDOMAIN  # not ready
    [cname] = zone.answer(Question("ext.default.svc.cluster.local", A)).answers
    assert (cname.rtype, read_name(cname.rdata, 0)[0]) == (CNAME, "db.example.org")
    assert ips(zone.answer(Question("10-9-8-7.default.pod.cluster.local", A))) == ["10.9.8.7"]


async def test_srv_and_ptr(zone: ClusterZone, services: dict[str, dict]) -> None:
    answer = zone.answer(Question("_http._tcp.web.default.svc.cluster.local", SRV))
    [srv] = answer.answers
    priority, _weight, port = struct.unpack_from("!HHH", srv.rdata)
    assert (priority, port, read_name(srv.rdata, 6)[0]) == (0, 80, "web.default.svc.cluster.local")
    assert [r.name for r in answer.additional] == ["web.default.svc.cluster.local"]
    assert zone.answer(Question("_metrics._udp.web.default.svc.cluster.local", SRV)).answers
    assert zone.answer(Question("_metrics._tcp.web.default.svc.cluster.local", SRV)).rcode == NXDOMAIN
    headless = zone.answer(Question("_pg._tcp.db.default.svc.cluster.local", SRV))
    targets = sorted(read_name(r.rdata, 6)[0] for r in headless.answers)
    assert targets == ["10-1-0-6.db.default.svc.cluster.local", "db-0.db.default.svc.cluster.local"]
    assert sorted(ips(type(headless)(answers=headless.additional))) == ["10.1.0.5", "10.1.0.6"]
    web_ip = services["web"]["spec"]["clusterIP"]
    reverse = ".".join(reversed(web_ip.split("."))) + ".in-addr.arpa"
    [ptr] = zone.answer(Question(reverse, PTR)).answers
    assert read_name(ptr.rdata, 0)[0] == "web.default.svc.cluster.local"
    assert zone.answer(Question("1.0.0.127.in-addr.arpa", PTR)).rcode == REFUSED


async def test_negative_answers(zone: ClusterZone) -> None:
    nodata = zone.answer(Question("web.default.svc.cluster.local", AAAA))
    assert (nodata.rcode, nodata.answers, [r.rtype for r in nodata.authority]) == (0, [], [SOA])
    for name in ("nope.default.svc.cluster.local", "web.nons.svc.cluster.local", "a.b.c.d.e.cluster.local"):
        answer = zone.answer(Question(name, A))
        assert (answer.rcode, [r.rtype for r in answer.authority]) == (NXDOMAIN, [SOA]), name
    assert zone.answer(Question("default.svc.cluster.local", A)).rcode == 0  # exists, no records
    for outside in ("example.com", "cluster.local.example.com", "localhost"):
        answer = zone.answer(Question(outside, A))
        assert (answer.rcode, answer.authoritative) == (REFUSED, False)


# --- real resolvers, through the proxy ------------------------------------------------------------------------


@pytest_asyncio.fixture
async def served(lab: NetLab, zone: ClusterZone, informers: SharedInformers) -> AsyncIterator[DnsServer]:
    """The lab's client resolving through 10.43.0.10 → the proxy's DNAT → the server on the node's bridge
    address, port 53 (sockets made inside the node namespace)."""
    if "client" not in lab.hosts:
        lab.add_host("client")
        lab.resolv_conf("client", RESOLV)
    server = DnsServer(zone, GATEWAY, 53)
    await server.start(lab.bound_sockets("node", GATEWAY, 53))
    options = ProxyOptions("n1", table="skiff-dnstest", nft_command=["ip", "netns", "exec", lab.node, "nft"],
                           local=LocalTarget("kube-system", "kube-dns", GATEWAY, 53))
    proxy = ServiceProxy(informers.informer(SERVICES), informers.informer(ENDPOINT_SLICES), options)
    await proxy.start()
    try:
        yield server
    finally:
        await proxy.stop()
        await server.stop()


async def run(lab: NetLab, *command: str) -> tuple[int, str]:
    result = await asyncio.to_thread(lab.run, "client", *command, check=False, timeout=20)
    return result.returncode, result.stdout + result.stderr


async def test_busybox_nslookup(served: DnsServer, lab: NetLab, services: dict[str, dict]) -> None:
    web_ip = services["web"]["spec"]["clusterIP"]
    code, out = await run(lab, "busybox", "nslookup", "web.default.svc.cluster.local")
    assert code == 0 and f"Address: {web_ip}" in out, out
    code, out = await run(lab, "busybox", "nslookup", "-type=srv", "_http._tcp.web.default.svc.cluster.local")
    assert code == 0 and "web.default.svc.cluster.local" in out and " 80 " in out, out
    code, out = await run(lab, "busybox", "nslookup", "nope.default.svc.cluster.local")
    assert code != 0 and "NXDOMAIN" in out, out
    code, out = await run(lab, "busybox", "nslookup", "example.com")
    assert code != 0 and "REFUSED" in out, out


async def test_glibc_search_path(served: DnsServer, lab: NetLab, services: dict[str, dict]) -> None:
    """A pod's resolv.conf: short names resolve through the search path (ndots:5), as in a pod."""
    script = ("import socket, sys\n"
              "for name in sys.argv[1:]:\n"
              "    try: print(name, socket.gethostbyname(name))\n"
              "    except OSError as e: print(name, 'error', e.args[0])\n")
    _, out = await run(lab, sys.executable, "-c", script, "web", "web.default", "db-0.db",
                          "kube-dns.kube-system", "nope")
    lines = dict(line.split(" ", 1) for line in out.splitlines())
    assert lines["web"] == lines["web.default"] == services["web"]["spec"]["clusterIP"], out
    assert lines["db-0.db"] == "10.1.0.5"
    assert lines["kube-dns.kube-system"] == DNS_IP
    assert lines["nope"].startswith("error"), out


async def test_tcp_query(served: DnsServer, lab: NetLab, services: dict[str, dict]) -> None:
    def ask() -> bytes:
        with socket.create_connection((DNS_IP, 53), timeout=5) as conn:
            data = query("db.default.svc.cluster.local", A, qid=7)
            conn.sendall(struct.pack("!H", len(data)) + data)
            size = struct.unpack("!H", conn.recv(2))[0]
            reply = b""
            while len(reply) < size:
                reply += conn.recv(size - len(reply))
            return reply

    reply = await asyncio.to_thread(lab.in_netns, "client", ask)
    qid, flags, _, ancount, _, _ = struct.unpack_from("!HHHHHH", reply)
    assert (qid, flags & 0xF, ancount) == (7, 0, 2)
    assert socket.inet_aton("10.1.0.5") in reply and socket.inet_aton("10.1.0.6") in reply


async def test_large_answer_truncated_then_over_tcp(served: DnsServer, lab: NetLab, client: ApiClient,
                                                    zone: ClusterZone) -> None:
    """80 endpoints do not fit 512 bytes: the UDP answer is truncated, glibc asks again over TCP, gets all."""
    addresses = [f"10.2.0.{i}" for i in range(1, 81)]
    many = await make_service(client, "many", [{"name": "http", "port": 80}], clusterIP="None")
    await set_endpoints(client, "many", ready(*addresses), [{"name": "http", "port": 80}])
    await until(lambda: len(zone._endpoints(many)) == 80)
    script = ("import socket\n"
              "print('\\n'.join(sorted({a[4][0] for a in socket.getaddrinfo('many', 80, socket.AF_INET, "
              "socket.SOCK_STREAM)})))\n")
    code, out = await run(lab, sys.executable, "-c", script)
    assert code == 0 and sorted(out.split()) == sorted(addresses), out
