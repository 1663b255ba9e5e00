"""A small rtnetlink client on the standard library: links, addresses and routes of the calling thread's
network namespace.

The engine made its bridges and veth pairs with pyroute2, whose package import alone costs the daemon about
10 MiB of its 60 MiB idle budget (it loads NDB, IPDB, ethtool and nl80211 support, even unittest). What the
engine needs is a dozen request types, so this module speaks them directly: one ``NETLINK_ROUTE`` socket per
``Netlink`` object, one request at a time, each acknowledged or answered with its dump. The kubelet's pod routes
(routes with a protocol number of their own) and ``skiff cluster``'s bridge, veths and node namespaces use it
too.

A netlink socket belongs to the namespace of the thread that opens it: open one on a thread that has entered
a container's namespace to configure that namespace. Errors are ``OSError`` with the kernel's errno and,
when the kernel gives one, its extended-ack message.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_EXT_ACK = 11

NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
NLM_F_CAPPED, NLM_F_ACK_TLVS = 0x100, 0x200  # on an NLMSG_ERROR: request body left out; ext-ack attrs follow
NLMSGERR_ATTR_MSG = 1

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_GETADDR = 20, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26

IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER, IFLA_LINKINFO, IFLA_NET_NS_FD = 1, 3, 4, 10, 18, 28
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1
IFA_ADDRESS, IFA_LOCAL, IFA_BROADCAST = 1, 2, 4
RTA_DST, RTA_OIF, RTA_GATEWAY = 1, 4, 5
IFF_UP = 0x1

RT_TABLE_MAIN = 254
RTPROT_BOOT = 3
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK = 0, 253
RTN_UNICAST = 1

_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port id
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBI")  # ifaddrmsg: family, prefix length, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # rtmsg: family, dst/src len, tos, table, protocol, scope, type, flags
_ATTR = struct.Struct("=HH")


def _align(n: int) -> int:
    return (n + 3) & ~3


def attr(kind: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to four bytes."""
    data = _ATTR.pack(_ATTR.size + len(payload), kind) + payload
    return data + b"\0" * (_align(len(data)) - len(data))


def _string(value: str) -> bytes:
    return value.encode() + b"\0"


def _ipv4(address: str) -> bytes:
    return ipaddress.IPv4Address(address).packed


def _mac(address: str) -> bytes:
    return bytes(int(part, 16) for part in address.split(":"))


def parse_attrs(data: bytes) -> dict[int, bytes]:
    """Attributes of a message body by type (the last one of a repeated type wins)."""
    found: dict[int, bytes] = {}
    offset = 0
    while offset + _ATTR.size <= len(data):
        length, kind = _ATTR.unpack_from(data, offset)
        if length < _ATTR.size:
            break
        found[kind & 0x3FFF] = data[offset + _ATTR.size:offset + length]  # without the nested/byte-order bits
        offset += _align(length)
    return found


@dataclass(frozen=True)
class Route:
    destination: str  # A.B.C.D/N (0.0.0.0/0 for the default)
    gateway: str | None
    oif: int | None
    protocol: int  # who made it (``ip route show proto N``): RTPROT_BOOT for ours unless told otherwise


@dataclass(frozen=True)
class Address:
    index: int
    address: str
    prefixlen: int


class Netlink:
    """A ``NETLINK_ROUTE`` socket in the namespace of the thread that made it. Use it as a context manager."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        try:
            self._sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
        except OSError:
            pass  # older kernels: errors come without their message
        self._sock.bind((0, 0))
        self._seq = 0

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    # -- links

    def link_index(self, name: str) -> int | None:
        """The index of the link called ``name``, or None."""
        body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attr(IFLA_IFNAME, _string(name))
        try:
            replies = list(self._replies(self._send(RTM_GETLINK, NLM_F_ACK, body)))
        except OSError as e:
            if e.errno == errno.ENODEV:
                return None
            raise
        return _IFINFO.unpack_from(replies[0])[2] if replies else None

    def link_names(self) -> set[str]:
        names = set()
        for body in self._dump(RTM_GETLINK, _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0)):
            name = parse_attrs(body[_IFINFO.size:]).get(IFLA_IFNAME)
            if name:
                names.add(name.rstrip(b"\0").decode())
        return names

    def add_bridge(self, name: str, mtu: int) -> None:
        info = attr(IFLA_INFO_KIND, _string("bridge"))
        body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attr(IFLA_IFNAME, _string(name)) \
            + attr(IFLA_MTU, struct.pack("=I", mtu)) + attr(IFLA_LINKINFO, info)
        self._request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body)

    def add_veth(self, name: str, peer: str, mtu: int, peer_netns_fd: int | None = None,
                 peer_mac: str | None = None) -> None:
        """A veth pair ``name`` <=> ``peer``; the peer made straight inside the namespace of ``peer_netns_fd``."""
        peer_attrs = attr(IFLA_IFNAME, _string(peer)) + attr(IFLA_MTU, struct.pack("=I", mtu))
        if peer_netns_fd is not None:
            peer_attrs += attr(IFLA_NET_NS_FD, struct.pack("=I", peer_netns_fd))
        if peer_mac:
            peer_attrs += attr(IFLA_ADDRESS, _mac(peer_mac))
        peer_info = attr(VETH_INFO_PEER, _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + peer_attrs)
        info = attr(IFLA_INFO_KIND, _string("veth")) + attr(IFLA_INFO_DATA, peer_info)
        body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attr(IFLA_IFNAME, _string(name)) \
            + attr(IFLA_MTU, struct.pack("=I", mtu)) + attr(IFLA_LINKINFO, info)
        self._request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body)

    def set_link(self, index: int, *, up: bool | None = None, master: int | None = None) -> None:
        flags = change = 0
        if up is not None:
            flags, change = (IFF_UP if up else 0), IFF_UP
        body = _IFINFO.pack(socket.AF_UNSPEC, 0, index, flags, change)
        if master is not None:
            body += attr(IFLA_MASTER, struct.pack("=I", master))
        self._request(RTM_NEWLINK, 0, body)

    def delete_link(self, index: int) -> None:
        self._request(RTM_DELLINK, 0, _IFINFO.pack(socket.AF_UNSPEC, 0, index, 0, 0))

    # -- addresses

    def addresses(self, index: int | None = None) -> list[Address]:
        """The IPv4 addresses (of link ``index``, or of every link)."""
        found = []
        for body in self._dump(RTM_GETADDR, _IFADDR.pack(socket.AF_INET, 0, 0, 0, 0)):
            _, prefixlen, _, _, link = _IFADDR.unpack_from(body)
            attrs = parse_attrs(body[_IFADDR.size:])
            raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
            if raw and (index is None or link == index):
                found.append(Address(link, str(ipaddress.IPv4Address(raw)), prefixlen))
        return found

    def add_address(self, index: int, address: str, prefixlen: int) -> None:
        """``address/prefixlen`` on link ``index``, with the network's broadcast address (as ``ip addr add
        ... brd +`` gives)."""
        network = ipaddress.IPv4Network(f"{address}/{prefixlen}", strict=False)
        body = _IFADDR.pack(socket.AF_INET, prefixlen, 0, RT_SCOPE_UNIVERSE, index) \
            + attr(IFA_LOCAL, _ipv4(address)) + attr(IFA_ADDRESS, _ipv4(address))
        if prefixlen < 31:
            body += attr(IFA_BROADCAST, network.broadcast_address.packed)
        self._request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body)

    # -- routes

    def add_route(self, destination: str, gateway: str | None = None, oif: int | None = None, *,
                  replace: bool = False, protocol: int = RTPROT_BOOT) -> None:
        """A route to ``destination`` (``A.B.C.D/N``; ``0.0.0.0/0`` for the default) in the main table."""
        self._request(RTM_NEWROUTE, NLM_F_CREATE | (NLM_F_REPLACE if replace else NLM_F_EXCL),
                      self._route_body(destination, gateway, oif, protocol))

    def delete_route(self, destination: str, gateway: str | None = None, oif: int | None = None, *,
                     protocol: int = RTPROT_BOOT) -> None:
        """Delete the route; the kernel matches ``protocol`` too (0: any)."""
        self._request(RTM_DELROUTE, 0, self._route_body(destination, gateway, oif, protocol))

    def routes(self, *, every_table: bool = False) -> list[Route]:
        """The main table's IPv4 unicast routes (``every_table``: all routes of every table, of any type)."""
        found = []
        for body in self._dump(RTM_GETROUTE, _RTMSG.pack(socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0)):
            _, dst_len, _, _, table, protocol, _, kind, _ = _RTMSG.unpack_from(body)
            if not every_table and (table != RT_TABLE_MAIN or kind != RTN_UNICAST):
                continue
            attrs = parse_attrs(body[_RTMSG.size:])
            dst = str(ipaddress.IPv4Address(attrs[RTA_DST])) if RTA_DST in attrs else "0.0.0.0"
            gateway = str(ipaddress.IPv4Address(attrs[RTA_GATEWAY])) if RTA_GATEWAY in attrs else None
            oif = struct.unpack("=I", attrs[RTA_OIF])[0] if RTA_OIF in attrs else None
            found.append(Route(f"{dst}/{dst_len}", gateway, oif, protocol))
        return found

    @staticmethod
    def _route_body(destination: str, gateway: str | None, oif: int | None, protocol: int) -> bytes:
        network = ipaddress.IPv4Network(destination, strict=False)
        scope = RT_SCOPE_UNIVERSE if gateway else RT_SCOPE_LINK
        body = _RTMSG.pack(socket.AF_INET, network.prefixlen, 0, 0, RT_TABLE_MAIN, protocol, scope,
                           RTN_UNICAST, 0)
        if network.prefixlen:
            body += attr(RTA_DST, network.network_address.packed)
        if gateway:
            body += attr(RTA_GATEWAY, _ipv4(gateway))
        if oif is not None:
            body += attr(RTA_OIF, struct.pack("=I", oif))
        return body

    # -- the protocol

    def _send(self, kind: int, flags: int, body: bytes) -> int:
        self._seq += 1
        self._sock.send(_HEADER.pack(_HEADER.size + len(body), kind, NLM_F_REQUEST | flags, self._seq, 0) + body)
        return self._seq

    def _request(self, kind: int, flags: int, body: bytes) -> None:
        """Send one request and wait for its acknowledgement; a kernel error is raised as OSError."""
        seq = self._send(kind, flags | NLM_F_ACK, body)
        for _ in self._replies(seq):
            pass

    def _dump(self, kind: int, body: bytes) -> Iterator[bytes]:
        """The bodies of a dump's messages."""
        seq = self._send(kind, NLM_F_DUMP, body)
        yield from self._replies(seq)

    def _replies(self, seq: int) -> Iterator[bytes]:
        while True:
            data = self._sock.recv(1 << 16)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, kind, flags, got_seq, _ = _HEADER.unpack_from(data, offset)
                body = data[offset + _HEADER.size:offset + length]
                offset += _align(length)
                if got_seq != seq:
                    continue
                if kind == NLMSG_DONE:
                    return
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", body)[0]
                    if code == 0:
                        return
                    raise _error(code, body, flags)
                yield body


def _error(code: int, body: bytes, flags: int) -> OSError:
    message = os.strerror(code)
    if flags & NLM_F_ACK_TLVS and len(body) >= 4 + _HEADER.size:
        # After the errno comes the request's header (and its body unless capped), then the TLVs.
        original_length = _HEADER.unpack_from(body, 4)[0]
        tlv_start = 4 + (_HEADER.size if flags & NLM_F_CAPPED else original_length)
        detail = parse_attrs(body[_align(tlv_start):]).get(NLMSGERR_ATTR_MSG)
        if detail:
            message = f"{message}: {detail.rstrip(bytes(1)).decode(errors='replace')}"
    return OSError(code, message)

