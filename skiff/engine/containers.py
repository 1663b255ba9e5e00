"""ContainerService: every container's record and lifecycle, as dockerd keeps them.

A container is a record on disk (``<data_root>/containers/<id>/config.v2.json``, written atomically at
every change) plus, while it runs, a *monitor* process (``monitor.py``) that owns the runtime's
container, its stdio and its log, and outlives the daemon. The daemon holds a ``Monitor`` handle per
running container and one watcher task awaiting its exit; everything else (stop, kill, wait, attach,
exec, logs, restart policies, AutoRemove) is built on those.

Concurrency: lifecycle changes of one container (start, stop, kill, restart, pause, remove) take its
``lock``. The watcher records an exit *without* the lock (a ``stop`` holding it waits for that exit),
then hands follow-up work (removal, a policy restart) to a new task that takes the lock.

Files: ``<data_root>/containers/<id>/`` holds the record, the json-file log, the /etc files the
container sees and ``rootfs`` (the mount point of its overlay, mounted while it runs);
``<exec_root>/containers/<id>/`` holds the bundle (config.json, rewritten at each start) and the
monitor's state directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import re
import secrets
import shutil
import signal
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, NoReturn

from skiff import errors
from skiff.atomicfile import write_atomically
from skiff.engine import mounts as mountplan
from skiff.engine import ocispec
from skiff.engine.health import HealthChecks
from skiff.engine.logs import parse_time
from skiff.engine.monitor_client import ExitStatus, Monitor, MonitorSpawner
from skiff.rootpath import resolve_in_root

log = logging.getLogger(__name__)

RECORD = "config.v2.json"
NAME_PATTERN = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
DEFAULT_STOP_TIMEOUT = 10
RESTART_DELAY_MIN, RESTART_DELAY_MAX = 0.1, 60.0  # Docker's restart back-off: 100 ms doubling, at most 1 min
RESTART_RESET_AFTER = 10.0  # a run at least this long resets the back-off
INIT_BINARIES = ("/usr/bin/tini-static", "/usr/bin/docker-init")  # static: it runs inside any image
RUNNING_STATES = ("running", "paused", "restarting")
WAIT_CONDITIONS = ("not-running", "next-exit", "removed")


# --------------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------------


@dataclass
class ContainerState:
    """Docker's ``State``; times are Unix seconds (0: never)."""

    status: str = "created"  # created | running | paused | restarting | removing | exited | dead
    pid: int = 0
    exit_code: int = 0
    error: str = ""
    oom_killed: bool = False
    started_at: float = 0.0
    finished_at: float = 0.0

    @property
    def running(self) -> bool:
        """Docker's ``Running``: true while paused or restarting too."""
        return self.status in RUNNING_STATES


@dataclass(eq=False)  # an entity: equal only to itself
class Container:
    """One container: the persisted record (the first fields) and the daemon's live handles on it."""

    id: str
    name: str  # with Docker's leading "/"
    created: float
    image_id: str  # the image's config digest
    config: dict  # Docker's Config, merged with the image's
    host_config: dict
    networking_config: dict = field(default_factory=dict)
    state: ContainerState = field(default_factory=ContainerState)
    restart_count: int = 0
    manually_stopped: bool = False
    has_been_started: bool = False
    mounts: list[dict] = field(default_factory=list)  # its mount points, planned at create (engine.mounts)
    health: dict | None = None  # Docker's State.Health, while it has a health check (engine.health)
    # ---- live only, never persisted
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    monitor: Monitor | None = field(default=None, repr=False)
    watcher: asyncio.Task | None = field(default=None, repr=False)
    restart_task: asyncio.Task | None = field(default=None, repr=False)
    restart_delay: float = 0.0
    removing: bool = False
    exit_waiters: list[asyncio.Future] = field(default_factory=list, repr=False)
    removed: asyncio.Future | None = field(default=None, repr=False)
    run_done: asyncio.Event = field(default_factory=asyncio.Event, repr=False)  # set while not running
    attach_waiters: list[tuple[asyncio.Future, dict]] = field(default_factory=list, repr=False)
    execs: dict[str, Exec] = field(default_factory=dict, repr=False)

    _PERSISTED = ("id", "name", "created", "image_id", "config", "host_config", "networking_config",
                  "restart_count", "manually_stopped", "has_been_started", "mounts", "health")

    def record(self) -> dict:
        data = {k: getattr(self, k) for k in self._PERSISTED}
        data["state"] = asdict(self.state)
        return data

    @classmethod
    def from_record(cls, data: dict) -> Container:
        fields = {k: data[k] for k in cls._PERSISTED if k in data}
        return cls(**fields, state=ContainerState(**data.get("state", {})))

    @property
    def short_name(self) -> str:
        return self.name.lstrip("/")

    @property
    def path_and_args(self) -> tuple[str, list[str]]:
        return ocispec.entrypoint_and_args(self.config)


@dataclass(eq=False)
class Exec:
    """One ``docker exec`` instance (kept in memory only, as dockerd does)."""

    id: str
    container: Container
    config: dict  # the create body: Cmd, Env, User, WorkingDir, Tty, AttachStdin/out/err, Privileged
    running: bool = False
    started: bool = False
    exit_code: int | None = None
    pid: int = 0
    session: Any = None
    done: asyncio.Event = field(default_factory=asyncio.Event, repr=False)


# --------------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------------

_ADJECTIVES = ("admiring", "bold", "brave", "clever", "dazzling", "eager", "elegant", "festive", "focused",
               "gallant", "gifted", "happy", "jolly", "keen", "kind", "lucid", "modest", "nifty", "optimistic",
               "quirky", "relaxed", "serene", "sharp", "stoic", "tender", "upbeat", "vibrant", "wizardly",
               "youthful", "zealous")
_SURNAMES = ("agnesi", "babbage", "bohr", "curie", "darwin", "dijkstra", "einstein", "euler", "faraday",
             "fermi", "galois", "gauss", "hopper", "hypatia", "kepler", "knuth", "lamport", "lovelace",
             "maxwell", "meitner", "newton", "noether", "pascal", "ritchie", "shannon", "thompson", "turing",
             "volta", "wozniak", "yonath")


def random_name(rng: random.Random | None = None) -> str:
    """Docker-style ``adjective_surname``."""
    pick = rng or random
    return f"{pick.choice(_ADJECTIVES)}_{pick.choice(_SURNAMES)}"


def new_id() -> str:
    """64 hex digits whose short form (12) is never all digits (so it cannot be mistaken for a number)."""
    while True:
        cid = secrets.token_hex(32)
        if not cid[:12].isdigit():
            return cid


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------


def start_error_exit_code(message: str) -> int:
    """The exit code dockerd records for a failed start (and the CLI derives from the message)."""
    lowered = message.lower()
    if "executable file not found" in lowered or "no such file or directory" in lowered:
        return 127
    if "permission denied" in lowered:
        return 126
    return 128


def _resolve_future(fut: asyncio.Future | None, value: Any) -> None:
    if fut is not None and not fut.done():
        fut.set_result(value)


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    """Call an image-service method, sync (in a thread: it does disk work) or async."""
    if asyncio.iscoroutinefunction(fn):
        return await fn(*args)
    return await asyncio.to_thread(fn, *args)


# --------------------------------------------------------------------------------------------------
# The service
# --------------------------------------------------------------------------------------------------


class ContainerService:
    """Containers of one engine (see the module docstring)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        cfg = engine.config
        self.data_dir = os.path.join(cfg.data_root, "containers")
        self.exec_dir = os.path.join(cfg.exec_root, "containers")
        self.spec_options = ocispec.SpecOptions(
            cgroup_parent=cfg.cgroup_parent,
            init_binary=getattr(cfg, "init_binary", None) or next((p for p in INIT_BINARIES if os.path.exists(p)),
                                                                  None))
        self._containers: dict[str, Container] = {}
        self._names: dict[str, str] = {}  # "/name" -> id
        self._execs: dict[str, Exec] = {}
        self._tasks: set[asyncio.Task] = set()
        self._stopping = False
        self._spawner = MonitorSpawner()
        self.health = HealthChecks(self)

    # ---- daemon start and stop ------------------------------------------------------------------

    async def start(self) -> None:
        """Load every record, reconnect to running containers' monitors, settle the ones that exited while
        the daemon was away, then apply restart policies (as dockerd's restore)."""
        os.makedirs(self.data_dir, exist_ok=True)
        os.makedirs(self.exec_dir, exist_ok=True)
        self.engine.images.in_use = self.image_in_use
        try:
            await self._spawner.start()
        except errors.SkiffError as e:
            log.warning("%s: monitors start as their own processes (slower, more memory)", e)
        for cid in sorted(os.listdir(self.data_dir)):
            if not os.path.exists(os.path.join(self.data_dir, cid, RECORD)):
                await self._remove_debris(cid)
                continue
            c = self._load(cid)
            if c is not None:
                self._containers[c.id] = c
                self._names[c.name] = c.id
        for c in list(self._containers.values()):
            await self._restore(c)

    def _load(self, cid: str) -> Container | None:
        path = os.path.join(self.data_dir, cid, RECORD)
        try:
            with open(path, "rb") as f:
                return Container.from_record(json.loads(f.read()))
        except (OSError, ValueError, TypeError, KeyError) as e:
            # Records are written atomically, so this is damage from outside: leave it for a person to see.
            log.error("container %s: unreadable record %s (skipped): %s", cid, path, e)
            return None

    async def _remove_debris(self, cid: str) -> None:
        """A directory without a record is a create the daemon did not finish: remove it and its snapshot."""
        log.warning("container directory %s has no record (an unfinished create); removing it", cid)
        with contextlib.suppress(errors.SkiffError):
            await _call(self.engine.images.unmount_rootfs, os.path.join(self.data_dir, cid, "rootfs"))
            await _call(self.engine.images.remove_rootfs, cid)
        shutil.rmtree(os.path.join(self.data_dir, cid), ignore_errors=True)

    async def _restore(self, c: Container) -> None:
        if c.state.status in RUNNING_STATES:
            monitor = await Monitor.connect(self._state_dir(c))
            if monitor is not None:
                c.monitor = monitor
                c.run_done.clear()
                if c.state.status == "restarting":
                    c.state.status = "running"
                self._spawn(self._watch(c, monitor))
                if c.state.status == "running":
                    self.health.started(c)
                return
            await self._settle_lost(c)
        else:
            c.run_done.set()
            await self._release_rootfs(c)  # a start the previous daemon did not finish may have mounted it
        if c.host_config.get("AutoRemove") and c.has_been_started:
            self._spawn(self._auto_remove(c))
        elif self._should_restart(c, c.state.exit_code, on_daemon_start=True):
            self._spawn(self._restart_after(c, 0, by_policy=False))

    async def _settle_lost(self, c: Container) -> None:
        """The monitor is gone: record the exit from its exit file (or as killed) and clean up."""
        # A handle on a monitor that is gone still reads the exit file it left.
        status = Monitor(self._state_dir(c), 0, 0).exit_status()
        c.state.status = "exited"
        c.state.pid = 0
        c.state.exit_code = status.exit_code if status is not None else 137
        c.state.oom_killed = bool(status is not None and status.oom_killed)
        c.state.finished_at = self._finished_at(status)
        await self._runtime_quiet("delete", "--force", c.id)
        await self._release_rootfs(c)
        c.run_done.set()
        self._save(c)

    async def stop(self) -> None:
        """The daemon is stopping: containers keep running (their monitors stay); drop our handles."""
        self._stopping = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._spawner.stop()
        for c in self._containers.values():
            if c.monitor is not None:
                with contextlib.suppress(Exception):
                    await c.monitor.close()
                c.monitor = None
            for fut, _ in c.attach_waiters:
                if not fut.done():
                    fut.cancel()

    def track(self, coro: Awaitable[Any]) -> asyncio.Task:
        """Run ``coro`` as a task the service owns (cancelled when the daemon stops)."""
        return self._spawn(coro)

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("container task failed", exc_info=task.exception())

    # ---- lookup -----------------------------------------------------------------------------------

    def get(self, ref: str) -> Container:
        """By full id, by name (with or without "/"), then by unique id prefix (dockerd's order)."""
        c = self._find(ref)
        if c is None:
            raise errors.NotFound(f"No such container: {ref}")
        return c

    def _find(self, ref: str) -> Container | None:
        if ref in self._containers:
            return self._containers[ref]
        cid = self._names.get(ref if ref.startswith("/") else "/" + ref)
        if cid:  # "" while a create reserves the name
            return self._containers[cid]
        if not ref or not re.fullmatch(r"[0-9a-f]+", ref):
            return None
        matches = [c for cid, c in self._containers.items() if cid.startswith(ref)]
        if len(matches) > 1:
            raise errors.InvalidArgument(f"Multiple IDs found with provided prefix: {ref}")
        return matches[0] if matches else None

    def all(self) -> list[Container]:
        """Every container, newest first."""
        return sorted(self._containers.values(), key=lambda c: c.created, reverse=True)

    def image_in_use(self, image_id: str) -> bool:
        return any(c.image_id == image_id for c in self._containers.values())

    @property
    def _volumes(self) -> Any | None:
        """The engine's VolumeService (None in engines built without volumes)."""
        return getattr(self.engine, "volumes", None)

    @property
    def _networks(self) -> Any | None:
        """The engine's NetworkService (None in engines built without networking)."""
        return getattr(self.engine, "networks", None)

    # ---- paths --------------------------------------------------------------------------------------

    def container_dir(self, c: Container) -> str:
        return os.path.join(self.data_dir, c.id)

    def rootfs_dir(self, c: Container) -> str:
        return os.path.join(self.data_dir, c.id, "rootfs")

    def log_path(self, c: Container) -> str:
        return os.path.join(self.data_dir, c.id, f"{c.id}-json.log")

    def etc_path(self, c: Container, name: str) -> str:
        return os.path.join(self.data_dir, c.id, name)

    def _bundle_dir(self, c: Container) -> str:
        return os.path.join(self.exec_dir, c.id)

    def _state_dir(self, c: Container) -> str:
        return os.path.join(self.exec_dir, c.id, "monitor")

    def cgroup_path(self, c: Container) -> str:
        return f"{self.spec_options.cgroup_parent.rstrip('/')}/{c.id}"

    def _save(self, c: Container) -> None:
        if c.id in self._containers and not c.removing:
            write_atomically(os.path.join(self.container_dir(c), RECORD), json.dumps(c.record()).encode())

    # ---- events -------------------------------------------------------------------------------------

    def event(self, c: Container, action: str, **extra: str) -> None:
        """A container event with dockerd's attributes: the labels, image, name, then the action's own."""
        attributes = {str(k): str(v) for k, v in (c.config.get("Labels") or {}).items()}
        attributes.update({"image": c.config.get("Image") or c.image_id, "name": c.short_name})
        attributes.update(extra)
        self.engine.events.publish("container", action, c.id, attributes)

    # ---- create ------------------------------------------------------------------------------------

    async def create(self, name: str | None, body: dict) -> tuple[Container, list[str]]:
        """``POST /containers/create``: the record, a prepared root filesystem, the create event."""
        config = {k: v for k, v in body.items() if k not in ("HostConfig", "NetworkingConfig")}
        if not config.get("Image"):
            raise errors.InvalidArgument("config cannot be empty in order to create a container")
        host_config = ocispec.adapt_host_config(body.get("HostConfig"))
        ocispec.validate_host_config(host_config)
        mountplan.validate_host_config(host_config)
        self._check_log_config(host_config)
        full_name = self._reserve_name(name)
        try:
            return await self._create(full_name, config, host_config, body.get("NetworkingConfig") or {})
        except BaseException:
            self._names.pop(full_name, None)
            raise

    async def _create(self, name: str, config: dict, host_config: dict, networking: dict
                      ) -> tuple[Container, list[str]]:
        image = self._resolve_image(config["Image"])
        merged = ocispec.merge_image_config(config, image.config.get("config") or {})
        if self._networks is not None:  # its networks exist; its addresses and ports make sense
            networking = self._networks.prepare_container(merged, host_config, networking)
        cid = new_id()
        if not merged.get("Hostname"):
            merged["Hostname"] = self._default_hostname(cid, host_config.get("NetworkMode"))
        c = Container(id=cid, name=name, created=time.time(), image_id=image.config_digest, config=merged,
                      host_config=host_config, networking_config=networking)
        c.run_done.set()
        planner = mountplan.MountPlanner(self._volumes, self.get)
        os.makedirs(self.container_dir(c))
        try:
            c.mounts = planner.plan(cid, merged, host_config)  # creates and claims its volumes
            await _call(self.engine.images.prepare_rootfs, cid, image)
            self._names[name] = cid
            self._containers[cid] = c
            self._save(c)
        except BaseException:
            self._containers.pop(cid, None)
            planner.abandon(cid, planner.made)
            shutil.rmtree(self.container_dir(c), ignore_errors=True)
            with contextlib.suppress(Exception):
                await _call(self.engine.images.remove_rootfs, cid)
            raise
        planner.settle(cid)  # the record names its volumes now
        self.event(c, "create")
        return c, []

    def _default_hostname(self, cid: str, network_mode: str | None) -> str:
        """The id's first 12 digits; the host's name with host networking; the other container's when
        sharing its network (``container:<x>``, which must exist)."""
        if network_mode == "host":
            return os.uname().nodename
        other = ocispec.joined_container(network_mode)
        if other is not None:
            return self.get(other).config.get("Hostname") or ""
        return cid[:12]

    def _resolve_image(self, ref: str) -> Any:
        try:
            return self.engine.images.resolve(ref)
        except errors.NotFound as e:
            message = str(e)
            raise errors.NotFound(message if message.startswith("No such image") else f"No such image: {ref}") from None

    @staticmethod
    def _check_log_config(hc: dict) -> None:
        log_config = hc.get("LogConfig") or {}
        kind = log_config.get("Type") or "json-file"
        if kind not in ("json-file", "local"):
            raise errors.InvalidArgument(f"logging driver {kind!r} is not supported: use json-file")
        hc["LogConfig"] = {"Type": "json-file", "Config": dict(log_config.get("Config") or {})}

    def _reserve_name(self, name: str | None) -> str:
        if name:
            if not NAME_PATTERN.match(name):
                raise errors.InvalidArgument(f"Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] "
                                             "are allowed")
            full = "/" + name.lstrip("/")
            self._check_name_free(full)
        else:
            full = next(("/" + n for n in (random_name() for _ in range(10)) if "/" + n not in self._names),
                        "/" + secrets.token_hex(6))
        self._names[full] = ""  # reserved until the id exists
        return full

    def _check_name_free(self, full: str) -> None:
        owner = self._names.get(full)
        if owner is not None:
            raise errors.Conflict(f'Conflict. The container name "{full}" is already in use by container "{owner}". '
                                  "You have to remove (or rename) that container to be able to reuse that name.")

    # ---- start -------------------------------------------------------------------------------------

    async def start_container(self, ref: str) -> bool:
        """``POST /containers/{id}/start``; False when it was running already (304)."""
        c = self.get(ref)
        async with c.lock:
            if c.state.status == "paused":
                raise errors.Conflict("cannot start a paused container, try unpause instead")
            if c.removing or c.state.status in ("removing", "dead"):
                raise errors.Conflict("container is marked for removal and cannot be started")
            if c.state.running:
                return False
            c.manually_stopped = False
            c.restart_delay = 0.0
            await self._run(c)
        return True

    async def _run(self, c: Container) -> None:
        """Start one run of ``c``: files, bundle, monitor (container created), waiting attachers, start."""
        c.state.error = ""
        self._forget_finished_execs(c)
        try:
            await self._prepare_files(c)
        except errors.SkiffError as e:
            await self._start_failed(c, e, from_runtime=False)
        try:
            monitor = await self._launch(c)
        except errors.SkiffError as e:
            await self._start_failed(c, e)
        c.monitor = monitor
        c.run_done.clear()
        await self._apply_console_size(monitor, c.host_config.get("ConsoleSize"), bool(c.config.get("Tty")))
        await self._connect_attachers(c, monitor)
        try:
            await monitor.start()
        except errors.SkiffError as e:
            c.monitor = None
            with contextlib.suppress(Exception):
                await monitor.kill(signal.SIGKILL)
            with contextlib.suppress(Exception):
                await monitor.close()
            c.run_done.set()
            await self._start_failed(c, e)
        c.state = ContainerState(status="running", pid=monitor.pid, started_at=time.time(),
                                 exit_code=0, finished_at=c.state.finished_at)
        c.has_been_started = True
        self._save(c)
        self.event(c, "start")
        c.watcher = self._spawn(self._watch(c, monitor))
        self.health.started(c)

    async def _launch(self, c: Container) -> Monitor:
        log_opts = (c.host_config.get("LogConfig") or {}).get("Config") or None
        return await Monitor.launch(
            container_id=c.id, bundle=self._bundle_dir(c), state_dir=self._state_dir(c),
            log_path=self.log_path(c), runtime=self._runtime_command(),
            runtime_root=str(self.engine.config.runtime_root), tty=bool(c.config.get("Tty")),
            open_stdin=bool(c.config.get("OpenStdin")), stdin_once=bool(c.config.get("StdinOnce")),
            log_opts=log_opts, in_process=self.engine.config.runtime == "skiff",
            spawner=self._spawner)

    async def _start_failed(self, c: Container, error: errors.SkiffError, from_runtime: bool = True) -> NoReturn:
        """Record a failed start as dockerd does (the error, exit code 126/127/128), release what the start
        took, remove an AutoRemove container (its client waits for that), then raise. A runtime's error is
        raised as a 400 in dockerd's words around the runtime's own, which the CLI turns into its exit code."""
        message = str(error)
        if from_runtime and "OCI runtime" not in message:
            message = f"failed to create task for container: OCI runtime create failed: {message}: unknown"
        c.state.error = message
        c.state.exit_code = start_error_exit_code(message)
        c.state.status = "exited" if c.has_been_started else "created"
        c.state.pid = 0
        await self._release_rootfs(c)
        self._save(c)
        for fut, _ in c.attach_waiters:
            _resolve_future(fut, None)
        c.attach_waiters.clear()
        if c.host_config.get("AutoRemove"):
            c.removing = True
            await self._destroy(c, remove_volumes=True)  # as dockerd's auto-removal (RemoveVolume)
        if not from_runtime:
            raise error
        raise errors.InvalidArgument(message) from None

    @staticmethod
    async def _apply_console_size(target: Any, size: list[int] | None, tty: bool) -> None:
        """The client's terminal size (``ConsoleSize``), set on the pty before the process reads it; runtimes
        that do not apply ``process.consoleSize`` themselves need this, and dockerd does the same."""
        if tty and size and len(size) == 2 and size[0] and size[1]:
            with contextlib.suppress(errors.SkiffError):
                await target.resize(int(size[0]), int(size[1]))

    async def _prepare_files(self, c: Container) -> None:
        """Mount the root filesystem, write /etc/hostname, hosts and resolv.conf and the bundle."""
        rootfs = self.rootfs_dir(c)
        os.makedirs(rootfs, exist_ok=True)
        if not os.path.ismount(rootfs):
            await _call(self.engine.images.mount_rootfs, c.id, rootfs)
        try:
            joined = self._joined_namespaces(c)
            netns = await self._networks.attach(c) if self._networks is not None else None
            if netns is not None:
                joined["network"] = netns  # the sandbox with its interfaces, made before the runtime joins it
            self._make_workdir(c, rootfs)
            self._write_etc_files(c)
            paths = ocispec.BundlePaths(rootfs, self.etc_path(c, "hostname"), self.etc_path(c, "hosts"),
                                        self.etc_path(c, "resolv.conf"), joined)
            user = self._resolve_user(rootfs, c.config.get("User") or "", c.host_config.get("GroupAdd") or [])
            own_mounts = await mountplan.prepare_run_async(
                self._volumes, c.id, c.mounts, c.host_config.get("Tmpfs"),
                lambda path: resolve_in_root(rootfs, path), not c.has_been_started)
            spec = ocispec.build_spec(c.id, c.config, c.host_config, paths, self.spec_options, user, own_mounts)
            os.makedirs(self._bundle_dir(c), exist_ok=True)
            write_atomically(os.path.join(self._bundle_dir(c), "config.json"), json.dumps(spec).encode(), durable=False)
            shutil.rmtree(self._state_dir(c), ignore_errors=True)  # a previous run's monitor state
        except BaseException:
            await self._release_rootfs(c)
            raise

    @staticmethod
    def _resolve_user(rootfs: str, user: str, group_add: list[str]) -> dict:
        """``process.user`` from the container's own /etc/passwd and /etc/group (see ocispec.resolve_user)."""
        passwd = _read_text(resolve_in_root(rootfs, "/etc/passwd"))
        group = _read_text(resolve_in_root(rootfs, "/etc/group"))
        return ocispec.resolve_user(user, group_add, passwd, group)

    @staticmethod
    def _make_workdir(c: Container, rootfs: str) -> None:
        """dockerd creates a missing WorkingDir (as root; the image may not have it)."""
        workdir = c.config.get("WorkingDir") or ""
        if workdir and workdir != "/":
            target = resolve_in_root(rootfs, workdir)
            if not os.path.isdir(target):
                os.makedirs(target, 0o755, exist_ok=True)

    _JOINABLE = (("NetworkMode", "network", "net"), ("IpcMode", "ipc", "ipc"), ("PidMode", "pid", "pid"))

    def _joined_namespaces(self, c: Container) -> dict[str, str]:
        """Namespaces of other containers that ``container:<x>`` modes join (x must be running)."""
        joined = {}
        for key, kind, name in self._JOINABLE:
            ref = ocispec.joined_container(c.host_config.get(key))
            if ref is None:
                continue
            other = self.get(ref)
            if other.state.status not in ("running", "paused") or not other.state.pid:
                what = {"network": "network", "ipc": "IPC", "pid": "PID"}[kind]
                raise errors.Conflict(f"cannot join {what} of a non running container: {other.id}")
            joined[kind] = f"/proc/{other.state.pid}/ns/{name}"
        return joined

    def _write_etc_files(self, c: Container) -> None:
        """/etc/hostname, hosts and resolv.conf as dockerd writes them; a container sharing another's network
        (``container:<x>``) gets copies of x's."""
        network_of = ocispec.joined_container(c.host_config.get("NetworkMode"))
        if network_of is not None:
            other = self.get(network_of)
            for name in ("hostname", "hosts", "resolv.conf"):
                write_atomically(self.etc_path(c, name), _read_text(self.etc_path(other, name)).encode(), durable=False)
            return
        hc, mode = c.host_config, c.host_config.get("NetworkMode") or "default"
        hostname = c.config.get("Hostname") or c.id[:12]
        domain = c.config.get("Domainname") or ""
        write_atomically(self.etc_path(c, "hostname"), f"{hostname}\n".encode(), durable=False)
        networks = self._networks
        if mode == "host":
            hosts = _read_text("/etc/hosts")
        else:
            full = f"{hostname}.{domain} {hostname}" if domain else hostname
            extra = [h.replace("host-gateway", networks.host_gateway()) if networks else h
                     for h in hc.get("ExtraHosts") or []]
            hosts = ocispec.hosts_file(full, networks.primary_address(c) if networks else None, extra)
        write_atomically(self.etc_path(c, "hosts"), hosts.encode(), durable=False)
        if networks is not None and networks.uses_embedded_dns(c):
            # dockerd: the embedded resolver, which forwards to --dns (or the host's servers) itself
            resolv = ocispec.resolv_conf(_read_text("/etc/resolv.conf"), mode, ["127.0.0.11"],
                                         hc.get("DnsSearch") or [], hc.get("DnsOptions") or ["ndots:0"])
        else:
            resolv = ocispec.resolv_conf(_read_text("/etc/resolv.conf"), mode, hc.get("Dns") or [],
                                         hc.get("DnsSearch") or [], hc.get("DnsOptions") or [])
        write_atomically(self.etc_path(c, "resolv.conf"), resolv.encode(), durable=False)

    async def _release_rootfs(self, c: Container) -> None:
        if self._networks is not None:
            await self._networks.detach(c)  # the sandbox, its rules, proxies and DNS (idempotent)
        rootfs = self.rootfs_dir(c)
        if os.path.ismount(rootfs):
            try:
                await _call(self.engine.images.unmount_rootfs, rootfs)
            except errors.SkiffError as e:
                log.warning("container %s: unmounting its root filesystem: %s", c.id[:12], e)
        shutil.rmtree(self._bundle_dir(c), ignore_errors=True)
        mountplan.release_run(self._volumes, c.id, c.mounts)  # driver volumes nobody runs with unmount

    async def _connect_attachers(self, c: Container, monitor: Monitor) -> None:
        """Clients that attached before the start get their sessions now, before the process runs, so they
        see its first output and their stdin (sent before the start) reaches it."""
        waiters, c.attach_waiters = c.attach_waiters, []
        for fut, streams in waiters:
            if fut.done():
                continue
            try:
                session = await monitor.attach(**streams)
            except errors.SkiffError as e:
                fut.set_exception(e)
                continue
            if fut.done():  # the client went away meanwhile
                await session.close()
            else:
                fut.set_result(session)

    # ---- exits, restarts, auto-removal ----------------------------------------------------------------

    async def _watch(self, c: Container, monitor: Monitor) -> None:
        """Await the run's end, record it, then remove (AutoRemove) or restart (policy) the container."""
        try:
            status = await monitor.wait()
        except errors.SkiffError as e:
            # The monitor died without recording an exit: make sure nothing of the container survives it.
            log.error("container %s: %s; killing what is left of it", c.id[:12], e)
            await self._runtime_quiet("delete", "--force", c.id)
            status = ExitStatus(137, "")
        self.health.stopped(c)
        with contextlib.suppress(Exception):
            await monitor.close_after_exit()
        if c.monitor is monitor:
            c.monitor = None
        ran_for = time.time() - c.state.started_at
        c.state = ContainerState(status="exited", exit_code=status.exit_code, oom_killed=bool(status.oom_killed),
                                 started_at=c.state.started_at, finished_at=self._finished_at(status))
        if c.removing:
            c.state.status = "removing"
        await self._release_rootfs(c)
        self._save(c)
        self._finish_execs(c)
        if status.oom_killed:
            self.event(c, "oom")
        self.event(c, "die", exitCode=str(status.exit_code))
        for fut in c.exit_waiters:
            _resolve_future(fut, status.exit_code)
        c.exit_waiters.clear()
        c.run_done.set()
        if c.removing or self._stopping:
            return
        if c.host_config.get("AutoRemove"):
            self._spawn(self._auto_remove(c))
        elif self._should_restart(c, status.exit_code):
            c.restart_delay = self._next_delay(c.restart_delay, ran_for)
            c.state.status = "restarting"
            self._save(c)
            c.restart_task = self._spawn(self._restart_after(c, c.restart_delay))

    @staticmethod
    def _finished_at(status: Any) -> float:
        """The exit time the monitor recorded (RFC 3339, or Unix seconds/ns), else now."""
        finished = getattr(status, "finished_at", None)
        if isinstance(finished, str) and finished:
            with contextlib.suppress(ValueError):
                return parse_time(finished) / 1e9
        if isinstance(finished, (int, float)) and finished > 0:
            return float(finished) / (1e9 if finished > 1e12 else 1)
        return time.time()

    def _should_restart(self, c: Container, exit_code: int, on_daemon_start: bool = False) -> bool:
        """Docker's restart policies. A manual stop (or kill) suspends them, except that ``always`` brings a
        container back when the daemon starts even so (``unless-stopped`` is the one that stays down)."""
        if self._stopping or c.removing:
            return False
        policy = c.host_config.get("RestartPolicy") or {}
        name, limit = policy.get("Name") or "no", policy.get("MaximumRetryCount") or 0
        if name == "always" and on_daemon_start:
            return c.has_been_started
        if c.manually_stopped:
            return False
        if name in ("always", "unless-stopped"):
            return not on_daemon_start or c.has_been_started
        if name == "on-failure":
            return exit_code != 0 and (limit == 0 or c.restart_count < limit)
        return False

    @staticmethod
    def _next_delay(previous: float, ran_for: float) -> float:
        if ran_for >= RESTART_RESET_AFTER or previous <= 0:
            return RESTART_DELAY_MIN
        return min(previous * 2, RESTART_DELAY_MAX)

    async def _restart_after(self, c: Container, delay: float, by_policy: bool = True) -> None:
        """Start ``c`` again after ``delay``: a policy restart (counted in RestartCount) or, at daemon start,
        bringing back what the policy wants running (not counted, as dockerd)."""
        await asyncio.sleep(delay)
        async with c.lock:
            if (c.state.running and c.state.status != "restarting") or c.removing:
                return
            if by_policy:
                if c.manually_stopped:
                    return
                c.restart_count += 1
            c.manually_stopped = False
            c.restart_task = None
            try:
                await self._run(c)
            except errors.SkiffError as e:
                log.warning("container %s: restart failed: %s", c.id[:12], e)

    def _cancel_restart(self, c: Container) -> bool:
        """Cancel a pending policy restart; True if there was one (the container is then exited)."""
        task, c.restart_task = c.restart_task, None
        if task is None or task.done():
            return False
        task.cancel()
        if c.state.status == "restarting":
            c.state.status = "exited"
            self._save(c)
        return True

    async def _auto_remove(self, c: Container) -> None:
        async with c.lock:
            if c.removing or c.id not in self._containers or c.state.running:
                return
            c.removing = True
            await self._destroy(c, remove_volumes=True)  # as dockerd's auto-removal (RemoveVolume)

    # ---- stop, kill, restart ------------------------------------------------------------------------

    async def stop_container(self, ref: str, timeout: int | None = None, sig: str | None = None) -> bool:
        """``POST /containers/{id}/stop``: the stop signal, ``timeout`` seconds (-1: forever), then SIGKILL.
        False when it was not running (304)."""
        c = self.get(ref)
        async with c.lock:
            if self._cancel_restart(c):
                c.manually_stopped = True
                self._save(c)
                return True
            if not c.state.running:
                return False
            c.manually_stopped = True
            self._save(c)
            await self._stop_run(c, timeout, sig)
        self.event(c, "stop")
        return True

    async def _stop_run(self, c: Container, timeout: int | None, sig: str | None) -> None:
        number = ocispec.parse_signal(sig) if sig else ocispec.stop_signal(c.config)
        if timeout is None:
            timeout = c.config.get("StopTimeout")
            timeout = DEFAULT_STOP_TIMEOUT if timeout is None else timeout
        await self._signal(c, number)
        if await self._wait_run_done(c, None if timeout < 0 else timeout):
            return
        log.info("container %s did not stop within %ss: killing it", c.id[:12], timeout)
        await self._signal(c, signal.SIGKILL)
        await self._wait_run_done(c, None)

    async def _wait_run_done(self, c: Container, timeout: float | None) -> bool:
        try:
            await asyncio.wait_for(c.run_done.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def _signal(self, c: Container, number: int) -> None:
        """Send a signal (thawing a paused container so it can act on it, as dockerd does)."""
        monitor = c.monitor
        if monitor is None or c.run_done.is_set():
            return
        self.event(c, "kill", signal=str(number))
        try:
            await monitor.kill(number)
        except errors.Conflict:
            pass  # it has just exited; the watcher is recording that
        except errors.SkiffError as e:
            if not c.run_done.is_set():
                raise errors.SystemFailure(f"Cannot kill container: {c.id}: {e}") from None
        if c.state.status == "paused":
            await self._runtime_quiet("resume", c.id)
            c.state.status = "running"
            self.event(c, "unpause")

    async def kill(self, ref: str, sig: str | None = None) -> None:
        """``POST /containers/{id}/kill``: SIGKILL or ``sig``; the stop signal or SIGKILL suspends restarts."""
        c = self.get(ref)
        number = ocispec.parse_signal(sig) if sig else signal.SIGKILL
        async with c.lock:
            if c.state.status == "restarting":
                raise errors.Conflict(f"Container {c.id} is restarting, wait until the container is running")
            if not c.state.running or c.monitor is None:
                raise errors.Conflict(f"Container {c.id} is not running")
            if number in (signal.SIGKILL, ocispec.stop_signal(c.config)):
                c.manually_stopped = True
                self._save(c)
            await self._signal(c, number)

    async def restart(self, ref: str, timeout: int | None = None, sig: str | None = None) -> None:
        """``POST /containers/{id}/restart``: stop if running, then start."""
        c = self.get(ref)
        async with c.lock:
            self._cancel_restart(c)
            if c.state.running:
                c.manually_stopped = True
                await self._stop_run(c, timeout, sig)
                self.event(c, "stop")
            if c.removing:
                raise errors.Conflict("container is marked for removal and cannot be started")
            c.manually_stopped = False
            c.restart_delay = 0.0
            await self._run(c)
        self.event(c, "restart")

    # ---- pause, update, rename ----------------------------------------------------------------------

    async def pause(self, ref: str) -> None:
        c = self.get(ref)
        async with c.lock:
            if not c.state.running or c.state.status == "restarting":
                raise errors.Conflict(f"Container {c.id} is not running")
            if c.state.status == "paused":
                raise errors.Conflict(f"Container {c.id} is already paused")
            await self._runtime("pause", c.id)
            c.state.status = "paused"
            self.health.stopped(c)
            self._save(c)
        self.event(c, "pause")

    async def unpause(self, ref: str) -> None:
        c = self.get(ref)
        async with c.lock:
            if c.state.status != "paused":
                raise errors.Conflict(f"Container {c.id} is not paused")
            await self._runtime("resume", c.id)
            c.state.status = "running"
            self._save(c)
            self.health.resumed(c)
        self.event(c, "unpause")

    _UPDATABLE = ("Memory", "MemorySwap", "MemoryReservation", "NanoCpus", "CpuShares", "CpuQuota", "CpuPeriod",
                  "CpusetCpus", "CpusetMems", "PidsLimit", "BlkioWeight", "KernelMemory")

    async def update(self, ref: str, body: dict) -> list[str]:
        """``POST /containers/{id}/update``: resources (applied live through ``runtime update``) and the
        restart policy."""
        c = self.get(ref)
        async with c.lock:
            hc = dict(c.host_config)
            hc.update({k: body[k] for k in self._UPDATABLE if body.get(k) is not None})
            if body.get("Memory") and not body.get("MemorySwap") and (hc.get("MemorySwap") or 0) > 0 \
                    and hc["MemorySwap"] < hc["Memory"]:
                raise errors.InvalidArgument("Memory limit should be smaller than already set memoryswap limit, "
                                             "update the memoryswap at the same time")
            if body.get("RestartPolicy") and body["RestartPolicy"].get("Name"):
                hc["RestartPolicy"] = {"Name": body["RestartPolicy"]["Name"],
                                       "MaximumRetryCount": body["RestartPolicy"].get("MaximumRetryCount") or 0}
            ocispec.validate_host_config(hc)
            if c.state.running and c.state.status != "restarting":
                resources = ocispec.resources(hc)
                resources.pop("devices", None)
                await self._runtime("update", "--resources", "-", c.id, stdin=json.dumps(resources).encode())
            c.host_config = hc
            self._save(c)
        self.event(c, "update")
        return []

    async def rename(self, ref: str, new_name: str) -> None:
        c = self.get(ref)
        if not new_name:
            raise errors.InvalidArgument("Neither old nor new names may be empty")
        if not NAME_PATTERN.match(new_name):
            raise errors.InvalidArgument(f"Invalid container name ({new_name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] "
                                         "are allowed")
        full = "/" + new_name.lstrip("/")
        if full == c.name:
            raise errors.InvalidArgument("Renaming a container with the same name as its current name")
        self._check_name_free(full)
        old = c.name
        self._names.pop(old, None)
        self._names[full] = c.id
        c.name = full
        self._save(c)
        self.event(c, "rename", oldName=old)

    # ---- remove and prune ---------------------------------------------------------------------------

    async def remove(self, ref: str, force: bool = False, remove_volumes: bool = False) -> None:
        """``DELETE /containers/{id}``: refused while running unless ``force`` (then SIGKILL first);
        ``remove_volumes`` (``v``) removes its anonymous volumes too."""
        c = self.get(ref)
        if c.removing:
            raise errors.Conflict(f"removal of container {c.id} is already in progress")
        async with c.lock:
            if c.removing or c.id not in self._containers:
                raise errors.Conflict(f"removal of container {c.id} is already in progress")
            self._cancel_restart(c)
            if c.state.running and not force:
                if c.state.status == "paused":
                    raise errors.Conflict(f"You cannot remove a paused container {c.id}. Unpause and then stop the "
                                          "container before attempting removal or force remove")
                raise errors.Conflict(f"You cannot remove a running container {c.id}. Stop the container before "
                                      "attempting removal or force remove")
            c.removing = True
            if c.state.running:
                c.manually_stopped = True
                await self._signal(c, signal.SIGKILL)
                await self._wait_run_done(c, None)
            await self._destroy(c, remove_volumes)

    async def _destroy(self, c: Container, remove_volumes: bool = False) -> None:
        """Remove every trace of a stopped container (and its anonymous volumes with ``remove_volumes``) and
        finish ``wait?condition=removed``."""
        c.state.status = "removing"
        await self._release_rootfs(c)
        try:
            await _call(self.engine.images.remove_rootfs, c.id)
        except errors.NotFound:
            pass
        except errors.SkiffError as e:
            c.state.status = "dead"
            c.removing = False
            raise errors.SystemFailure(f"unable to remove filesystem for {c.id}: {e}") from None
        shutil.rmtree(self.container_dir(c), ignore_errors=True)
        shutil.rmtree(self._bundle_dir(c), ignore_errors=True)
        self._containers.pop(c.id, None)
        if self._names.get(c.name) == c.id:
            del self._names[c.name]
        if remove_volumes and self._volumes is not None:
            self._volumes.remove_unused(mountplan.anonymous_volumes(c.mounts))
        for exec_id in list(c.execs):
            self._execs.pop(exec_id, None)
        self.event(c, "destroy")
        _resolve_future(c.removed, c.state.exit_code)
        for fut, _ in c.attach_waiters:
            _resolve_future(fut, None)

    async def prune(self, keep: Callable[[Container], bool]) -> tuple[list[str], int]:
        """Remove every stopped container ``keep`` does not keep; (ids removed, bytes reclaimed)."""
        removed, reclaimed = [], 0
        for c in self.all():
            if c.state.running or c.removing or keep(c):
                continue
            reclaimed += self.size_rw(c)
            try:
                await self.remove(c.id)
            except errors.SkiffError as e:
                log.warning("prune: %s: %s", c.id[:12], e)
                continue
            removed.append(c.id)
        self.engine.events.publish("container", "prune", "", {"reclaimed": str(reclaimed)})
        return removed, reclaimed

    # ---- wait ----------------------------------------------------------------------------------------

    async def wait(self, c: Container, condition: str = "not-running") -> int:
        """The exit code once ``condition`` holds: not-running (now, if stopped), next-exit, removed."""
        if condition not in WAIT_CONDITIONS:
            raise errors.InvalidArgument(f"invalid condition: {condition!r}")
        loop = asyncio.get_running_loop()
        if condition == "removed":
            if c.id not in self._containers and not c.removing:
                return c.state.exit_code
            if c.removed is None:
                c.removed = loop.create_future()
            return await asyncio.shield(c.removed)
        if condition == "not-running" and not c.state.running:
            return c.state.exit_code
        fut = loop.create_future()
        c.exit_waiters.append(fut)
        return await fut

    # ---- attach ----------------------------------------------------------------------------------

    def attach(self, c: Container, *, stdin: bool, stdout: bool, stderr: bool) -> asyncio.Task:
        """A task giving an attach session on ``c``'s stdio (``AttachSession``), or None if the container
        went away first. A container not running yet is attached at its next start, before its process
        runs: the intent is recorded here, synchronously, so a client that is told "attached" and then
        starts the container never misses its first output (cancel the task to give up)."""
        if c.state.status == "paused":
            raise errors.Conflict(f"container {c.id} is paused, unpause the container before attach")
        if c.state.status == "restarting":
            raise errors.Conflict(f"container {c.id} is restarting, wait until the container is running")
        streams = {"stdin": stdin and bool(c.config.get("OpenStdin")), "stdout": stdout, "stderr": stderr}
        self.event(c, "attach")
        if c.monitor is not None and c.state.status == "running":
            return asyncio.ensure_future(c.monitor.attach(**streams))
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        c.attach_waiters.append((fut, streams))
        return asyncio.ensure_future(self._attached_at_start(fut))

    @staticmethod
    async def _attached_at_start(fut: asyncio.Future) -> Any:
        try:
            return await fut
        finally:
            if not fut.done():
                fut.cancel()

    async def resize(self, ref: str, height: int, width: int) -> None:
        c = self.get(ref)
        if c.monitor is None or c.state.status not in ("running", "paused"):
            raise errors.Conflict(f"Container {c.id} is not running")
        await c.monitor.resize(height, width)

    # ---- exec -------------------------------------------------------------------------------------

    def create_exec(self, ref: str, body: dict) -> Exec:
        """``POST /containers/{id}/exec``."""
        c = self.get(ref)
        if c.state.status == "paused":
            raise errors.Conflict(f"Container {c.id} is paused, unpause the container before exec")
        if c.state.status != "running" or c.monitor is None:
            raise errors.Conflict(f"Container {c.id} is not running")
        if not body.get("Cmd"):
            raise errors.InvalidArgument("No exec command specified")
        e = Exec(id=new_id(), container=c, config=dict(body))
        self._execs[e.id] = e
        c.execs[e.id] = e
        self.event(c, f"exec_create: {' '.join(body['Cmd'])}", execID=e.id)
        return e

    def forget_exec(self, e: Exec) -> None:
        """Drop an exec from the records (a health probe's, once done: one per interval must not pile up)."""
        e.container.execs.pop(e.id, None)
        self._execs.pop(e.id, None)

    def get_exec(self, exec_id: str) -> Exec:
        e = self._execs.get(exec_id)
        if e is None:
            raise errors.NotFound(f"No such exec instance: {exec_id}")
        return e

    def exec_process(self, e: Exec, tty: bool) -> dict:
        """The OCI process for an exec: the container's environment, user, cwd and capabilities, with the
        exec's own settings over them."""
        c, cfg = e.container, e.config
        env = ocispec.container_env({**c.config, "Tty": tty})
        env = ocispec.replace_or_append_env(env, cfg.get("Env") or [])
        privileged = bool(cfg.get("Privileged") or c.host_config.get("Privileged"))
        caps = ocispec.capabilities(c.host_config.get("CapAdd"), c.host_config.get("CapDrop"), privileged)
        process = {
            "terminal": tty, "args": list(cfg["Cmd"]), "env": env,
            "cwd": cfg.get("WorkingDir") or c.config.get("WorkingDir") or "/",
            "user": self._resolve_user(self.rootfs_dir(c), cfg.get("User") or c.config.get("User") or "",
                                       c.host_config.get("GroupAdd") or []),
            "capabilities": {s: list(caps) for s in ("bounding", "effective", "permitted")},
            "noNewPrivileges": any(o.startswith("no-new-privileges") and not o.endswith("false")
                                   for o in c.host_config.get("SecurityOpt") or []),
        }
        size = cfg.get("ConsoleSize") or [0, 0]
        if tty and size and size[0] and size[1]:
            process["consoleSize"] = {"height": int(size[0]), "width": int(size[1])}
        return process

    async def start_exec(self, e: Exec, tty: bool | None = None, detached: bool = False) -> Any:
        """Start the exec's process; returns its ``ExecSession`` (read/write/close_stdin as attach's).
        A ``detached`` exec's output is not sent (nobody reads it)."""
        if e.started:
            raise errors.Conflict(f"Error: Exec command {e.id} is already running" if e.running
                                  else f"Error: Exec command {e.id} has already run")
        c = e.container
        if c.monitor is None or c.state.status != "running":
            raise errors.Conflict(f"Container {c.id} is not running")
        e.started = True
        use_tty = bool(e.config.get("Tty") if tty is None else tty)
        session = None
        try:
            session = await c.monitor.exec(e.id, self.exec_process(e, use_tty), tty=use_tty,
                                           open_stdin=bool(e.config.get("AttachStdin")) and not detached,
                                           stdout=not detached, stderr=not detached)
            await session.start()
        except errors.SkiffError as error:
            if session is not None:
                await session.close()
            self._exec_failed(e, error)
        await self._apply_console_size(session, e.config.get("ConsoleSize"), use_tty)
        e.session, e.running = session, True
        e.pid = getattr(session, "pid", 0) or 0
        self.event(c, f"exec_start: {' '.join(e.config['Cmd'])}", execID=e.id)
        return session

    def _exec_failed(self, e: Exec, error: Exception) -> NoReturn:
        message = str(error)
        if "OCI runtime" not in message:
            message = f"OCI runtime exec failed: {message}: unknown"
        code = start_error_exit_code(message)
        e.exit_code = 126 if code == 128 else code  # dockerd's default for an exec that could not start
        e.running = False
        e.done.set()
        self.event(e.container, "exec_die", execID=e.id, exitCode=str(e.exit_code))
        raise errors.InvalidArgument(message) from None

    async def finish_exec(self, e: Exec) -> int:
        """Await the exec's exit, record it (before the client asks ``/exec/{id}/json``), exec_die."""
        if e.session is None:
            await e.done.wait()
            return e.exit_code or 0
        if not e.done.is_set():
            try:
                status = await e.session.wait()
                code = status.exit_code if hasattr(status, "exit_code") else int(status)
            except errors.SkiffError:
                code = 137 if e.container.run_done.is_set() else 126
            if not e.done.is_set():
                e.exit_code, e.running = code, False
                e.done.set()
                self.event(e.container, "exec_die", execID=e.id, exitCode=str(code))
        return e.exit_code or 0

    def _forget_finished_execs(self, c: Container) -> None:
        """A new run starts with no exec history (dockerd clears ExecIDs too), so it does not grow forever."""
        for exec_id in [i for i, e in c.execs.items() if e.done.is_set()]:
            del c.execs[exec_id]
            self._execs.pop(exec_id, None)

    def _finish_execs(self, c: Container) -> None:
        """The container exited: execs still marked running died with it."""
        for e in c.execs.values():
            if e.started and not e.done.is_set() and e.session is None:
                e.exit_code, e.running = 137, False
                e.done.set()

    async def resize_exec(self, exec_id: str, height: int, width: int) -> None:
        e = self.get_exec(exec_id)
        if e.session is None or not e.running:
            raise errors.Conflict(f"Exec {exec_id} is not running")
        await e.session.resize(height, width)

    # ---- processes and resources --------------------------------------------------------------------

    def pids(self, c: Container) -> list[int]:
        """The container's processes, from its cgroup (so any runtime's containers are covered)."""
        for path in cgroup_dirs(self.cgroup_path(c)).values():
            procs = os.path.join(path, "cgroup.procs")
            if os.path.exists(procs):
                with open(procs) as f:
                    return sorted(int(line) for line in f if line.strip())
        return [c.state.pid] if c.state.pid else []

    async def top(self, ref: str, ps_args: str = "-ef") -> dict:
        """``GET /containers/{id}/top``: the host's ``ps`` rows of the container's processes (dockerd's way)."""
        c = self.get(ref)
        if not c.state.running or c.state.status == "restarting":
            raise errors.Conflict(f"Container {c.id} is not running")
        pids = set(self.pids(c))
        proc = await asyncio.create_subprocess_exec("ps", *(ps_args.split() if ps_args else []),
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise errors.SystemFailure(f"ps: {err.decode(errors='replace').strip()}")
        return parse_ps(out.decode(errors="replace"), pids)

    def stats(self, c: Container) -> dict:
        """One sample of the container's cgroup counters (not yet in Docker's shape: see api/containers)."""
        return read_cgroup_stats(cgroup_dirs(self.cgroup_path(c))) if c.state.running else {}

    def size_rw(self, c: Container) -> int:
        """Bytes the container wrote to its own layer (the overlay's upper dir), when it can be found."""
        snapshots = getattr(self.engine.images, "snapshots", None)
        try:
            path = snapshots.upper_dir(c.id) if snapshots is not None else ""
        except errors.SkiffError:
            return 0
        total = 0
        for dirpath, _, filenames in os.walk(path):
            for name in filenames:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
        return total

    # ---- the runtime's command line ----------------------------------------------------------------

    async def _runtime(self, *args: str, stdin: bytes | None = None) -> str:
        """Run ``<runtime> --root R args...``; SystemFailure with its stderr on failure."""
        cmd = [*self._runtime_command(), "--root", str(self.engine.config.runtime_root), *args]
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate(stdin)
        if proc.returncode != 0:
            raise errors.SystemFailure(err.decode(errors="replace").strip() or f"{args[0]} failed")
        return out.decode(errors="replace")

    def _runtime_command(self) -> list[str]:
        """The OCI runtime's command (``runtime_command``; ``runtime`` when that is already a list)."""
        cfg = self.engine.config
        command = getattr(cfg, "runtime_command", None) or cfg.runtime
        return [command] if isinstance(command, str) else list(command)

    async def _runtime_quiet(self, *args: str) -> None:
        try:
            await self._runtime(*args)
        except (errors.SkiffError, OSError) as e:
            log.debug("runtime %s: %s", " ".join(args), e)


def _read_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


# --------------------------------------------------------------------------------------------------
# ps and cgroups
# --------------------------------------------------------------------------------------------------


def parse_ps(output: str, pids: Iterable[int]) -> dict:
    """dockerd's parsePSOutput: titles from the header, the rows whose PID is the container's, extra
    fields of the last column (the command's arguments) joined back into it."""
    lines = output.splitlines()
    titles = lines[0].split() if lines else []
    if "PID" not in titles:
        raise errors.SystemFailure("Couldn't find PID field in ps output")
    index, wanted, rows = titles.index("PID"), set(pids), []
    for line in lines[1:]:
        fields = line.split()
        if not fields:
            continue
        try:
            pid = int(fields[index])
        except ValueError:
            raise errors.SystemFailure(f"Unexpected pid '{fields[index]}'") from None
        if pid in wanted:
            rows.append([*fields[:len(titles) - 1], " ".join(fields[len(titles) - 1:])])
    return {"Titles": titles, "Processes": rows}


def cgroup_mounts() -> dict[str, str]:
    """Controller (or "unified") -> mount point of each cgroup hierarchy on this host."""
    result: dict[str, str] = {}
    for line in _read_text("/proc/self/mountinfo").splitlines():
        left, _, right = line.partition(" - ")
        fields, extra = left.split(), right.split()
        if len(fields) < 5 or not extra:
            continue
        if extra[0] == "cgroup2":
            result.setdefault("unified", fields[4])
        elif extra[0] == "cgroup" and len(extra) >= 3:
            for option in extra[2].split(","):
                if option in ("cpu", "cpuacct", "memory", "pids", "blkio", "freezer", "cpuset"):
                    result.setdefault(option, fields[4])
    return result


def cgroup_dirs(cgroups_path: str) -> dict[str, str]:
    """The container's directory in each hierarchy that has one: {"memory": ..., ...} on v1,
    {"unified": ...} on v2."""
    relative = cgroups_path.lstrip("/")
    mounts = cgroup_mounts()
    v1 = {k: os.path.join(v, relative) for k, v in mounts.items() if k != "unified"}
    found = {k: p for k, p in v1.items() if os.path.isdir(p)}
    if found:
        return found
    unified = mounts.get("unified")
    if unified and os.path.isdir(os.path.join(unified, relative)):
        return {"unified": os.path.join(unified, relative)}
    return {}


def _read_int(path: str, default: int = 0) -> int:
    text = _read_text(path).strip()
    if text == "max":
        return -1
    try:
        return int(text)
    except ValueError:
        return default


def _read_keyed(path: str) -> dict[str, int]:
    result = {}
    for line in _read_text(path).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            result[parts[0]] = int(parts[1])
    return result


def read_cgroup_stats(dirs: dict[str, str]) -> dict:
    """Raw counters in a runtime-neutral shape: cpu (ns), memory (bytes), pids."""
    if "unified" in dirs:
        return _read_v2(dirs["unified"])
    return _read_v1(dirs)


_TICKS_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def _read_v1(dirs: dict[str, str]) -> dict:
    acct, mem, pids, cpu = (dirs.get(k, "/nonexistent") for k in ("cpuacct", "memory", "pids", "cpu"))
    ticks = _read_keyed(os.path.join(acct, "cpuacct.stat"))
    percpu = [int(x) for x in _read_text(os.path.join(acct, "cpuacct.usage_percpu")).split()]
    throttle = _read_keyed(os.path.join(cpu, "cpu.stat"))
    return {
        "cpu": {"total": _read_int(os.path.join(acct, "cpuacct.usage")), "percpu": percpu,
                "kernel": ticks.get("system", 0) * _TICKS_NS, "user": ticks.get("user", 0) * _TICKS_NS,
                "periods": throttle.get("nr_periods", 0), "throttled_periods": throttle.get("nr_throttled", 0),
                "throttled_time": throttle.get("throttled_time", 0)},
        "memory": {"usage": _read_int(os.path.join(mem, "memory.usage_in_bytes")),
                   "max_usage": _read_int(os.path.join(mem, "memory.max_usage_in_bytes")),
                   "failcnt": _read_int(os.path.join(mem, "memory.failcnt")),
                   "limit": _read_int(os.path.join(mem, "memory.limit_in_bytes")),
                   "stats": _read_keyed(os.path.join(mem, "memory.stat"))},
        "pids": {"current": _read_int(os.path.join(pids, "pids.current")),
                 "limit": _read_int(os.path.join(pids, "pids.max"), -1)},
    }


def _read_v2(path: str) -> dict:
    cpu = _read_keyed(os.path.join(path, "cpu.stat"))
    return {
        "cpu": {"total": cpu.get("usage_usec", 0) * 1000, "percpu": [],
                "kernel": cpu.get("system_usec", 0) * 1000, "user": cpu.get("user_usec", 0) * 1000,
                "periods": cpu.get("nr_periods", 0), "throttled_periods": cpu.get("nr_throttled", 0),
                "throttled_time": cpu.get("throttled_usec", 0) * 1000},
        "memory": {"usage": _read_int(os.path.join(path, "memory.current")),
                   "max_usage": _read_int(os.path.join(path, "memory.peak")),
                   "failcnt": _read_keyed(os.path.join(path, "memory.events")).get("oom", 0),
                   "limit": _read_int(os.path.join(path, "memory.max"), -1),
                   "stats": _read_keyed(os.path.join(path, "memory.stat"))},
        "pids": {"current": _read_int(os.path.join(path, "pids.current")),
                 "limit": _read_int(os.path.join(path, "pids.max"), -1)},
    }


def system_cpu_usage() -> int:
    """Host CPU time in ns (the first line of /proc/stat), the denominator of ``docker stats``' CPU %."""
    for line in _read_text("/proc/stat").splitlines():
        if line.startswith("cpu "):
            return sum(int(x) for x in line.split()[1:8]) * _TICKS_NS
    return 0
