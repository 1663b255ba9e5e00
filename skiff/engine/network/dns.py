"""The embedded DNS resolver of containers on user-defined networks (Docker's 127.0.0.11).

For each such container the daemon opens a UDP and a TCP socket on 127.0.0.11:53 *inside* the container's
network namespace (from a thread that enters it, see ``sandbox``) and serves them from its event loop. It
answers A and PTR queries for the containers that share a network with the asker (names, short ids,
network aliases, ``name.network``; several containers with one alias are all returned, shuffled: the
round robin) and forwards every other query to the upstream servers (the container's ``--dns`` or the
host's resolv.conf) from the host's namespace. Reverse queries for loopback and for our subnets are
answered here and never forwarded.

The wire format is the small part of RFC 1035 a stub resolver needs; no caching (answers change as
containers come and go).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
import struct
from collections.abc import Callable

from skiff import netns
from skiff.dnswire import (
    FORMERR,
    IN,
    NOERROR,
    NXDOMAIN,
    PTR,
    SERVFAIL,
    Answer,
    FormatError,
    Query,
    Record,
    a_rdata,
    encode_name,
    encode_response,
    error_response,
    parse_query,
)
from skiff.dnswire import A as TYPE_A

log = logging.getLogger(__name__)

ADDRESS = "127.0.0.11"
PORT = 53
TTL = 600
FORWARD_TIMEOUT = 3.0

# (asker's container id, lower-case name without the final dot) -> addresses; None: not one of ours
Lookup = Callable[[str, str], list[str] | None]
# (asker's container id, address) -> a name; None: not one of ours
Reverse = Callable[[str, str], str | None]


def _answer(query: Query, rcode: int, records: list[tuple[int, bytes]] | None = None) -> bytes:
    """A response to ``query``; ``records`` are (type, rdata) for the question's name."""
    name = query.question.name
    answer = Answer(rcode, authoritative=True, recursion_available=True,
                    answers=[Record(name, rtype, TTL, rdata) for rtype, rdata in records or []])
    return encode_response(query, answer)


def reverse_address(name: str) -> str | None:
    """``4.3.2.1.in-addr.arpa`` -> ``1.2.3.4``."""
    suffix = ".in-addr.arpa"
    if not name.endswith(suffix):
        return None
    parts = name[: -len(suffix)].split(".")
    if len(parts) != 4:
        return None
    try:
        return str(ipaddress.IPv4Address(".".join(reversed(parts))))
    except ValueError:
        return None


class Resolver:
    """The answering logic, shared by every container's server."""

    def __init__(self, lookup: Lookup, reverse: Reverse, local_subnets: Callable[[], list[ipaddress.IPv4Network]]
                 ) -> None:
        self.lookup = lookup
        self.reverse = reverse
        self.local_subnets = local_subnets

    def answer_locally(self, asker: str, query: Query) -> bytes | None:
        """The answer, or None when the query must be forwarded."""
        question = query.question
        if question.qclass != IN:
            return None
        name = question.name.lower()
        if question.qtype == PTR:
            address = reverse_address(name)
            if address is None:
                return None
            found = self.reverse(asker, address)
            if found is not None:
                return _answer(query, NOERROR, [(PTR, encode_name(found))])
            ip = ipaddress.IPv4Address(address)
            if ip.is_loopback or any(ip in subnet for subnet in self.local_subnets()):
                return _answer(query, NXDOMAIN)
            return None
        addresses = self.lookup(asker, name)
        if addresses is None:
            return None
        if question.qtype != TYPE_A:
            return _answer(query, NOERROR)  # the name is ours, it just has no such record
        shuffled = random.sample(addresses, len(addresses))
        return _answer(query, NOERROR, [(TYPE_A, a_rdata(a)) for a in shuffled])


class DnsServer:
    """127.0.0.11:53 (UDP and TCP) in one container's namespace."""

    def __init__(self, container_id: str, netns_path: str, resolver: Resolver, upstreams: list[str],
                 forward: bool) -> None:
        self.container_id = container_id
        self.netns_path = netns_path
        self.resolver = resolver
        self.upstreams = upstreams
        self.forward = forward
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        udp, tcp = await netns.on_own_thread_async(lambda: netns.enter(self.netns_path, _open_sockets))
        loop = asyncio.get_running_loop()
        try:
            self._udp, _ = await loop.create_datagram_endpoint(lambda: _UdpServer(self), sock=udp)
            self._tcp = await asyncio.start_server(self._serve_tcp, sock=tcp)
        except BaseException:
            udp.close()
            tcp.close()
            raise

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._tcp.wait_closed(), 1.0)

    async def handle(self, data: bytes, tcp: bool = False) -> bytes | None:
        try:
            query = parse_query(data)
        except FormatError:
            return error_response(data, FORMERR)
        local = self.resolver.answer_locally(self.container_id, query)
        if local is not None:
            return local
        if not self.forward or not self.upstreams:
            return _answer(query, SERVFAIL)
        answer = await (_forward_tcp if tcp else _forward_udp)(data, self.upstreams)
        return answer if answer is not None else _answer(query, SERVFAIL)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                size = struct.unpack(">H", await reader.readexactly(2))[0]
                answer = await self.handle(await reader.readexactly(size), tcp=True)
                if answer is None:
                    break
                writer.write(struct.pack(">H", len(answer)) + answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            writer.close()


def _open_sockets() -> tuple[socket.socket, socket.socket]:
    """Run inside the container's namespace: the two listening sockets of 127.0.0.11:53."""
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        udp.bind((ADDRESS, PORT))
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind((ADDRESS, PORT))
        tcp.listen(64)
    except BaseException:
        udp.close()
        tcp.close()
        raise
    udp.setblocking(False)
    tcp.setblocking(False)
    return udp, tcp


class _UdpServer(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None
        self.replies: set[asyncio.Task] = set()  # queries being answered (forwarding takes a while)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        task = asyncio.ensure_future(self._reply(data, addr))
        self.replies.add(task)
        task.add_done_callback(self.replies.discard)

    async def _reply(self, data: bytes, addr: tuple[str, int]) -> None:
        answer = await self.server.handle(data)
        if answer is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(answer, addr)


class _OneShot(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if not self.answer.done():
            self.answer.set_result(data)


async def _forward_udp(data: bytes, upstreams: list[str]) -> bytes | None:
    loop = asyncio.get_running_loop()
    for server in upstreams:
        transport, protocol = await loop.create_datagram_endpoint(_OneShot, remote_addr=(server, PORT))
        try:
            transport.sendto(data)
            return await asyncio.wait_for(protocol.answer, FORWARD_TIMEOUT)
        except (TimeoutError, OSError):
            continue
        finally:
            transport.close()
    return None


async def _forward_tcp(data: bytes, upstreams: list[str]) -> bytes | None:
    for server in upstreams:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(server, PORT), FORWARD_TIMEOUT)
        except (TimeoutError, OSError):
            continue
        try:
            writer.write(struct.pack(">H", len(data)) + data)
            size = struct.unpack(">H", await asyncio.wait_for(reader.readexactly(2), FORWARD_TIMEOUT))[0]
            return await asyncio.wait_for(reader.readexactly(size), FORWARD_TIMEOUT)
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            continue
        finally:
            writer.close()
    return None


def upstream_servers(resolv_conf_text: str, explicit: list[str]) -> list[str]:
    """Where forwarded queries go: ``--dns`` servers, else the host's (IPv4) nameservers."""
    if explicit:
        return [s for s in explicit if _ipv4(s)]
    servers = []
    for line in resolv_conf_text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver" and _ipv4(parts[1]):
            servers.append(parts[1])
    return servers


def _ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
        return True
    except ValueError:
        return False
