"""The DNS wire format (RFC 1035), as much as Skiff's two DNS servers need: parse a query, write an answer.

The engine's embedded resolver (127.0.0.11 in containers on user networks) and the cluster DNS both use it.
Queries are parsed strictly (one question, compressed names followed with a loop guard, EDNS's OPT record
read for the client's UDP size); anything malformed is a ``FormatError``, which the server answers with
FORMERR when it can read the header. Answers are written without name compression: they are small (the
records of one Service), and an answer too large for the client's UDP size is truncated (TC set, records
dropped) so the client asks again over TCP.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

A, NS, CNAME, SOA, PTR, AAAA, SRV, OPT, ANY = 1, 2, 5, 6, 12, 28, 33, 41, 255
IN = 1
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
QR, AA, TC, RD, RA = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080
UDP_DEFAULT_SIZE = 512  # without EDNS (RFC 1035)
EDNS_SIZE = 1232  # what we advertise, the DNS flag day's size (no IP fragmentation)
_HEADER = struct.Struct("!HHHHHH")


class FormatError(ValueError):
    """Not a DNS query we can read."""


@dataclass(frozen=True)
class Question:
    name: str  # as asked (case kept, no trailing dot)
    qtype: int
    qclass: int = IN


@dataclass(frozen=True)
class Record:
    name: str
    rtype: int
    ttl: int
    rdata: bytes


@dataclass
class Query:
    id: int
    flags: int
    question: Question
    edns_size: int | None = None  # the client's UDP payload size when it sent an OPT record

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF

    @property
    def max_udp_size(self) -> int:
        return max(UDP_DEFAULT_SIZE, min(self.edns_size or UDP_DEFAULT_SIZE, EDNS_SIZE))


@dataclass
class Answer:
    rcode: int = NOERROR
    authoritative: bool = True
    recursion_available: bool = False  # the engine's resolver forwards what it does not know: it says so
    answers: list[Record] = field(default_factory=list)
    authority: list[Record] = field(default_factory=list)
    additional: list[Record] = field(default_factory=list)


# --- parsing ------------------------------------------------------------------------------------------------


def query_id(data: bytes) -> int | None:
    return struct.unpack_from("!H", data)[0] if len(data) >= 2 else None


def parse_query(data: bytes) -> Query:
    if len(data) < _HEADER.size:
        raise FormatError("shorter than a header")
    qid, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(data)
    if flags & QR:
        raise FormatError("a response, not a query")
    if qdcount != 1:
        raise FormatError(f"{qdcount} questions")
    name, offset = read_name(data, _HEADER.size)
    if offset + 4 > len(data):
        raise FormatError("truncated question")
    qtype, qclass = struct.unpack_from("!HH", data, offset)
    offset += 4
    edns_size = None
    for _ in range(ancount + nscount + arcount):
        _, offset = read_name(data, offset)
        if offset + 10 > len(data):
            raise FormatError("truncated record")
        rtype, rclass, _, rdlength = struct.unpack_from("!HHIH", data, offset)
        offset += 10 + rdlength
        if offset > len(data):
            raise FormatError("truncated record data")
        if rtype == OPT:
            edns_size = rclass  # OPT's class field is the sender's UDP payload size
    return Query(qid, flags, Question(name, qtype, qclass), edns_size)


def read_name(data: bytes, offset: int) -> tuple[str, int]:
    """The name at ``offset`` (following compression pointers) and the offset just past it."""
    labels: list[str] = []
    end: int | None = None
    jumps = 0
    while True:
        if offset >= len(data):
            raise FormatError("name runs past the message")
        length = data[offset]
        if length & 0xC0 == 0xC0:
            if offset + 1 >= len(data):
                raise FormatError("truncated pointer")
            jumps += 1
            if jumps > 64:
                raise FormatError("compression loop")
            if end is None:
                end = offset + 2
            offset = ((length & 0x3F) << 8) | data[offset + 1]
            continue
        if length & 0xC0:
            raise FormatError("unknown label type")
        offset += 1
        if length == 0:
            break
        if offset + length > len(data):
            raise FormatError("label runs past the message")
        labels.append(data[offset:offset + length].decode("ascii", errors="replace"))
        offset += length
    name = ".".join(labels)
    if len(name) > 253:
        raise FormatError("name longer than 255 octets")
    return name, end if end is not None else offset


# --- writing ------------------------------------------------------------------------------------------------


def encode_name(name: str) -> bytes:
    out = bytearray()
    for label in name.strip(".").split(".") if name.strip(".") else []:
        raw = label.encode("ascii")
        if not 0 < len(raw) < 64:
            raise ValueError(f"bad label in {name!r}")
        out += bytes([len(raw)]) + raw
    return bytes(out + b"\0")


def a_rdata(ip: str) -> bytes:
    return ipaddress.IPv4Address(ip).packed


def name_rdata(name: str) -> bytes:
    """CNAME, PTR and NS data: a name."""
    return encode_name(name)


def srv_rdata(priority: int, weight: int, port: int, target: str) -> bytes:
    return struct.pack("!HHH", priority, weight, port) + encode_name(target)


def soa_rdata(mname: str, rname: str, serial: int, refresh: int, retry: int, expire: int, minimum: int) -> bytes:
    return encode_name(mname) + encode_name(rname) + struct.pack("!IIIII", serial, refresh, retry, expire, minimum)


def _record(r: Record) -> bytes:
    return encode_name(r.name) + struct.pack("!HHIH", r.rtype, IN, r.ttl, len(r.rdata)) + r.rdata


def _opt_record() -> bytes:
    return b"\0" + struct.pack("!HHIH", OPT, EDNS_SIZE, 0, 0)


def encode_response(query: Query, answer: Answer, max_size: int | None = None) -> bytes:
    """The response to ``query``; over ``max_size`` bytes (UDP) it is truncated: header and question only, TC."""
    flags = QR | (query.flags & (0x7800 | RD)) | (AA if answer.authoritative else 0) | (answer.rcode & 0xF)
    if answer.recursion_available:
        flags |= RA
    question = encode_name(query.question.name) + struct.pack("!HH", query.question.qtype, query.question.qclass)
    opt = [_opt_record()] if query.edns_size is not None else []
    sections = ([_record(r) for r in answer.answers], [_record(r) for r in answer.authority],
                [_record(r) for r in answer.additional] + opt)
    body = question + b"".join(b"".join(s) for s in sections)
    if max_size is not None and _HEADER.size + len(body) > max_size:
        header = _HEADER.pack(query.id, flags | TC, 1, 0, 0, len(opt))
        return header + question + b"".join(opt)
    header = _HEADER.pack(query.id, flags, 1, *(len(s) for s in sections))
    return header + body


def error_response(data: bytes, rcode: int) -> bytes | None:
    """A bare answer with ``rcode`` to a message we could not parse (nothing when even its id is missing)."""
    qid = query_id(data)
    if qid is None or len(data) < 4:
        return None
    flags = struct.unpack_from("!H", data, 2)[0]
    return _HEADER.pack(qid, QR | (flags & (0x7800 | RD)) | rcode, 0, 0, 0, 0)
