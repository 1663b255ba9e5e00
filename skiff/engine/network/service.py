"""``NetworkService``: the engine's networks and each running container's place in them.

Two kinds of state, both under ``DATA-ROOT/network/`` and written atomically:
- ``networks/<id>.json``: a network's configuration (the predefined ``bridge``, ``host`` and ``none``, and
  user-defined bridges). Networks outlive daemon restarts, as Docker's do.
- ``sandboxes/<container id>.json``: what a *running* container holds: its namespace, its endpoints (address,
  MAC, veth, aliases) and its published ports. Address allocations are rebuilt from these files at start,
  so they cannot drift from what is really in use.

A run of a container is bracketed by ``attach`` (before the runtime starts: the namespace with its
interfaces, nftables rules, proxies, DNS; returns the namespace path the spec joins) and ``detach`` (when the
run ends, a start fails, or at removal; idempotent). After a daemon restart ``restore`` brings back the
userland parts (proxies, DNS servers) of the containers that kept running, and tears down sandboxes whose
container is gone. The kernel parts (bridges, veths, namespaces, the nftables table) survive a daemon crash
untouched; a clean shutdown with no container running removes the bridges and the table (the records stay,
and the next start makes them again).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from skiff import errors, netns
from skiff.atomicfile import write_atomically
from skiff.engine.network import Forbidden, bridge, dns, ipam, nft, proxy

log = logging.getLogger(__name__)

PREDEFINED = ("bridge", "host", "none")
DEFAULT_BRIDGE = "bridge"
NAME_PATTERN = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
BRIDGE_NAME_OPTION = "com.docker.network.bridge.name"
MASQUERADE_OPTION = "com.docker.network.bridge.enable_ip_masquerade"
GATEWAY_MODE_OPTION = "com.docker.network.bridge.gateway_mode_ipv4"
GATEWAY_MODES = ("nat", "nat-unprotected", "routed")
_TRUE, _FALSE = ("1", "t", "T", "true", "TRUE", "True"), ("0", "f", "F", "false", "FALSE", "False")
PROTOCOLS = ("tcp", "udp")


# --------------------------------------------------------------------------------------------------
# Configuration and records
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NetworkConfig:
    """The daemon's network flags."""

    bridge: str = "skiff0"  # the default network's bridge (``--bridge``)
    bip: str = "10.88.0.0/16"  # its subnet, gateway at the first address (``--bip``; a host address is kept)
    nft_table: str = "skiff"
    default_pools: str = "base=10.89.0.0/16,size=24"  # ``--default-address-pool``

    def __post_init__(self) -> None:
        try:
            ipaddress.IPv4Interface(self.bip)
        except ValueError:
            raise errors.InvalidArgument(f"invalid --bip {self.bip!r}: want an IPv4 CIDR, e.g. 10.88.0.1/16") from None
        if not 0 < len(self.bridge) <= 15 or "/" in self.bridge or self.bridge.strip() != self.bridge:
            raise errors.InvalidArgument(f"invalid --bridge {self.bridge!r}: an interface name of 1 to 15 characters")
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", self.nft_table):
            raise errors.InvalidArgument(f"invalid --nft-table {self.nft_table!r}: letters, digits and _ only")
        ipam.DefaultPools.parse(self.default_pools)


@dataclass(eq=False)
class Network:
    id: str
    name: str
    driver: str  # bridge | host | null
    created: float
    bridge: str = ""
    pools: list[dict] = field(default_factory=list)  # ipam.Pool docs
    user_subnet: bool = False  # the subnet came from the user (so --ip is allowed)
    internal: bool = False
    attachable: bool = False
    labels: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    ipam_options: dict = field(default_factory=dict)
    # ---- live only
    allocator: ipam.Allocator | None = field(default=None, repr=False)
    handles: list[nft.Handle] = field(default_factory=list, repr=False)

    _PERSISTED = ("id", "name", "driver", "created", "bridge", "pools", "user_subnet", "internal", "attachable",
                  "labels", "options", "ipam_options")

    def record(self) -> dict:
        return {k: getattr(self, k) for k in self._PERSISTED}

    @classmethod
    def from_record(cls, data: dict) -> Network:
        return cls(**{k: data[k] for k in cls._PERSISTED if k in data})

    @property
    def predefined(self) -> bool:
        return self.name in PREDEFINED

    @property
    def is_bridge(self) -> bool:
        return self.driver == "bridge"

    @property
    def pool(self) -> ipam.Pool | None:
        return ipam.Pool.from_doc(self.pools[0]) if self.pools else None

    @property
    def rules(self) -> nft.NetworkRules:
        pool = self.pool
        assert pool is not None
        return nft.NetworkRules(self.bridge, str(pool.subnet), self.internal,
                                masquerade=_flag(self.options.get(MASQUERADE_OPTION, "true")),
                                routed=self.options.get(GATEWAY_MODE_OPTION) == "routed")


@dataclass
class Endpoint:
    network_id: str
    network_name: str
    endpoint_id: str
    ifname: str
    host_ifname: str
    address: str
    prefixlen: int
    mac: str
    gateway: str
    aliases: list[str] = field(default_factory=list)
    ipam_config: dict | None = None


@dataclass
class PublishedPort:
    proto: str
    host_ip: str
    host_port: int
    container_port: int


@dataclass(eq=False)
class Sandbox:
    container_id: str
    netns: str
    endpoints: list[Endpoint] = field(default_factory=list)
    ports: list[PublishedPort] = field(default_factory=list)
    upstreams: list[str] = field(default_factory=list)
    # ---- live only
    port_handles: list[nft.Handle] = field(default_factory=list, repr=False)
    proxies: list[proxy.PortProxy] = field(default_factory=list, repr=False)
    dns_server: dns.DnsServer | None = field(default=None, repr=False)

    def record(self) -> dict:
        return {"container_id": self.container_id, "netns": self.netns, "upstreams": self.upstreams,
                "endpoints": [asdict(e) for e in self.endpoints], "ports": [asdict(p) for p in self.ports]}

    @classmethod
    def from_record(cls, data: dict) -> Sandbox:
        return cls(data["container_id"], data["netns"], [Endpoint(**e) for e in data.get("endpoints") or []],
                   [PublishedPort(**p) for p in data.get("ports") or []], list(data.get("upstreams") or []))

    def primary(self) -> Endpoint | None:
        return self.endpoints[0] if self.endpoints else None


def _new_id() -> str:
    while True:
        value = secrets.token_hex(32)
        if not value[:12].isdigit():
            return value


# --------------------------------------------------------------------------------------------------
# Container configuration: which networks, which ports
# --------------------------------------------------------------------------------------------------


def network_mode(host_config: dict) -> str:
    mode = host_config.get("NetworkMode") or "default"
    return DEFAULT_BRIDGE if mode == "default" else mode


def has_own_network(host_config: dict) -> bool:
    """Whether the container gets a sandbox of ours (bridge networks), rather than host, none or another's."""
    mode = network_mode(host_config)
    return mode not in ("host", "none") and not mode.startswith("container:")


def _port_key(key: str) -> tuple[int, str]:
    """``80/tcp`` -> (80, "tcp"); bad ports and protocols are refused with dockerd's words."""
    port, _, proto = str(key).partition("/")
    proto = (proto or "tcp").lower()
    if proto not in PROTOCOLS:
        if proto == "sctp":
            raise errors.Unsupported("sctp ports are not supported")
        raise errors.InvalidArgument(f"invalid proto: {proto}")
    try:
        number = int(port)
    except ValueError:
        raise errors.InvalidArgument(f"invalid containerPort: {port}") from None
    if not 0 < number < 65536:
        raise errors.InvalidArgument(f"invalid containerPort: {port}")
    return number, proto


def _host_ports(text: str) -> list[int]:
    """``""`` -> [0] (any), ``8080`` -> [8080], ``8080-8082`` -> each of them in turn."""
    text = (text or "").strip()
    if not text:
        return [0]
    low, _, high = text.partition("-")
    try:
        first, last = int(low), int(high or low)
    except ValueError:
        raise errors.InvalidArgument(f"invalid hostPort: {text}") from None
    if not (0 <= first <= last < 65536):
        raise errors.InvalidArgument(f"invalid hostPort: {text}")
    return list(range(first, last + 1))


def _host_ip(text: str) -> str | None:
    """The IPv4 host address to publish on ("0.0.0.0": all); None for IPv6 addresses (not published)."""
    text = (text or "").strip().strip("[]")
    if not text:
        return "0.0.0.0"
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise errors.InvalidArgument(f"invalid host IP address: {text}") from None
    return str(address) if address.version == 4 else None


def requested_ports(config: dict, host_config: dict) -> list[tuple[str, int, str, list[int]]]:
    """(proto, container port, host address, candidate host ports) for every port to publish: the
    PortBindings, and with PublishAllPorts every exposed port (on a random host port) not bound already."""
    bindings = dict(host_config.get("PortBindings") or {})
    if host_config.get("PublishAllPorts"):
        for key in config.get("ExposedPorts") or {}:
            bindings.setdefault(key, [{"HostIp": "", "HostPort": ""}])
    wanted = []
    for key, entries in bindings.items():
        port, proto = _port_key(key)
        for entry in entries or [{}]:
            host_ip = _host_ip((entry or {}).get("HostIp") or "")
            if host_ip is not None:
                wanted.append((proto, port, host_ip, _host_ports((entry or {}).get("HostPort") or "")))
    return wanted


# --------------------------------------------------------------------------------------------------
# The service
# --------------------------------------------------------------------------------------------------


class NetworkService:
    def __init__(self, engine: Any, config: NetworkConfig | None = None) -> None:
        self.engine = engine
        self.config = config or NetworkConfig()
        root = os.path.join(engine.config.data_root, "network")
        self.networks_dir = os.path.join(root, "networks")
        self.sandboxes_dir = os.path.join(root, "sandboxes")
        self.netns_dir = os.path.join(engine.config.exec_root, "netns")
        self.table = nft.NftTable(self.config.nft_table)
        self.default_pools = ipam.DefaultPools.parse(self.config.default_pools)
        self.networks: dict[str, Network] = {}
        self.sandboxes: dict[str, Sandbox] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._network_lock = asyncio.Lock()
        self.resolver = dns.Resolver(self._dns_lookup, self._dns_reverse, self._subnets)

    # ---- daemon start and stop -------------------------------------------------------------------

    async def start(self) -> None:
        """Load networks and sandboxes, make sure the bridges exist and rebuild the nftables table."""
        for path in (self.networks_dir, self.sandboxes_dir, self.netns_dir):
            os.makedirs(path, mode=0o711, exist_ok=True)
        for data in self._read_all(self.networks_dir):
            net = Network.from_record(data)
            self.networks[net.id] = net
        self._ensure_predefined()
        await asyncio.to_thread(bridge.set_ip_forward)
        for net in self.networks.values():
            if net.is_bridge:
                await self._make_bridge(net)
        for data in self._read_all(self.sandboxes_dir):
            sb = Sandbox.from_record(data)
            self.sandboxes[sb.container_id] = sb
            for ep in sb.endpoints:
                net = self.networks.get(ep.network_id)
                if net is not None and net.allocator is not None:
                    net.allocator.used.add(ipam.IPv4Address(ep.address))
        await self._rebuild_table()

    def _read_all(self, directory: str) -> list[dict]:
        found = []
        for name in sorted(os.listdir(directory)):
            if not name.endswith(".json"):
                continue
            try:
                with open(os.path.join(directory, name)) as f:
                    found.append(json.load(f))
            except (OSError, ValueError) as e:
                log.error("unreadable %s (skipped): %s", os.path.join(directory, name), e)
        return found

    def _ensure_predefined(self) -> None:
        """``bridge`` (on ``--bridge``/``--bip``), ``host`` and ``none``, made once and kept (stable ids)."""
        by_name = {n.name: n for n in self.networks.values()}
        subnet = ipaddress.IPv4Interface(self.config.bip)
        gateway = subnet.ip if subnet.ip != subnet.network.network_address else ipam.first_host(subnet.network)
        pool = ipam.Pool(subnet.network, gateway).doc()
        default = by_name.get(DEFAULT_BRIDGE)
        options = {"com.docker.network.bridge.default_bridge": "true",
                   "com.docker.network.bridge.enable_icc": "true",
                   "com.docker.network.bridge.enable_ip_masquerade": "true",
                   "com.docker.network.bridge.host_binding_ipv4": "0.0.0.0",
                   BRIDGE_NAME_OPTION: self.config.bridge, "com.docker.network.driver.mtu": str(bridge.MTU)}
        if default is None or default.bridge != self.config.bridge or default.pools != [pool]:
            default = Network(id=default.id if default else _new_id(), name=DEFAULT_BRIDGE, driver="bridge",
                              created=default.created if default else time.time(), bridge=self.config.bridge,
                              pools=[pool], options=options)
            self._save_network(default)
        self.networks[default.id] = default
        for name, driver in (("host", "host"), ("none", "null")):
            if name not in by_name:
                net = Network(id=_new_id(), name=name, driver=driver, created=time.time())
                self.networks[net.id] = net
                self._save_network(net)
        for net in self.networks.values():
            if net.is_bridge and net.allocator is None:
                pool_ = net.pool
                assert pool_ is not None
                net.allocator = ipam.Allocator(pool_)

    async def _make_bridge(self, net: Network) -> None:
        pool = net.pool
        assert pool is not None
        await asyncio.to_thread(bridge.ensure_bridge, net.bridge, str(pool.gateway), pool.subnet.prefixlen)

    async def _rebuild_table(self) -> None:
        bridges = [n for n in self.networks.values() if n.is_bridge]
        groups = [self._port_rules(sb) for sb in self.sandboxes.values()]
        net_handles, port_handles = await self.table.rebuild([n.rules for n in bridges], groups)
        for net, handles in zip(bridges, net_handles, strict=True):
            net.handles = handles
        for sb, handles in zip(self.sandboxes.values(), port_handles, strict=True):
            sb.port_handles = handles

    async def restore(self) -> None:
        """After the containers are restored: bring back proxies and DNS of the running ones, drop the rest."""
        for cid in list(self.sandboxes):
            c = self.container_of(cid)
            async with self._lock(cid):
                sb = self.sandboxes.get(cid)
                if sb is None:
                    continue
                if c is None or not c.state.running or not netns.is_pinned(sb.netns):
                    await self._teardown(sb)
                    continue
                if sb.proxies or sb.dns_server is not None:
                    continue  # a run started since the daemon came up (a restart policy): attach made these
                try:
                    await self._start_userland(sb, c)
                except errors.SkiffError as e:
                    log.error("container %s: restoring its network: %s", cid[:12], e)

    async def stop(self) -> None:
        """Close proxies and DNS servers (the daemon is going); with no container running, also remove the
        bridges and the table (made again at the next start)."""
        for sb in self.sandboxes.values():
            await self._stop_userland(sb)
        if self.sandboxes:
            return
        await self.table.delete()
        for net in self.networks.values():
            if net.is_bridge:
                await asyncio.to_thread(bridge.delete_link, net.bridge)

    # ---- lookups ------------------------------------------------------------------------------------

    def get(self, ref: str) -> Network:
        """By full id, name, then unique id prefix (dockerd's order)."""
        if ref in self.networks:
            return self.networks[ref]
        for net in self.networks.values():
            if net.name == ref:
                return net
        matches = [n for n in self.networks.values() if ref and n.id.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise errors.InvalidArgument(f"network {ref} is ambiguous ({len(matches)} matches found based on ID "
                                         "prefix)")
        raise errors.NotFound(f"network {ref} not found")

    def all(self) -> list[Network]:
        return sorted(self.networks.values(), key=lambda n: n.created)

    def endpoints_of(self, net: Network) -> list[tuple[str, Endpoint]]:
        """(container id, endpoint) of every running container on ``net``."""
        return [(sb.container_id, ep) for sb in self.sandboxes.values() for ep in sb.endpoints
                if ep.network_id == net.id]

    def sandbox(self, container_id: str) -> Sandbox | None:
        return self.sandboxes.get(container_id)

    def container_of(self, cid: str) -> Any | None:
        containers = getattr(self.engine, "containers", None)
        if containers is None:
            return None
        try:
            return containers.get(cid)
        except errors.NotFound:
            return None

    def _lock(self, cid: str) -> asyncio.Lock:
        return self._locks.setdefault(cid, asyncio.Lock())

    # ---- networks: create, remove, prune -----------------------------------------------------------

    async def create(self, body: dict) -> Network:
        """``POST /networks/create``."""
        name = (body.get("Name") or "").strip()
        if not name:
            raise errors.InvalidArgument("network name must not be empty")  # dockerd: 400 as well
        if not NAME_PATTERN.match(name):
            raise errors.InvalidArgument(f"invalid network name {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
        driver = body.get("Driver") or "bridge"
        if driver in ("host", "null"):
            raise Forbidden(f'only one instance of "{driver}" network is allowed')
        if driver != "bridge":
            raise errors.NotFound(f'plugin "{driver}" not found')
        if body.get("EnableIPv6"):
            raise errors.Unsupported("IPv6 networks are not supported")
        ipam_body = body.get("IPAM") or {}
        if (ipam_body.get("Driver") or "default") != "default":
            raise errors.NotFound(f'plugin "{ipam_body["Driver"]}" not found')
        entries = ipam.parse_config(ipam_body.get("Config") or [])
        if len(entries) > 1:
            raise errors.Unsupported("only one IPv4 pool per network is supported")
        options = {str(k): str(v) for k, v in (body.get("Options") or {}).items()}
        _check_options(options)
        async with self._network_lock:
            if any(n.name == name for n in self.networks.values()):
                raise errors.Conflict(f"network with name {name} already exists")
            taken = [p.subnet for n in self.networks.values() if (p := n.pool) is not None]
            if entries:
                pool = ipam.make_pool(entries[0])
                ipam.check_overlap(pool.subnet, taken)
            else:
                subnet = self.default_pools.pick(taken + ipam.host_routes())
                pool = ipam.Pool(subnet, ipam.first_host(subnet))
            net_id = _new_id()
            bridge_name = options.get(BRIDGE_NAME_OPTION) or f"br-{net_id[:12]}"
            if any(n.bridge == bridge_name for n in self.networks.values()) or len(bridge_name) > 15:
                raise errors.Conflict(f"bridge name {bridge_name} is in use or invalid")
            net = Network(id=net_id, name=name, driver="bridge", created=time.time(), bridge=bridge_name,
                          pools=[pool.doc()], user_subnet=bool(entries), internal=bool(body.get("Internal")),
                          attachable=bool(body.get("Attachable")), labels=dict(body.get("Labels") or {}),
                          options=options, ipam_options=dict(ipam_body.get("Options") or {}),
                          allocator=ipam.Allocator(pool))
            try:
                await self._make_bridge(net)
                net.handles = await self.table.add_network(net.rules)
                self.networks[net.id] = net
                self._save_network(net)
            except BaseException:
                self.networks.pop(net.id, None)
                await self._drop_bridge(net)
                raise
        self._event(net, "create")
        return net

    async def remove(self, ref: str) -> None:
        """``DELETE /networks/{id}``: refused for predefined networks and while containers run on it."""
        net = self.get(ref)
        if net.predefined:
            raise Forbidden(f"{net.name} is a pre-defined network and cannot be removed")
        async with self._network_lock:
            if self.endpoints_of(net):
                raise Forbidden(f"error while removing network: network {net.name} id {net.id} has active endpoints")
            self.networks.pop(net.id, None)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._network_path(net))
            await self._drop_bridge(net)
        self._event(net, "destroy")

    async def _drop_bridge(self, net: Network) -> None:
        if net.handles:
            await self.table.remove_network(net.rules, net.handles)
            net.handles = []
        await asyncio.to_thread(bridge.delete_link, net.bridge)

    async def prune(self, keep: Any) -> list[str]:
        """Remove the user-defined networks no container runs on and ``keep`` does not keep."""
        removed = []
        for net in self.all():
            if net.predefined or self.endpoints_of(net) or keep(net):
                continue
            try:
                await self.remove(net.id)
            except errors.SkiffError as e:
                log.warning("network prune: %s: %s", net.name, e)
                continue
            removed.append(net.name)
        return removed

    def _network_path(self, net: Network) -> str:
        return os.path.join(self.networks_dir, f"{net.id}.json")

    def _save_network(self, net: Network) -> None:
        write_atomically(self._network_path(net), json.dumps(net.record()).encode())

    def _event(self, net: Network, action: str, **extra: str) -> None:
        self.engine.events.publish("network", action, net.id, {"name": net.name, "type": net.driver, **extra})

    # ---- container create: check and normalise ---------------------------------------------------

    def prepare_container(self, config: dict, host_config: dict, networking: dict) -> dict:
        """Check a container's network settings at create (dockerd's words) and return its NetworkingConfig
        with one EndpointsConfig entry per network, keyed by network name, the NetworkMode's first."""
        mode = network_mode(host_config)
        endpoints = dict((networking or {}).get("EndpointsConfig") or {})
        published = requested_ports(config, host_config)
        if not has_own_network(host_config):
            if published and mode == "host":
                host_config["PortBindings"] = {}  # dockerd: "Published ports are discarded when using host ..."
            elif published:
                raise errors.InvalidArgument("conflicting options: port publishing and the container type network "
                                             "mode")
            if mode in ("host", "none") and any(k not in (mode, "default") for k in endpoints):
                raise errors.InvalidArgument(f"conflicting options: {mode} networking with other networks")
            return {"EndpointsConfig": endpoints} if endpoints else {}
        normalised: dict[str, dict] = {}
        order = [mode] + [k for k in endpoints if k != mode and not (mode == DEFAULT_BRIDGE and k == "default")]
        for ref in order:
            settings = dict(endpoints.get(ref) or (endpoints.get("default") if ref == DEFAULT_BRIDGE else None) or {})
            try:
                net = self.get(ref)
            except errors.NotFound:
                # dockerd finds out at start ("network x not found"); a 404 here would make the CLI pull the image
                normalised[ref] = settings
                continue
            if not net.is_bridge:
                raise errors.InvalidArgument(f"container cannot be connected to network {net.name}: it is a "
                                             f"{net.driver} network; use --network {net.name} alone")
            if ref == mode and config.get("MacAddress") and not settings.get("MacAddress"):
                settings["MacAddress"] = config["MacAddress"]  # API < 1.44 put it in Config
            self._check_endpoint(net, settings)
            settings["NetworkID"] = net.id
            normalised[net.name] = settings
        return {"EndpointsConfig": normalised}

    def _check_endpoint(self, net: Network, settings: dict) -> None:
        ipv4 = ((settings.get("IPAMConfig") or {}).get("IPv4Address") or "").strip()
        if settings.get("MacAddress"):
            settings["MacAddress"] = ipam.parse_mac(settings["MacAddress"])
        if net.name == DEFAULT_BRIDGE:
            if ipv4:
                raise errors.InvalidArgument("user specified IP address is supported on user defined networks only")
            if settings.get("Aliases"):
                raise errors.InvalidArgument("network-scoped alias is supported only for containers in user defined "
                                             "networks")
        if ipv4:
            if not net.user_subnet:
                raise errors.InvalidArgument("user specified IP address is supported only when connecting to "
                                             "networks with user configured subnets")
            try:
                address = ipaddress.IPv4Address(ipv4)
            except ValueError:
                raise errors.InvalidArgument(f"invalid IPv4 address: {ipv4}") from None
            pool = net.pool
            assert pool is not None
            if not pool.contains(address):
                raise errors.InvalidArgument(f"Invalid config for network {net.name}: invalid endpoint settings:\n"
                                             f"no configured subnet or ip-range contain the IP address {ipv4}")

    # ---- a container's run: attach and detach --------------------------------------------------------

    async def attach(self, c: Any) -> str | None:
        """Before a run starts: the container's sandbox. Returns the namespace path for the spec, or None when
        the container has no network of ours (host, none, another container's)."""
        if not has_own_network(c.host_config):
            return None
        async with self._lock(c.id):
            if c.id in self.sandboxes:
                await self._teardown(self.sandboxes[c.id])  # left over from a run that ended unseen
            sb = Sandbox(c.id, os.path.join(self.netns_dir, c.id),
                         upstreams=dns.upstream_servers(_read("/etc/resolv.conf"), c.host_config.get("Dns") or []))
            try:
                await self._build(sb, c)
            except BaseException:
                await self._teardown(sb)
                raise
            return sb.netns

    async def _build(self, sb: Sandbox, c: Any) -> None:
        wanted = c.networking_config.get("EndpointsConfig") or {}
        networks = [(self._configured_network(name, settings), settings) for name, settings in wanted.items()]
        self.sandboxes[sb.container_id] = sb
        for net, settings in networks:
            sb.endpoints.append(self._new_endpoint(net, settings, sb, c))
        self._save_sandbox(sb)
        sockets = self._bind_ports(sb, c)
        try:
            await asyncio.to_thread(netns.create, sb.netns, bridge.loopback_up)
            for ep in sb.endpoints:
                await self._plug(sb, ep)
            sb.port_handles = await self.table.add_ports(self._port_rules(sb))
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        self._save_sandbox(sb)
        await self._start_userland(sb, c, sockets)

    def _configured_network(self, name: str, settings: dict) -> Network:
        """The network a container's EndpointsConfig entry names: by the id it was resolved to at create, else
        by name (a network removed and made again under the same name)."""
        net = self.networks.get(settings.get("NetworkID") or "")
        if net is None:
            net = self.get(name)
            settings["NetworkID"] = net.id
        return net

    def _new_endpoint(self, net: Network, settings: dict, sb: Sandbox, c: Any) -> Endpoint:
        """Take an address (the static one asked for, or the next free one) in ``net``."""
        allocator = net.allocator
        assert allocator is not None
        static = ((settings.get("IPAMConfig") or {}).get("IPv4Address") or "").strip()
        if static:
            address = ipaddress.IPv4Address(static)
            allocator.reserve(address)
        else:
            address = allocator.allocate(net.name, net.id)
        taken = {e.ifname for e in sb.endpoints}
        ifname = next(f"eth{n}" for n in range(len(taken) + 1) if f"eth{n}" not in taken)
        pool = allocator.pool
        has_route = not net.internal and not any(not self.networks[e.network_id].internal for e in sb.endpoints
                                                 if e.network_id in self.networks)
        return Endpoint(network_id=net.id, network_name=net.name, endpoint_id=_new_id(), ifname=ifname,
                        host_ifname=bridge.new_host_ifname(), address=str(address), prefixlen=pool.subnet.prefixlen,
                        mac=settings.get("MacAddress") or ipam.mac_for(address),
                        gateway=str(pool.gateway) if has_route else "",
                        aliases=[str(a) for a in settings.get("Aliases") or []],
                        ipam_config=settings.get("IPAMConfig") or None)

    async def _plug(self, sb: Sandbox, ep: Endpoint) -> None:
        net = self.networks[ep.network_id]
        await asyncio.to_thread(bridge.add_endpoint, net.bridge, ep.host_ifname, sb.netns, ep.ifname, ep.address,
                                ep.prefixlen, ep.mac, ep.gateway or None)

    def _publishing_endpoint(self, sb: Sandbox) -> Endpoint | None:
        """Published ports lead to the first endpoint on a network that reaches outside."""
        return next((e for e in sb.endpoints if e.network_id in self.networks
                     and not self.networks[e.network_id].internal), None)

    def _bind_ports(self, sb: Sandbox, c: Any) -> list[Any]:
        """Reserve every published port by binding it (refused with dockerd's words when taken); records the
        ports chosen. Returns the bound sockets, in the order of ``sb.ports``."""
        if self._publishing_endpoint(sb) is None:
            return []
        sockets: list[Any] = []
        try:
            for proto, container_port, host_ip, candidates in requested_ports(c.config, c.host_config):
                sock = None
                for index, port in enumerate(candidates):
                    try:
                        sock = proxy.bind(proto, host_ip, port)
                        break
                    except errors.Conflict:
                        if index == len(candidates) - 1:
                            raise
                assert sock is not None
                sockets.append(sock)
                sb.ports.append(PublishedPort(proto, host_ip, sock.getsockname()[1], container_port))
        except BaseException:
            for sock in sockets:
                sock.close()
            sb.ports.clear()
            raise
        return sockets

    def _port_rules(self, sb: Sandbox) -> list[nft.PortRule]:
        ep = self._publishing_endpoint(sb)
        if ep is None:
            return []
        return [nft.PortRule(p.proto, p.host_ip, p.host_port, ep.address, p.container_port) for p in sb.ports
                if not ipaddress.IPv4Address(p.host_ip).is_loopback]

    async def _start_userland(self, sb: Sandbox, c: Any, sockets: list[Any] | None = None) -> None:
        """The proxies of published ports (on the sockets bound already, or bound again after a restart) and
        the DNS server when the container is on a user-defined network."""
        ep = self._publishing_endpoint(sb)
        if ep is not None:
            for index, port in enumerate(sb.ports):
                sock = sockets[index] if sockets else proxy.bind(port.proto, port.host_ip, port.host_port)
                relay = proxy.PortProxy(port.proto, sock, (ep.address, port.container_port))
                sb.proxies.append(relay)
                await relay.start()
        await self._ensure_dns(sb)

    async def _ensure_dns(self, sb: Sandbox) -> None:
        user_networks = [self.networks[e.network_id] for e in sb.endpoints
                         if e.network_id in self.networks and e.network_name != DEFAULT_BRIDGE]
        if sb.dns_server is not None or not user_networks:
            return
        server = dns.DnsServer(sb.container_id, sb.netns, self.resolver, sb.upstreams,
                               forward=any(not n.internal for n in user_networks))
        await server.start()
        sb.dns_server = server

    async def _stop_userland(self, sb: Sandbox) -> None:
        for relay in sb.proxies:
            with contextlib.suppress(Exception):
                await relay.close()
        sb.proxies.clear()
        if sb.dns_server is not None:
            with contextlib.suppress(Exception):
                await sb.dns_server.close()
            sb.dns_server = None

    async def detach(self, c: Any) -> None:
        """The run ended (or never started): remove everything ``attach`` made. Idempotent."""
        async with self._lock(c.id):
            sb = self.sandboxes.get(c.id)
            if sb is not None:
                await self._teardown(sb)
        self._locks.pop(c.id, None)

    async def _teardown(self, sb: Sandbox) -> None:
        await self._stop_userland(sb)
        await self.table.delete_rules(sb.port_handles)
        sb.port_handles = []
        for ep in sb.endpoints:
            await asyncio.to_thread(bridge.delete_link, ep.host_ifname)
        try:
            await asyncio.to_thread(netns.remove, sb.netns)
        except OSError as e:
            log.warning("container %s: removing its network namespace: %s", sb.container_id[:12], e)
        for ep in sb.endpoints:
            self._release(ep)
        self.sandboxes.pop(sb.container_id, None)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._sandbox_path(sb))

    def _release(self, ep: Endpoint) -> None:
        net = self.networks.get(ep.network_id)
        if net is not None and net.allocator is not None:
            net.allocator.release(ipaddress.IPv4Address(ep.address))

    def _sandbox_path(self, sb: Sandbox) -> str:
        return os.path.join(self.sandboxes_dir, f"{sb.container_id}.json")

    def _save_sandbox(self, sb: Sandbox) -> None:
        write_atomically(self._sandbox_path(sb), json.dumps(sb.record()).encode())

    # ---- connect and disconnect -------------------------------------------------------------------

    async def connect(self, ref: str, container_ref: str, settings: dict | None = None) -> None:
        """``POST /networks/{id}/connect``: live into a running container, and into its configuration."""
        net = self.get(ref)
        c = self.engine.containers.get(container_ref)
        if not has_own_network(c.host_config):
            raise errors.InvalidArgument("container sharing network namespace with another container or host "
                                         "cannot be connected to any other network")
        if not net.is_bridge:
            raise errors.InvalidArgument(f"container cannot be disconnected from host network or connected to "
                                         f"{net.name} network")
        settings = dict(settings or {})
        self._check_endpoint(net, settings)
        settings["NetworkID"] = net.id
        configured = c.networking_config.setdefault("EndpointsConfig", {})
        if net.name in configured:
            raise Forbidden(f"endpoint with name {c.short_name} already exists in network {net.name}")
        async with self._lock(c.id):
            sb = self.sandboxes.get(c.id)
            if sb is not None and c.state.running:
                ep = self._new_endpoint(net, settings, sb, c)
                ep.ifname = await asyncio.to_thread(bridge.next_ifname, sb.netns)
                try:
                    await self._plug(sb, ep)
                except BaseException:
                    self._release(ep)
                    raise
                sb.endpoints.append(ep)
                self._save_sandbox(sb)
                await self._ensure_dns(sb)
            configured[net.name] = settings
            self.engine.containers._save(c)
        self._event(net, "connect", container=c.id)

    async def disconnect(self, ref: str, container_ref: str, force: bool = False) -> None:
        """``POST /networks/{id}/disconnect``."""
        net = self.get(ref)
        c = self.engine.containers.get(container_ref)
        configured = c.networking_config.setdefault("EndpointsConfig", {})
        if not net.is_bridge:
            raise errors.InvalidArgument(f"container cannot be disconnected from {net.name} network")
        if net.name not in configured and not force:
            raise errors.InvalidArgument(f"container {c.id} is not connected to network {net.name}")
        async with self._lock(c.id):
            sb = self.sandboxes.get(c.id)
            if sb is not None:
                for ep in [e for e in sb.endpoints if e.network_id == net.id]:
                    await asyncio.to_thread(bridge.delete_link, ep.host_ifname)
                    self._release(ep)
                    sb.endpoints.remove(ep)
                self._save_sandbox(sb)
            configured.pop(net.name, None)
            self.engine.containers._save(c)
        self._event(net, "disconnect", container=c.id)

    # ---- what containers see: /etc files, inspect --------------------------------------------------

    def primary_address(self, c: Any) -> str | None:
        sb = self.sandboxes.get(c.id)
        ep = sb.primary() if sb else None
        return ep.address if ep else None

    def uses_embedded_dns(self, c: Any) -> bool:
        """Containers on user-defined networks resolve through 127.0.0.11 (the default bridge has no DNS)."""
        if not has_own_network(c.host_config):
            return False
        return any(name != DEFAULT_BRIDGE for name in (c.networking_config.get("EndpointsConfig") or {}))

    def host_gateway(self) -> str:
        """``--add-host NAME:host-gateway``: the default bridge's address on the host."""
        net = next(n for n in self.networks.values() if n.name == DEFAULT_BRIDGE)
        pool = net.pool
        return str(pool.gateway) if pool else ""

    def settings(self, c: Any) -> dict:
        """Docker's ``NetworkSettings`` of a container (inspect)."""
        sb = self.sandboxes.get(c.id) if c.state.running else None
        networks: dict[str, dict] = {}
        mode = network_mode(c.host_config)
        configured = c.networking_config.get("EndpointsConfig") or {}
        if not has_own_network(c.host_config) and not configured:
            configured = {mode: {}} if mode in ("host", "none") else {}
        live = {e.network_id: e for e in sb.endpoints} if sb else {}
        for name, conf in configured.items():
            ep = live.get(conf.get("NetworkID", ""))
            networks[name] = self._endpoint_doc(c, name, conf, ep)
        top = networks.get(DEFAULT_BRIDGE, {})
        return {
            "Bridge": "", "SandboxID": hashlib.sha256(sb.netns.encode()).hexdigest() if sb else "",
            "SandboxKey": sb.netns if sb else "", "Ports": self.ports_doc(c), "HairpinMode": False,
            "LinkLocalIPv6Address": "", "LinkLocalIPv6PrefixLen": 0, "SecondaryIPAddresses": None,
            "SecondaryIPv6Addresses": None, "EndpointID": top.get("EndpointID", ""),
            "Gateway": top.get("Gateway", ""), "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0,
            "IPAddress": top.get("IPAddress", ""), "IPPrefixLen": top.get("IPPrefixLen", 0), "IPv6Gateway": "",
            "MacAddress": top.get("MacAddress", ""), "Networks": networks,
        }

    def _endpoint_doc(self, c: Any, name: str, conf: dict, ep: Endpoint | None) -> dict:
        dns_names = None
        if ep is not None and name != DEFAULT_BRIDGE:
            dns_names = [c.short_name, c.id[:12], *[a for a in ep.aliases if a not in (c.short_name, c.id[:12])]]
        return {
            "IPAMConfig": conf.get("IPAMConfig") or None, "Links": conf.get("Links") or None,
            "Aliases": conf.get("Aliases") or None, "MacAddress": ep.mac if ep else "",
            "NetworkID": conf.get("NetworkID") or (self._id_of(name)), "EndpointID": ep.endpoint_id if ep else "",
            "Gateway": ep.gateway if ep else "", "IPAddress": ep.address if ep else "",
            "IPPrefixLen": ep.prefixlen if ep else 0, "IPv6Gateway": "", "GlobalIPv6Address": "",
            "GlobalIPv6PrefixLen": 0, "DriverOpts": conf.get("DriverOpts") or None, "DNSNames": dns_names,
        }

    def _id_of(self, name: str) -> str:
        return next((n.id for n in self.networks.values() if n.name == name), "")

    def ports_doc(self, c: Any) -> dict:
        """``NetworkSettings.Ports``: every exposed or published port, with its host bindings while running."""
        sb = self.sandboxes.get(c.id) if c.state.running else None
        if sb is None:
            return {}
        doc: dict[str, list | None] = {}
        for key in c.config.get("ExposedPorts") or {}:
            port, proto = _port_key(key)
            doc[f"{port}/{proto}"] = None
        for p in sb.ports:
            doc.setdefault(f"{p.container_port}/{p.proto}", None)
            doc[f"{p.container_port}/{p.proto}"] = (doc[f"{p.container_port}/{p.proto}"] or []) + [
                {"HostIp": p.host_ip, "HostPort": str(p.host_port)}]
        return doc

    def ports_summary(self, c: Any) -> list[dict]:
        """``docker ps``'s Ports: published ones with their host side, exposed ones alone."""
        result = []
        for key, bindings in self.ports_doc(c).items():
            port, proto = _port_key(key)
            if not bindings:
                result.append({"PrivatePort": port, "Type": proto})
            for b in bindings or []:
                result.append({"IP": b["HostIp"], "PrivatePort": port, "PublicPort": int(b["HostPort"]),
                               "Type": proto})
        return result

    # ---- the embedded DNS's view --------------------------------------------------------------------

    def _shared(self, asker: str) -> set[str]:
        sb = self.sandboxes.get(asker)
        return {e.network_id for e in sb.endpoints if e.network_name != DEFAULT_BRIDGE} if sb else set()

    def _names(self, sb: Sandbox, ep: Endpoint) -> set[str]:
        c = self.container_of(sb.container_id)
        names = {sb.container_id[:12], *(a.lower() for a in ep.aliases)}
        if c is not None:
            names.add(c.short_name.lower())
        return names

    def _dns_lookup(self, asker: str, name: str) -> list[str] | None:
        shared = self._shared(asker)
        found: list[str] = []
        for sb in self.sandboxes.values():
            for ep in sb.endpoints:
                if ep.network_id not in shared:
                    continue
                names = self._names(sb, ep)
                suffix = "." + ep.network_name.lower()
                named = name in names or (name.endswith(suffix) and name[: -len(suffix)] in names)
                if named and ep.address not in found:
                    found.append(ep.address)
        return found or None

    def _dns_reverse(self, asker: str, address: str) -> str | None:
        shared = self._shared(asker)
        for sb in self.sandboxes.values():
            for ep in sb.endpoints:
                if ep.network_id in shared and ep.address == address:
                    c = self.container_of(sb.container_id)
                    return f"{c.short_name if c else sb.container_id[:12]}.{ep.network_name}"
        return None

    def _subnets(self) -> list[ipaddress.IPv4Network]:
        return [p.subnet for n in self.networks.values() if (p := n.pool) is not None]


def _flag(value: str) -> bool:
    """A boolean driver option, as Go's strconv.ParseBool reads it."""
    return value not in _FALSE


def _check_options(options: dict[str, str]) -> None:
    """The bridge driver options whose values Skiff acts on (dockerd refuses bad ones at create, too)."""
    masquerade = options.get(MASQUERADE_OPTION)
    if masquerade is not None and masquerade not in _TRUE + _FALSE:
        raise errors.InvalidArgument(f"invalid value {masquerade!r} for {MASQUERADE_OPTION}: want true or false")
    mode = options.get(GATEWAY_MODE_OPTION)
    if mode is not None and mode not in GATEWAY_MODES:
        raise errors.InvalidArgument(f"invalid value {mode!r} for {GATEWAY_MODE_OPTION}: want one of "
                                     f"{', '.join(GATEWAY_MODES)}")


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""
