"""IP address management for bridge networks: checking a network's IPAM config, picking a subnet for a
network that names none, and handing out addresses inside a subnet.

Pure logic, no disk and no kernel (except ``host_routes``, read to avoid subnets the host already routes).
Allocations are not stored on their own: the network service rebuilds them from the endpoints it persists,
so they can never disagree with the endpoints after a crash.

Messages are dockerd's (``api/types/network/ipam.go``, libnetwork's ipamapi), so the docker CLI prints
what users of Docker know.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from skiff import errors
from skiff.engine.network import Forbidden

IPv4Network = ipaddress.IPv4Network
IPv4Address = ipaddress.IPv4Address


@dataclass(frozen=True)
class Pool:
    """One IPAM config entry: the subnet, the gateway (the bridge's address) and the range addresses are
    handed out from (``--ip-range``; the whole subnet by default)."""

    subnet: IPv4Network
    gateway: IPv4Address
    ip_range: IPv4Network | None = None

    def doc(self) -> dict:
        """Docker's ``IPAM.Config`` entry."""
        entry = {"Subnet": str(self.subnet), "Gateway": str(self.gateway)}
        if self.ip_range is not None:
            entry["IPRange"] = str(self.ip_range)
        return entry

    @classmethod
    def from_doc(cls, entry: dict) -> Pool:
        return cls(IPv4Network(entry["Subnet"]), IPv4Address(entry["Gateway"]),
                   IPv4Network(entry["IPRange"]) if entry.get("IPRange") else None)

    def contains(self, address: IPv4Address) -> bool:
        """Whether a static address may be handed out here (inside the range when there is one)."""
        return address in (self.ip_range or self.subnet)


def _prefix(text: str, what: str) -> IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise errors.InvalidArgument(f"invalid {what} {text}: invalid CIDR block notation") from None


def parse_config(entries: Iterable[dict]) -> list[dict]:
    """Check ``IPAM.Config`` as dockerd's ValidateIPAM does; returns the IPv4 entries (IPv6 ones are not
    supported: refused). All problems are reported at once, under dockerd's heading."""
    problems: list[str] = []
    kept: list[dict] = []
    for entry in entries:
        subnet_text = (entry.get("Subnet") or "").strip()
        if not subnet_text:
            if entry.get("Gateway") or entry.get("IPRange"):
                problems.append("invalid network config: a gateway or ip-range needs a subnet")
            continue
        try:
            subnet = _prefix(subnet_text, "subnet")
        except errors.InvalidArgument as e:
            problems.append(str(e))
            continue
        if subnet.version == 6:
            raise errors.Unsupported("IPv6 networks are not supported")
        if ipaddress.ip_interface(subnet_text).ip != subnet.network_address:
            problems.append(f"invalid subnet {subnet_text}: it should be {subnet}")
        problems += _check_range(entry.get("IPRange") or "", subnet)
        problems += _check_address(entry.get("Gateway") or "", subnet, "gateway")
        kept.append(entry)
    if problems:
        raise errors.InvalidArgument("invalid network config:\n" + "\n".join(problems))
    return kept


def _check_range(text: str, subnet: ipaddress._BaseNetwork) -> list[str]:
    if not text:
        return []
    try:
        ip_range = _prefix(text, "ip-range")
    except errors.InvalidArgument as e:
        return [str(e)]
    if ip_range.version != subnet.version:
        return [f"invalid ip-range {text}: parent subnet is an IPv{subnet.version} block"]
    if ipaddress.ip_interface(text).ip != ip_range.network_address:
        return [f"invalid ip-range {text}: it should be {ip_range}"]
    if not ip_range.subnet_of(subnet):  # type: ignore[arg-type]
        return [f"invalid ip-range {text}: it must be within the subnet"]
    return []


def _check_address(text: str, subnet: ipaddress._BaseNetwork, what: str) -> list[str]:
    if not text:
        return []
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return [f"invalid {what} {text}: invalid address"]
    if address not in subnet:
        return [f"invalid {what} {text}: it must be within the subnet"]
    return []


def make_pool(entry: dict) -> Pool:
    """A checked config entry as a Pool: the gateway defaults to the subnet's first host address."""
    subnet = IPv4Network(entry["Subnet"], strict=False)
    gateway = IPv4Address(entry["Gateway"]) if entry.get("Gateway") else first_host(subnet)
    ip_range = IPv4Network(entry["IPRange"], strict=False) if entry.get("IPRange") else None
    return Pool(subnet, gateway, ip_range)


def first_host(subnet: IPv4Network) -> IPv4Address:
    return subnet.network_address + 1 if subnet.num_addresses > 2 else subnet.network_address


def check_overlap(subnet: IPv4Network, taken: Iterable[IPv4Network]) -> None:
    """libnetwork refuses a pool that overlaps another network's."""
    if any(subnet.overlaps(other) for other in taken):
        raise Forbidden("Pool overlaps with other one on this address space")


@dataclass(frozen=True)
class DefaultPools:
    """``--default-address-pool base=CIDR,size=N``: where subnets of networks created without one come from."""

    base: IPv4Network
    size: int

    @classmethod
    def parse(cls, text: str) -> DefaultPools:
        fields = dict(part.split("=", 1) for part in text.split(",") if "=" in part)
        try:
            base, size = IPv4Network(fields["base"]), int(fields["size"])
        except (KeyError, ValueError):
            raise errors.InvalidArgument(f"invalid --default-address-pool {text!r}: want base=CIDR,size=N") from None
        if not base.prefixlen <= size <= 30:
            raise errors.InvalidArgument(f"invalid --default-address-pool {text!r}: size must be between "
                                         f"{base.prefixlen} and 30")
        return cls(base, size)

    def pick(self, taken: Iterable[IPv4Network]) -> IPv4Network:
        """The first subnet of the pool that overlaps neither a network of ours nor a route of the host's
        (dockerd skips pools the host already routes, so it never shadows a network it cannot see)."""
        busy = list(taken)
        for candidate in self.base.subnets(new_prefix=self.size):
            if not any(candidate.overlaps(other) for other in busy):
                return candidate
        raise errors.InvalidArgument("could not find an available, non-overlapping IPv4 address pool among the "
                                     "defaults to assign to the network")


def host_routes() -> list[IPv4Network]:
    """The IPv4 destinations this host routes (from /proc/net/route), except the default route."""
    routes = []
    try:
        with open("/proc/net/route") as f:
            next(f, None)
            for line in f:
                fields = line.split()
                if len(fields) < 8:
                    continue
                dest, mask = (IPv4Address(int(fields[i], 16).to_bytes(4, "little")) for i in (1, 7))
                if int(mask):
                    routes.append(IPv4Network(f"{dest}/{mask}", strict=False))
    except OSError:
        pass
    return routes


@dataclass
class Allocator:
    """The addresses in use in one network: the gateway and every endpoint's."""

    pool: Pool
    used: set[IPv4Address] = field(default_factory=set)

    def reserve(self, address: IPv4Address) -> None:
        if address in self.used or address == self.pool.gateway:
            raise errors.Conflict("Address already in use")
        self.used.add(address)

    def allocate(self, network_name: str, network_id: str) -> IPv4Address:
        """The lowest free address of the range. Reusing a freed address soon is harmless here: an
        endpoint's MAC derives from its address, so neighbours' ARP caches stay right."""
        span = self.pool.ip_range or self.pool.subnet
        reserved = {self.pool.subnet.network_address, self.pool.subnet.broadcast_address, self.pool.gateway}
        for address in span:
            if address not in reserved and address not in self.used:
                self.used.add(address)
                return address
        raise errors.SystemFailure(f"no available IPv4 addresses on this network's address pools: {network_name} "
                                   f"({network_id})")

    def release(self, address: IPv4Address) -> None:
        self.used.discard(address)


def mac_for(address: IPv4Address) -> str:
    """Docker's MAC for an address: 02:42 and the four bytes of the address."""
    return "02:42:" + ":".join(f"{b:02x}" for b in address.packed)


def parse_mac(text: str) -> str:
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789abcdefABCDEF" for c in p) for p in parts):
        raise errors.InvalidArgument(f"invalid MAC address: {text}")
    return text.lower()
