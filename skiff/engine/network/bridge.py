"""The kernel side of bridge networks over netlink (pyroute2): bridges, veth pairs and the container end of
each pair, configured inside the container's namespace.

Every function here is synchronous and blocking (netlink round trips): the network service runs them on
worker threads. pyroute2's IPRoute keeps an event loop of its own, so it must never be used on the daemon's
event-loop thread.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from skiff import errors
from skiff.engine.network import sandbox

MTU = 1500


def _link(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def ensure_bridge(name: str, gateway: str, prefixlen: int) -> None:
    """The bridge ``name`` with ``gateway/prefixlen`` on it, up; made if missing (a restart finds it)."""
    with IPRoute() as ipr:
        index = _link(ipr, name)
        if index is None:
            try:
                ipr.link("add", ifname=name, kind="bridge", mtu=MTU)
            except NetlinkError as e:
                raise errors.SystemFailure(f"failed to create bridge {name}: {e}") from None
            index = _link(ipr, name)
            assert index is not None
        present = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=index, family=2)}
        if (gateway, prefixlen) not in present:
            broadcast = str(ipaddress.IPv4Network(f"{gateway}/{prefixlen}", strict=False).broadcast_address)
            ipr.addr("add", index=index, address=gateway, prefixlen=prefixlen, broadcast=broadcast)
        ipr.link("set", index=index, state="up")


def delete_link(name: str) -> None:
    """Delete a link (a bridge, or a veth with its peer); missing is fine."""
    with IPRoute() as ipr:
        index = _link(ipr, name)
        if index is not None:
            with contextlib.suppress(NetlinkError):
                ipr.link("del", index=index)


def link_exists(name: str) -> bool:
    with IPRoute() as ipr:
        return _link(ipr, name) is not None


def new_host_ifname() -> str:
    """Docker-style host-side name of a veth: ``veth`` and 7 hex digits."""
    return "veth" + secrets.token_hex(4)[:7]


def add_endpoint(bridge_name: str, host_ifname: str, netns_path: str, ifname: str, address: str, prefixlen: int,
                 mac: str, gateway: str | None) -> None:
    """A veth pair: ``host_ifname`` on the bridge, its peer created straight inside the namespace as
    ``ifname`` with ``mac``, ``address/prefixlen``, up, and (with ``gateway``) the default route."""
    fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with IPRoute() as ipr:
            bridge = _link(ipr, bridge_name)
            if bridge is None:
                raise errors.SystemFailure(f"bridge {bridge_name} does not exist")
            try:
                ipr.link("add", ifname=host_ifname, kind="veth", mtu=MTU,
                         peer={"ifname": ifname, "net_ns_fd": fd, "address": mac, "mtu": MTU})
            except NetlinkError as e:
                raise errors.SystemFailure(f"failed to add the host ({host_ifname}) <=> sandbox ({ifname}) pair "
                                           f"interfaces: {e}") from None
            index = _link(ipr, host_ifname)
            assert index is not None
            ipr.link("set", index=index, master=bridge, state="up")
    finally:
        os.close(fd)

    def inside() -> None:
        with IPRoute() as ipr:
            index = _link(ipr, ifname)
            assert index is not None
            ipr.addr("add", index=index, address=address, prefixlen=prefixlen,
                     broadcast=str(ipaddress.IPv4Network(f"{address}/{prefixlen}", strict=False).broadcast_address))
            ipr.link("set", index=index, state="up")
            if gateway:
                ipr.route("add", dst="0.0.0.0/0", gateway=gateway, oif=index)

    try:
        sandbox.enter(netns_path, inside)
    except BaseException:
        delete_link(host_ifname)
        raise


def loopback_up() -> None:
    """Bring ``lo`` up in the calling thread's namespace (run inside a new sandbox)."""
    with IPRoute() as ipr:
        index = _link(ipr, "lo")
        if index is not None:
            ipr.link("set", index=index, state="up")


def next_ifname(netns_path: str) -> str:
    """The first free ``ethN`` inside the namespace (for ``docker network connect``)."""

    def inside() -> str:
        with IPRoute() as ipr:
            names = {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        n = 0
        while f"eth{n}" in names:
            n += 1
        return f"eth{n}"

    return sandbox.enter(netns_path, inside)


def set_ip_forward() -> None:
    """Routing between the bridges and the host's other interfaces needs IPv4 forwarding (dockerd sets it)."""
    path = "/proc/sys/net/ipv4/ip_forward"
    with open(path) as f:
        if f.read().strip() == "1":
            return
    with open(path, "w") as f:
        f.write("1\n")
