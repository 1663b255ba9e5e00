"""``DnsServer``: the cluster zone over UDP and TCP (asyncio, one socket of each on one address and port).

UDP answers larger than the client's size (512, or its EDNS size up to 1232) are truncated so the client
retries over TCP; TCP carries length-prefixed messages, several per connection, and a connection idle for
``tcp_idle`` seconds is closed. A query that cannot be parsed gets FORMERR, an opcode other than QUERY gets
NOTIMP, a class other than IN gets REFUSED; nothing is ever forwarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct

from skiff.cluster.dns.zone import ClusterZone
from skiff.dnswire import (
    FORMERR,
    IN,
    NOTIMP,
    REFUSED,
    Answer,
    FormatError,
    encode_response,
    error_response,
    parse_query,
)

log = logging.getLogger(__name__)


def respond(zone: ClusterZone, data: bytes, *, udp: bool) -> bytes | None:
    """The bytes answering ``data`` (None: not even an id to answer to)."""
    try:
        query = parse_query(data)
    except FormatError as exc:
        log.debug("dns: malformed query: %s", exc)
        return error_response(data, FORMERR)
    if query.opcode != 0:
        answer = Answer(NOTIMP, authoritative=False)
    elif query.question.qclass != IN:
        answer = Answer(REFUSED, authoritative=False)
    else:
        answer = zone.answer(query.question)
    return encode_response(query, answer, query.max_udp_size if udp else 65535)


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, zone: ClusterZone) -> None:
        self.zone = zone
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            reply = respond(self.zone, data, udp=True)
        except Exception:  # a bug must not stop the server: the client gets no answer and retries
            log.exception("dns: answering %s failed", addr)
            return
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


class DnsServer:
    def __init__(self, zone: ClusterZone, host: str, port: int = 53, *, tcp_idle: float = 10.0) -> None:
        self.zone = zone
        self.host = host
        self.port = port
        self.tcp_idle = tcp_idle
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self, sockets: tuple[socket.socket, socket.socket] | None = None) -> None:
        """Bind both sockets (port 0: the kernel picks one for UDP, TCP takes the same), or serve ``sockets``
        (UDP, listening TCP) made elsewhere, e.g. inside another network namespace."""
        loop = asyncio.get_running_loop()
        if sockets is not None:
            udp_sock, tcp_sock = sockets
            self._udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(self.zone), sock=udp_sock)
            self._tcp = await asyncio.start_server(self._serve_tcp, sock=tcp_sock)
            self.host, self.port = udp_sock.getsockname()[:2]
            return
        self._udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(self.zone), local_addr=(self.host, self.port))
        self.port = self._udp.get_extra_info("sockname")[1]
        try:
            self._tcp = await asyncio.start_server(self._serve_tcp, self.host, self.port, reuse_address=True)
        except OSError:
            self._udp.close()
            raise

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            for task in list(self._connections):
                task.cancel()
            await self._tcp.wait_closed()
            self._tcp = None

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while True:
                size = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), self.tcp_idle))[0]
                data = await asyncio.wait_for(reader.readexactly(size), self.tcp_idle)
                reply = respond(self.zone, data, udp=False)
                if reply is None:
                    break
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        except Exception:
            log.exception("dns: a TCP client failed")
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
