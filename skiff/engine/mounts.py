"""A container's mounts: Docker's four ways of asking for them, planned at create and mounted at each start.

``HostConfig.Binds`` (``-v name:/path:ro``, ``-v /host:/path``, ``/path`` alone), ``HostConfig.Mounts``
(``--mount type=bind|volume|tmpfs,...``), ``HostConfig.VolumesFrom`` (``--volumes-from c:ro``) and the anonymous
volumes of ``Config.Volumes`` (the image's ``VOLUME`` and the CLI's ``-v /path``) become one list of *mount
points* at create, in dockerd's order and with its checks and messages (moby's ``volume/mounts`` parser and
``daemon.registerMountPoints``). The volumes they name are created then and claimed for the container. The
list is kept in the container's record (``Container.mounts``), in the shape of dockerd's ``MountPoint``; inspect
shows it as ``Mounts``.

At each start ``prepare_run`` mounts the driver-backed volumes, makes missing ``-v`` bind sources (as dockerd
does), copies the image's content into new empty volumes on the first run (``copy_up``) and returns the OCI
mounts (``HostConfig.Tmpfs`` included), sorted by destination depth so a parent is mounted before its children.
"""

from __future__ import annotations

import asyncio
import logging
import os
import posixpath
import subprocess
from collections.abc import Callable, Iterable
from typing import Any

from skiff import errors
from skiff.engine.volumes import ANONYMOUS_LABEL, LOCAL_DRIVER, VolumeService

log = logging.getLogger(__name__)

PROPAGATION_MODES = ("private", "rprivate", "shared", "rshared", "slave", "rslave")
DEFAULT_PROPAGATION = "rprivate"
_RW_MODES = ("rw", "ro")
_LABEL_MODES = ("z", "Z")
_COPY_MODES = ("nocopy",)
_CONSISTENCY_MODES = ("consistent", "cached", "delegated")
# tmpfs mount(2) data keys dockerd accepts, and the flags (with their opposites) a later option overrides.
_TMPFS_DATA = ("size", "mode", "uid", "gid", "nr_inodes", "nr_blocks", "mpol")
_FLAG_GROUPS = (("ro", "rw"), ("exec", "noexec"), ("suid", "nosuid"), ("dev", "nodev"), ("sync", "async"),
                ("atime", "noatime"), ("diratime", "nodiratime"), ("relatime", "norelatime"),
                ("strictatime", "nostrictatime"), ("mand", "nomand"), ("dirsync",), ("remount",),
                ("bind", "rbind"), ("unbindable", "runbindable", *PROPAGATION_MODES))
_TMPFS_DEFAULTS = ["noexec", "nosuid", "nodev", DEFAULT_PROPAGATION]


# --------------------------------------------------------------------------------------------------
# Parsing (moby's linuxParser), pure
# --------------------------------------------------------------------------------------------------


def valid_mode(mode: str) -> bool:
    """A ``-v`` mode: comma-separated, at most one of each kind (rw/ro, z/Z, propagation, nocopy, consistency)."""
    if not mode:
        return True
    counts: dict[str, int] = {}
    for option in mode.split(","):
        for kind, names in (("rw", _RW_MODES), ("label", _LABEL_MODES), ("propagation", PROPAGATION_MODES),
                            ("copy", _COPY_MODES), ("consistency", _CONSISTENCY_MODES)):
            if option in names:
                counts[kind] = counts.get(kind, 0) + 1
                break
        else:
            return False
    return all(n <= 1 for n in counts.values())


def read_write(mode: str) -> bool:
    return valid_mode(mode) and "ro" not in mode.split(",")


def _propagation(mode: str) -> str:
    return next((o for o in mode.split(",") if o in PROPAGATION_MODES), "")


def _invalid_spec(raw: str) -> errors.InvalidArgument:
    return errors.InvalidArgument(f"invalid volume specification: '{raw}'")


class MountConfigError(errors.InvalidArgument):
    """dockerd's errMountConfig: ``invalid mount config for type "bind": ...``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f'invalid mount config for type "{kind}": {message}')


def _clean(path: str) -> str:
    return posixpath.normpath(path) if path else path


def _record(kind: str, destination: str, spec: dict, **fields: Any) -> dict:
    """One mount point as the container's record keeps it (dockerd's MountPoint, plus what a start needs)."""
    record = {"Type": kind, "Name": "", "Source": "", "Destination": _clean(destination), "Driver": "", "Mode": "",
              "RW": True, "Propagation": "", "CopyData": kind == "volume", "Spec": spec, "TmpfsData": "",
              "CreateSource": False}
    record.update(fields)
    return record


def parse_bind(raw: str, volume_driver: str = "") -> dict:
    """One ``HostConfig.Binds`` entry: ``/host:/ctr[:mode]`` (bind), ``name:/ctr[:mode]`` (volume) or ``/ctr``
    (anonymous volume); moby's ParseMountRaw."""
    if raw.count(":") > 2 or not raw.split(":", 1)[0]:
        raise _invalid_spec(raw)
    parts = raw.split(":")
    mode = ""
    if len(parts) == 1:
        source, target = "", parts[0]
    elif len(parts) == 2:
        if valid_mode(parts[1]):
            raise _invalid_spec(raw)  # /foo:rw is a destination and a mode, not a volume
        source, target = parts
    else:
        source, target, mode = parts
    if not valid_mode(mode):
        raise errors.InvalidArgument(f"invalid mode: {mode}")
    spec: dict[str, Any] = {"Type": "bind" if source.startswith("/") else "volume", "Source": source,
                            "Target": target}
    if "ro" in mode.split(","):
        spec["ReadOnly"] = True
    if spec["Type"] == "volume" and (volume_driver or "nocopy" in mode.split(",")):
        spec["VolumeOptions"] = {"NoCopy": "nocopy" in mode.split(",")}
        if volume_driver:
            spec["VolumeOptions"]["DriverConfig"] = {"Name": volume_driver}
    if _propagation(mode):
        spec["BindOptions"] = {"Propagation": _propagation(mode)}
    try:
        point = _mount_point(spec, check_source=False)
    except errors.InvalidArgument as e:
        raise errors.InvalidArgument(f"{_invalid_spec(raw)}: {e}") from None
    point["Mode"] = mode
    if point["Type"] == "bind":
        point["CreateSource"] = True  # dockerd makes a missing -v source directory at start
    return point


def validate_mount(m: dict, check_source: bool = True) -> None:
    """One ``HostConfig.Mounts`` entry, checked as dockerd's validateMountConfig (its messages)."""
    kind = m.get("Type") or ""
    target, source = m.get("Target") or "", m.get("Source") or ""

    def fail(message: str) -> MountConfigError:
        return MountConfigError(kind, message)

    if not target:
        raise fail("field Target must not be empty")
    if target == "/":
        raise fail("invalid specification: destination can't be '/'")
    if not target.startswith("/"):
        raise fail(f"invalid mount path: '{target}' mount path must be absolute")
    extra = [name for name in ("BindOptions", "VolumeOptions", "TmpfsOptions") if m.get(name) is not None]
    if kind == "bind":
        if not source:
            raise fail("field Source must not be empty")
        propagation = (m.get("BindOptions") or {}).get("Propagation") or ""
        if propagation and propagation not in PROPAGATION_MODES:
            raise fail(f"invalid propagation mode: {propagation}")
        for name in ("VolumeOptions", "TmpfsOptions"):
            if name in extra:
                raise fail(f"field {name} must not be specified")
        if not source.startswith("/"):
            raise fail(f"invalid mount path: '{source}' mount path must be absolute")
        if check_source and not os.path.lexists(source) and not (m.get("BindOptions") or {}).get("CreateMountpoint"):
            raise fail(f"bind source path does not exist: {source}")
    elif kind == "volume":
        for name in ("BindOptions", "TmpfsOptions"):
            if name in extra:
                raise fail(f"field {name} must not be specified")
        if m.get("ReadOnly") and not source:
            raise fail("must not set ReadOnly mode when using anonymous volumes")
    elif kind == "tmpfs":
        for name in ("BindOptions", "VolumeOptions"):
            if name in extra:
                raise fail(f"field {name} must not be specified")
        if source:
            raise fail("field Source must not be specified")
        tmpfs_data(m.get("TmpfsOptions"), bool(m.get("ReadOnly")))
    else:
        raise fail("mount type unknown")


def _mount_point(m: dict, check_source: bool = True) -> dict:
    """``HostConfig.Mounts`` entry -> mount point (moby's parseMountSpec)."""
    validate_mount(m, check_source)
    kind, target = m["Type"], m["Target"]
    rw = not m.get("ReadOnly")
    if kind == "volume":
        options = m.get("VolumeOptions") or {}
        return _record("volume", target, m, Name=m.get("Source") or "", RW=rw,
                       Driver=(options.get("DriverConfig") or {}).get("Name") or "",
                       CopyData=not options.get("NoCopy"))
    if kind == "bind":
        bind_options = m.get("BindOptions") or {}
        return _record("bind", target, m, Source=_clean(m["Source"]), RW=rw,
                       Propagation=bind_options.get("Propagation") or DEFAULT_PROPAGATION,
                       CreateSource=bool(bind_options.get("CreateMountpoint")))
    return _record("tmpfs", target, m, RW=rw, TmpfsData=tmpfs_data(m.get("TmpfsOptions"), not rw))


def parse_mount(m: dict) -> dict:
    """One ``HostConfig.Mounts`` entry as a mount point; bad ones fail with dockerd's messages (400)."""
    if not isinstance(m, dict):
        raise errors.InvalidArgument("invalid mount config: expected an object")
    return _mount_point(m)


def tmpfs_data(options: dict | None, read_only: bool) -> str:
    """``TmpfsOptions`` as mount(2) data (moby's ConvertTmpfsOptions): ``ro``, ``mode=1777``, ``size=64m``."""
    options = options or {}
    parts = ["ro"] if read_only else []
    mode = options.get("Mode") or 0
    if mode:
        parts.append(f"mode={int(mode):o}")
    size = int(options.get("SizeBytes") or 0)
    if size < 0:
        raise errors.InvalidArgument(f"invalid tmpfs size {size}")
    if size:
        for suffix, divisor in (("g", 1 << 30), ("m", 1 << 20), ("k", 1 << 10)):
            if size % divisor == 0:
                parts.append(f"size={size // divisor}{suffix}")
                break
        else:
            parts.append(f"size={size}")
    return ",".join(parts)


def merge_tmpfs_options(options: list[str]) -> list[str]:
    """Later options win over earlier ones of the same kind (``exec`` over the default ``noexec``), as dockerd's
    MergeTmpfsOptions; an unknown option fails."""
    merged: list[str] = []
    seen: set[str] = set()
    for option in reversed(options):
        if option == "defaults" or not option:
            continue
        group = next((g for g in _FLAG_GROUPS if option in g), None)
        if group is not None:
            key = group[0]
        else:
            key, sep, _ = option.partition("=")
            if not sep or key not in _TMPFS_DATA:
                raise errors.InvalidArgument(f'invalid tmpfs option ["{option}"]')
        if key not in seen:
            seen.add(key)
            merged.insert(0, option)
    return merged


def parse_volumes_from(spec: str) -> tuple[str, str]:
    """``container[:ro|rw]`` -> (container, mode); propagation and copy modes are refused, as dockerd does."""
    if not spec:
        raise errors.InvalidArgument("volumes-from specification cannot be an empty string")
    container, _, mode = spec.partition(":")
    if not mode:
        return container, "rw"
    if not valid_mode(mode) or _propagation(mode) or "nocopy" in mode.split(","):
        raise errors.InvalidArgument(f"invalid mode: {mode}")
    return container, mode


def validate_host_config(hc: dict) -> None:
    """Everything about mounts that can be refused before anything is made (dockerd's create-time checks)."""
    for bind in hc.get("Binds") or []:
        parse_bind(bind, hc.get("VolumeDriver") or "")
    for m in hc.get("Mounts") or []:
        parse_mount(m)
    for spec in hc.get("VolumesFrom") or []:
        parse_volumes_from(spec)
    for destination, options in (hc.get("Tmpfs") or {}).items():
        if not destination.startswith("/"):
            raise errors.InvalidArgument(f"invalid mount path: '{destination}' mount path must be absolute")
        merge_tmpfs_options(_TMPFS_DEFAULTS + [o for o in (options or "").split(",") if o])


# --------------------------------------------------------------------------------------------------
# Create: the plan, with its volumes made and claimed
# --------------------------------------------------------------------------------------------------


def _duplicate(destination: str) -> errors.InvalidArgument:
    return errors.InvalidArgument(f"Duplicate mount point: {destination}")


class MountPlanner:
    """Plans one container's mount points against the engine's volumes and its other containers.

    ``find_container(ref)`` returns another container (with its ``mounts``), or raises NotFound."""

    def __init__(self, volumes: VolumeService | None, find_container: Callable[[str], Any]) -> None:
        self._volumes = volumes
        self.find_container = find_container
        self.made: list[str] = []  # volumes the last plan created

    @property
    def volumes(self) -> VolumeService:
        if self._volumes is None:
            raise errors.Unsupported("volumes are not available in this engine")
        return self._volumes

    def plan(self, container_id: str, config: dict, hc: dict) -> list[dict]:
        """The mount points, in dockerd's order: volumes-from, binds, mounts, then the anonymous volumes of
        ``Config.Volumes`` not already covered. Everything is checked first; then the volumes are created (or
        found) and claimed for ``container_id``. When that fails, what it made is undone (``made`` lists them
        for a caller that fails later)."""
        self.made = []
        points = self._points(config, hc)
        try:
            for point in points:
                if point["Type"] == "volume" and not point["Source"]:
                    self._attach_volume(container_id, point)
                elif point["Type"] == "volume":  # from --volumes-from: the volume exists, claim it
                    self.volumes.claim(point["Name"], container_id)
        except BaseException:
            self.abandon(container_id, self.made)
            raise
        return points

    def _points(self, config: dict, hc: dict) -> list[dict]:
        """The mount points, checked (duplicates, volume names, drivers and options) but nothing made yet."""
        points: dict[str, dict] = {}
        taken: set[str] = set()  # destinations of binds and mounts (volumes-from ones may be replaced)
        for spec in hc.get("VolumesFrom") or []:
            ref, mode = parse_volumes_from(spec)
            for m in self.find_container(ref).mounts:
                points[m["Destination"]] = {**m, "RW": bool(m.get("RW")) and read_write(mode), "Mode": "",
                                            "CopyData": False, "CreateSource": False}
        tmpfs = {_clean(d) for d in hc.get("Tmpfs") or {}}
        requested = [parse_bind(raw, hc.get("VolumeDriver") or "") for raw in hc.get("Binds") or []]
        requested += [parse_mount(m) for m in hc.get("Mounts") or []]
        for i, point in enumerate(requested):
            from_binds = i < len(hc.get("Binds") or [])
            if point["Destination"] in taken or (from_binds and point["Destination"] in tmpfs):
                raise _duplicate(point["Destination"])
            if point["Type"] == "volume":
                options = point["Spec"].get("VolumeOptions") or {}
                self.volumes.check(point["Name"] or None, point["Driver"] or None,
                                   (options.get("DriverConfig") or {}).get("Options"))
                if not point["Mode"] and point["Driver"] in ("", LOCAL_DRIVER):
                    point["Mode"] = "z"  # dockerd's setBindModeIfNull for local volumes
            taken.add(point["Destination"])
            points[point["Destination"]] = point
        for destination in config.get("Volumes") or {}:
            if not destination.startswith("/"):
                raise errors.InvalidArgument(f"invalid mount path: '{destination}' mount path must be absolute")
            destination = _clean(destination)
            if destination in points or destination in tmpfs:
                continue
            self.volumes.check(None, hc.get("VolumeDriver") or None)
            points[destination] = _record("volume", destination, {"Type": "volume", "Target": destination},
                                          Driver=hc.get("VolumeDriver") or "")
        return list(points.values())

    def _attach_volume(self, cid: str, point: dict) -> None:
        """Create (or find) the point's volume and claim it; anonymous ones are labelled so prune finds them."""
        options = point["Spec"].get("VolumeOptions") or {}
        name = point["Name"] or None
        labels = dict(options.get("Labels") or {}) or None
        if name is None:
            labels = {**(labels or {}), ANONYMOUS_LABEL: ""}
        existed = name is not None and self.volumes.find(name) is not None
        volume = self.volumes.create(name, point["Driver"] or None, (options.get("DriverConfig") or {}).get("Options"),
                                     labels, reference=cid)
        if not existed:
            self.made.append(volume.name)
        point.update(Name=volume.name, Driver=volume.driver, Source=volume.mountpoint)

    def settle(self, container_id: str) -> None:
        """The container's record is saved (or its create failed): it, not a claim, names its volumes now."""
        if self._volumes is not None:
            self._volumes.settle(container_id)

    def abandon(self, container_id: str, made: Iterable[str]) -> None:
        """A create failed after planning: drop its claims and remove the volumes it made (unused as they are)."""
        if self._volumes is None:
            return
        self._volumes.settle(container_id)
        self._volumes.remove_unused(list(made))


def anonymous_volumes(records: Iterable[dict]) -> list[str]:
    """Names of the volumes the container asked for without naming them (what ``rm -v`` removes)."""
    return [m["Name"] for m in records if m.get("Type") == "volume" and not (m.get("Spec") or {}).get("Source")]


def volume_names(records: Iterable[dict]) -> list[str]:
    return [m["Name"] for m in records if m.get("Type") == "volume" and m.get("Name")]


# --------------------------------------------------------------------------------------------------
# Start: mount, copy up, OCI mounts
# --------------------------------------------------------------------------------------------------


def prepare_run(volumes: VolumeService | None, container_id: str, records: list[dict], tmpfs: dict | None,
                resolve: Callable[[str], str], first_run: bool) -> list[dict]:
    """Everything a start needs from the mounts: driver-backed volumes mounted, missing ``-v`` bind sources
    made, the image's content copied into new empty volumes on the first run; returns the OCI mounts.
    ``resolve(path)`` is ``path`` inside the container's mounted root filesystem. Blocking: call it in a thread."""
    for m in records:
        if m["Type"] == "volume":
            if volumes is None:
                raise errors.Unsupported("volumes are not available in this engine")
            m["Source"] = volumes.mount(m["Name"], container_id)
            if first_run and m.get("CopyData"):
                copy_up(resolve(m["Destination"]), m["Source"])
        elif m["Type"] == "bind" and m.get("CreateSource") and not os.path.lexists(m["Source"]):
            try:
                os.makedirs(m["Source"], 0o755, exist_ok=True)
            except OSError as e:
                raise errors.InvalidArgument(f"error while creating mount source path '{m['Source']}': "
                                             f"mkdir {m['Source']}: {e.strerror.lower() if e.strerror else e}") from e
    return oci_mounts(records, tmpfs)


async def prepare_run_async(volumes: VolumeService | None, container_id: str, records: list[dict],
                            tmpfs: dict | None, resolve: Callable[[str], str], first_run: bool) -> list[dict]:
    """``prepare_run`` off the event loop when it has disk or mount work to do (volumes, bind sources), then
    dockerd's ``volume mount`` events."""
    if not any(m["Type"] != "tmpfs" for m in records):
        return prepare_run(volumes, container_id, records, tmpfs, resolve, first_run)
    result = await asyncio.to_thread(prepare_run, volumes, container_id, records, tmpfs, resolve, first_run)
    _announce(volumes, "mount", container_id, records)
    return result


def release_run(volumes: VolumeService | None, container_id: str, records: list[dict]) -> None:
    """The run ended (or never began): driver-backed volumes nobody else runs with are unmounted."""
    if volumes is None:
        return
    announce = volumes.running_with(container_id)  # (after a daemon restart the run's mount was not seen)
    volumes.release(volume_names(records), container_id)
    if announce:
        _announce(volumes, "unmount", container_id, records)


def _announce(volumes: VolumeService | None, action: str, container_id: str, records: Iterable[dict]) -> None:
    for m in records:
        if volumes is not None and m["Type"] == "volume":
            attributes = {"container": container_id, "driver": m.get("Driver") or LOCAL_DRIVER}
            if action == "mount":
                attributes.update({"destination": m["Destination"], "propagation": m.get("Propagation") or "",
                                   "read/write": str(bool(m.get("RW", True))).lower()})
            volumes.engine.events.publish("volume", action, m["Name"], attributes)


def copy_up(source: str, volume_dir: str) -> bool:
    """Copy the image's ``source`` directory into an empty volume, keeping owners, modes, times, symlinks, hard
    links and xattrs (``cp -a``), the volume's root taking the directory's own owner and mode. Docker does
    this only into an empty volume; True when it copied."""
    if not os.path.isdir(source) or os.path.islink(source):
        return False
    with os.scandir(volume_dir) as entries:
        if any(True for _ in entries):
            return False
    result = subprocess.run(["cp", "-a", "--reflink=auto", "--", os.path.join(source, "."), volume_dir],
                            capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise errors.SystemFailure(f"copying image data into the volume at {volume_dir}: {result.stderr.strip()}")
    return True


def _depth(mount: dict) -> int:
    return len([p for p in mount["destination"].split("/") if p])


def oci_mounts(records: Iterable[dict], tmpfs: dict | None = None) -> list[dict]:
    """OCI mounts for the mount points and ``HostConfig.Tmpfs``, parents before children (dockerd's sort)."""
    result = []
    for m in records:
        if m["Type"] == "tmpfs":
            result.append(_tmpfs_mount(m["Destination"], m.get("TmpfsData") or ""))
            continue
        options = ["rbind"]
        if not m.get("RW", True):
            options.append("ro")
        if m.get("Propagation"):
            options.append(m["Propagation"])
        result.append({"destination": m["Destination"], "type": "bind", "source": m["Source"], "options": options})
    result += [_tmpfs_mount(_clean(d), data or "") for d, data in (tmpfs or {}).items()]
    return sorted(result, key=_depth)


def _tmpfs_mount(destination: str, data: str) -> dict:
    options = merge_tmpfs_options(_TMPFS_DEFAULTS + [o for o in data.split(",") if o])
    return {"destination": destination, "type": "tmpfs", "source": "tmpfs", "options": options}


def root_propagation(mounts: Iterable[dict]) -> str | None:
    """``linux.rootfsPropagation`` dockerd sets when a bind is shared or slave (so mount events can flow)."""
    modes = {o for m in mounts if m.get("type") == "bind" for o in m.get("options") or []}
    if modes & {"shared", "rshared"}:
        return "shared"
    if modes & {"slave", "rslave"}:
        return "rslave"
    return None


def static_mounts(hc: dict) -> list[dict]:
    """OCI mounts for the host-path binds, bind/tmpfs ``Mounts`` and ``Tmpfs`` of ``hc`` alone (no volumes, no
    checks on the host): for building a spec without an engine."""
    records = [parse_bind(b) for b in hc.get("Binds") or []]
    records += [_mount_point(m, check_source=False) for m in hc.get("Mounts") or []]
    return oci_mounts([r for r in records if r["Type"] != "volume"], hc.get("Tmpfs"))


# --------------------------------------------------------------------------------------------------
# Inspect
# --------------------------------------------------------------------------------------------------


def mounts_doc(records: Iterable[dict]) -> list[dict]:
    """Docker's ``Mounts`` (types.MountPoint: Name and Driver only when set)."""
    docs = []
    for m in records:
        doc: dict[str, Any] = {"Type": m["Type"]}
        if m.get("Name"):
            doc["Name"] = m["Name"]
        doc.update({"Source": m.get("Source") or "", "Destination": m["Destination"]})
        if m.get("Driver"):
            doc["Driver"] = m["Driver"]
        doc.update({"Mode": m.get("Mode") or "", "RW": bool(m.get("RW", True)),
                    "Propagation": m.get("Propagation") or ""})
        docs.append(doc)
    return docs

