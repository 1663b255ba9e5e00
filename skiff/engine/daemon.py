"""The engine daemon: its configuration, the ``Engine`` that wires the services together, and serving the
Engine API on its sockets until SIGTERM/SIGINT.

State lives with the services (images, containers) under the data root; the daemon itself holds only
locks, a pid file and its sockets, so a restart, even after SIGKILL, loses nothing. Stopping the daemon
does not stop containers: each lives under its own monitor process and is picked up again at start.

Two daemons must never share a data root or an exec root (their state would interleave), so each root
is locked with ``flock`` for the daemon's lifetime; the kernel drops the locks when the process dies,
however it dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import grp
import importlib
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import stat
import sys
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from skiff.atomicfile import write_atomically
from skiff.engine.events import EventBus
from skiff.errors import Conflict, InvalidArgument

log = logging.getLogger(__name__)

DEFAULT_DATA_ROOT = Path("/var/lib/skiff/engine")
DEFAULT_EXEC_ROOT = Path("/run/skiff/engine")
DEFAULT_HOST = "unix:///run/skiff/engine.sock"
SOCKET_MODE = 0o660  # root and the socket's group: access to the socket is root on the host
RUNTIMES = ("skiff", "runc", "crun")
# After SIGTERM, requests in flight get this long to finish before their handlers are cancelled.
SHUTDOWN_GRACE = 3.0
LOCK_NAME = "engine.lock"


# ---------------------------------------------------------------------------------------- configuration

@dataclass(frozen=True)
class ListenAddress:
    """One ``-H`` address: ``unix:///path`` or ``tcp://host:port`` (the latter only with TLS client auth)."""

    url: str
    scheme: str
    path: str = ""
    host: str = ""
    port: int = 0

    @classmethod
    def parse(cls, url: str) -> ListenAddress:
        parts = urlsplit(url)
        if parts.scheme == "unix":
            path = (parts.netloc + parts.path) if parts.netloc else parts.path
            if not path.startswith("/"):
                raise InvalidArgument(f"invalid -H {url!r}: a unix socket needs an absolute path (unix:///PATH)")
            return cls(url, "unix", path=path)
        if parts.scheme == "tcp":
            try:
                port = parts.port
            except ValueError:
                port = None
            if not parts.hostname or port is None:
                raise InvalidArgument(f"invalid -H {url!r}: want tcp://HOST:PORT")
            return cls(url, "tcp", host=parts.hostname, port=port)
        raise InvalidArgument(f"invalid -H {url!r}: want unix:///PATH or tcp://HOST:PORT")


@dataclass(frozen=True)
class TLSConfig:
    """Server certificate and the CA that client certificates must chain to (``--tlsverify``)."""

    ca: Path
    cert: Path
    key: Path

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.ca))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_cert_chain(str(self.cert), str(self.key))
        return context


def resolve_runtime(name: str) -> list[str]:
    """The command that runs the OCI runtime called ``name``: ``skiff`` (the built-in runtime: the
    ``skiff-runtime`` beside this Python), ``runc``/``crun`` (from PATH) or a path to any runc-compatible
    binary."""
    if name == "skiff":
        beside = Path(sys.executable).parent / "skiff-runtime"
        if os.access(beside, os.X_OK):
            return [str(beside)]
        found = shutil.which("skiff-runtime")
        return [found] if found else [sys.executable, "-m", "skiff.runtime.cli"]
    if name in RUNTIMES:
        found = shutil.which(name)
        if found is None:
            raise InvalidArgument(f"runtime {name!r} is not installed (not found in PATH)")
        return [found]
    if "/" in name:
        if not (os.path.isfile(name) and os.access(name, os.X_OK)):
            raise InvalidArgument(f"runtime {name!r} is not an executable file")
        return [os.path.abspath(name)]
    raise InvalidArgument(f"unknown runtime {name!r}: want skiff, runc, crun or a path to a runc-compatible binary")


@dataclass
class EngineConfig:
    """Everything ``skiff engine``'s flags decide. Paths default to the host-wide ones; tests point all of
    them at temp directories."""

    data_root: Path = DEFAULT_DATA_ROOT
    exec_root: Path = DEFAULT_EXEC_ROOT
    hosts: list[str] = field(default_factory=lambda: [DEFAULT_HOST])
    runtime: str = "skiff"
    registry_mirrors: list[str] = field(default_factory=list)
    insecure_registries: list[str] = field(default_factory=list)
    tls: TLSConfig | None = None
    group: str | None = None  # the unix sockets' group (default: root's)
    pidfile: Path | None = None  # default: exec_root/engine.pid
    cgroup_parent: str = "/skiff"  # containers' cgroups go under it, in every hierarchy (dockerd's /docker)
    bridge: str = "skiff0"  # the default network's bridge (--bridge)
    bip: str = "10.88.0.0/16"  # its subnet; the gateway is its first address (--bip)
    nft_table: str = "skiff"  # this engine's nftables table (--nft-table)
    default_address_pool: str = "base=10.89.0.0/16,size=24"  # subnets of networks created without one
    runtime_command: list[str] = field(init=False)
    listen: list[ListenAddress] = field(init=False)

    def __post_init__(self) -> None:
        self.data_root = Path(self.data_root).absolute()
        self.exec_root = Path(self.exec_root).absolute()
        self.pidfile = Path(self.pidfile).absolute() if self.pidfile else self.exec_root / "engine.pid"
        if not self.hosts:
            raise InvalidArgument("no -H address to listen on")
        self.listen = [ListenAddress.parse(h) for h in self.hosts]
        for address in self.listen:
            if address.scheme == "tcp" and self.tls is None:
                raise InvalidArgument(
                    f"refusing to listen on {address.url} without TLS client authentication: anyone who can "
                    "connect would be root on this host; add --tlsverify --tlscacert CA --tlscert CERT --tlskey KEY")
        self.runtime_command = resolve_runtime(self.runtime)

    @property
    def runtime_root(self) -> Path:
        """The OCI runtime's ``--root`` (its state directory)."""
        return self.exec_root / "runtime"

    @property
    def image_root(self) -> Path:
        return self.data_root / "image"

    @property
    def registry_auth_file(self) -> Path:
        """Credentials the daemon itself uses for registries (Docker's config.json format), e.g. for a
        mirror; optional. Clients' own credentials arrive with each request (X-Registry-Auth)."""
        return self.data_root / "registry-auth.json"


# ---------------------------------------------------------------------------------------- the engine

def _optional_service(module: str, cls: str, *args: Any, **kwargs: Any) -> Any | None:
    """Construct ``module.cls(*args, **kwargs)``, or None when that part of Skiff is not installed (yet): the
    engine starts with whatever services it has, and their paths answer 404. Only a missing *Skiff* module
    counts as "not installed"; a missing third-party dependency is an error."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if not (e.name or "").startswith("skiff."):
            raise
        log.warning("%s is not available (%s): its part of the API answers 404", module, e)
        return None
    return getattr(mod, cls)(*args, **kwargs)


class Engine:
    """The daemon's object graph: ``config``, ``events`` (EventBus), ``images`` (ImageService) and
    ``containers`` (ContainerService), the latter two None until ``start()`` and when not installed.
    Services find each other through this object (``ContainerService(engine)`` uses ``engine.images``
    and ``engine.events``)."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.events = EventBus()
        self.images: Any | None = None
        self.containers: Any | None = None
        self.volumes: Any | None = None
        self.networks: Any | None = None
        self.id = ""

    def _services(self) -> list[Any]:
        return [s for s in (self.images, self.volumes, self.networks, self.containers) if s is not None]

    async def start(self) -> None:
        """Create the state directories and start the services (images first: containers need them)."""
        for path in (self.config.data_root, self.config.exec_root, self.config.runtime_root):
            path.mkdir(parents=True, exist_ok=True, mode=0o711)
        self.id = _engine_id(self.config.data_root)
        self.images = _optional_service(
            "skiff.image.service", "ImageService", root=str(self.config.image_root),
            config_path=str(self.config.registry_auth_file), insecure_registries=self.config.insecure_registries,
            mirrors=self.config.registry_mirrors)
        if self.images is not None:
            self.images.on_event = self.events.threadsafe_publisher("image")
        await _call(self.images, "start")
        # Volumes before containers (their records name volumes); then unmount what no running container uses.
        self.volumes = _optional_service("skiff.engine.volumes", "VolumeService", self)
        await _call(self.volumes, "start")
        # Networks before containers (a container exiting meanwhile detaches); then restore the running ones'.
        self.networks = _optional_service("skiff.engine.network.service", "NetworkService", self, _network_config(
            self.config))
        await _call(self.networks, "start")
        self.containers = _optional_service("skiff.engine.containers", "ContainerService", self)
        await _call(self.containers, "start")
        await _call(self.networks, "restore")
        await _call(self.volumes, "reconcile_mounts")

    async def stop(self) -> None:
        """End event streams, then stop the services in reverse order. Containers keep running."""
        self.events.close()
        for service in reversed(self._services()):
            try:
                await _call(service, "stop")
            except Exception:
                log.exception("stopping %s failed", type(service).__name__)


def _network_config(config: EngineConfig) -> Any:
    from skiff.engine.network.service import NetworkConfig

    return NetworkConfig(bridge=config.bridge, bip=config.bip, nft_table=config.nft_table,
                         default_pools=config.default_address_pool)


async def _call(service: Any | None, method: str) -> None:
    function = getattr(service, method, None)
    if function is not None:
        result = function()
        if asyncio.iscoroutine(result):
            await result


def _engine_id(data_root: Path) -> str:
    """The engine's stable ID (``docker info``'s ID), made once and kept in the data root."""
    path = data_root / "engine-id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    value = str(uuid.uuid4())
    write_atomically(path, f"{value}\n".encode())
    return value


# ---------------------------------------------------------------------------------------- host resources

class RootLock:
    """An exclusive ``flock`` on ``DIR/engine.lock``, holding the owner's pid for the error message."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o711)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise Conflict(f"another engine (pid {holder}) is using {self.path.parent}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _prepare_socket_path(path: str) -> None:
    """Make the socket's directory and clear a stale socket file; refuse a socket a live server answers on,
    and anything that is not a socket."""
    Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise Conflict(f"{path} exists and is not a socket")
    except FileNotFoundError:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError as e:
            if e.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                raise
        else:
            raise Conflict(f"{path} is in use by another server")
    os.unlink(path)


def bind_unix_socket(path: str, group: str | None = None) -> socket.socket:
    """A listening unix socket at ``path`` with mode 0660 (and ``group``) from the moment it appears there.

    It is bound inside a fresh 0700 directory beside ``path``, given its mode and owner, then renamed into
    place: no instant at which someone else could connect, and no process-wide umask change (other
    threads create files meanwhile)."""
    _prepare_socket_path(path)
    gid = -1
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise InvalidArgument(f"group {group!r} does not exist") from None
    private = tempfile.mkdtemp(prefix=".skiff-sock-", dir=os.path.dirname(path))
    staged = os.path.join(private, "s")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(staged)
        os.chmod(staged, SOCKET_MODE)
        if gid != -1:
            os.chown(staged, -1, gid)
        os.rename(staged, path)
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    finally:
        with contextlib.suppress(OSError):
            os.unlink(staged)
        os.rmdir(private)
    return sock


# ---------------------------------------------------------------------------------------- serving

class Daemon:
    """One run of ``skiff engine``: take the locks, start the engine, serve, and undo it all at the end."""

    def __init__(self, config: EngineConfig, app_factory: Callable[[Engine], Any] | None = None) -> None:
        self.config = config
        self.engine = Engine(config)
        self._app_factory = app_factory
        self._locks = [RootLock(config.data_root), RootLock(config.exec_root)]
        self._sockets: list[str] = []
        self._runner: Any = None
        self._wrote_pidfile = False

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Serve until ``stop`` is set (by default: until SIGTERM or SIGINT)."""
        stop = stop or _stop_on_signals()
        try:
            self._acquire()
            await self.engine.start()
            await self._serve()
            await stop.wait()
            log.info("shutting down")
        finally:
            await self._shutdown()

    def _acquire(self) -> None:
        for lock in self._locks:
            lock.acquire()
        assert self.config.pidfile is not None
        self.config.pidfile.parent.mkdir(parents=True, exist_ok=True, mode=0o711)
        write_atomically(self.config.pidfile, f"{os.getpid()}\n".encode())
        self._wrote_pidfile = True

    async def _serve(self) -> None:
        from aiohttp import web

        from skiff.engine.api import build_app

        app = (self._app_factory or build_app)(self.engine)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=SHUTDOWN_GRACE)
        await self._runner.setup()
        for address in self.config.listen:
            if address.scheme == "unix":
                await self._listen_unix(address.path)
            else:
                assert self.config.tls is not None
                site = web.TCPSite(self._runner, address.host, address.port, ssl_context=self.config.tls.context())
                await site.start()
            log.info("API listen on %s", address.url)

    async def _listen_unix(self, path: str) -> None:
        from aiohttp import web

        sock = bind_unix_socket(path, self.config.group)
        self._sockets.append(path)
        await web.SockSite(self._runner, sock).start()

    async def _shutdown(self) -> None:
        self.engine.events.close()  # ends /events streams now rather than at the grace period's end
        if self._runner is not None:
            await self._runner.cleanup()
        await self.engine.stop()
        for path in self._sockets:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        if self._wrote_pidfile and self.config.pidfile is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.config.pidfile)
        for lock in self._locks:
            lock.release()


def _stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT; SIGHUP (a reload in dockerd) is logged and ignored."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: log.info("SIGHUP: configuration reload is not supported"))
    return stop


def describe(config: EngineConfig) -> str:
    """The effective configuration as one JSON line, logged at start-up."""
    return json.dumps({
        "data-root": str(config.data_root), "exec-root": str(config.exec_root), "hosts": config.hosts,
        "runtime": config.runtime_command, "registry-mirrors": config.registry_mirrors,
        "insecure-registries": config.insecure_registries,
    })
