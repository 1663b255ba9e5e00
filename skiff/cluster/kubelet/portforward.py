"""``kubectl port-forward``: TCP connections to a port of a pod, carried over the kubelet API's WebSocket.

The connection is made from inside the pod's network namespace, to ``localhost:<port>`` there (as kube's
runtimes do), so a server listening on the pod's loopback only is reachable too. The namespace is the sandbox's
(``/proc/<its pid>/ns/net``); a thread of its own enters it and makes the socket (``skiff.netns.enter``), which
stays in that namespace and is then served from the event loop.

Two protocols, chosen by the WebSocket subprotocol:

- ``SPDY/3.1+portforward.k8s.io`` (kubectl 1.31+): SPDY inside the WebSocket (``spdy.Session``). For every local
  connection kubectl opens an ``error`` stream, then a ``data`` stream, both with ``port`` and ``requestID``
  headers; the data stream carries the bytes both ways, and the error stream says why the connection failed
  (or just ends).
- ``v4.channel.k8s.io`` / ``portforward.k8s.io`` (the Python client): ``?ports=P1&ports=P2``, one connection per
  port for the life of the WebSocket; port i uses channel 2i for data and 2i+1 for errors; each message starts
  with its channel byte, and the first message of each channel carries the port (16 bits, little-endian).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from typing import Any

import aiohttp
from aiohttp import web

from skiff import netns
from skiff.aiotasks import cancel_and_wait
from skiff.cluster.kubelet import spdy

log = logging.getLogger(__name__)
SPDY_PROTOCOL = "SPDY/3.1+portforward.k8s.io"
CHANNEL_PROTOCOLS = ("v4.channel.k8s.io", "portforward.k8s.io")
PROTOCOLS = (SPDY_PROTOCOL, *CHANNEL_PROTOCOLS)
CONNECT_TIMEOUT = 10.0
READ_SIZE = 64 * 1024


class PortForwardError(Exception):
    """A connection to the pod's port could not be made; the message is what the client is told."""


def parse_port(text: str | None) -> int:
    try:
        port = int(text or "")
    except ValueError:
        raise PortForwardError(f"invalid port {text!r}") from None
    if not 0 < port < 65536:
        raise PortForwardError(f"invalid port {port}: must be between 1 and 65535")
    return port


# --- reaching the pod's port --------------------------------------------------------------------------------

def _connect_inside(port: int) -> socket.socket:
    """A TCP socket connected to localhost:``port`` in this thread's network namespace (blocking)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        sock.connect(("127.0.0.1", port))
    except OSError as exc:
        sock.close()
        raise PortForwardError(f"failed to connect to localhost:{port} inside the pod: {exc.strerror or exc}") \
            from None
    sock.setblocking(False)
    return sock


async def connect(sandbox_pid: int, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to localhost:``port`` inside the sandbox's network namespace."""
    try:
        sock = await asyncio.to_thread(netns.enter, f"/proc/{sandbox_pid}/ns/net", lambda: _connect_inside(port))
    except PortForwardError:
        raise
    except OSError as exc:  # the namespace is gone (the sandbox exited meanwhile)
        raise PortForwardError(f"cannot enter the pod's network namespace: {exc.strerror or exc}") from None
    return await asyncio.open_connection(sock=sock, limit=READ_SIZE)


# --- SPDY (kubectl) -----------------------------------------------------------------------------------------

class SpdyForwarder:
    """Pairs each request's error and data streams and forwards the data stream to the pod's port."""

    def __init__(self, sandbox_pid: int) -> None:
        self.sandbox_pid = sandbox_pid
        self.error_streams: dict[str, spdy.Stream] = {}

    async def serve(self, ws: web.WebSocketResponse) -> None:
        session = spdy.Session(ws.send_bytes, self.on_stream)
        try:
            async for message in ws:
                if message.type == aiohttp.WSMsgType.BINARY:
                    await session.feed(message.data)
                elif message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.ERROR):
                    break
        except (spdy.ProtocolError, ConnectionError):
            pass
        finally:
            session.end()
            await cancel_and_wait(*list(session.tasks))

    async def on_stream(self, stream: spdy.Stream) -> None:
        kind, request_id = stream.headers.get("streamtype"), stream.headers.get("requestid", "")
        if kind == "error":
            self.error_streams[request_id] = stream
            return  # written and closed by its data stream's forwarding
        if kind != "data":
            await stream.close()
            return
        error = self.error_streams.pop(request_id, None)
        try:
            reader, writer = await connect(self.sandbox_pid, parse_port(stream.headers.get("port")))
        except PortForwardError as exc:
            log.info("port-forward: %s", exc)
            if error is not None:
                with contextlib.suppress(ConnectionError):
                    await error.write(str(exc).encode())
            await _close_streams(stream, error)
            return
        try:
            await _pipe(stream, reader, writer)
        finally:
            await _close_streams(stream, error)


async def _close_streams(*streams: spdy.Stream | None) -> None:
    for stream in streams:
        if stream is not None:
            with contextlib.suppress(ConnectionError):
                await stream.close()
            stream.session.remove(stream)


async def _pipe(stream: spdy.Stream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Bytes both ways until the pod's side ends or the client resets the stream."""
    async def upstream() -> None:  # the client's bytes to the pod
        while data := await stream.read():
            writer.write(data)
            await writer.drain()
        if not stream.reset and writer.can_write_eof():
            writer.write_eof()  # the client finished sending; the answer may still come

    async def downstream() -> None:  # the pod's bytes to the client
        while data := await reader.read(READ_SIZE):
            await stream.write(data)

    up, down = asyncio.create_task(upstream()), asyncio.create_task(downstream())
    try:
        pending = {up, down}
        while down in pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if up in done and (stream.reset or up.exception() is not None):
                break
    except (ConnectionError, OSError):
        pass
    finally:
        await _quietly(cancel_and_wait(up, down))
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


async def _quietly(awaitable: Any) -> None:
    with contextlib.suppress(ConnectionError, OSError, spdy.ProtocolError):
        await awaitable


# --- channels (the Python client) ---------------------------------------------------------------------------

async def serve_channels(ws: web.WebSocketResponse, sandbox_pid: int, ports: list[int]) -> None:
    """One connection per port for the life of the WebSocket (kube's v4 port-forward protocol). The WebSocket
    is closed once every port's connection has ended (the client's sockets then read their end)."""
    writers: dict[int, asyncio.StreamWriter] = {}
    pumps = []
    for index, port in enumerate(ports):
        data, error = 2 * index, 2 * index + 1
        for channel in (data, error):
            await ws.send_bytes(bytes([channel]) + struct.pack("<H", port))
        try:
            reader, writer = await connect(sandbox_pid, port)
        except PortForwardError as exc:
            await ws.send_bytes(bytes([error]) + str(exc).encode())
            continue
        writers[data] = writer
        pumps.append(asyncio.create_task(_channel_out(ws, reader, data)))
    if not pumps:  # no port could be reached: the errors are sent, nothing is left to serve
        await _quietly(ws.close())
        return
    incoming = asyncio.create_task(_channels_in(ws, writers))
    try:
        await asyncio.wait([incoming, asyncio.gather(*pumps)], return_when=asyncio.FIRST_COMPLETED)
    finally:
        await _quietly(cancel_and_wait(incoming, *pumps))
        for writer in writers.values():
            writer.close()
        await _quietly(ws.close())


async def _channels_in(ws: web.WebSocketResponse, writers: dict[int, asyncio.StreamWriter]) -> None:
    """The client's messages, each to its port's connection, until the WebSocket ends."""
    with contextlib.suppress(ConnectionError, OSError):
        async for message in ws:
            if message.type != aiohttp.WSMsgType.BINARY:
                continue
            writer = writers.get(message.data[0]) if message.data else None
            if writer is not None and len(message.data) > 1:
                writer.write(message.data[1:])
                await writer.drain()


async def _channel_out(ws: web.WebSocketResponse, reader: asyncio.StreamReader, channel: int) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(READ_SIZE):
            await ws.send_bytes(bytes([channel]) + data)
