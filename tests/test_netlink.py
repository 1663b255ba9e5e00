"""``skiff.netlink`` against the kernel, checked with iproute2's view of the same namespaces."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from skiff import netns
from skiff.netlink import Netlink, Route

T = TypeVar("T")


@pytest.fixture
def namespaces() -> Iterator[tuple[str, str]]:
    """Two fresh network namespaces (``ip netns`` names), removed afterwards."""
    names = (f"sktnl{os.getpid()}a", f"sktnl{os.getpid()}b")
    for name in names:
        subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield names
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "del", name], check=False)


def inside(name: str, fn: Callable[[], T]) -> T:
    return netns.enter(f"/run/netns/{name}", fn)


def ip_json(name: str, *args: str) -> list[dict]:
    out = subprocess.run(["ip", "-n", name, "-j", *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out or "[]")


def test_bridge_veth_addresses_and_routes_as_iproute2_sees_them(namespaces: tuple[str, str]) -> None:
    host, guest = namespaces

    def build() -> None:
        with Netlink() as nl:
            nl.add_bridge("br-nl", 1400)
            bridge = nl.link_index("br-nl")
            assert bridge is not None
            nl.add_address(bridge, "10.251.7.1", 24)
            nl.set_link(bridge, up=True)
            fd = os.open(f"/run/netns/{guest}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                nl.add_veth("vnl0", "eth0", 1400, peer_netns_fd=fd, peer_mac="02:42:0a:fb:07:02")
            finally:
                os.close(fd)
            veth = nl.link_index("vnl0")
            assert veth is not None
            nl.set_link(veth, master=bridge, up=True)
            assert [(a.address, a.prefixlen) for a in nl.addresses(bridge)] == [("10.251.7.1", 24)]
            assert {"lo", "br-nl", "vnl0"} <= nl.link_names()

    def configure_guest() -> None:
        with Netlink() as nl:
            eth0 = nl.link_index("eth0")
            assert eth0 is not None
            nl.add_address(eth0, "10.251.7.2", 24)
            nl.set_link(eth0, up=True)
            nl.add_route("0.0.0.0/0", gateway="10.251.7.1", oif=eth0)
            nl.add_route("10.99.0.0/16", gateway="10.251.7.1")

    inside(host, build)
    inside(guest, configure_guest)

    bridge = ip_json(host, "-d", "link", "show", "br-nl")[0]
    assert bridge["linkinfo"]["info_kind"] == "bridge" and bridge["mtu"] == 1400 and "UP" in bridge["flags"]
    veth = ip_json(host, "-d", "link", "show", "vnl0")[0]
    assert veth["master"] == "br-nl" and veth["linkinfo"]["info_kind"] == "veth"
    eth0 = ip_json(guest, "-d", "addr", "show", "eth0")[0]
    assert eth0["address"] == "02:42:0a:fb:07:02" and eth0["mtu"] == 1400
    inet = [a for a in eth0["addr_info"] if a["family"] == "inet"]
    assert [(a["local"], a["prefixlen"], a.get("broadcast")) for a in inet] == [("10.251.7.2", 24, "10.251.7.255")]
    routes = {(r["dst"], r.get("gateway")) for r in ip_json(guest, "route", "show")}
    assert {("default", "10.251.7.1"), ("10.99.0.0/16", "10.251.7.1"), ("10.251.7.0/24", None)} <= routes

    def our_routes() -> list[Route]:
        with Netlink() as nl:
            nl.add_route("10.98.0.0/16", gateway="10.251.7.1", protocol=77)
            return nl.routes()

    found = inside(guest, our_routes)
    assert {(r.destination, r.gateway) for r in found} >= {
        ("0.0.0.0/0", "10.251.7.1"), ("10.99.0.0/16", "10.251.7.1"), ("10.251.7.0/24", None)}
    assert {r.destination: r.protocol for r in found}["10.98.0.0/16"] == 77  # ``ip route show proto 77``

    def delete_by_protocol() -> list[str]:
        with Netlink() as nl:
            with pytest.raises(OSError):  # the kernel matches the protocol: a boot route of that name is not it
                nl.delete_route("10.98.0.0/16", gateway="10.251.7.1")
            nl.delete_route("10.98.0.0/16", gateway="10.251.7.1", protocol=77)
            return [r.destination for r in nl.routes()]

    assert "10.98.0.0/16" not in inside(guest, delete_by_protocol)

    # The two ends talk over the bridge (a ping from the host namespace's bridge address to the guest).
    ping = subprocess.run(["ip", "netns", "exec", host, "busybox", "ping", "-c", "1", "-W", "2", "10.251.7.2"],
                          capture_output=True, text=True)
    assert ping.returncode == 0, ping.stdout + ping.stderr

    def teardown() -> None:
        with Netlink() as nl:
            nl.delete_link(nl.link_index("vnl0"))  # type: ignore[arg-type]
            nl.delete_link(nl.link_index("br-nl"))  # type: ignore[arg-type]
            assert nl.link_index("vnl0") is None and nl.link_index("br-nl") is None

    inside(host, teardown)
    assert [link["ifname"] for link in ip_json(guest, "link", "show")] == ["lo"]  # the peer went with its pair


def test_kernel_errors_are_oserrors_with_the_kernels_reason(namespaces: tuple[str, str]) -> None:
    host, _ = namespaces

    def attempts() -> list[OSError]:
        seen = []
        with Netlink() as nl:
            nl.add_bridge("br-dup", 1500)
            for attempt in (lambda: nl.add_bridge("br-dup", 1500),
                            lambda: nl.add_address(987654, "10.0.0.1", 24),
                            lambda: nl.delete_route("10.98.0.0/16", gateway="10.0.0.9")):
                with pytest.raises(OSError) as caught:
                    attempt()
                seen.append(caught.value)
            assert nl.link_index("no-such-link") is None
            nl.delete_link(nl.link_index("br-dup"))  # type: ignore[arg-type]
        return seen

    duplicate, no_device, no_route = inside(host, attempts)
    assert duplicate.errno == errno.EEXIST
    assert no_device.errno == errno.ENODEV
    assert no_route.errno == errno.ESRCH
