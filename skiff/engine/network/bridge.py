"""The kernel side of bridge networks over netlink (``skiff.netlink``): bridges, veth pairs and the container
end of each pair, configured inside the container's namespace.

Every function here is synchronous and blocking (netlink round trips): the network service runs them on
worker threads, never on the daemon's event-loop thread.
"""

from __future__ import annotations

import contextlib
import os
import secrets

from skiff import errors, netns
from skiff.netlink import Netlink

MTU = 1500


def ensure_bridge(name: str, gateway: str, prefixlen: int) -> None:
    """The bridge ``name`` with ``gateway/prefixlen`` on it, up; made if missing (a restart finds it)."""
    with Netlink() as nl:
        index = nl.link_index(name)
        if index is None:
            try:
                nl.add_bridge(name, MTU)
            except OSError as e:
                raise errors.SystemFailure(f"failed to create bridge {name}: {e.strerror}") from None
            index = nl.link_index(name)
            assert index is not None
        present = {(a.address, a.prefixlen) for a in nl.addresses(index)}
        if (gateway, prefixlen) not in present:
            nl.add_address(index, gateway, prefixlen)
        nl.set_link(index, up=True)


def delete_link(name: str) -> None:
    """Delete a link (a bridge, or a veth with its peer); missing is fine."""
    with Netlink() as nl:
        index = nl.link_index(name)
        if index is not None:
            with contextlib.suppress(OSError):
                nl.delete_link(index)


def link_exists(name: str) -> bool:
    with Netlink() as nl:
        return nl.link_index(name) is not None


def new_host_ifname() -> str:
    """Docker-style host-side name of a veth: ``veth`` and 7 hex digits."""
    return "veth" + secrets.token_hex(4)[:7]


def add_endpoint(bridge_name: str, host_ifname: str, netns_path: str, ifname: str, address: str, prefixlen: int,
                 mac: str, gateway: str | None) -> None:
    """A veth pair: ``host_ifname`` on the bridge, its peer created straight inside the namespace as
    ``ifname`` with ``mac``, ``address/prefixlen``, up, and (with ``gateway``) the default route."""
    fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with Netlink() as nl:
            bridge = nl.link_index(bridge_name)
            if bridge is None:
                raise errors.SystemFailure(f"bridge {bridge_name} does not exist")
            try:
                nl.add_veth(host_ifname, ifname, MTU, peer_netns_fd=fd, peer_mac=mac)
            except OSError as e:
                raise errors.SystemFailure(f"failed to add the host ({host_ifname}) <=> sandbox ({ifname}) pair "
                                           f"interfaces: {e.strerror}") from None
            index = nl.link_index(host_ifname)
            assert index is not None
            nl.set_link(index, master=bridge, up=True)
    finally:
        os.close(fd)

    def inside() -> None:
        with Netlink() as nl:
            index = nl.link_index(ifname)
            assert index is not None
            nl.add_address(index, address, prefixlen)
            nl.set_link(index, up=True)
            if gateway:
                nl.add_route("0.0.0.0/0", gateway=gateway, oif=index)

    try:
        netns.enter(netns_path, inside)
    except BaseException:
        delete_link(host_ifname)
        raise


def loopback_up() -> None:
    """Bring ``lo`` up in the calling thread's namespace (run inside a new sandbox)."""
    with Netlink() as nl:
        index = nl.link_index("lo")
        if index is not None:
            nl.set_link(index, up=True)


def next_ifname(netns_path: str) -> str:
    """The first free ``ethN`` inside the namespace (for ``docker network connect``)."""

    def inside() -> str:
        with Netlink() as nl:
            names = nl.link_names()
        n = 0
        while f"eth{n}" in names:
            n += 1
        return f"eth{n}"

    return netns.enter(netns_path, inside)


def set_ip_forward() -> None:
    """Routing between the bridges and the host's other interfaces needs IPv4 forwarding (dockerd sets it)."""
    path = "/proc/sys/net/ipv4/ip_forward"
    with open(path) as f:
        if f.read().strip() == "1":
            return
    with open(path, "w") as f:
        f.write("1\n")
