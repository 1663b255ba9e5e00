"""The DNS codec on hand-written messages: queries as resolvers send them (with compression pointers and
EDNS), malformed ones, answers decoded field by field, truncation for UDP."""

from __future__ import annotations

import struct

import pytest

from skiff.dnswire import (
    AA,
    NXDOMAIN,
    QR,
    RD,
    SRV,
    TC,
    A,
    Answer,
    FormatError,
    Record,
    a_rdata,
    encode_response,
    error_response,
    parse_query,
    read_name,
    srv_rdata,
)


def query(name: str, qtype: int = A, *, qid: int = 0x1234, flags: int = RD, opt: int | None = None) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    arcount = 1 if opt is not None else 0
    data = struct.pack("!HHHHHH", qid, flags, 1, 0, 0, arcount) + labels + struct.pack("!HH", qtype, 1)
    if opt is not None:
        data += b"\0" + struct.pack("!HHIH", 41, opt, 0, 0)
    return data


def test_parse_a_query_keeps_case_and_reads_edns_size() -> None:
    q = parse_query(query("Web.Default.svc.cluster.local", opt=4096))
    assert (q.id, q.question.name, q.question.qtype, q.question.qclass) == (0x1234, "Web.Default.svc.cluster.local",
                                                                            A, 1)
    assert (q.edns_size, q.max_udp_size) == (4096, 1232)
    assert parse_query(query("a.b")).max_udp_size == 512


def test_compression_pointers_and_their_loops() -> None:
    # "svc.cluster.local" at offset 12, then "web" + a pointer to it
    data = b"\0" * 12 + b"\x03svc\x07cluster\x05local\x00" + b"\x03web\xc0\x0c"
    assert read_name(data, 12) == ("svc.cluster.local", 31)
    assert read_name(data, 31) == ("web.svc.cluster.local", 37)
    with pytest.raises(FormatError, match="loop"):
        read_name(b"\0" * 12 + b"\xc0\x0c", 12)


@pytest.mark.parametrize("data", [b"", b"\x12\x34", query("a.b")[:-3], struct.pack("!HHHHHH", 1, QR, 1, 0, 0, 0),
                                  struct.pack("!HHHHHH", 1, 0, 2, 0, 0, 0) + b"\0" + b"\0\1\0\1"])
def test_malformed_queries(data: bytes) -> None:
    with pytest.raises(FormatError):
        parse_query(data)


def test_error_response_echoes_the_id() -> None:
    reply = error_response(struct.pack("!HHHHHH", 0xBEEF, RD, 2, 0, 0, 0), 1)
    assert reply is not None and struct.unpack("!HHHHHH", reply) == (0xBEEF, QR | RD | 1, 0, 0, 0, 0)
    assert error_response(b"\x01", 1) is None


def test_answer_encoding() -> None:
    q = parse_query(query("web.default.svc.cluster.local"))
    reply = encode_response(q, Answer(answers=[Record("web.default.svc.cluster.local", A, 5, a_rdata("10.43.0.7"))]))
    qid, flags, qd, an, ns, ar = struct.unpack_from("!HHHHHH", reply)
    assert (qid, flags, qd, an, ns, ar) == (0x1234, QR | AA | RD, 1, 1, 0, 0)
    name, offset = read_name(reply, 12)
    assert name == "web.default.svc.cluster.local"
    offset += 4
    owner, offset = read_name(reply, offset)
    rtype, rclass, ttl, length = struct.unpack_from("!HHIH", reply, offset)
    assert (owner, rtype, rclass, ttl, length) == ("web.default.svc.cluster.local", A, 1, 5, 4)
    assert reply[offset + 10:] == bytes([10, 43, 0, 7])
    assert srv_rdata(0, 100, 80, "a.b") == b"\0\0\0\x64\0\x50\x01a\x01b\0"


def test_udp_truncation_and_nxdomain() -> None:
    q = parse_query(query("big.default.svc.cluster.local", SRV))
    records = [Record(f"e{i}.big.default.svc.cluster.local", A, 5, a_rdata(f"10.1.0.{i}")) for i in range(40)]
    full = encode_response(q, Answer(answers=records))
    assert len(full) > 512
    truncated = encode_response(q, Answer(answers=records), 512)
    assert struct.unpack_from("!HHHH", truncated)[1:] == (QR | AA | RD | TC, 1, 0)
    nx = encode_response(q, Answer(NXDOMAIN))
    assert struct.unpack_from("!H", nx, 2)[0] & 0xF == NXDOMAIN
