"""The userland proxy of published ports (docker-proxy's job), on the daemon's event loop.

DNAT cannot serve connections to 127.0.0.1 (the kernel does not route loopback traffic to another
interface), so for each published port the daemon listens on the host address itself and relays to the
container's address: TCP connection by connection (half-closes passed on), UDP by client address, with
an idle timeout. The listening socket is also what reserves the port: another process cannot take it, and
a port taken already is refused with dockerd's words.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket

from skiff import errors

log = logging.getLogger(__name__)

UDP_IDLE = 90.0  # seconds a UDP flow lives without traffic (the kernel's conntrack default for streams)


def bind(proto: str, host_ip: str, host_port: int) -> socket.socket:
    """A socket bound to ``host_ip:host_port`` (port 0: any free port), listening for TCP."""
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(socket.AF_INET, kind)
    try:
        if proto == "tcp":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Go's listeners: TIME_WAIT is fine
        sock.bind((host_ip or "0.0.0.0", host_port))
        if proto == "tcp":
            sock.listen(511)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise errors.Conflict(f"Bind for {host_ip or '0.0.0.0'}:{host_port} failed: port is already allocated"
                                  ) from None
        raise errors.SystemFailure(f"cannot listen on {host_ip or '0.0.0.0'}:{host_port}/{proto}: {e.strerror}"
                                   ) from None
    sock.setblocking(False)
    return sock


class PortProxy:
    """Relays one bound socket to ``target``; ``start()`` begins serving, ``close()`` ends everything."""

    def __init__(self, proto: str, sock: socket.socket, target: tuple[str, int]) -> None:
        self.proto = proto
        self.sock = sock
        self.target = target
        self.port = sock.getsockname()[1]
        self._server: asyncio.AbstractServer | None = None
        self._udp: _UdpRelay | None = None
        self._relays: set[_TcpSide] = set()  # the client side of every live TCP connection

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.proto == "tcp":
            self._server = await loop.create_server(lambda: _TcpSide(self), sock=self.sock)
        else:
            relay = _UdpRelay(self.target)
            await loop.create_datagram_endpoint(lambda: relay, sock=self.sock)
            self._udp = relay

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for side in list(self._relays):
                side.abort()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
        if self._udp is not None:
            self._udp.close()
        self.sock.close()


class _TcpSide(asyncio.Protocol):
    """One side of a relayed TCP connection, as a protocol on the event loop's transports: what arrives is
    written straight to the other side's transport (no stream objects or task switches per chunk: a relay
    on streams moved less than half the bytes). Flow control: while the other side's write buffer is full,
    this side stops reading. A half-close is passed on; the connection ends when both sides have ended."""

    def __init__(self, proxy: PortProxy | None, peer: _TcpSide | None = None) -> None:
        self.proxy = proxy  # set on the client side only
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self.ended = False  # no more data from this side (EOF or closed)
        self._opening: asyncio.Future | None = None

    # the client side: open the upstream connection first, reading nothing meanwhile

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.proxy is not None:
            self.proxy._relays.add(self)
            self.transport.pause_reading()
            self._opening = asyncio.ensure_future(self._open_upstream())

    async def _open_upstream(self) -> None:
        assert self.proxy is not None and self.transport is not None
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await loop.create_connection(lambda: _TcpSide(None, self), *self.proxy.target)
        except OSError as e:
            log.debug("proxy to %s:%s: %s", *self.proxy.target, e)
            self.abort()
            return
        self.peer = upstream
        if self.transport.is_closing():
            upstream.abort()
        else:
            self.transport.resume_reading()

    # relaying

    def data_received(self, data: bytes) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)

    def eof_received(self) -> bool:
        self.ended = True
        peer = self.peer
        if peer is None or peer.transport is None or peer.ended:
            return False  # both directions are done: close
        if peer.transport.can_write_eof():
            peer.transport.write_eof()  # pass the half-close on: the other side may still answer
        return True

    def pause_writing(self) -> None:  # our transport's buffer is full: stop reading the side that fills it
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None and not self.peer.transport.is_closing():
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended = True
        if self.proxy is not None:
            self.proxy._relays.discard(self)
        if self.peer is not None and self.peer.transport is not None:
            if exc is None:
                self.peer.transport.close()  # what it still has buffered is sent first
            else:
                self.peer.transport.abort()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class _UdpRelay(asyncio.DatagramProtocol):
    """The host side of a UDP port: one upstream socket per client address."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.transport: asyncio.DatagramTransport | None = None
        self.flows: dict[tuple[str, int], _UdpFlow] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        flow = self.flows.get(addr)
        if flow is None:
            flow = _UdpFlow(self, addr)
            self.flows[addr] = flow
            flow.opening = asyncio.ensure_future(flow.open(data))
        else:
            flow.send(data)

    def close(self) -> None:
        for flow in list(self.flows.values()):
            flow.close()
        if self.transport is not None:
            self.transport.close()


class _UdpFlow(asyncio.DatagramProtocol):
    def __init__(self, relay: _UdpRelay, client: tuple[str, int]) -> None:
        self.relay, self.client = relay, client
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: list[bytes] = []
        self.idle: asyncio.TimerHandle | None = None
        self.opening: asyncio.Task | None = None

    async def open(self, first: bytes) -> None:
        self.pending.append(first)
        loop = asyncio.get_running_loop()
        try:
            await loop.create_datagram_endpoint(lambda: self, remote_addr=self.relay.target)
        except OSError:
            self.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        for data in self.pending:
            self.transport.sendto(data)
        self.pending.clear()
        self._touch()

    def send(self, data: bytes) -> None:
        if self.transport is None:
            self.pending.append(data)
        else:
            self.transport.sendto(data)
            self._touch()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.relay.transport is not None:
            self.relay.transport.sendto(data, self.client)
        self._touch()

    def _touch(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        self.idle = asyncio.get_running_loop().call_later(UDP_IDLE, self.close)

    def close(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        if self.transport is not None:
            self.transport.close()
        self.relay.flows.pop(self.client, None)
