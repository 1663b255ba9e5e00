"""System endpoints: ``/_ping``, ``/version``, ``/info``, ``/events``, ``/system/df`` and ``/auth``.

These are what every client touches first (the CLI pings before each command and reads the version from the
headers; docker-py reads ``ApiVersion`` from ``/version``), so their shape follows dockerd 26 field by field.
Facts about the host (kernel, CPUs, memory, cgroups) are read once; counts come from the services at each
request, and are zero for a service that is not installed.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import os
import platform
import re
import socket
import time
from pathlib import Path
from typing import Any

from aiohttp import web

import skiff
from skiff.engine.api.common import (
    API_VERSION,
    ENGINE_VERSION,
    MIN_API_VERSION,
    json_response,
    json_stream,
    parse_filters,
    parse_timestamp,
    read_json,
    rfc3339_nano,
    until_disconnected,
)
from skiff.engine.events import FILTERS as EVENT_FILTERS
from skiff.errors import Unsupported

log = logging.getLogger(__name__)

_GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386", "ppc64le": "ppc64le",
           "s390x": "s390x", "riscv64": "riscv64"}
_LOG_DRIVERS = ["json-file"]
_NETWORK_DRIVERS = ["bridge", "host", "null"]


def register(app: web.Application, engine: Any) -> None:
    api = SystemAPI(engine)
    app.router.add_get("/_ping", api.ping)  # HEAD too
    app.router.add_get("/version", api.version)
    app.router.add_get("/info", api.info)
    app.router.add_get("/events", api.events)
    app.router.add_get("/system/df", api.disk_usage)
    app.router.add_post("/auth", api.auth)


# ---------------------------------------------------------------------------------------- host facts

def _read(path: str, default: str = "") -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return default


@functools.cache
def _operating_system() -> str:
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return "Linux"


@functools.cache
def _os_version() -> str:
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("VERSION_ID="):
            return line.split("=", 1)[1].strip('"')
    return ""


@functools.cache
def _mem_total() -> int:
    m = re.search(r"^MemTotal:\s+(\d+) kB", _read("/proc/meminfo"), re.M)
    return int(m.group(1)) * 1024 if m else 0


@functools.cache
def _cgroup_version() -> str:
    return "2" if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else "1"


@functools.cache
def _cgroup_features() -> dict[str, bool]:
    """What the kernel's cgroups can limit (dockerd's MemoryLimit, SwapLimit, ... in /info)."""
    if _cgroup_version() == "2":
        controllers = set(_read("/sys/fs/cgroup/cgroup.controllers").split())
        memory, cpu = "memory" in controllers, "cpu" in controllers
        swap = memory and any(Path("/sys/fs/cgroup").glob("*/memory.swap.max"))
        return {"MemoryLimit": memory, "SwapLimit": swap, "CpuCfsPeriod": cpu, "CpuCfsQuota": cpu,
                "CPUShares": cpu, "CPUSet": "cpuset" in controllers, "PidsLimit": "pids" in controllers,
                "OomKillDisable": False, "KernelMemory": False, "KernelMemoryTCP": False}
    root = Path("/sys/fs/cgroup")
    memory = (root / "memory").is_dir()
    cpu = (root / "cpu" / "cpu.cfs_quota_us").exists()
    return {"MemoryLimit": memory, "SwapLimit": (root / "memory" / "memory.memsw.limit_in_bytes").exists(),
            "CpuCfsPeriod": cpu, "CpuCfsQuota": cpu, "CPUShares": (root / "cpu" / "cpu.shares").exists(),
            "CPUSet": (root / "cpuset").is_dir(), "PidsLimit": (root / "pids").is_dir(),
            "OomKillDisable": (root / "memory" / "memory.oom_control").exists(),
            "KernelMemory": False, "KernelMemoryTCP": False}


def _cgroup_warnings(features: dict[str, bool]) -> list[str]:
    texts = {"MemoryLimit": "No memory limit support", "SwapLimit": "No swap limit support",
             "CpuCfsQuota": "No cpu cfs quota support", "CPUShares": "No cpu shares support",
             "CPUSet": "No cpuset support", "PidsLimit": "No pids limit support"}
    return [f"WARNING: {text}" for key, text in texts.items() if not features[key]]


def _architecture() -> str:
    return platform.machine()


def _goarch() -> str:
    return _GOARCH.get(platform.machine(), platform.machine())


def _python() -> str:
    """Reported where dockerd reports its Go version."""
    return f"python{platform.python_version()}"


@functools.cache
def _build_time() -> str:
    """When this Skiff was installed (the package's mtime), standing in for dockerd's build time."""
    try:
        return rfc3339_nano(os.stat(skiff.__file__).st_mtime)
    except OSError:
        return ""


@functools.cache
def _git_commit() -> str:
    """The commit of a Skiff checkout (read from .git, no subprocess); "" when installed otherwise."""
    git = Path(skiff.__file__).resolve().parents[1] / ".git"
    head = _read(str(git / "HEAD"))
    if head.startswith("ref: "):
        ref = head[5:]
        commit = _read(str(git / ref))
        if not commit:
            for line in _read(str(git / "packed-refs")).splitlines():
                if line.endswith(" " + ref):
                    commit = line.split()[0]
        head = commit
    return head[:7] if re.fullmatch(r"[0-9a-f]{40}", head) else ""


# ---------------------------------------------------------------------------------------- the endpoints

class SystemAPI:
    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self._runtime_version: str | None = None

    async def ping(self, request: web.Request) -> web.Response:
        """The CLI's first call for every command: the headers carry what it negotiates on."""
        headers = {"Builder-Version": "1", "Swarm": "inactive", "Pragma": "no-cache",
                   "Cache-Control": "no-cache, no-store, must-revalidate"}
        body = b"" if request.method == "HEAD" else b"OK"
        return web.Response(body=body, content_type="text/plain", charset="utf-8", headers=headers)

    async def version(self, request: web.Request) -> web.Response:
        details = {"ApiVersion": API_VERSION, "Arch": _goarch(), "BuildTime": _build_time(), "Experimental": "false",
                   "GitCommit": _git_commit(), "GoVersion": _python(), "KernelVersion": platform.release(),
                   "MinAPIVersion": MIN_API_VERSION, "Os": "linux"}
        runtime_name = Path(self.engine.config.runtime_command[0]).name
        components = [
            {"Name": "Engine", "Version": ENGINE_VERSION, "Details": details},
            {"Name": "skiff", "Version": skiff.__version__, "Details": {"GitCommit": _git_commit()}},
            {"Name": runtime_name, "Version": await self._runtime(), "Details": {"GitCommit": ""}},
        ]
        return json_response({
            "Platform": {"Name": "Skiff Engine"}, "Components": components, "Version": ENGINE_VERSION,
            **{k: details[k] for k in ("ApiVersion", "MinAPIVersion", "GitCommit", "GoVersion", "Os", "Arch",
                                       "KernelVersion", "BuildTime")},
        })

    async def _runtime(self) -> str:
        """The OCI runtime's version (``RUNTIME --version``'s first line), asked once."""
        if self._runtime_version is None:
            self._runtime_version = await _runtime_version(self.engine.config.runtime_command)
        return self._runtime_version

    async def info(self, request: web.Request) -> web.Response:
        engine, config = self.engine, self.engine.config
        features = _cgroup_features()
        runtime_name = config.runtime if config.runtime in ("skiff", "runc", "crun") else "custom"
        info = {
            "ID": engine.id, **_container_counts(engine), "Images": _image_count(engine),
            "Driver": "overlay2", "DriverStatus": [["Backing Filesystem", _backing_fs(config.data_root)],
                                                   ["Supports d_type", "true"], ["Using metacopy", "false"],
                                                   ["Native Overlay Diff", "true"], ["userxattr", "false"]],
            "Plugins": {"Volume": ["local"], "Network": _NETWORK_DRIVERS, "Authorization": None,
                        "Log": _LOG_DRIVERS},
            **features,
            "IPv4Forwarding": _read("/proc/sys/net/ipv4/ip_forward") == "1",
            "BridgeNfIptables": _read("/proc/sys/net/bridge/bridge-nf-call-iptables") == "1",
            "BridgeNfIp6tables": _read("/proc/sys/net/bridge/bridge-nf-call-ip6tables") == "1",
            "Debug": log.isEnabledFor(logging.DEBUG), "NFd": _open_fds(),
            "NGoroutines": len(asyncio.all_tasks()), "SystemTime": rfc3339_nano(time.time()),
            "LoggingDriver": "json-file", "CgroupDriver": "cgroupfs", "CgroupVersion": _cgroup_version(),
            "NEventsListener": engine.events.subscriber_count, "KernelVersion": platform.release(),
            "OperatingSystem": _operating_system(), "OSVersion": _os_version(), "OSType": "linux",
            "Architecture": _architecture(), "IndexServerAddress": "https://index.docker.io/v1/",
            "RegistryConfig": _registry_config(config.registry_mirrors, config.insecure_registries),
            "NCPU": os.cpu_count() or 1, "MemTotal": _mem_total(), "GenericResources": None,
            "DockerRootDir": str(config.data_root), "HttpProxy": "", "HttpsProxy": "", "NoProxy": "",
            "Name": socket.gethostname(), "Labels": [], "ExperimentalBuild": False, "ServerVersion": ENGINE_VERSION,
            "Runtimes": {runtime_name: {"path": config.runtime_command[0]}}, "DefaultRuntime": runtime_name,
            "Swarm": {"NodeID": "", "NodeAddr": "", "LocalNodeState": "inactive", "ControlAvailable": False,
                      "Error": "", "RemoteManagers": None},
            # Containers outlive the daemon (each under its own monitor): dockerd calls that live restore.
            "LiveRestoreEnabled": True, "Isolation": "", "InitBinary": "",
            "ContainerdCommit": {"ID": "", "Expected": ""}, "RuncCommit": {"ID": "", "Expected": ""},
            "InitCommit": {"ID": "", "Expected": ""},
            "SecurityOptions": ["name=seccomp,profile=builtin"] + (["name=cgroupns"] if _cgroup_version() == "2"
                                                                   else []),
            "CDISpecDirs": [], "Warnings": _cgroup_warnings(features) or None,
        }
        return json_response(info)

    async def events(self, request: web.Request) -> web.StreamResponse:
        """``docker events``: replay from ``since``, then live events, ending at ``until`` or when the client
        leaves. Each event is flushed as it happens."""
        since = _optional_time(request, "since")
        until = _optional_time(request, "until")
        filters = parse_filters(request, accepted=EVENT_FILTERS)
        with self.engine.events.subscribe(since=since, until=until, filters=filters) as subscription:
            stream = await json_stream(request)
            async for event in until_disconnected(request, subscription):
                await stream.send(event)
        await stream.close()
        return stream

    async def disk_usage(self, request: web.Request) -> web.Response:
        """``docker system df``. Sizes mean walking layers and containers' writable layers: off the loop."""
        images = await asyncio.to_thread(_call_optional, self.engine.images, "df") or []
        containers = await asyncio.to_thread(_containers_df, self.engine.containers)
        volumes = _call_optional(getattr(self.engine, "volumes", None), "df") or []
        return json_response({
            "LayersSize": _layers_size(self.engine, images), "Images": images, "Containers": containers,
            "Volumes": volumes, "BuildCache": [],
        })

    async def auth(self, request: web.Request) -> web.Response:
        """``docker login``: check the credentials against the registry; nothing is stored by the engine."""
        body = await read_json(request)
        login = getattr(self.engine.images, "login", None)
        if login is None:
            raise Unsupported("registry login needs the image service, which is not installed")
        from skiff.image.auth import RegistryAccessDenied

        try:
            result = await login(body.get("serveraddress") or "", body.get("username") or "",
                                 body.get("password") or "")
        except RegistryAccessDenied as e:  # dockerd answers 401 here, which the CLI reports as a failed login
            return json_response({"message": str(e)}, status=401)
        return json_response({"IdentityToken": result.get("IdentityToken", ""),
                              "Status": result.get("Status", "Login Succeeded")})


# ---------------------------------------------------------------------------------------- helpers

async def _runtime_version(command: list[str]) -> str:
    if Path(command[0]).name == "skiff-runtime" or command[-1:] == ["skiff.runtime.cli"]:
        return skiff.__version__
    try:
        process = await asyncio.create_subprocess_exec(
            *command, "--version", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        out, _ = await asyncio.wait_for(process.communicate(), 10)
    except (OSError, TimeoutError):
        return ""
    m = re.search(r"version\s+(\S+)", out.decode(errors="replace"))
    return m.group(1) if m else ""


def _optional_time(request: web.Request, name: str) -> float | None:
    value = request.query.get(name, "").strip()
    return parse_timestamp(value) if value else None


def _call_optional(service: Any | None, method: str, *args: Any) -> Any | None:
    function = getattr(service, method, None)
    return function(*args) if function is not None else None


def _container_counts(engine: Any) -> dict[str, int]:
    """/info's container counts, from ``ContainerService.counts()`` ({"running", "paused", "stopped"}) if it has
    one, else by looking at each container's ``state.status``."""
    service = engine.containers
    counts = _call_optional(service, "counts")
    if counts is None:
        counts = {"running": 0, "paused": 0, "stopped": 0}
        for container in _call_optional(service, "all") or []:
            status = container.state.status
            key = "paused" if status == "paused" else "running" if status in ("running", "restarting") else "stopped"
            counts[key] += 1
    running, paused, stopped = (int(counts.get(k, 0)) for k in ("running", "paused", "stopped"))
    return {"Containers": running + paused + stopped, "ContainersRunning": running,
            "ContainersPaused": paused, "ContainersStopped": stopped}


def _containers_df(service: Any | None) -> list[dict]:
    """The containers part of /system/df: the service's own ``df()``, else each container's list entry with
    its sizes (``summary_doc(..., size=True)`` from the containers API module)."""
    if service is None:
        return []
    own = _call_optional(service, "df")
    if own is not None:
        return own
    try:
        from skiff.engine.api.containers import summary_doc
    except ImportError:
        return []
    return [summary_doc(service, c, size=True) for c in service.all()]


def _image_count(engine: Any) -> int:
    images = _call_optional(engine.images, "list")
    return len(images) if images is not None else 0


def _layers_size(engine: Any, images: list[dict]) -> int:
    """Bytes of all image layers, each counted once: the service's own figure when it has one, else the
    images' unshared bytes plus their shared bytes once (an upper bound when layers are shared)."""
    total = _call_optional(engine.images, "layers_size")
    if total is not None:
        return int(total)
    unshared = sum(max(0, i.get("Size", 0) - max(0, i.get("SharedSize", 0))) for i in images)
    return unshared + max((max(0, i.get("SharedSize", 0)) for i in images), default=0)


def _registry_config(mirrors: list[str], insecure: list[str]) -> dict:
    """dockerd's RegistryConfig: insecure CIDRs (loopback always, as the registry client treats it), and
    an index entry for Docker Hub (with the mirrors) and for each insecure registry named by host."""
    cidrs, hosts = ["127.0.0.0/8", "::1/128"], []
    for entry in insecure:
        try:
            cidrs.append(str(ipaddress.ip_network(entry, strict=False)))
        except ValueError:
            hosts.append(entry)
    indexes = {"docker.io": {"Name": "docker.io", "Mirrors": list(mirrors), "Secure": True, "Official": True}}
    for host in hosts:
        indexes[host] = {"Name": host, "Mirrors": [], "Secure": False, "Official": False}
    return {"AllowNondistributableArtifactsCIDRs": None, "AllowNondistributableArtifactsHostnames": None,
            "InsecureRegistryCIDRs": cidrs, "IndexConfigs": indexes, "Mirrors": list(mirrors)}


def _backing_fs(path: Path) -> str:
    """The filesystem the data root is on, in dockerd's words (ext4 is "extfs")."""
    best, fs = "", "unknown"
    for line in _read("/proc/self/mounts").splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        mountpoint = parts[1].replace("\\040", " ")
        inside = path == Path(mountpoint) or Path(mountpoint) in path.parents
        if inside and len(mountpoint) > len(best):
            best, fs = mountpoint, parts[2]
    return {"ext4": "extfs", "ext3": "extfs", "ext2": "extfs"}.get(fs, fs)


def _open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0
