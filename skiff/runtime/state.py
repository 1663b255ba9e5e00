"""Container state on disk, under the runtime's ``--root``: one directory per container.

``<root>/<id>/state.json`` holds what every later command needs (pid, its start time, the spec, the
cgroup paths); ``<root>/<id>/exec.fifo`` exists from ``create`` until ``start``. The status is not
stored: it is read from the kernel each time (is the pid alive, is the fifo still there, is the
cgroup frozen), so a runtime killed at any moment never leaves a lie on disk.
"""

from __future__ import annotations

import os

from skiff.atomicfile import write_atomically
from skiff.errors import AlreadyExists, InvalidArgument, NotFound
from skiff.runtime import quickjson

DEFAULT_ROOT = "/run/skiff/runtime"
_ID_PUNCTUATION = frozenset("_+-.")

CREATED, RUNNING, PAUSED, STOPPED = "created", "running", "paused", "stopped"


def check_id(container_id: str) -> None:
    # runc's rule: ^[\w+-.]+$ (checked by hand: `re` costs start-up time).
    valid = bool(container_id) and all(c.isalnum() or c in _ID_PUNCTUATION for c in container_id)
    if not valid or container_id in (".", ".."):
        raise InvalidArgument(f"invalid container id {container_id!r}")


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat, or None when the process is gone or a zombie.

    Stored with the pid so that a recycled pid is never mistaken for the container.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


class ContainerState:
    """What ``create`` recorded about one container (plain class: dataclasses cost start-up time)."""

    _FIELDS = ("id", "bundle", "rootfs", "pid", "start_time", "created", "spec", "cgroup_paths", "owner")

    def __init__(self, id: str, root: str, bundle: str = "", rootfs: str = "", pid: int = 0,
                 start_time: int = 0, created: str = "", spec: dict | None = None,
                 cgroup_paths: dict[str, str] | None = None, owner: str = "") -> None:
        self.id, self.root, self.bundle, self.rootfs = id, root, bundle, rootfs
        self.pid, self.start_time, self.created, self.owner = pid, start_time, created, owner
        self.spec = spec if spec is not None else {}
        self.cgroup_paths = cgroup_paths if cgroup_paths is not None else {}

    @property
    def dir(self) -> str:
        return os.path.join(self.root, self.id)

    @property
    def fifo(self) -> str:
        return os.path.join(self.dir, "exec.fifo")

    def save(self, durable: bool = False) -> None:
        record = {name: getattr(self, name) for name in self._FIELDS}
        # Not fsync'd unless asked: runtime state lives under /run (as runc's does) and describes processes,
        # which a power loss ends anyway; an fsync here cost 5-15 ms of every container start.
        write_atomically(os.path.join(self.dir, "state.json"), quickjson.dumps(record).encode(), mode=0o600,
                         durable=durable)

    @classmethod
    def load(cls, root: str, container_id: str) -> ContainerState:
        check_id(container_id)
        try:
            with open(os.path.join(root, container_id, "state.json")) as f:
                record = quickjson.loads(f.read())
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"container {container_id} does not exist") from None
        return cls(root=root, **record)

    def alive(self) -> bool:
        return self.pid > 0 and process_start_time(self.pid) == self.start_time

    def status(self, frozen: bool = False) -> str:
        if not self.alive():
            return STOPPED
        if os.path.exists(self.fifo):
            return CREATED
        return PAUSED if frozen else RUNNING

    def oci_state(self, status: str) -> dict:
        """The state document of the OCI runtime spec (what ``state`` prints and hooks read)."""
        return {
            "ociVersion": self.spec.get("ociVersion", "1.0.2"),
            "id": self.id,
            "pid": self.pid if status != STOPPED else 0,
            "status": status,
            "bundle": self.bundle,
            "rootfs": self.rootfs,
            "created": self.created,
            "owner": self.owner,
            "annotations": self.spec.get("annotations") or {},
        }


def reserve(root: str, container_id: str) -> str:
    """Make the container's directory; the mkdir is the atomic claim on the id."""
    check_id(container_id)
    os.makedirs(root, mode=0o700, exist_ok=True)
    path = os.path.join(root, container_id)
    try:
        os.mkdir(path, 0o711)
    except FileExistsError:
        raise AlreadyExists(f"container with id {container_id} already exists") from None
    return path


def remove(root: str, container_id: str) -> None:
    """Remove the container's directory (flat: state.json, exec.fifo and temp files only)."""
    path = os.path.join(root, container_id)
    try:
        names = os.listdir(path)
    except FileNotFoundError:
        return
    for name in names:
        try:
            os.unlink(os.path.join(path, name))
        except FileNotFoundError:
            pass
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass


def list_ids(root: str) -> list[str]:
    try:
        return sorted(e for e in os.listdir(root) if os.path.isfile(os.path.join(root, e, "state.json")))
    except FileNotFoundError:
        return []
