"""VolumeService: the engine's volumes, with Docker's ``local`` driver.

A volume is a directory, ``<data_root>/volumes/<name>/_data`` (its ``Mountpoint``), and a metadata file beside
it, ``volume.json`` (driver, labels, options, creation time), written atomically; both survive daemon restarts.
Anonymous volumes (from ``-v /path``, an image's ``VOLUME`` or ``--mount type=volume`` without a source) get a
random 64-hex name and the label ``com.docker.volume.anonymous``, which is what ``volume prune`` removes by
default since Docker 23 (API 1.42).

The local driver's options are Docker's: ``type``, ``device`` and ``o`` are ``mount(8)``'s filesystem type,
source and options (``type=tmpfs,device=tmpfs,o=size=64m`` or ``type=none,o=bind,device=/srv/x``). Such a
volume is mounted on its ``_data`` when the first container using it starts and unmounted when the last of
them stops, as dockerd does.

References are not stored: a volume is in use while any container's record (running or not) names it, read
from the container service, plus the containers being created right now (``claims``), so a record and its
volumes cannot disagree after a crash. ``active`` counts the runs that mounted a volume; after a restart the
running containers' records stand in for the runs the previous daemon counted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from skiff import errors
from skiff.atomicfile import fsync_dir, write_atomically
from skiff.engine.filters import labels_match, pattern_match

log = logging.getLogger(__name__)

LOCAL_DRIVER = "local"
ANONYMOUS_LABEL = "com.docker.volume.anonymous"
METADATA = "volume.json"
TRASH_PREFIX = ".removing-"  # a removed volume's directory while its data is deleted
DATA = "_data"
NAME_PATTERN = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
# The local driver's options, and the ones each requires (moby's volume/local validOpts and mandatoryOpts).
VALID_OPTIONS = ("type", "device", "o", "size")
REQUIRED_WITH = {"device": ("type",), "type": ("device",), "o": ("device", "type")}
LIST_FILTERS = ("name", "driver", "label", "dangling")
PRUNE_FILTERS = ("label", "label!", "all")


@dataclass
class Volume:
    """One volume's metadata (what ``volume.json`` holds) and where its data is."""

    name: str
    driver: str
    created: float
    mountpoint: str
    labels: dict[str, str] | None = None
    options: dict[str, str] | None = None

    _PERSISTED = ("name", "driver", "created", "labels", "options")

    @property
    def anonymous(self) -> bool:
        return ANONYMOUS_LABEL in (self.labels or {})

    @property
    def needs_mount(self) -> bool:
        """A local volume with a device or filesystem type is mounted on its ``_data`` while in use."""
        opts = self.options or {}
        return bool(opts.get("device") or opts.get("type"))

    def record(self) -> dict:
        return {k: getattr(self, k) for k in self._PERSISTED}

    def doc(self, usage: dict | None = None) -> dict:
        """Docker's ``Volume`` (``UsageData`` only when asked: ``/system/df``)."""
        doc: dict[str, Any] = {
            "CreatedAt": created_at(self.created), "Driver": self.driver, "Labels": self.labels,
            "Mountpoint": self.mountpoint, "Name": self.name, "Options": self.options, "Scope": "local",
        }
        if usage is not None:
            doc["UsageData"] = usage
        return doc


def created_at(ts: float) -> str:
    """Go's ``time.RFC3339`` in the daemon's local zone, as dockerd prints a volume's CreatedAt."""
    text = datetime.fromtimestamp(int(ts)).astimezone().isoformat(timespec="seconds")
    return text[:-6] + "Z" if text.endswith("+00:00") else text




def directory_size(path: str) -> int:
    """Bytes used by the files under ``path`` (each inode once), dockerd's ``directory.Size``."""
    total, seen = 0, set()
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def _unescape(field: str) -> str:
    """A path as /proc/self/mountinfo writes it (space, tab, newline and backslash octal-escaped)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_points() -> set[str]:
    """Every mount point in this mount namespace (``os.path.ismount`` misses binds within one filesystem)."""
    with open("/proc/self/mountinfo") as f:
        return {_unescape(line.split()[4]) for line in f}


def is_mounted(path: str) -> bool:
    return os.path.realpath(path) in mount_points()


def _is_true(value: str, key: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true"):
        return True
    if lowered in ("0", "false"):
        return False
    raise errors.InvalidArgument(f"invalid filter '{key}={value}'")


class VolumeService:
    """Volumes of one engine (see the module docstring). ``engine.containers`` (when present) tells who uses
    which volume: each container's ``mounts`` records name their volumes."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.root = os.path.join(str(engine.config.data_root), "volumes")
        self._volumes: dict[str, Volume] = {}
        self._claims: dict[str, set[str]] = {}  # name -> containers being created that will use it
        self._active: dict[str, set[str]] = {}  # name -> containers whose current run mounted it

    # ---- daemon start and stop ------------------------------------------------------------------

    def start(self) -> None:
        os.makedirs(self.root, mode=0o701, exist_ok=True)
        for name in sorted(os.listdir(self.root)):
            if name.startswith(TRASH_PREFIX):
                shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)
                continue
            volume = self._load(name)
            if volume is not None:
                self._volumes[name] = volume

    def _load(self, name: str) -> Volume | None:
        directory = os.path.join(self.root, name)
        if not os.path.isdir(directory) or name.startswith("."):
            return None
        try:
            with open(os.path.join(directory, METADATA), "rb") as f:
                data = json.loads(f.read())
            return Volume(**{k: data[k] for k in Volume._PERSISTED if k in data},
                          mountpoint=os.path.join(directory, DATA))
        except FileNotFoundError:
            # A create the previous daemon did not finish writing: keep the data as a plain local volume (the
            # local driver adopts every directory under volumes/, as dockerd's does).
            log.warning("volume %s has no metadata: adopting it as a local volume", name)
            os.makedirs(os.path.join(directory, DATA), mode=0o755, exist_ok=True)
            volume = Volume(name, LOCAL_DRIVER, os.stat(directory).st_mtime, os.path.join(directory, DATA))
            self._save(volume)
            return volume
        except (OSError, ValueError, TypeError) as e:
            log.error("volume %s: unreadable metadata (skipped): %s", name, e)
            return None

    def _save(self, volume: Volume) -> None:
        write_atomically(os.path.join(self.root, volume.name, METADATA), json.dumps(volume.record()).encode())

    def reconcile_mounts(self) -> None:
        """After a restart: unmount driver-backed volumes that no running container uses any more (their
        users stopped while the daemon was away)."""
        for volume in self._volumes.values():
            if volume.needs_mount and is_mounted(volume.mountpoint) and not self._in_use_by_a_run(volume.name):
                self._unmount(volume)

    # ---- users ---------------------------------------------------------------------------------------

    def _containers(self) -> list[Any]:
        containers = getattr(self.engine, "containers", None)
        return containers.all() if containers is not None else []

    def users(self, name: str) -> list[str]:
        """Ids of the containers (any state) whose mounts use the volume, and of those being created."""
        found = [c.id for c in self._containers() if any(m.get("Name") == name and m.get("Type") == "volume"
                                                             for m in getattr(c, "mounts", None) or [])]
        return found + sorted(self._claims.get(name, set()) - set(found))

    def claim(self, name: str, container_id: str) -> None:
        """``container_id`` (being created) will use the volume: it counts as a user from now on."""
        self._claims.setdefault(name, set()).add(container_id)

    def settle(self, container_id: str) -> None:
        """The create of ``container_id`` is over (its record holds its volumes now, or it failed)."""
        for name in list(self._claims):
            self._claims[name].discard(container_id)
            if not self._claims[name]:
                del self._claims[name]

    def _in_use_by_a_run(self, name: str, besides: str = "") -> bool:
        if self._active.get(name, set()) - {besides}:
            return True
        return any(c.id != besides and c.state.running and any(m.get("Name") == name for m in c.mounts or [])
                   for c in self._containers())

    # ---- create, get, list -----------------------------------------------------------------------------

    def create(self, name: str | None = None, driver: str | None = None, driver_opts: dict | None = None,
               labels: dict | None = None, reference: str | None = None) -> Volume:
        """``POST /volumes/create``, and the volumes containers name: an existing volume of that name is
        returned as it is (dockerd's rule); ``reference`` claims it for a container being created."""
        driver = driver or LOCAL_DRIVER
        name = name or secrets.token_hex(32)
        existing = self._volumes.get(name)
        if existing is not None:
            if driver != existing.driver:
                raise errors.Conflict(f"create {name}: volume name must be unique")
        else:
            existing = self._create_local(name, driver, driver_opts, labels)
        if reference:
            self.claim(name, reference)
        return existing

    def check(self, name: str | None, driver: str | None = None, driver_opts: dict | None = None) -> None:
        """Refuse what ``create`` would refuse, making nothing (a container's plan checks all its volumes
        before it makes any)."""
        driver = driver or LOCAL_DRIVER
        existing = self._volumes.get(name) if name else None
        if existing is not None:
            if driver != existing.driver:
                raise errors.Conflict(f"create {name}: volume name must be unique")
            return
        name = name or "anonymous"
        if driver != LOCAL_DRIVER:
            raise errors.NotFound(f'create {name}: error looking up volume plugin {driver}: plugin "{driver}" '
                                  "not found")
        if not NAME_PATTERN.match(name):
            raise errors.InvalidArgument(
                f'create {name}: "{name}" includes invalid characters for a local volume name, only '
                '"[a-zA-Z0-9][a-zA-Z0-9_.-]" are allowed. If you intended to pass a host directory, use absolute '
                "path")
        self._validate_options(name, {str(k): str(v) for k, v in (driver_opts or {}).items()})

    def _create_local(self, name: str, driver: str, driver_opts: dict | None, labels: dict | None) -> Volume:
        self.check(name, driver, driver_opts)
        options = {str(k): str(v) for k, v in driver_opts.items()} if driver_opts is not None else None
        directory = os.path.join(self.root, name)
        volume = Volume(name, driver, time.time(), os.path.join(directory, DATA),
                        labels={str(k): str(v) for k, v in labels.items()} if labels is not None else None,
                        options=options)
        os.makedirs(volume.mountpoint, mode=0o755, exist_ok=True)
        self._save(volume)
        fsync_dir(self.root)
        self._volumes[name] = volume
        self.engine.events.publish("volume", "create", name, {"driver": driver})
        return volume

    @staticmethod
    def _validate_options(name: str, options: dict[str, str]) -> None:
        for key in options:
            if key not in VALID_OPTIONS:
                raise errors.InvalidArgument(f'create {name}: invalid option: "{key}"')
        if "size" in options:
            raise errors.InvalidArgument(f"create {name}: quota size requested but no quota support")
        for key, required in REQUIRED_WITH.items():
            for other in required if key in options else ():
                if other not in options:
                    raise errors.InvalidArgument(f'create {name}: missing required option: "{other}"')

    def get(self, name: str) -> Volume:
        volume = self._volumes.get(name)
        if volume is None:
            raise errors.NotFound(f"get {name}: no such volume")
        return volume

    def find(self, name: str) -> Volume | None:
        return self._volumes.get(name)

    def list(self, filters: dict[str, list[str]] | None = None) -> list[Volume]:
        """``GET /volumes`` with dockerd's filters: name (regexp), driver, label, dangling."""
        filters = filters or {}
        for key in filters:
            if key not in LIST_FILTERS:
                raise errors.InvalidArgument(f"invalid filter '{key}'")
        dangling = {_is_true(v, "dangling") for v in filters.get("dangling", [])}
        found = []
        for volume in sorted(self._volumes.values(), key=lambda v: v.name):
            if filters.get("name") and not pattern_match(filters["name"], volume.name):
                continue
            if filters.get("driver") and volume.driver not in filters["driver"]:
                continue
            if not labels_match(volume.labels or {}, filters.get("label", [])):
                continue
            if dangling and (not self.users(volume.name)) not in dangling:
                continue
            found.append(volume)
        return found

    def usage(self, volume: Volume) -> dict:
        """``UsageData``: bytes under the mountpoint and how many containers use it."""
        return {"Size": directory_size(volume.mountpoint), "RefCount": len(self.users(volume.name))}

    def df(self) -> list[dict]:
        """The volumes of ``/system/df``, each with its ``UsageData``."""
        return [v.doc(self.usage(v)) for v in sorted(self._volumes.values(), key=lambda v: v.name)]

    # ---- remove and prune ------------------------------------------------------------------------------

    def remove(self, name: str, force: bool = False) -> None:
        """``DELETE /volumes/{name}``: refused (409) while any container uses it; ``force`` ignores a volume
        that does not exist (dockerd's purge-on-error)."""
        volume = self._volumes.get(name)
        if volume is None:
            if force:
                return
            raise errors.NotFound(f"get {name}: no such volume")
        users = self.users(name)
        if users:
            raise errors.Conflict(f"remove {name}: volume is in use - [{', '.join(users)}]")
        self._destroy(volume)

    def _destroy(self, volume: Volume) -> None:
        if is_mounted(volume.mountpoint):
            self._unmount(volume)
            if is_mounted(volume.mountpoint):  # never delete through a mount (a bind's device is host data)
                raise errors.SystemFailure(f"remove {volume.name}: cannot unmount {volume.mountpoint}")
        del self._volumes[volume.name]
        self._active.pop(volume.name, None)
        directory = os.path.join(self.root, volume.name)
        # The metadata goes first: a crash mid-way leaves a directory the next start adopts or finds gone.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(directory, METADATA))
        if any(p == directory or p.startswith(directory + "/") for p in mount_points()):
            raise errors.SystemFailure(f"remove {volume.name}: something is mounted inside {directory}")
        trash = os.path.join(self.root, f"{TRASH_PREFIX}{volume.name}-{secrets.token_hex(4)}")
        try:
            os.rename(directory, trash)
        except OSError:
            trash = directory
        # The data may be large: delete it off the caller's thread (a restart finishes what a crash left).
        threading.Thread(target=shutil.rmtree, args=(trash, True), name="volume-rm", daemon=True).start()
        self.engine.events.publish("volume", "destroy", volume.name, {"driver": volume.driver})

    def remove_unused(self, names: Iterable[str]) -> None:
        """Remove those of ``names`` that nobody uses (``rm -v`` and ``--rm``: a container's anonymous volumes;
        a failed create: the volumes it made)."""
        for name in names:
            volume = self._volumes.get(name)
            if volume is not None and not self.users(name):
                try:
                    self._destroy(volume)
                except OSError as e:
                    log.warning("removing volume %s: %s", name, e)

    def prune(self, filters: dict[str, list[str]] | None = None, anonymous_only: bool = True) -> tuple[list[str], int]:
        """``POST /volumes/prune``: unused volumes (only anonymous ones unless ``all=true``, from API 1.42);
        (names removed, bytes reclaimed)."""
        filters = filters or {}
        for key in filters:
            if key not in PRUNE_FILTERS:
                raise errors.InvalidArgument(f"invalid filter '{key}'")
        if filters.get("all"):
            anonymous_only = not any(_is_true(v, "all") for v in filters["all"])
        removed, reclaimed = [], 0
        for volume in sorted(self._volumes.values(), key=lambda v: v.name):
            labels = volume.labels or {}
            if (anonymous_only and not volume.anonymous) or self.users(volume.name) \
                    or not labels_match(labels, filters.get("label", [])) \
                    or any(labels_match(labels, [v]) for v in filters.get("label!", [])):
                continue
            size = directory_size(volume.mountpoint)
            try:
                self._destroy(volume)
            except OSError as e:
                log.warning("prune: volume %s: %s", volume.name, e)
                continue
            removed.append(volume.name)
            reclaimed += size
        self.engine.events.publish("volume", "prune", "", {"reclaimed": str(reclaimed)})
        return removed, reclaimed

    # ---- mounting for container runs ----------------------------------------------------------------

    def mount(self, name: str, container_id: str) -> str:
        """The volume's path for a run of ``container_id``; a driver-backed volume is mounted on first use.
        Blocking (it may run mount(8)): call it in a thread."""
        volume = self.get(name)
        if volume.needs_mount and not is_mounted(volume.mountpoint):
            self._mount(volume)
        self._active.setdefault(name, set()).add(container_id)
        return volume.mountpoint

    def running_with(self, container_id: str) -> bool:
        """Whether a run of ``container_id`` has mounted volumes and not released them yet."""
        return any(container_id in users for users in self._active.values())

    def release(self, names: Iterable[str], container_id: str) -> None:
        """The run of ``container_id`` ended: unmount the driver-backed volumes nobody else runs with."""
        for name in names:
            users = self._active.get(name)
            if users is not None:
                users.discard(container_id)
                if not users:
                    del self._active[name]
            volume = self._volumes.get(name)
            if volume is not None and volume.needs_mount and is_mounted(volume.mountpoint) \
                    and not self._in_use_by_a_run(name, besides=container_id):
                self._unmount(volume)

    def _mount(self, volume: Volume) -> None:
        opts = volume.options or {}
        kind, device, options = opts.get("type") or "none", opts.get("device") or "", opts.get("o") or ""
        command = ["mount", "-t", kind]
        if options:
            command += ["-o", options]
        command += [device or kind, volume.mountpoint]
        result = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            message = result.stderr.strip() or f"mount exited {result.returncode}"
            raise errors.SystemFailure(f"error while mounting volume '{volume.mountpoint}': failed to mount local "
                                       f"volume: {message}")

    def _unmount(self, volume: Volume) -> None:
        result = subprocess.run(["umount", volume.mountpoint], capture_output=True, text=True,
                                stdin=subprocess.DEVNULL)
        if result.returncode != 0 and is_mounted(volume.mountpoint):
            # Busy (a process outside Skiff has it open): detach it so it goes once that process lets go.
            subprocess.run(["umount", "-l", volume.mountpoint], capture_output=True, stdin=subprocess.DEVNULL)

