"""The Engine API's container routes, and the Docker JSON shapes of containers (inspect, list, stats).

The service (``skiff.engine.containers``) keeps records and runs lifecycles; this module speaks HTTP:
query parameters, status codes (201 create, 204 done, 304 no-op start/stop), streams (wait, logs, stats,
attach) and the documents Docker clients parse. ``pump`` is shared with the exec routes: it copies a
monitor session to a hijacked connection and the client's stdin back.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

from skiff import errors
from skiff.engine import health as healthchecks
from skiff.engine import mounts as container_mounts
from skiff.engine.api.common import (
    MULTIPLEXED_STREAM,
    RAW_STREAM,
    RawStream,
    frame,
    hijack,
    json_response,
    json_stream,
    parse_filters,
    parse_timestamp,
    query_bool,
    query_int,
    read_json,
    rfc3339_nano,
    unless_disconnected,
    until_disconnected,
)
from skiff.engine.containers import (
    WAIT_CONDITIONS,
    Container,
    ContainerService,
    system_cpu_usage,
)
from skiff.engine.filters import labels_match, pattern_match, port_filter, port_key
from skiff.engine.logs import read_log_batches
from skiff.engine.ocispec import MASKED_PATHS, READONLY_PATHS
from skiff.units import human_duration

LIST_FILTERS = ("id", "name", "label", "status", "ancestor", "exited", "before", "since", "health", "isolation",
                "network", "publish", "expose", "volume", "is-task")
STATUSES = ("created", "restarting", "running", "removing", "paused", "exited", "dead")
STATS_INTERVAL = 1.0  # seconds between samples, as dockerd's collector
DEFAULT_DETACH_KEYS = b"\x10\x11"  # ctrl-p ctrl-q

_DEFAULT_CONFIG: dict[str, Any] = {
    "Hostname": "", "Domainname": "", "User": "", "AttachStdin": False, "AttachStdout": False,
    "AttachStderr": False, "Tty": False, "OpenStdin": False, "StdinOnce": False, "Env": None, "Cmd": None,
    "Image": "", "Volumes": None, "WorkingDir": "", "Entrypoint": None, "OnBuild": None, "Labels": {},
}
_DEFAULT_HOST_CONFIG: dict[str, Any] = {
    "Binds": None, "ContainerIDFile": "", "LogConfig": {"Type": "json-file", "Config": {}}, "NetworkMode": "default",
    "PortBindings": {}, "RestartPolicy": {"Name": "no", "MaximumRetryCount": 0}, "AutoRemove": False,
    "VolumeDriver": "", "VolumesFrom": None, "ConsoleSize": [0, 0], "CapAdd": None, "CapDrop": None,
    "CgroupnsMode": "host", "Dns": [], "DnsOptions": [], "DnsSearch": [], "ExtraHosts": None, "GroupAdd": None,
    "IpcMode": "private", "Cgroup": "", "Links": None, "OomScoreAdj": 0, "PidMode": "", "Privileged": False,
    "PublishAllPorts": False, "ReadonlyRootfs": False, "SecurityOpt": None, "UTSMode": "", "UsernsMode": "",
    "ShmSize": 67108864, "Runtime": "runc", "Isolation": "", "CpuShares": 0, "Memory": 0, "NanoCpus": 0,
    "CgroupParent": "", "BlkioWeight": 0, "BlkioWeightDevice": [], "BlkioDeviceReadBps": [],
    "BlkioDeviceWriteBps": [], "BlkioDeviceReadIOps": [], "BlkioDeviceWriteIOps": [], "CpuPeriod": 0,
    "CpuQuota": 0, "CpuRealtimePeriod": 0, "CpuRealtimeRuntime": 0, "CpusetCpus": "", "CpusetMems": "",
    "Devices": [], "DeviceCgroupRules": None, "DeviceRequests": None, "MemoryReservation": 0, "MemorySwap": 0,
    "MemorySwappiness": None, "OomKillDisable": False, "PidsLimit": None, "Ulimits": [], "CpuCount": 0,
    "CpuPercent": 0, "IOMaximumIOps": 0, "IOMaximumBandwidth": 0, "MaskedPaths": MASKED_PATHS,
    "ReadonlyPaths": READONLY_PATHS,
}
_ENDPOINT: dict[str, Any] = {
    "IPAMConfig": None, "Links": None, "Aliases": None, "MacAddress": "", "NetworkID": "", "EndpointID": "",
    "Gateway": "", "IPAddress": "", "IPPrefixLen": 0, "IPv6Gateway": "", "GlobalIPv6Address": "",
    "GlobalIPv6PrefixLen": 0, "DriverOpts": None, "DNSNames": None,
}


# --------------------------------------------------------------------------------------------------
# Docker's shapes
# --------------------------------------------------------------------------------------------------




def status_text(c: Container, now: float | None = None) -> str:
    """Docker's ``Status`` column."""
    now = time.time() if now is None else now
    st = c.state
    if st.status == "paused":
        return f"Up {human_duration(now - st.started_at)} (Paused)"
    if st.status == "restarting":
        return f"Restarting ({st.exit_code}) {human_duration(now - st.finished_at)} ago"
    if st.status == "running":
        return f"Up {human_duration(now - st.started_at)}{healthchecks.status_suffix(c.health)}"
    if c.removing or st.status == "removing":
        return "Removal In Progress"
    if st.status == "dead":
        return "Dead"
    if st.status == "created" or not st.finished_at:
        return "Created"
    return f"Exited ({st.exit_code}) {human_duration(now - st.finished_at)} ago"


def command_text(c: Container) -> str:
    """Docker's ``Command``: the path, then the arguments, those with spaces in single quotes."""
    path, args = c.path_and_args
    if not args:
        return path
    return path + " " + " ".join(f"'{a}'" if " " in a else a for a in args)


def state_doc(c: Container) -> dict:
    st = c.state
    status = "removing" if c.removing else st.status
    return {"Status": status, "Running": st.running, "Paused": st.status == "paused",
            "Restarting": st.status == "restarting", "OOMKilled": st.oom_killed, "Dead": st.status == "dead",
            "Pid": st.pid if st.status in ("running", "paused") else 0, "ExitCode": st.exit_code, "Error": st.error,
            "StartedAt": rfc3339_nano(st.started_at), "FinishedAt": rfc3339_nano(st.finished_at),
            **({"Health": health_doc(c.health)} if c.health is not None else {})}


def health_doc(health: dict) -> dict:
    """``State.Health``: the status, the failing streak and the last results, their times in RFC 3339."""
    return {"Status": health.get("Status") or "unhealthy", "FailingStreak": health.get("FailingStreak", 0),
            "Log": [{**r, "Start": rfc3339_nano(r.get("Start")), "End": rfc3339_nano(r.get("End"))}
                    for r in health.get("Log") or []]}


def network_name(c: Container) -> str:
    mode = c.host_config.get("NetworkMode") or "default"
    return "bridge" if mode in ("default", "bridge") else mode


def networks_doc(c: Container) -> dict:
    """The container's networks (until bridge networking arrives: no addresses, one entry per mode)."""
    name = network_name(c)
    endpoint = dict(_ENDPOINT)
    configured = (c.networking_config.get("EndpointsConfig") or {}).get(name) or {}
    endpoint.update({k: v for k, v in configured.items() if k in ("Aliases", "Links", "IPAMConfig", "DriverOpts")})
    return {name: endpoint}


def network_settings(svc: ContainerService, c: Container) -> dict:
    """Docker's ``NetworkSettings``: from the network service (addresses, ports, sandbox) when the engine has
    one, else the configured networks without addresses."""
    networks = getattr(svc.engine, "networks", None)
    if networks is not None:
        return networks.settings(c)
    return {
        "Bridge": "", "SandboxID": "", "SandboxKey": "", "Ports": {}, "HairpinMode": False,
        "LinkLocalIPv6Address": "", "LinkLocalIPv6PrefixLen": 0, "SecondaryIPAddresses": None,
        "SecondaryIPv6Addresses": None, "EndpointID": "", "Gateway": "", "GlobalIPv6Address": "",
        "GlobalIPv6PrefixLen": 0, "IPAddress": "", "IPPrefixLen": 0, "IPv6Gateway": "", "MacAddress": "",
        "Networks": networks_doc(c),
    }


def ports_summary(svc: ContainerService, c: Container) -> list[dict]:
    """``docker ps``'s Ports (published with their host side, exposed alone)."""
    networks = getattr(svc.engine, "networks", None)
    return networks.ports_summary(c) if networks is not None else []


def mounts_doc(c: Container) -> list[dict]:
    """Docker's ``Mounts``: the container's mount points (binds, volumes, tmpfs mounts)."""
    return container_mounts.mounts_doc(c.mounts)


def inspect_doc(svc: ContainerService, c: Container, size: bool = False) -> dict:
    """``GET /containers/{id}/json``."""
    path, args = c.path_and_args
    host_config = {**_DEFAULT_HOST_CONFIG, **{k: v for k, v in c.host_config.items() if v is not None}}
    host_config["Runtime"] = str(getattr(svc.engine.config, "runtime", "runc"))
    if host_config.get("Privileged"):
        host_config["MaskedPaths"], host_config["ReadonlyPaths"] = None, None
    doc = {
        "Id": c.id, "Created": rfc3339_nano(c.created), "Path": path, "Args": args, "State": state_doc(c),
        "Image": c.image_id, "ResolvConfPath": svc.etc_path(c, "resolv.conf"),
        "HostnamePath": svc.etc_path(c, "hostname"), "HostsPath": svc.etc_path(c, "hosts"),
        "LogPath": svc.log_path(c), "Name": c.name, "RestartCount": c.restart_count, "Driver": "overlay2",
        "Platform": "linux", "MountLabel": "", "ProcessLabel": "", "AppArmorProfile": "",
        "ExecIDs": list(c.execs) or None, "HostConfig": host_config,
        "GraphDriver": {"Name": "overlay2", "Data": {"MergedDir": svc.rootfs_dir(c)}},
        "Mounts": mounts_doc(c),
        "Config": {**_DEFAULT_CONFIG, **c.config},
        "NetworkSettings": network_settings(svc, c),
    }
    if size:
        doc["SizeRw"], doc["SizeRootFs"] = sizes(svc, c)
    return doc


def sizes(svc: ContainerService, c: Container) -> tuple[int, int]:
    """(SizeRw, SizeRootFs): what the container wrote, and that plus its image."""
    written = svc.size_rw(c)
    try:
        image = int(svc.engine.images.inspect(c.image_id).get("Size") or 0)
    except errors.SkiffError:
        image = 0
    return written, written + image


def summary_doc(svc: ContainerService, c: Container, size: bool = False) -> dict:
    """One entry of ``GET /containers/json``."""
    doc = {
        "Id": c.id, "Names": [c.name], "Image": c.config.get("Image") or c.image_id, "ImageID": c.image_id,
        "Command": command_text(c), "Created": int(c.created), "Ports": ports_summary(svc, c),
        "Labels": c.config.get("Labels") or {}, "State": "removing" if c.removing else c.state.status,
        "Status": status_text(c), "HostConfig": {"NetworkMode": c.host_config.get("NetworkMode") or "default"},
        "NetworkSettings": {"Networks": network_settings(svc, c)["Networks"]}, "Mounts": mounts_doc(c),
    }
    if size:
        doc["SizeRw"], doc["SizeRootFs"] = sizes(svc, c)
    return doc


# ---- list filters


class ListFilter:
    """``docker ps`` filters (dockerd's semantics: keys AND, values of one key OR)."""

    def __init__(self, svc: ContainerService, filters: dict[str, list[str]]) -> None:
        self.svc, self.filters = svc, filters
        for status in filters.get("status", []):
            if status not in STATUSES:
                raise errors.InvalidArgument(f"invalid filter 'status={status}'")
        for health in filters.get("health", []):
            if health not in healthchecks.STATUSES:
                raise errors.InvalidArgument(f"Unrecognised filter value for health: {health}")
        self.exited = [self._int("exited", v) for v in filters.get("exited", [])]
        self.before = [svc.get(v).created for v in filters.get("before", [])]
        self.since = [svc.get(v).created for v in filters.get("since", [])]
        self.images = [self._image_id(v) for v in filters.get("ancestor", [])]
        self.published = port_filter("publish", filters.get("publish", []))
        self.exposed = port_filter("expose", filters.get("expose", []))

    @staticmethod
    def _int(key: str, value: str) -> int:
        try:
            return int(value)
        except ValueError:
            raise errors.InvalidArgument(f"invalid filter '{key}={value}'") from None

    def _image_id(self, ref: str) -> str:
        try:
            return self.svc.engine.images.resolve(ref).config_digest
        except errors.SkiffError:
            return ref

    @property
    def implies_all(self) -> bool:
        return bool(self.filters.get("status") or self.exited)

    def __call__(self, c: Container) -> bool:
        f = self.filters
        return (pattern_match(f.get("id"), c.id) and pattern_match(f.get("name"), c.name)
                and (not f.get("status") or ("removing" if c.removing else c.state.status) in f["status"])
                and (not self.exited or (c.state.status == "exited" and c.state.exit_code in self.exited))
                and all(c.created < t for t in self.before) and all(c.created > t for t in self.since)
                and (not self.images or any(c.image_id == i or c.config.get("Image") == i for i in self.images))
                and labels_match(c.config.get("Labels") or {}, f.get("label", []))
                and (not f.get("network") or bool({network_name(c), *(c.networking_config.get("EndpointsConfig")
                                                                       or {})} & set(f["network"])))
                and self._features(c))

    def _features(self, c: Container) -> bool:
        """Filters on health, published and exposed ports, volumes, and what containers here do not have: tasks,
        isolation."""
        f = self.filters
        # dockerd's: the container ports of -p (PortBindings, not the host ports), and those of EXPOSE/--expose
        published = {port_key(p) for p in c.host_config.get("PortBindings") or {}}
        exposed = {port_key(p) for p in c.config.get("ExposedPorts") or {}}
        mounts = {x for m in mounts_doc(c) for x in (m.get("Name"), m["Source"], m["Destination"]) if x}
        return ((not f.get("health") or healthchecks.filter_value(c.health) in f["health"])
                and (not self.published or bool(self.published & published))
                and (not self.exposed or bool(self.exposed & exposed))
                and (not f.get("volume") or any(v in mounts for v in f["volume"]))
                and (not f.get("is-task") or "false" in f["is-task"])
                and (not f.get("isolation") or "default" in f["isolation"]))


# ---- stats


def _host_memory() -> int:
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def _cpu_doc(sample: dict, system: int) -> dict:
    cpu = sample.get("cpu") or {}
    doc: dict[str, Any] = {
        "cpu_usage": {"total_usage": cpu.get("total", 0), "usage_in_kernelmode": cpu.get("kernel", 0),
                      "usage_in_usermode": cpu.get("user", 0)},
        "throttling_data": {"periods": cpu.get("periods", 0), "throttled_periods": cpu.get("throttled_periods", 0),
                            "throttled_time": cpu.get("throttled_time", 0)},
    }
    if cpu.get("percpu"):
        doc["cpu_usage"]["percpu_usage"] = cpu["percpu"]
    if sample:
        doc["system_cpu_usage"] = system
        doc["online_cpus"] = os.cpu_count() or 1
    return doc


def stats_doc(c: Container, sample: dict, system: int, read: float, pre: dict | None = None,
              pre_system: int = 0, preread: float = 0.0) -> dict:
    """``GET /containers/{id}/stats`` in Docker's shape (what ``docker stats`` computes its columns from)."""
    memory = sample.get("memory") or {}
    pids = sample.get("pids") or {}
    host = _host_memory()
    limit = memory.get("limit", 0)
    if limit <= 0 or (host and limit > host):
        limit = host
    memory_doc = {k: memory[k] for k in ("usage", "max_usage", "failcnt", "stats") if k in memory}
    if memory:
        memory_doc["limit"] = limit
    pids_doc = {"current": pids.get("current", 0)} if pids else {}
    if pids and pids.get("limit", -1) > 0:
        pids_doc["limit"] = pids["limit"]
    empty_blkio = {k: None for k in ("io_service_bytes_recursive", "io_serviced_recursive", "io_queue_recursive",
                                     "io_service_time_recursive", "io_wait_time_recursive", "io_merged_recursive",
                                     "io_time_recursive", "sectors_recursive")}
    return {
        "read": rfc3339_nano(read) if sample else rfc3339_nano(None), "preread": rfc3339_nano(preread or None),
        "pids_stats": pids_doc, "blkio_stats": empty_blkio, "num_procs": 0, "storage_stats": {},
        "cpu_stats": _cpu_doc(sample, system), "precpu_stats": _cpu_doc(pre or {}, pre_system),
        "memory_stats": memory_doc, "name": c.name, "id": c.id,
    }


# --------------------------------------------------------------------------------------------------
# Streams shared with exec: a monitor session <-> a hijacked connection
# --------------------------------------------------------------------------------------------------


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def parse_detach_keys(text: str | None) -> bytes:
    """``ctrl-p,ctrl-q`` (Docker's syntax; ``a``..``z``, ``ctrl-a``..``ctrl-z``, ``ctrl-@``, ``ctrl-[``...)."""
    if not text:
        return DEFAULT_DETACH_KEYS
    keys = bytearray()
    for key in text.split(","):
        key = key.strip()
        if key.startswith("ctrl-") and len(key) == 6:
            code = ord(key[5].upper()) - 64
            if not 0 <= code < 32:
                raise errors.InvalidArgument(f"Unknown character: '{key}'")
            keys.append(code)
        elif len(key) == 1:
            keys.append(ord(key))
        else:
            raise errors.InvalidArgument(f"Unknown character: '{key}'")
    return bytes(keys)


class DetachScanner:
    """Finds the detach sequence in stdin (possibly split over reads) and holds back bytes that may begin it."""

    def __init__(self, keys: bytes) -> None:
        self.keys, self.held = keys, b""

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """(bytes to forward, detach requested)."""
        data = self.held + data
        self.held = b""
        index = data.find(self.keys)
        if index >= 0:
            return data[:index], True
        for n in range(min(len(self.keys) - 1, len(data)), 0, -1):
            if data.endswith(self.keys[:n]):
                self.held = data[-n:]
                return data[:-n], False
        return data, False


async def pump(raw: RawStream, session: Any, *, tty: bool, stdin: bool,
               wanted: Callable[[int], bool] = lambda _s: True, detach_keys: bytes | None = None) -> None:
    """Copy the session's output to ``raw`` (raw bytes for a tty, else frames) and, with ``stdin``, the
    client's bytes to the session (its end becomes stdin EOF). Returns when the output ends (the process
    exited), the client closes the connection, or types the detach keys."""
    detached = asyncio.Event()
    tasks = [asyncio.ensure_future(_copy_output(raw, session, tty, wanted)),
             asyncio.ensure_future(raw.wait_closed()), asyncio.ensure_future(detached.wait())]
    feeder = asyncio.ensure_future(_copy_stdin(raw, session, detach_keys, detached)) if stdin else None
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in [*tasks, *([feeder] if feeder else [])]:
            task.cancel()
        await asyncio.gather(*tasks, *([feeder] if feeder else []), return_exceptions=True)


async def _copy_output(raw: RawStream, session: Any, tty: bool, wanted: Callable[[int], bool]) -> None:
    while True:
        item = await session.read()
        if item is None:
            return
        stream, data = item
        if not data or not wanted(stream):
            continue
        try:
            await raw.write(data if tty or stream == 0 else frame(stream, data))
        except ConnectionError:
            return


async def _copy_stdin(raw: RawStream, session: Any, detach_keys: bytes | None, detached: asyncio.Event) -> None:
    scanner = DetachScanner(detach_keys) if detach_keys else None
    while True:
        data = await raw.read()
        if not data:
            if scanner is not None and scanner.held:
                await _maybe_await(session.write(scanner.held))
            await _maybe_await(session.close_stdin())
            return
        if scanner is not None:
            data, detach = scanner.feed(data)
            if detach:
                if data:
                    await _maybe_await(session.write(data))
                detached.set()
                return
        if data:
            await _maybe_await(session.write(data))


# --------------------------------------------------------------------------------------------------
# Routes
# --------------------------------------------------------------------------------------------------


class ServiceRoutes:
    """Handlers bound to one engine, reaching its container service (the exec routes share this)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    @property
    def svc(self) -> ContainerService:
        if self.engine.containers is None:
            raise errors.Unsupported("containers are not available in this engine")
        return self.engine.containers


class ContainerRoutes(ServiceRoutes):
    """The container handlers."""

    def _get(self, request: web.Request) -> Container:
        return self.svc.get(request.match_info["id"])

    # ---- create, inspect, list

    async def create(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        healthchecks.validate(body.get("Healthcheck"))
        c, warnings = await self.svc.create(request.query.get("name") or None, body)
        return json_response({"Id": c.id, "Warnings": warnings}, status=201)

    async def inspect(self, request: web.Request) -> web.Response:
        return json_response(inspect_doc(self.svc, self._get(request), query_bool(request, "size")))

    async def list(self, request: web.Request) -> web.Response:
        match = ListFilter(self.svc, parse_filters(request, LIST_FILTERS))
        limit = query_int(request, "limit", -1) or -1
        everything = query_bool(request, "all") or limit > 0 or match.implies_all
        found = [c for c in self.svc.all() if (everything or c.state.running) and match(c)]
        if limit > 0:
            found = found[:limit]
        size = query_bool(request, "size")
        return json_response([summary_doc(self.svc, c, size) for c in found])

    # ---- lifecycle

    async def start(self, request: web.Request) -> web.Response:
        started = await self.svc.start_container(request.match_info["id"])
        return web.Response(status=204 if started else 304)

    async def stop(self, request: web.Request) -> web.Response:
        stopped = await self.svc.stop_container(request.match_info["id"], query_int(request, "t"),
                                                request.query.get("signal") or None)
        return web.Response(status=204 if stopped else 304)

    async def kill(self, request: web.Request) -> web.Response:
        await self.svc.kill(request.match_info["id"], request.query.get("signal") or None)
        return web.Response(status=204)

    async def restart(self, request: web.Request) -> web.Response:
        await self.svc.restart(request.match_info["id"], query_int(request, "t"), request.query.get("signal") or None)
        return web.Response(status=204)

    async def remove(self, request: web.Request) -> web.Response:
        await self.svc.remove(request.match_info["id"], force=query_bool(request, "force"),
                              remove_volumes=query_bool(request, "v"))
        return web.Response(status=204)

    async def pause(self, request: web.Request) -> web.Response:
        await self.svc.pause(request.match_info["id"])
        return web.Response(status=204)

    async def unpause(self, request: web.Request) -> web.Response:
        await self.svc.unpause(request.match_info["id"])
        return web.Response(status=204)

    async def rename(self, request: web.Request) -> web.Response:
        await self.svc.rename(request.match_info["id"], request.query.get("name", ""))
        return web.Response(status=204)

    async def update(self, request: web.Request) -> web.Response:
        warnings = await self.svc.update(request.match_info["id"], await read_json(request))
        return json_response({"Warnings": warnings})

    async def prune(self, request: web.Request) -> web.Response:
        filters = parse_filters(request, ("until", "label", "label!"))
        until = [point_in_time(v) for v in filters.get("until", [])]

        def keep(c: Container) -> bool:
            labels = c.config.get("Labels") or {}
            return (any(c.created >= t for t in until) or not labels_match(labels, filters.get("label", []))
                    or any(labels_match(labels, [v]) for v in filters.get("label!", [])))

        removed, reclaimed = await self.svc.prune(keep)
        return json_response({"ContainersDeleted": removed or None, "SpaceReclaimed": reclaimed})

    # ---- wait, resize, top

    async def wait(self, request: web.Request) -> web.StreamResponse:
        c = self._get(request)
        condition = request.query.get("condition") or "not-running"
        if condition not in WAIT_CONDITIONS:
            raise errors.InvalidArgument(f"invalid condition: {condition!r}")
        stream = await json_stream(request)  # headers now: `docker run` starts the container only then
        try:
            code = await unless_disconnected(request, self.svc.wait(c, condition))
        except ConnectionResetError:
            return stream
        await stream.send({"Error": None, "StatusCode": code})
        await stream.close()
        return stream

    async def resize(self, request: web.Request) -> web.Response:
        await self.svc.resize(request.match_info["id"], query_int(request, "h", 0) or 0,
                              query_int(request, "w", 0) or 0)
        return web.Response(status=200)

    async def top(self, request: web.Request) -> web.Response:
        return json_response(await self.svc.top(request.match_info["id"], request.query.get("ps_args") or "-ef"))

    # ---- logs

    async def logs(self, request: web.Request) -> web.StreamResponse:
        c = self._get(request)
        stdout, stderr = query_bool(request, "stdout"), query_bool(request, "stderr")
        if not (stdout or stderr):
            raise errors.InvalidArgument("Bad parameters: you must choose at least one stream")
        tail = request.query.get("tail", "all")
        since, until = request.query.get("since"), request.query.get("until")
        tty = bool(c.config.get("Tty"))
        batches = read_log_batches(
            self.svc.log_path(c), follow=query_bool(request, "follow"), tail=_tail(tail),
            since=parse_timestamp(since) if since and since != "0" else None,
            until=parse_timestamp(until) if until and until != "0" else None,
            timestamps=query_bool(request, "timestamps"), stop=c.run_done)
        response = web.StreamResponse(headers={"Content-Type": RAW_STREAM if tty else MULTIPLEXED_STREAM})
        response.enable_chunked_encoding()
        await response.prepare(request)
        wanted = {1: stdout, 2: stderr}
        async for batch in until_disconnected(request, _safe_logs(batches)):
            data = _framed(batch, wanted, tty)
            if data:
                await response.write(data)
        await response.write_eof()
        return response

    # ---- attach

    async def attach(self, request: web.Request) -> web.StreamResponse:
        c = self._get(request)
        stdin, stdout, stderr = (query_bool(request, k) for k in ("stdin", "stdout", "stderr"))
        detach_keys = parse_detach_keys(request.query.get("detachKeys"))
        # Attached before the 101 goes out: the client may start the container the moment it reads it.
        pending = self.svc.attach(c, stdin=stdin, stdout=stdout, stderr=stderr) \
            if query_bool(request, "stream") else None
        try:
            raw = await hijack(request)
        except BaseException:
            if pending is not None:
                pending.cancel()
            raise
        tty = bool(c.config.get("Tty"))
        wanted = {0: True, 1: stdout, 2: stderr}
        try:
            if query_bool(request, "logs"):
                async for batch in _safe_logs(read_log_batches(self.svc.log_path(c))):
                    data = _framed(batch, wanted, tty)
                    if data:
                        await raw.write(data)
            if pending is not None:
                # As dockerd: detach keys are looked for in a terminal's input only (piped data may hold them).
                await self._attach_stream(request, raw, c, pending, stdin=stdin, stdout=stdout, stderr=stderr,
                                          detach_keys=detach_keys if stdin and tty else None)
        finally:
            if pending is not None and not pending.done():
                pending.cancel()
        await raw.close()
        return raw

    async def _attach_stream(self, request: web.Request, raw: RawStream, c: Container, pending: asyncio.Task, *,
                             stdin: bool, stdout: bool, stderr: bool, detach_keys: bytes | None) -> None:
        try:
            session = await unless_disconnected(request, pending)
        except ConnectionResetError:
            return
        if session is None:
            return
        try:
            await pump(raw, session, tty=bool(c.config.get("Tty")), stdin=stdin and bool(c.config.get("OpenStdin")),
                       wanted={0: True, 1: stdout, 2: stderr}.get, detach_keys=detach_keys)
        finally:
            await _maybe_await(session.close())

    # ---- stats

    async def stats(self, request: web.Request) -> web.StreamResponse:
        c = self._get(request)
        streaming, one_shot = query_bool(request, "stream", True), query_bool(request, "one-shot")
        if not c.state.running or c.state.status == "restarting":
            return json_response(stats_doc(c, {}, 0, 0.0))
        if not streaming:
            return json_response(await self._one_stat(request, c, one_shot))
        stream = await json_stream(request)
        with contextlib.suppress(ConnectionError):
            async for doc in until_disconnected(request, self._stat_stream(c)):
                await stream.send(doc)
        await stream.close()
        return stream

    def _sample(self, c: Container) -> tuple[dict, int, float]:
        return self.svc.stats(c), system_cpu_usage(), time.time()

    async def _one_stat(self, request: web.Request, c: Container, one_shot: bool) -> dict:
        """As dockerd: one-shot is a single sample; otherwise two, a collection interval apart, so the
        client can compute CPU usage from the difference."""
        pre, pre_system, preread = self._sample(c)
        if one_shot:
            return stats_doc(c, pre, pre_system, preread)
        await unless_disconnected(request, asyncio.sleep(STATS_INTERVAL))
        sample, system, read = self._sample(c)
        return stats_doc(c, sample, system, read, pre, pre_system, preread)

    async def _stat_stream(self, c: Container) -> AsyncIterator[dict]:
        pre, pre_system, preread = {}, 0, 0.0
        while c.state.running and c.state.status != "restarting":
            sample, system, read = self._sample(c)
            yield stats_doc(c, sample, system, read, pre, pre_system, preread)
            pre, pre_system, preread = sample, system, read
            await asyncio.sleep(STATS_INTERVAL)


_GO_DURATION = re.compile(r"^(?:\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h))+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def point_in_time(text: str, now: float | None = None) -> float:
    """A filter's time as dockerd takes it: a Go duration back from now (``24h``, ``1h30m``), Unix seconds
    or RFC 3339."""
    text = text.strip()
    if _GO_DURATION.match(text):
        seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text))
        return (time.time() if now is None else now) - seconds
    return parse_timestamp(text)


def _tail(text: str) -> int | None:
    if text in ("", "all"):
        return None
    try:
        return max(0, int(text))
    except ValueError:
        raise errors.InvalidArgument(f"invalid tail value {text!r}: want a number or 'all'") from None


async def _safe_logs(batches: AsyncIterator[list[tuple[int, bytes]]]) -> AsyncIterator[list[tuple[int, bytes]]]:
    """A missing log file (a container that never ran) reads as empty."""
    try:
        async for batch in batches:
            yield batch
    except FileNotFoundError:
        return


def _framed(batch: list[tuple[int, bytes]], wanted: dict[int, bool], tty: bool) -> bytes:
    """One write's worth of log lines: raw with a terminal, else each in its stream's 8-byte frame."""
    if tty:
        return b"".join(data for stream, data in batch if wanted.get(stream))
    return b"".join(frame(stream, data) for stream, data in batch if wanted.get(stream))


def register(app: web.Application, engine: Any) -> None:
    """Add the container routes (unversioned; ``common`` maps ``/vX.Y/...`` onto them)."""
    r = ContainerRoutes(engine)
    add = app.router
    add.add_post("/containers/create", r.create)
    add.add_get("/containers/json", r.list)
    add.add_post("/containers/prune", r.prune)
    add.add_get("/containers/{id}/json", r.inspect)
    add.add_post("/containers/{id}/start", r.start)
    add.add_post("/containers/{id}/stop", r.stop)
    add.add_post("/containers/{id}/kill", r.kill)
    add.add_post("/containers/{id}/restart", r.restart)
    add.add_delete("/containers/{id}", r.remove)
    add.add_post("/containers/{id}/wait", r.wait)
    add.add_post("/containers/{id}/attach", r.attach)
    add.add_post("/containers/{id}/resize", r.resize)
    add.add_get("/containers/{id}/logs", r.logs)
    add.add_get("/containers/{id}/top", r.top)
    add.add_get("/containers/{id}/stats", r.stats)
    add.add_post("/containers/{id}/rename", r.rename)
    add.add_post("/containers/{id}/pause", r.pause)
    add.add_post("/containers/{id}/unpause", r.unpause)
    add.add_post("/containers/{id}/update", r.update)
