"""The server side of a SPDY/3.1 session, as much of it as ``kubectl port-forward`` uses.

kubectl 1.32 opens a WebSocket with the subprotocol ``SPDY/3.1+portforward.k8s.io`` and runs SPDY inside it
(its binary messages are a byte stream); this module turns that byte stream into streams. The client opens
every stream (SYN_STREAM with headers); we answer each with a SYN_REPLY, carry DATA both ways (FLAG_FIN ends
one direction), echo PINGs, and honour RST_STREAM and GOAWAY. Flow control is not enforced by the Go client
(spdystream), so WINDOW_UPDATE and SETTINGS are read and ignored, and we never send them; instead a stream
holding more than ``MAX_BUFFERED`` unread bytes is reset (FLOW_CONTROL_ERROR), which bounds the memory a
session can take without stalling its other streams.

Frames (draft-mbelshe-httpbis-spdy-00, version 3), big-endian::

    control: 1 | version:15 | type:16 | flags:8 | length:24 | payload
    data:    0 | stream-id:31 | flags:8 | length:24 | data

Header blocks (SYN_STREAM, SYN_REPLY, HEADERS) are ``count:32 (name-length:32 name value-length:32 value)*``,
compressed with zlib seeded with the protocol's dictionary, one compression context per direction for the
whole session, each block ending on a sync flush.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import zlib
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

VERSION = 3
SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = 1, 2, 3, 4, 6, 7, 8, 9
FLAG_FIN = 0x01
RST_PROTOCOL_ERROR, RST_INVALID_STREAM, RST_CANCEL, RST_FLOW_CONTROL_ERROR = 1, 2, 5, 7
MAX_DATA = 64 * 1024  # what one DATA frame we send carries, at most
# What one stream may hold that its reader has not taken yet. The client does no flow control, so a stream whose
# reader falls this far behind (a pod not reading what is sent to it) is reset rather than buffered without end.
MAX_BUFFERED = 16 * 1024 * 1024

# The header compression dictionary of SPDY/3 (section 2.6.10.1): these words, each after its 32-bit length,
# then the raw tail below.
_DICTIONARY_WORD_LIST = (
    "options head post put delete trace accept accept-charset accept-encoding accept-language accept-ranges age "
    "allow authorization cache-control connection content-base content-encoding content-language content-length "
    "content-location content-md5 content-range content-type date etag expect expires from host if-match "
    "if-modified-since if-none-match if-range if-unmodified-since last-modified location max-forwards pragma "
    "proxy-authenticate proxy-authorization range referer retry-after server te trailer transfer-encoding upgrade "
    "user-agent vary via warning www-authenticate method get status 200\0OK version HTTP/1.1 url public set-cookie "
    "keep-alive origin"
)
_DICTIONARY_WORDS = _DICTIONARY_WORD_LIST.split()
_DICTIONARY_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized"
    "403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable"
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT"
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,"
    "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)
DICTIONARY = b"".join(struct.pack(">I", len(w)) + w.replace("\0", " ").encode() for w in _DICTIONARY_WORDS) \
    + _DICTIONARY_TAIL.encode()


class ProtocolError(Exception):
    """The peer broke the protocol: the session ends (a GOAWAY is sent first)."""


class Stream:
    """One stream the client opened: its headers, what it sent (``read``), and our half (``write``/``close``)."""

    def __init__(self, session: Session, stream_id: int, headers: dict[str, str]) -> None:
        self.session, self.id, self.headers = session, stream_id, headers
        self._incoming: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.buffered = 0  # bytes received and not read yet
        self.remote_closed = False  # the client sent FLAG_FIN (or reset the stream)
        self.local_closed = False
        self.reset = False

    async def read(self) -> bytes:
        """The next data the client sent; b"" once it has finished (or reset the stream)."""
        if self.remote_closed and self._incoming.empty():
            return b""
        chunk = await self._incoming.get()
        self.buffered -= len(chunk or b"")
        return chunk or b""

    async def write(self, data: bytes) -> None:
        if self.local_closed or self.reset:
            raise ConnectionResetError(f"stream {self.id} is closed")
        for start in range(0, len(data), MAX_DATA):
            await self.session.send(_data_frame(self.id, 0, data[start:start + MAX_DATA]))

    async def close(self) -> None:
        """Our half is done (FLAG_FIN); the client may still send."""
        if not (self.local_closed or self.reset):
            self.local_closed = True
            await self.session.send(_data_frame(self.id, FLAG_FIN, b""))

    def _received(self, data: bytes, fin: bool) -> bool:
        """Take the client's data; False if it would hold more than ``MAX_BUFFERED`` unread (then nothing is
        taken: the caller resets the stream)."""
        if self.remote_closed:
            return True
        if self.buffered + len(data) > MAX_BUFFERED:
            return False
        if data:
            self.buffered += len(data)
            self._incoming.put_nowait(data)
        if fin:
            self.remote_closed = True
            self._incoming.put_nowait(None)
        return True

    def _was_reset(self) -> None:
        self.reset = True
        self._received(b"", True)


class Session:
    """A server session over a byte stream: ``feed`` it what arrives; ``on_stream`` runs for each new stream
    (as its own task); frames go out through ``send_bytes``."""

    def __init__(self, send_bytes: Callable[[bytes], Awaitable[None]],
                 on_stream: Callable[[Stream], Awaitable[None]]) -> None:
        self._send_bytes = send_bytes
        self._on_stream = on_stream
        self._buffer = bytearray()
        self._inflate = zlib.decompressobj(zdict=DICTIONARY)
        self._deflate = zlib.compressobj(zdict=DICTIONARY)
        self._send_lock = asyncio.Lock()
        self.streams: dict[int, Stream] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.closed = False

    async def send(self, frame: bytes) -> None:
        async with self._send_lock:  # frames are never interleaved
            if self.closed:
                raise ConnectionResetError("the SPDY session is closed")
            await self._send_bytes(frame)

    async def feed(self, data: bytes) -> None:
        """Take bytes from the client; handle every complete frame in them."""
        self._buffer += data
        while len(self._buffer) >= 8:
            length = int.from_bytes(self._buffer[5:8], "big")
            if len(self._buffer) < 8 + length:
                return
            head, payload = bytes(self._buffer[:8]), bytes(self._buffer[8:8 + length])
            del self._buffer[:8 + length]
            try:
                await self._frame(head, payload)
            except ProtocolError as exc:
                log.warning("SPDY: %s", exc)
                await self.send(_control(GOAWAY, 0, struct.pack(">II", max(self.streams, default=0), 1)))
                raise

    def end(self) -> None:
        """The byte stream is over: every stream reads as finished."""
        self.closed = True
        for stream in self.streams.values():
            stream._was_reset()

    async def _frame(self, head: bytes, payload: bytes) -> None:
        flags = head[4]
        if not head[0] & 0x80:  # DATA
            stream = self.streams.get(int.from_bytes(head[:4], "big") & 0x7FFFFFFF)
            if stream is not None and not stream._received(payload, bool(flags & FLAG_FIN)):
                log.warning("SPDY stream %d: over %d bytes unread; reset", stream.id, MAX_BUFFERED)
                del self.streams[stream.id]
                stream._was_reset()
                await self.send(_control(RST_STREAM, 0, struct.pack(">II", stream.id, RST_FLOW_CONTROL_ERROR)))
            return
        version, kind = struct.unpack(">HH", head[:4])
        if version & 0x7FFF != VERSION:
            raise ProtocolError(f"version {version & 0x7FFF} frames are not served (SPDY/3 only)")
        if kind == SYN_STREAM:
            await self._syn_stream(payload, flags)
        elif kind == RST_STREAM:
            stream = self.streams.pop(_stream_id(payload), None)
            if stream is not None:
                stream._was_reset()
        elif kind == PING:
            await self.send(_control(PING, 0, payload[:4]))  # answered as sent
        elif kind == GOAWAY:
            self.end()
        elif kind == HEADERS:
            self._headers(payload[4:])  # keeps the compression context in step; nothing of ours uses them
        # SETTINGS, WINDOW_UPDATE and anything newer: not needed by this server

    async def _syn_stream(self, payload: bytes, flags: int) -> None:
        if len(payload) < 10:
            raise ProtocolError("short SYN_STREAM")
        stream_id = _stream_id(payload)
        headers = self._headers(payload[10:])
        if stream_id in self.streams or stream_id % 2 == 0:
            await self.send(_control(RST_STREAM, 0, struct.pack(">II", stream_id, RST_PROTOCOL_ERROR)))
            return
        stream = Stream(self, stream_id, headers)
        self.streams[stream_id] = stream
        if flags & FLAG_FIN:
            stream._received(b"", True)
        await self.send(_control(SYN_REPLY, 0, struct.pack(">I", stream_id) + self._header_block({})))
        task = asyncio.create_task(self._serve(stream), name=f"spdy-stream-{stream_id}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _serve(self, stream: Stream) -> None:
        try:
            await self._on_stream(stream)
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("SPDY stream %d failed", stream.id)
        finally:
            if self.streams.get(stream.id) is stream and stream.remote_closed and stream.local_closed:
                del self.streams[stream.id]

    def remove(self, stream: Stream) -> None:
        self.streams.pop(stream.id, None)

    def _headers(self, block: bytes) -> dict[str, str]:
        try:
            raw = self._inflate.decompress(block)
            count, offset, headers = struct.unpack_from(">I", raw)[0], 4, {}
            for _ in range(count):
                (size,) = struct.unpack_from(">I", raw, offset)
                name = raw[offset + 4:offset + 4 + size].decode()
                offset += 4 + size
                (size,) = struct.unpack_from(">I", raw, offset)
                headers[name.lower()] = raw[offset + 4:offset + 4 + size].decode().split("\0")[0]
                offset += 4 + size
        except (zlib.error, struct.error, UnicodeDecodeError) as exc:
            raise ProtocolError(f"unreadable header block: {exc}") from None
        return headers

    def _header_block(self, headers: dict[str, str]) -> bytes:
        raw = struct.pack(">I", len(headers))
        for name, value in headers.items():
            for part in (name.lower().encode(), value.encode()):
                raw += struct.pack(">I", len(part)) + part
        return self._deflate.compress(raw) + self._deflate.flush(zlib.Z_SYNC_FLUSH)


def _stream_id(payload: bytes) -> int:
    if len(payload) < 4:
        raise ProtocolError("short control frame")
    return int.from_bytes(payload[:4], "big") & 0x7FFFFFFF


def _control(kind: int, flags: int, payload: bytes) -> bytes:
    return struct.pack(">HHI", 0x8000 | VERSION, kind, (flags << 24) | len(payload)) + payload


def _data_frame(stream_id: int, flags: int, data: bytes) -> bytes:
    return struct.pack(">II", stream_id & 0x7FFFFFFF, (flags << 24) | len(data)) + data
