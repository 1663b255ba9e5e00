"""The userland proxy of published ports (``skiff.engine.network.proxy``) in process, on loopback: bytes relayed
intact both ways under flow control, half-closes passed on, a refused upstream, and ``close()`` ending live
connections and freeing the port. Through a real engine it is exercised by test_networks.py and
test_nginx_mirror.py (curl to ``localhost:8080``)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import threading
from collections.abc import Callable

import pytest

from skiff.engine.network import proxy

pytestmark = pytest.mark.asyncio


class Upstream:
    """A loopback TCP server handling each connection on a thread with ``handler(conn)``."""

    def __init__(self, handler: Callable[[socket.socket], None]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()
        self.handler = handler
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            self.handler(conn)

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(5)


def read_to_end(s: socket.socket) -> bytes:
    got = bytearray()
    while chunk := s.recv(1 << 20):
        got += chunk
    return bytes(got)


def closed_by_peer(s: socket.socket) -> bool:
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


async def started(target: tuple[str, int]) -> proxy.PortProxy:
    relay = proxy.PortProxy("tcp", proxy.bind("tcp", "127.0.0.1", 0), target)
    await relay.start()
    return relay


async def test_bytes_both_ways_and_the_half_close_are_relayed() -> None:
    answer = os.urandom(32 << 20)  # far beyond the transports' buffers: reading pauses and resumes

    def digest_then_answer(conn: socket.socket) -> None:
        received = read_to_end(conn)  # ends at the client's half-close, passed on by the proxy
        conn.sendall(hashlib.sha256(received).hexdigest().encode() + b"\n" + answer)

    upstream = Upstream(digest_then_answer)
    relay = await started(upstream.address)
    request = os.urandom(8 << 20)

    def client() -> bytes:
        with socket.create_connection(("127.0.0.1", relay.port), timeout=30) as s:
            s.sendall(request)
            s.shutdown(socket.SHUT_WR)
            return read_to_end(s)

    try:
        line, rest = (await asyncio.to_thread(client)).split(b"\n", 1)
        assert line.decode() == hashlib.sha256(request).hexdigest()
        assert rest == answer
    finally:
        await relay.close()
        upstream.close()


async def test_a_refused_upstream_closes_the_client_connection() -> None:
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        closed_port = placeholder.getsockname()[1]  # nothing listens there once this is closed
    relay = await started(("127.0.0.1", closed_port))

    def client() -> bool:
        with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as s:
            return closed_by_peer(s)

    try:
        assert await asyncio.to_thread(client)
    finally:
        await relay.close()


async def test_close_ends_live_connections_and_frees_the_port() -> None:
    hold = threading.Event()

    def wait(conn: socket.socket) -> None:
        hold.wait(10)

    upstream = Upstream(wait)
    relay = await started(upstream.address)
    port = relay.port
    client = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        await asyncio.sleep(0.2)  # the relay has connected upstream
        assert len(relay._relays) == 1
        await relay.close()
        assert relay._relays == set()
        assert await asyncio.to_thread(closed_by_peer, client)
        with socket.socket() as s:  # the listening socket is gone: the port can be bound again
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
    finally:
        hold.set()
        client.close()
        upstream.close()
