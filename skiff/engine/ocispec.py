"""Docker's container configuration -> an OCI runtime spec (config.json), the way dockerd builds it.

The engine keeps what the client sent (``Config``, ``HostConfig``) and, at every start, turns it into
a bundle for the OCI runtime. This module holds the pure part of that: merging the image's config into
the container's at create (``merge_image_config``), filling and checking ``HostConfig`` (``adapt_host_config``,
``validate_host_config``), the spec itself (``build_spec``) and the files bind-mounted over
``/etc/hostname``, ``/etc/hosts`` and ``/etc/resolv.conf``. Nothing here touches the disk or the
kernel except reading a few host facts (the host's devices for ``--privileged``, the last capability).

Defaults follow dockerd (``oci/defaults.go``, ``daemon/oci_linux.go``): its 14 capabilities, masked and
read-only /proc paths, a 64 MiB /dev/shm, the hostname from the id, PATH/HOSTNAME/TERM in the
environment, and a seccomp filter denying what Docker's default profile denies.
"""

from __future__ import annotations

import copy
import os
import signal
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field

from skiff.engine import mounts as container_mounts
from skiff.errors import InvalidArgument
from skiff.runtime.spec import default_spec

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_SHM_SIZE = 64 << 20
MIN_MEMORY = 6 << 20  # dockerd refuses smaller limits (the runtime itself needs some)
CPU_PERIOD = 100_000  # µs; NanoCpus become a quota over this period, as dockerd does
INIT_PATH = "/sbin/docker-init"  # where ``--init`` puts the init inside the container (Docker's path)

DEFAULT_CAPABILITIES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL",
    "CAP_AUDIT_WRITE",
]
# Every capability by number (linux/capability.h); --privileged and --cap-add ALL get those the kernel has.
ALL_CAPABILITIES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
]
MASKED_PATHS = [
    "/proc/asound", "/proc/acpi", "/proc/interrupts", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
    "/sys/devices/virtual/powercap",
]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]

# Syscalls Docker's default seccomp profile refuses, each with the capability that lifts the refusal
# (None: refused whatever the capabilities). Docker writes this as an allow-list; a deny-list of the
# same syscalls is shorter and keeps working when the kernel adds syscalls.
SECCOMP_DENIED: dict[str, str | None] = {
    "acct": "CAP_SYS_PACCT", "add_key": None, "bpf": "CAP_SYS_ADMIN", "clock_adjtime": "CAP_SYS_TIME",
    "clock_settime": "CAP_SYS_TIME", "create_module": None, "delete_module": "CAP_SYS_MODULE",
    "fanotify_init": "CAP_SYS_ADMIN", "finit_module": "CAP_SYS_MODULE", "fsconfig": "CAP_SYS_ADMIN",
    "fsmount": "CAP_SYS_ADMIN", "fsopen": "CAP_SYS_ADMIN", "fspick": "CAP_SYS_ADMIN",
    "get_kernel_syms": None, "get_mempolicy": "CAP_SYS_NICE", "init_module": "CAP_SYS_MODULE",
    "ioperm": "CAP_SYS_RAWIO", "iopl": "CAP_SYS_RAWIO", "kexec_file_load": "CAP_SYS_BOOT",
    "kexec_load": "CAP_SYS_BOOT", "keyctl": None, "lookup_dcookie": "CAP_SYS_ADMIN", "mbind": "CAP_SYS_NICE",
    "mount": "CAP_SYS_ADMIN", "mount_setattr": "CAP_SYS_ADMIN", "move_mount": "CAP_SYS_ADMIN",
    "move_pages": "CAP_SYS_NICE", "name_to_handle_at": "CAP_DAC_READ_SEARCH", "nfsservctl": None,
    "open_by_handle_at": "CAP_DAC_READ_SEARCH", "open_tree": "CAP_SYS_ADMIN", "perf_event_open": "CAP_PERFMON",
    "pivot_root": "CAP_SYS_ADMIN", "query_module": None, "quotactl": "CAP_SYS_ADMIN", "reboot": "CAP_SYS_BOOT",
    "request_key": None, "set_mempolicy": "CAP_SYS_NICE", "setns": "CAP_SYS_ADMIN",
    "settimeofday": "CAP_SYS_TIME", "stime": "CAP_SYS_TIME", "swapoff": "CAP_SYS_ADMIN",
    "swapon": "CAP_SYS_ADMIN", "syslog": "CAP_SYSLOG", "sysfs": None, "_sysctl": None,
    "umount": "CAP_SYS_ADMIN", "umount2": "CAP_SYS_ADMIN", "unshare": "CAP_SYS_ADMIN", "uselib": None,
    "userfaultfd": None, "ustat": None, "vhangup": "CAP_SYS_TTY_CONFIG", "vm86": None, "vm86old": None,
}
# clone(2) may not make namespaces without CAP_SYS_ADMIN; clone3 hides its flags in memory, so it
# answers ENOSYS and the C library falls back to clone (Docker's profile does the same).
_CLONE_NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)
_EPERM, _ENOSYS = 1, 38
_HOST_DEVICE_SKIP = ("/dev/pts", "/dev/shm", "/dev/mqueue", "/dev/fd", "/dev/.lxc", "/dev/.udev")
_NAMESPACE_MODES = (("PidMode", "pid"), ("IpcMode", "ipc"), ("UTSMode", "uts"))


@dataclass(frozen=True)
class BundlePaths:
    """Host paths the spec refers to, all owned by the container's directories."""

    rootfs: str            # the mounted root filesystem
    hostname: str          # files bind-mounted over /etc/hostname, /etc/hosts, /etc/resolv.conf
    hosts: str
    resolv_conf: str
    # namespaces to join ("container:<x>" modes): OCI type -> /proc/<pid>/ns/<name> of that container
    joined: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SpecOptions:
    """Daemon-wide settings that shape every spec."""

    cgroup_parent: str = "/skiff"
    init_binary: str | None = None  # host path of a static init for ``--init`` (tini-static)


# --------------------------------------------------------------------------------------------------
# Create time: the image's config merged in, HostConfig defaults and checks
# --------------------------------------------------------------------------------------------------


def _env_key(entry: str) -> str:
    return entry.split("=", 1)[0]


def merge_image_config(config: dict, image_config: dict | None) -> dict:
    """The container's Config with the image's config filled in, as dockerd's ``merge``: the user's
    values win; image Env entries whose names the user did not set are appended; image Labels fill in;
    an explicit Entrypoint drops the image's Cmd (the image's Cmd was written for its own entrypoint);
    ``Entrypoint: [""]`` (``--entrypoint ""``) means "no entrypoint at all"."""
    merged = copy.deepcopy(config)
    image = image_config or {}
    if not merged.get("User"):
        merged["User"] = image.get("User") or ""
    user_env = merged.get("Env") or []
    keys = {_env_key(e) for e in user_env}
    merged["Env"] = list(user_env) + [e for e in image.get("Env") or [] if _env_key(e) not in keys]
    merged["Labels"] = {**(image.get("Labels") or {}), **(merged.get("Labels") or {})}
    ports = {**(image.get("ExposedPorts") or {}), **(merged.get("ExposedPorts") or {})}
    merged["ExposedPorts"] = ports or None
    if not merged.get("Entrypoint"):
        if not merged.get("Cmd"):
            merged["Cmd"] = image.get("Cmd")
        if merged.get("Entrypoint") is None:
            merged["Entrypoint"] = image.get("Entrypoint")
    for key in ("WorkingDir", "StopSignal"):
        if not merged.get(key):
            merged[key] = image.get(key) or ""
    if image.get("Volumes"):  # the image's volumes join the user's (an empty map from the CLI included)
        merged["Volumes"] = {**image["Volumes"], **(merged.get("Volumes") or {})}
    if image.get("Healthcheck"):
        merged["Healthcheck"] = _merge_healthcheck(merged.get("Healthcheck"), image["Healthcheck"])
    if merged.get("Entrypoint") == [""]:
        merged["Entrypoint"] = None
    if not merged.get("Entrypoint") and not merged.get("Cmd"):
        raise InvalidArgument("No command specified")
    return merged


def _merge_healthcheck(user: dict | None, image: dict) -> dict:
    """dockerd's: without a Healthcheck of the user's the image's applies; with one, each field the user left
    unset (no Test, a zero duration or retry count) comes from the image's (``--health-retries 5`` alone
    keeps the image's test)."""
    if user is None:
        return image
    merged = dict(user)
    if not merged.get("Test"):
        merged["Test"] = image.get("Test")
    for key in ("Interval", "Timeout", "StartPeriod", "StartInterval", "Retries"):
        if not merged.get(key) and image.get(key):
            merged[key] = image[key]
    return merged


def entrypoint_and_args(config: dict) -> tuple[str, list[str]]:
    """Docker's ``Path`` and ``Args``: the entrypoint's first word, then the rest of it and Cmd."""
    words = list(config.get("Entrypoint") or []) + list(config.get("Cmd") or [])
    return words[0], words[1:]


def adapt_host_config(host_config: dict | None) -> dict:
    """HostConfig with dockerd's create-time defaults filled in (inspect shows these values)."""
    hc = dict(host_config or {})
    if not hc.get("ShmSize"):
        hc["ShmSize"] = DEFAULT_SHM_SIZE
    if (hc.get("Memory") or 0) > 0 and not hc.get("MemorySwap"):
        hc["MemorySwap"] = hc["Memory"] * 2  # dockerd's default: as much swap as memory
    if not hc.get("NetworkMode"):
        hc["NetworkMode"] = "default"
    if not hc.get("IpcMode"):
        hc["IpcMode"] = "private"
    if not hc.get("CgroupnsMode"):
        # dockerd's default: a private cgroup namespace on cgroup v2, the host's on v1
        hc["CgroupnsMode"] = "private" if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else "host"
    policy = hc.get("RestartPolicy") or {}
    hc["RestartPolicy"] = {"Name": policy.get("Name") or "no",
                           "MaximumRetryCount": policy.get("MaximumRetryCount") or 0}
    return hc


def validate_host_config(hc: dict) -> None:
    """Refuse what dockerd refuses at create, with its wording (the CLI prints it as is)."""
    memory, swap = hc.get("Memory") or 0, hc.get("MemorySwap") or 0
    if 0 < memory < MIN_MEMORY:
        raise InvalidArgument("Minimum memory limit allowed is 6MB")
    if memory > 0 and 0 < swap < memory:
        raise InvalidArgument("Minimum memoryswap limit should be larger than memory limit, see usage")
    if swap > 0 and memory <= 0:
        raise InvalidArgument("You should always set the Memory limit when using Memoryswap limit, see usage")
    if hc.get("NanoCpus") and (hc.get("CpuQuota") or hc.get("CpuPeriod")):
        raise InvalidArgument("Conflicting options: Nano CPUs and CPU Period cannot both be set")
    _validate_nano_cpus(hc.get("NanoCpus") or 0)
    _validate_restart_policy(hc)
    capabilities(hc.get("CapAdd"), hc.get("CapDrop"), False)  # unknown names fail now, not at start
    for option in hc.get("SecurityOpt") or []:
        _security_option(option)


def _validate_nano_cpus(nano: int) -> None:
    cpus = os.cpu_count() or 1
    if nano < 0 or nano > cpus * 1_000_000_000:
        raise InvalidArgument(f"Range of CPUs is from 0.01 to {cpus}.00, as there are only {cpus} CPUs available")


def _validate_restart_policy(hc: dict) -> None:
    policy = hc.get("RestartPolicy") or {}
    name = policy.get("Name") or "no"
    if name not in ("no", "always", "unless-stopped", "on-failure"):
        raise InvalidArgument(f"invalid restart policy: unknown policy '{name}'; use one of 'no', 'always', "
                              "'on-failure', or 'unless-stopped'")
    if policy.get("MaximumRetryCount") and name != "on-failure":
        raise InvalidArgument("invalid restart policy: maximum retry count can only be used with 'on-failure'")
    if (policy.get("MaximumRetryCount") or 0) < 0:
        raise InvalidArgument("invalid restart policy: maximum retry count cannot be negative")
    if hc.get("AutoRemove") and name != "no":
        raise InvalidArgument("can't create 'AutoRemove' container with restart policy")


def stop_signal(config: dict) -> int:
    """The signal ``docker stop`` sends first: Config.StopSignal (merged from the image) or SIGTERM."""
    return parse_signal(config.get("StopSignal") or "SIGTERM")


def parse_signal(text: str | int) -> int:
    """A signal from ``KILL``, ``SIGKILL``, ``9`` or 9; InvalidArgument for anything else."""
    if isinstance(text, int) or str(text).isdigit():
        number = int(text)
        if 0 < number <= signal.SIGRTMAX:
            return number
        raise InvalidArgument(f"Invalid signal: {text}")
    name = str(text).upper()
    name = name if name.startswith("SIG") else "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise InvalidArgument(f"Invalid signal: {text}") from None


# --------------------------------------------------------------------------------------------------
# Start time: the spec
# --------------------------------------------------------------------------------------------------


def build_spec(container_id: str, config: dict, host_config: dict, paths: BundlePaths,
               options: SpecOptions | None = None, user: dict | None = None,
               mounts: list[dict] | None = None) -> dict:
    """The OCI spec for one start of the container (``config`` already merged with its image's). ``user`` is
    ``process.user`` from ``resolve_user``; without it, names are left to the runtime (``parse_user``).
    ``mounts`` are the container's own OCI mounts (binds, volumes, tmpfs: ``skiff.engine.mounts``); without
    them, those of ``host_config`` that need no volume are used."""
    options = options or SpecOptions()
    privileged = bool(host_config.get("Privileged"))
    spec = default_spec(terminal=bool(config.get("Tty")))
    spec["root"] = {"path": paths.rootfs, "readonly": bool(host_config.get("ReadonlyRootfs"))}
    spec["hostname"] = config.get("Hostname") or container_id[:12]
    caps = capabilities(host_config.get("CapAdd"), host_config.get("CapDrop"), privileged)
    spec["process"] = _process(config, host_config, caps, options)
    if user is not None:
        spec["process"]["user"] = user
    spec["mounts"] = _mounts(config, host_config, paths, options, mounts)
    spec["linux"] = _linux(container_id, host_config, caps, options, paths.joined)
    propagation = container_mounts.root_propagation(spec["mounts"])
    if propagation:
        spec["linux"]["rootfsPropagation"] = propagation
    if _host_mode(host_config.get("UTSMode")):
        del spec["hostname"]  # the host's UTS namespace keeps the host's name
    labels = config.get("Labels") or {}
    if labels:
        spec["annotations"] = {str(k): str(v) for k, v in labels.items()}
    return spec


def _host_mode(mode: str | None) -> bool:
    return (mode or "") == "host"


def _process(config: dict, hc: dict, caps: list[str], options: SpecOptions) -> dict:
    path, args = entrypoint_and_args(config)
    argv = [path, *args]
    if hc.get("Init") and options.init_binary:
        argv = [INIT_PATH, "--", *argv]
    process: dict = {
        "terminal": bool(config.get("Tty")),
        "user": parse_user(config.get("User") or "", hc.get("GroupAdd") or []),
        "args": argv,
        "env": container_env(config),
        "cwd": config.get("WorkingDir") or "/",
        "capabilities": {s: list(caps) for s in ("bounding", "effective", "permitted")},
        "noNewPrivileges": any(_security_option(o) == ("no-new-privileges", "true")
                               for o in hc.get("SecurityOpt") or []),
    }
    rlimits = [_rlimit(u) for u in hc.get("Ulimits") or []]
    if rlimits:
        process["rlimits"] = rlimits
    if hc.get("OomScoreAdj"):
        process["oomScoreAdj"] = int(hc["OomScoreAdj"])
    size = hc.get("ConsoleSize") or [0, 0]
    if config.get("Tty") and size[0] and size[1]:
        process["consoleSize"] = {"height": int(size[0]), "width": int(size[1])}
    return process


def container_env(config: dict) -> list[str]:
    """dockerd's environment: PATH, HOSTNAME and (with a tty) TERM first, replaced or extended by Config.Env."""
    env = [f"PATH={DEFAULT_PATH}", f"HOSTNAME={config.get('Hostname') or ''}"]
    if config.get("Tty"):
        env.append("TERM=xterm")
    return replace_or_append_env(env, config.get("Env") or [])


def replace_or_append_env(base: list[str], overrides: Iterable[str]) -> list[str]:
    """Docker's ReplaceOrAppendEnvValues: ``K=v`` replaces K; a bare ``K`` (no ``=``) removes it."""
    result = list(base)
    for entry in overrides:
        key = _env_key(entry)
        index = next((i for i, e in enumerate(result) if _env_key(e) == key), None)
        if "=" not in entry:
            if index is not None:
                del result[index]
        elif index is None:
            result.append(entry)
        else:
            result[index] = entry
    return result


def parse_user(user: str, group_add: Iterable[str] = ()) -> dict:
    """``uid[:gid]`` becomes numbers; a name (``nobody``, ``app:staff``) is left for the runtime to look up in
    the container's /etc/passwd (``user.username``), which it reads after pivot_root, as dockerd reads it."""
    gids = [int(g) for g in group_add if str(g).isdigit()]
    spec_user: dict = {"uid": 0, "gid": 0}
    if gids:
        spec_user["additionalGids"] = gids
    if not user:
        return spec_user
    name, _, group = user.partition(":")
    if name.isdigit() and (not group or group.isdigit()):
        spec_user["uid"], spec_user["gid"] = int(name), int(group or 0)
        if not group:
            spec_user["username"] = name  # lets the runtime take the gid from a passwd entry, if any
        return spec_user
    spec_user["username"] = user
    return spec_user


def _entries(text: str, fields: int) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) >= fields and not line.startswith("#"):
            rows.append(parts)
    return rows


def resolve_user(user: str, group_add: Iterable[str], passwd: str, group: str) -> dict:
    """The spec's ``process.user`` resolved against the image's /etc/passwd and /etc/group texts, as dockerd
    does before it calls the runtime (so runc and crun, which ignore ``user.username``, get numbers too):
    ``name`` or ``uid`` with the entry's primary group, ``:group`` overriding it, supplementary groups from
    the group file's member lists, ``GroupAdd`` (names or ids) on top. An unknown name fails the start."""
    users, groups = _entries(passwd, 7), _entries(group, 4)
    name, _, group_name = user.partition(":")
    name = name or "0"
    entry = next((u for u in users if (u[2] == name if name.isdigit() else u[0] == name)), None)
    if entry is None and not name.isdigit():
        raise InvalidArgument(f"unable to find user {name}: no matching entries in passwd file")
    uid, gid = (int(entry[2]), int(entry[3])) if entry else (int(name), 0)
    if group_name:
        gid = _group_id(group_name, groups)
    extra = {int(g[2]) for g in groups if entry and entry[0] in g[3].strip().split(",") and g[2].isdigit()}
    extra |= {_group_id(str(g), groups) for g in group_add}
    spec_user: dict = {"uid": uid, "gid": gid}
    if extra - {gid}:
        spec_user["additionalGids"] = sorted(extra - {gid})
    return spec_user


def _group_id(name: str, groups: list[list[str]]) -> int:
    if name.isdigit():
        return int(name)
    found = next((g for g in groups if g[0] == name and g[2].isdigit()), None)
    if found is None:
        raise InvalidArgument(f"unable to find group {name}: no matching entries in group file")
    return int(found[2])


def _rlimit(ulimit: dict) -> dict:
    name = str(ulimit.get("Name", "")).upper()
    return {"type": name if name.startswith("RLIMIT_") else f"RLIMIT_{name}",
            "soft": int(ulimit.get("Soft", 0)), "hard": int(ulimit.get("Hard", 0))}


def _security_option(option: str) -> tuple[str, str]:
    """``no-new-privileges``, ``no-new-privileges:true``, ``seccomp=unconfined``, ... as (key, value)."""
    for sep in ("=", ":"):
        if sep in option:
            key, value = option.split(sep, 1)
            break
    else:
        key, value = option, "true" if option == "no-new-privileges" else ""
    if key not in ("no-new-privileges", "seccomp", "apparmor", "label", "systempaths"):
        raise InvalidArgument(f"invalid --security-opt 2: {option!r}")
    return key, value


def capabilities(cap_add: Iterable[str] | None, cap_drop: Iterable[str] | None, privileged: bool) -> list[str]:
    """Docker's TweakCapabilities: privileged gets everything; ``ALL`` in CapAdd means every capability but
    the dropped ones; ``ALL`` in CapDrop means only the added ones; else the defaults minus drops plus adds."""
    available = available_capabilities()
    if privileged:
        return available
    adds, drops = _normalize_caps(cap_add), _normalize_caps(cap_drop)
    if "ALL" in adds:
        return [c for c in available if c not in drops]
    if "ALL" in drops:
        return [c for c in adds if c != "ALL"]
    caps = [c for c in DEFAULT_CAPABILITIES if c not in drops]
    return caps + [c for c in adds if c not in caps]


def _normalize_caps(names: Iterable[str] | None) -> list[str]:
    result = []
    for name in names or []:
        upper = name.upper()
        if upper != "ALL":
            upper = upper if upper.startswith("CAP_") else "CAP_" + upper
            if upper not in ALL_CAPABILITIES:
                raise InvalidArgument(f'unknown capability: "{upper}"')
        result.append(upper)
    return result


def available_capabilities() -> list[str]:
    """The capabilities this host can hand out: the daemon's bounding set, which the runtime it starts
    inherits (less than the kernel's full list inside another container), as dockerd's list of "all"."""
    bounding = (1 << len(ALL_CAPABILITIES)) - 1
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapBnd:"):
                    bounding = int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return [name for number, name in enumerate(ALL_CAPABILITIES) if bounding >> number & 1]


# ---- mounts


def _mounts(config: dict, hc: dict, paths: BundlePaths, options: SpecOptions, user: list[dict] | None) -> list[dict]:
    """The default mounts, then (parents first) the /etc files, the init and the container's own mounts; a
    default the container mounts something else over is left out, as dockerd does."""
    user = container_mounts.static_mounts(hc) if user is None else user
    overridden = {m["destination"] for m in user}
    privileged = bool(hc.get("Privileged"))
    mounts = []
    for m in default_spec()["mounts"]:
        if m["destination"] == "/dev/shm":
            m["options"] = ["nosuid", "noexec", "nodev", "mode=1777", f"size={hc.get('ShmSize') or DEFAULT_SHM_SIZE}"]
        elif m["destination"] in ("/sys", "/sys/fs/cgroup") and privileged:
            m["options"] = [o for o in m["options"] if o != "ro"] + ["rw"]
        if m["destination"] not in overridden:
            mounts.append(m)
    writable = "ro" if hc.get("ReadonlyRootfs") else "rw"
    files = [{"destination": dest, "type": "bind", "source": source, "options": ["rbind", "rprivate", writable]}
             for dest, source in (("/etc/resolv.conf", paths.resolv_conf), ("/etc/hostname", paths.hostname),
                                  ("/etc/hosts", paths.hosts)) if dest not in overridden]
    if hc.get("Init") and options.init_binary:
        files.append({"destination": INIT_PATH, "type": "bind", "source": options.init_binary,
                      "options": ["bind", "ro", "nosuid", "nodev"]})
    # One stable sort by depth: a volume on /etc goes under the /etc files, not over them.
    return mounts + sorted(files + user, key=lambda m: len([p for p in m["destination"].split("/") if p]))


# ---- linux


def _linux(container_id: str, hc: dict, caps: list[str], options: SpecOptions, joined: dict[str, str]) -> dict:
    privileged = bool(hc.get("Privileged"))
    linux: dict = {
        "namespaces": namespaces(hc, joined),
        "cgroupsPath": f"{options.cgroup_parent.rstrip('/')}/{container_id}",
        "resources": resources(hc),
        "maskedPaths": [] if privileged else list(MASKED_PATHS),
        "readonlyPaths": [] if privileged else list(READONLY_PATHS),
    }
    if hc.get("Sysctls"):
        linux["sysctl"] = {str(k): str(v) for k, v in hc["Sysctls"].items()}
    devices = host_devices() if privileged else [_device(d) for d in hc.get("Devices") or []]
    if devices:
        linux["devices"] = devices
        if not privileged:
            linux["resources"]["devices"] += [_device_rule(d) for d in devices]
    if not privileged and _seccomp_enabled(hc):
        linux["seccomp"] = seccomp_profile(caps)
    return linux


def namespaces(hc: dict, joined: dict[str, str] | None = None) -> list[dict]:
    """Docker's namespaces: mount, uts, pid, ipc and network of their own, unless the mode says ``host``
    (none then: the host's) or ``container:<x>`` (``joined`` has the path of x's). A network mode of
    ``none`` (and, until bridge networking arrives, any other) is a new netns with only loopback."""
    joined = joined or {}
    result = [{"type": "mount"}]
    for key, kind in (*_NAMESPACE_MODES, ("NetworkMode", "network")):
        if kind in joined:
            result.append({"type": kind, "path": joined[kind]})
        elif not _host_mode(hc.get(key)):
            result.append({"type": kind})
    if hc.get("CgroupnsMode") == "private":
        result.append({"type": "cgroup"})
    return result


def joined_container(mode: str | None) -> str | None:
    """The container a ``container:<name|id>`` mode names, else None."""
    return mode.split(":", 1)[1] if mode and mode.startswith("container:") else None


def resources(hc: dict) -> dict:
    """linux.resources from HostConfig's resource fields (also what ``docker update`` changes)."""
    res: dict = {"devices": [{"allow": bool(hc.get("Privileged")), "access": "rwm"}]}
    memory = {k: v for k, v in (("limit", hc.get("Memory")), ("reservation", hc.get("MemoryReservation")),
                                ("swap", hc.get("MemorySwap"))) if v}
    if hc.get("MemorySwappiness") not in (None, -1):
        memory["swappiness"] = int(hc["MemorySwappiness"])
    if hc.get("OomKillDisable"):
        memory["disableOOMKiller"] = True
    if memory:
        res["memory"] = memory
    cpu = _cpu(hc)
    if cpu:
        res["cpu"] = cpu
    if (hc.get("PidsLimit") or 0) > 0:
        res["pids"] = {"limit": int(hc["PidsLimit"])}
    if hc.get("BlkioWeight"):
        res["blockIO"] = {"weight": int(hc["BlkioWeight"])}
    res["devices"] += [_cgroup_rule(r) for r in hc.get("DeviceCgroupRules") or []]
    return res


def _cpu(hc: dict) -> dict:
    cpu: dict = {}
    if hc.get("NanoCpus"):
        cpu["period"] = CPU_PERIOD
        cpu["quota"] = int(hc["NanoCpus"]) * CPU_PERIOD // 1_000_000_000
    for key, name in (("CpuShares", "shares"), ("CpuQuota", "quota"), ("CpuPeriod", "period")):
        if hc.get(key):
            cpu[name] = int(hc[key])
    for key, name in (("CpusetCpus", "cpus"), ("CpusetMems", "mems")):
        if hc.get(key):
            cpu[name] = str(hc[key])
    return cpu


def _cgroup_rule(rule: str) -> dict:
    """``c 1:3 rwm`` / ``b *:* m`` (``--device-cgroup-rule``)."""
    try:
        kind, numbers, access = rule.split()
        major, minor = numbers.split(":")
    except ValueError:
        raise InvalidArgument(f"invalid device cgroup rule {rule!r}") from None
    entry: dict = {"allow": True, "type": kind, "access": access}
    if major != "*":
        entry["major"] = int(major)
    if minor != "*":
        entry["minor"] = int(minor)
    return entry


def _device(device: dict) -> dict:
    """One ``--device /dev/x[:/dev/y[:rwm]]`` from the host's node."""
    host = device.get("PathOnHost") or ""
    try:
        st = os.stat(host)
    except OSError as e:
        raise InvalidArgument(f"error gathering device information while adding custom device {host!r}: "
                              f"{e.strerror.lower() if e.strerror else e}") from None
    if not (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        raise InvalidArgument(f"error gathering device information while adding custom device {host!r}: "
                              "not a device node")
    return _device_entry(device.get("PathInContainer") or host, st, device.get("CgroupPermissions") or "rwm")


def _device_entry(path: str, st: os.stat_result, access: str = "rwm") -> dict:
    return {"path": path, "type": "c" if stat.S_ISCHR(st.st_mode) else "b", "major": os.major(st.st_rdev),
            "minor": os.minor(st.st_rdev), "fileMode": stat.S_IMODE(st.st_mode), "uid": st.st_uid,
            "gid": st.st_gid, "access": access}


def _device_rule(device: dict) -> dict:
    return {"allow": True, "type": device["type"], "major": device["major"], "minor": device["minor"],
            "access": device.get("access", "rwm")}


def host_devices(root: str = "/dev") -> list[dict]:
    """Every device node under the host's /dev (what ``--privileged`` hands the container)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in _HOST_DEVICE_SKIP]
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)) and path != "/dev/console":
                entry = _device_entry(path, st)
                del entry["access"]
                found.append(entry)
    return sorted(found, key=lambda d: d["path"])


def _seccomp_enabled(hc: dict) -> bool:
    return not any(_security_option(o) == ("seccomp", "unconfined") for o in hc.get("SecurityOpt") or [])


def seccomp_profile(caps: Iterable[str]) -> dict:
    """A filter refusing (EPERM) the syscalls Docker's default profile refuses, except those the
    container's capabilities grant, and clone's namespace flags without CAP_SYS_ADMIN."""
    granted = set(caps)
    denied = sorted(name for name, cap in SECCOMP_DENIED.items() if cap is None or cap not in granted)
    rules: list[dict] = [{"names": denied, "action": "SCMP_ACT_ERRNO", "errnoRet": _EPERM}]
    if "CAP_SYS_ADMIN" not in granted:
        rules.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": _ENOSYS})
        rules += [{"names": ["clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": _EPERM,
                   "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}]}
                  for flag in _CLONE_NAMESPACE_FLAGS]
    return {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": rules}


# --------------------------------------------------------------------------------------------------
# /etc/hostname, /etc/hosts, /etc/resolv.conf
# --------------------------------------------------------------------------------------------------

_HOSTS_DEFAULTS = ("127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback", "fe00::0\tip6-localnet",
                   "ff00::0\tip6-mcastprefix", "ff02::1\tip6-allnodes", "ff02::2\tip6-allrouters")
_FALLBACK_NAMESERVERS = ("8.8.8.8", "8.8.4.4", "2001:4860:4860::8888", "2001:4860:4860::8844")


def hosts_file(hostname: str, address: str | None, extra_hosts: Iterable[str] = ()) -> str:
    """Docker's /etc/hosts: the loopback names, ``--add-host`` entries, then the container's own name
    (on its address; until the container has a network of its own, on 127.0.0.1 so it resolves)."""
    lines = list(_HOSTS_DEFAULTS)
    for entry in extra_hosts:
        name, sep, ip = entry.partition("=") if "=" in entry else entry.partition(":")  # name:ip or name=ip
        if sep:
            lines.append(f"{ip}\t{name}")
    lines.append(f"{address or '127.0.0.1'}\t{hostname}")
    return "\n".join(lines) + "\n"


def resolv_conf(host_text: str, network_mode: str, dns: Iterable[str] = (), search: Iterable[str] = (),
                dns_options: Iterable[str] = ()) -> str:
    """The container's resolv.conf: the host's for ``host`` networking; otherwise the host's without
    loopback nameservers (they cannot be reached from another netns), Docker's public fallback when none
    remain, and ``--dns``/``--dns-search``/``--dns-option`` replacing their lines."""
    dns, search, dns_options = list(dns), list(search), list(dns_options)
    if network_mode == "host" and not (dns or search or dns_options):
        return host_text
    lines = host_text.splitlines()
    kept = [ln for ln in lines if not _is_nameserver(ln) and not (search and _starts(ln, "search", "domain"))
            and not (dns_options and _starts(ln, "options"))]
    servers = dns or [ln.split()[1] for ln in lines if _is_nameserver(ln) and not _loopback(ln.split()[1])]
    if not servers:
        servers = list(_FALLBACK_NAMESERVERS)
    out = [ln for ln in kept if ln.strip()]
    if search:
        out.append("search " + " ".join(search))
    out += [f"nameserver {s}" for s in servers]
    if dns_options:
        out.append("options " + " ".join(dns_options))
    return "\n".join(out) + "\n"


def _is_nameserver(line: str) -> bool:
    parts = line.split()
    return len(parts) >= 2 and parts[0] == "nameserver"


def _starts(line: str, *words: str) -> bool:
    parts = line.split()
    return bool(parts) and parts[0] in words


def _loopback(address: str) -> bool:
    return address.startswith("127.") or address in ("::1", "0:0:0:0:0:0:0:1")
