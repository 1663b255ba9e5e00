"""The SPDY/3.1 server session under kubectl port-forward (``skiff.cluster.kubelet.spdy``), driven here by a small
client written from the frame layouts; the real kubectl drives it in test_port_forward.py."""

from __future__ import annotations

import asyncio
import struct
import zlib

import pytest

from skiff.cluster.kubelet import spdy


class Client:
    """Frames as spdystream writes them: one compression context for all its header blocks."""

    def __init__(self) -> None:
        self.deflate = zlib.compressobj(zdict=spdy.DICTIONARY)
        self.inflate = zlib.decompressobj(zdict=spdy.DICTIONARY)

    def syn_stream(self, stream_id: int, headers: dict[str, str], flags: int = 0) -> bytes:
        raw = struct.pack(">I", len(headers))
        for name, value in headers.items():
            raw += struct.pack(">I", len(name)) + name.encode() + struct.pack(">I", len(value)) + value.encode()
        block = self.deflate.compress(raw) + self.deflate.flush(zlib.Z_SYNC_FLUSH)
        return control(spdy.SYN_STREAM, flags, struct.pack(">IIBB", stream_id, 0, 0, 0) + block)

    def reply_headers(self, frame: bytes) -> int:
        """The number of headers in a SYN_REPLY we received."""
        return struct.unpack(">I", self.inflate.decompress(frame[12:])[:4])[0]


def control(kind: int, flags: int, payload: bytes, version: int = 3) -> bytes:
    return struct.pack(">HHI", 0x8000 | version, kind, (flags << 24) | len(payload)) + payload


def data(stream_id: int, payload: bytes, flags: int = 0) -> bytes:
    return struct.pack(">II", stream_id, (flags << 24) | len(payload)) + payload


def kind_of(frame: bytes) -> int | str:
    return struct.unpack(">H", frame[2:4])[0] if frame[0] & 0x80 else "data"


def test_the_dictionary_is_spdy3s() -> None:
    assert len(spdy.DICTIONARY) == 1423
    assert spdy.DICTIONARY.startswith(b"\x00\x00\x00\x07options\x00\x00\x00\x04head")
    assert spdy.DICTIONARY.endswith(b"charset=iso-8859-1,utf-,*,enq=0.")


def test_streams_are_answered_carry_data_both_ways_and_pings_are_echoed() -> None:
    async def scenario() -> None:
        sent: list[bytes] = []
        streams: list[spdy.Stream] = []

        async def echo(stream: spdy.Stream) -> None:
            streams.append(stream)
            while chunk := await stream.read():
                await stream.write(chunk.upper())
            await stream.close()

        async def send(frame: bytes) -> None:
            sent.append(frame)

        session, client = spdy.Session(send, echo), Client()
        first = client.syn_stream(1, {"streamtype": "data", "port": "80", "requestid": "0"})
        await session.feed(first[:5])  # a frame split anywhere still reads as one
        await session.feed(first[5:] + data(1, b"hello") + control(spdy.PING, 0, struct.pack(">I", 7)))
        await session.feed(client.syn_stream(3, {"streamtype": "error", "port": "80", "requestid": "1"}))
        await session.feed(data(1, b" world", flags=spdy.FLAG_FIN))
        await session.feed(control(spdy.RST_STREAM, 0, struct.pack(">II", 3, spdy.RST_CANCEL)))
        await asyncio.wait_for(asyncio.gather(*session.tasks), 5)
        assert streams[0].headers == {"streamtype": "data", "port": "80", "requestid": "0"}
        assert streams[1].headers["streamtype"] == "error"
        replies = [f for f in sent if kind_of(f) == spdy.SYN_REPLY]
        assert [struct.unpack(">I", f[8:12])[0] for f in replies] == [1, 3]
        assert [client.reply_headers(f) for f in replies] == [0, 0]
        assert control(spdy.PING, 0, struct.pack(">I", 7)) in sent
        out = [f for f in sent if kind_of(f) == "data" and struct.unpack(">I", f[:4])[0] == 1]
        assert b"".join(f[8:] for f in out) == b"HELLO WORLD" and out[-1][4] == spdy.FLAG_FIN
        assert streams[1].reset and await streams[1].read() == b""  # the reset stream's reader saw its end

    asyncio.run(scenario())


def test_another_version_ends_the_session_with_a_goaway() -> None:
    async def scenario() -> None:
        sent: list[bytes] = []

        async def send(frame: bytes) -> None:
            sent.append(frame)

        async def never(_stream: spdy.Stream) -> None:
            raise AssertionError("no stream expected")

        session = spdy.Session(send, never)
        with pytest.raises(spdy.ProtocolError, match="version 2"):
            await session.feed(control(spdy.SYN_STREAM, 0, bytes(10), version=2))
        assert [kind_of(f) for f in sent] == [spdy.GOAWAY]
        with pytest.raises(spdy.ProtocolError, match="unreadable header block"):
            await session.feed(control(spdy.SYN_STREAM, 0, struct.pack(">IIBB", 1, 0, 0, 0) + b"not zlib"))

    asyncio.run(scenario())


def test_a_stream_whose_reader_falls_too_far_behind_is_reset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spdy, "MAX_BUFFERED", 100)

    async def scenario() -> None:
        sent: list[bytes] = []
        streams: list[spdy.Stream] = []

        async def send(frame: bytes) -> None:
            sent.append(frame)

        async def never_reads(stream: spdy.Stream) -> None:
            streams.append(stream)

        session, client = spdy.Session(send, never_reads), Client()
        await session.feed(client.syn_stream(1, {"streamtype": "data"}) + data(1, b"x" * 60))
        await session.feed(data(1, b"y" * 60))  # 120 unread bytes: over the cap
        resets = [f for f in sent if kind_of(f) == spdy.RST_STREAM]
        assert [struct.unpack(">II", f[8:16]) for f in resets] == [(1, spdy.RST_FLOW_CONTROL_ERROR)]
        await asyncio.gather(*session.tasks)
        assert streams[0].reset and await streams[0].read() == b"x" * 60  # what was taken is still read
        assert 1 not in session.streams

    asyncio.run(scenario())
