"""The OCI runtime configuration (config.json): the default spec, loading and validation.

Validation happens in the runtime's own process before anything is created, so a bad bundle fails
with one clear line and leaves nothing behind.
"""

from __future__ import annotations

import os

from skiff.errors import InvalidArgument, NotFound
from skiff.runtime import quickjson

OCI_VERSION = "1.0.2"

DEFAULT_CAPABILITIES = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]

NAMESPACE_TYPES = ("pid", "network", "mount", "ipc", "uts", "user", "cgroup")

MASKED_PATHS = [
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


def default_spec(terminal: bool = True, args: list[str] | None = None) -> dict:
    """The spec ``skiff runtime spec`` writes: the same container ``runc spec`` describes."""
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": terminal,
            "user": {"uid": 0, "gid": 0},
            "args": list(args) if args else ["sh"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {k: list(DEFAULT_CAPABILITIES) for k in ("bounding", "effective", "permitted", "ambient")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "skiff",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
        ],
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
        },
    }


def load_bundle(bundle: str) -> dict:
    """Read and validate ``bundle/config.json``; resolve ``root.path`` against the bundle."""
    path = os.path.join(bundle, "config.json")
    try:
        with open(path) as f:
            spec = quickjson.loads(f.read())
    except FileNotFoundError:
        raise NotFound(f"bundle {bundle}: config.json not found") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"{path}: malformed JSON: {e}") from None
    validate(spec, bundle)
    return spec


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise InvalidArgument(message)


def validate(spec: object, bundle: str) -> None:
    _require(isinstance(spec, dict), "config.json: the top level must be an object")
    _require(isinstance(spec.get("ociVersion"), str), "config.json: ociVersion must be a string")
    root = spec.get("root")
    _require(isinstance(root, dict) and isinstance(root.get("path"), str), "config.json: root.path is required")
    rootfs = root_path(spec, bundle)
    if not os.path.isdir(rootfs):
        raise NotFound(f"rootfs {rootfs} does not exist")
    process = spec.get("process")
    _require(isinstance(process, dict), "config.json: process is required")
    validate_process(process)
    for m in spec.get("mounts") or []:
        _require(isinstance(m, dict) and isinstance(m.get("destination"), str),
                 "config.json: every mount needs a destination")
        _require(os.path.isabs(m["destination"]), f"mount destination {m['destination']!r} must be absolute")
    linux = spec.get("linux") or {}
    _require(isinstance(linux, dict), "config.json: linux must be an object")
    seen = set()
    for ns in linux.get("namespaces") or []:
        _require(isinstance(ns, dict), "config.json: namespaces must be objects")
        kind = ns.get("type")
        _require(kind in NAMESPACE_TYPES, f"namespace type {kind!r} is not supported")
        _require(kind not in seen, f"namespace {kind!r} is listed twice")
        seen.add(kind)
        if ns.get("path") and not os.path.exists(ns["path"]):
            raise NotFound(f"{kind} namespace path {ns['path']} does not exist")
    if "user" in seen:
        _require(bool(linux.get("uidMappings")) and bool(linux.get("gidMappings")),
                 "a user namespace needs uidMappings and gidMappings")
    if spec.get("hostname") and "uts" not in seen:
        raise InvalidArgument("unable to set hostname without a new UTS namespace")


def validate_process(process: dict) -> None:
    args = process.get("args")
    _require(isinstance(args, list) and len(args) > 0 and all(isinstance(a, str) for a in args),
             "process.args must be a non-empty list of strings")
    _require(isinstance(process.get("cwd", "/"), str) and os.path.isabs(process.get("cwd", "/")),
             "process.cwd must be an absolute path")
    env = process.get("env") or []
    _require(isinstance(env, list) and all(isinstance(e, str) for e in env), "process.env must be a list of strings")
    user = process.get("user") or {}
    _require(isinstance(user, dict), "process.user must be an object")


def root_path(spec: dict, bundle: str) -> str:
    path = spec["root"]["path"]
    return os.path.normpath(path if os.path.isabs(path) else os.path.join(bundle, path))
