"""A lean HTTP/1.1 client for the API's unary requests: keep-alive connections over asyncio protocols.

aiohttp costs about 250 µs of client CPU per request, most of it in machinery the control plane does not
need (cookie jars, redirects, tracing, multidict headers, payload objects). The scheduler binds a thousand
pods a second through this client, so unary requests go through this minimal implementation instead:
requests are formatted as bytes in one go, responses are parsed from one buffer (status line, the three
headers that matter, a Content-Length or chunked body). Watches, which are long streams and rare, stay on
aiohttp.

A request on a reused connection that the server closed while it sat idle (it fails before a single byte of
the answer arrives) is retried once on a new connection, as browsers and aiohttp do.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque


class ConnectionClosed(ConnectionError):
    """The server closed the connection before the whole answer arrived."""


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[tuple[int, bytes, bool]] | None = None
        self._head: tuple[int, int | None, bool, bool] | None = None  # status, length, chunked, keep-alive
        self.received_any = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionClosed(str(exc) if exc else "connection closed by the server"))

    def send(self, data: bytes) -> asyncio.Future[tuple[int, bytes, bool]]:
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self._buffer.clear()
        self._head = None
        self.received_any = False
        self.transport.write(data)
        return self._waiter

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        self._buffer += data
        if self._head is None and not self._parse_head():
            return
        self._try_finish()

    def _parse_head(self) -> bool:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        lines = bytes(self._buffer[:end]).split(b"\r\n")
        del self._buffer[:end + 4]
        status = int(lines[0].split(b" ", 2)[1])
        length, chunked, keep_alive = None, False, True
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                keep_alive = b"close" not in value.lower()
        self._head = (status, length, chunked, keep_alive)
        return True

    def _try_finish(self) -> None:
        assert self._head is not None and self._waiter is not None
        status, length, chunked, keep_alive = self._head
        if chunked:
            body = _dechunk(self._buffer)
            if body is None:
                return
        elif length is not None:
            if len(self._buffer) < length:
                return
            body = bytes(self._buffer[:length])
        else:
            return  # a body that ends with the connection: connection_lost finishes it (never sent by the server)
        if not self._waiter.done():
            self._waiter.set_result((status, body, keep_alive))


def _dechunk(buffer: bytearray) -> bytes | None:
    """The body of a complete chunked message in ``buffer`` (None while incomplete)."""
    body = bytearray()
    pos = 0
    while True:
        end = buffer.find(b"\r\n", pos)
        if end < 0:
            return None
        size = int(bytes(buffer[pos:end]).split(b";", 1)[0], 16)
        start = end + 2
        if size == 0:
            return bytes(body) if buffer.find(b"\r\n", start) >= 0 else None
        if len(buffer) < start + size + 2:
            return None
        body += buffer[start:start + size]
        pos = start + size + 2


class ConnectionPool:
    """Up to ``limit`` keep-alive connections to one server; requests wait for a free one."""

    def __init__(self, host: str, port: int, ssl_context: ssl.SSLContext | None, limit: int = 64,
                 timeout: float = 60.0) -> None:
        self.host, self.port, self.ssl = host, port, ssl_context
        self.limit = limit
        self.timeout = timeout
        self._idle: deque[_Connection] = deque()
        self._open = 0
        self._waiters: deque[asyncio.Future[_Connection | None]] = deque()
        self._closed = False

    async def request(self, head: bytes, body: bytes | None) -> tuple[int, bytes]:
        """Send ``head`` (the request line and headers, ending in a blank line) and ``body``;
        ``(status, body)`` of the answer."""
        data = head + body if body else head
        for attempt in (0, 1):
            connection, reused = await self._acquire()
            try:
                status, answer, keep_alive = await asyncio.wait_for(connection.send(data), self.timeout)
            except ConnectionClosed:
                self._discard(connection)
                if reused and attempt == 0 and not connection.received_any:
                    continue  # closed by the server while idle: retry once on a fresh connection
                raise
            except BaseException:
                self._discard(connection)
                raise
            self._release(connection, keep_alive)
            return status, answer
        raise AssertionError("unreachable")

    async def _acquire(self) -> tuple[_Connection, bool]:
        while True:
            if self._closed:
                raise ConnectionClosed("the client is closed")
            while self._idle:
                connection = self._idle.pop()
                if not connection.closed:
                    return connection, True
                self._open -= 1
            if self._open < self.limit:
                self._open += 1
                try:
                    return await self._connect(), False
                except BaseException:
                    self._open -= 1
                    self._wake_one()  # the slot is free again: a waiting request may try it
                    raise
            waiter: asyncio.Future[_Connection | None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                handed = await asyncio.wait_for(waiter, self.timeout)
            except BaseException:
                if waiter.done() and not waiter.cancelled() and waiter.result() is not None:
                    self._release(waiter.result(), True)  # handed over as we gave up: pass it on
                raise
            if handed is not None:
                return handed, True
            # None: a connection went away; loop to open one in its place

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        _, connection = await asyncio.wait_for(
            loop.create_connection(_Connection, self.host, self.port, ssl=self.ssl,
                                   server_hostname=self.host if self.ssl else None), self.timeout)
        return connection

    def _release(self, connection: _Connection, keep_alive: bool) -> None:
        if not keep_alive or connection.closed or self._closed:
            self._discard(connection)
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        self._idle.append(connection)

    def _discard(self, connection: _Connection) -> None:
        if connection.transport is not None:
            connection.transport.close()
        self._open -= 1
        self._wake_one()

    def close(self) -> None:
        self._closed = True
        while self._idle:
            connection = self._idle.pop()
            if connection.transport is not None:
                connection.transport.close()
        self._open = 0
        while self._waiters:
            self._wake_one()  # they find the pool closed
