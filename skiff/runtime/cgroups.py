"""The container's cgroups, made the way runc's cgroupfs driver makes them.

Works on cgroup v1, v2 and hybrid hosts. The layout is read from /proc/self/mountinfo and
/proc/self/cgroup on every resolution (two small files), never hard-coded. A ``Cgroup`` is just a map
from hierarchy key to directory, so the runtime can save it in its state file and rebuild it later:

* v1 keys are controller names ("memory", "cpu", ...) plus the named hierarchy "name=systemd";
  controllers mounted together ("cpu,cpuacct") get one key each pointing at the same directory.
* "unified" is the cgroup2 hierarchy. On a pure v2 host it is the only key and carries every
  setting; on a hybrid host it is only joined (as runc does), the v1 controllers carry the limits.

This module sits on the container start path: it imports only cheap standard modules and does no
work at import time.
"""

from __future__ import annotations

import errno
import os
import time

from skiff.errors import InvalidArgument, NotFound, SystemFailure, Unsupported

UNIFIED = "unified"

# The v1 hierarchies runc's cgroupfs driver joins (libcontainer/cgroups/fs), in its order.
V1_SUBSYSTEMS = (
    "cpuset", "devices", "memory", "cpu", "cpuacct", "pids", "blkio", "hugetlb", "net_cls",
    "net_prio", "perf_event", "freezer", "rdma", "name=systemd",
)

# Device rules runc always appends to the container's (specconv.AllowedDevices, runc 1.1).
# A missing major/minor is the wildcard "*", as in OCI config.json.
DEFAULT_DEVICE_RULES: list[dict] = [
    {"allow": True, "type": "c", "access": "m"},             # mknod of any char device
    {"allow": True, "type": "b", "access": "m"},             # mknod of any block device
    {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},    # /dev/null
    {"allow": True, "type": "c", "major": 1, "minor": 8, "access": "rwm"},    # /dev/random
    {"allow": True, "type": "c", "major": 1, "minor": 7, "access": "rwm"},    # /dev/full
    {"allow": True, "type": "c", "major": 5, "minor": 0, "access": "rwm"},    # /dev/tty
    {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "rwm"},    # /dev/zero
    {"allow": True, "type": "c", "major": 1, "minor": 9, "access": "rwm"},    # /dev/urandom
    {"allow": True, "type": "c", "major": 136, "access": "rwm"},              # /dev/pts/*
    {"allow": True, "type": "c", "major": 5, "minor": 2, "access": "rwm"},    # /dev/ptmx
    {"allow": True, "type": "c", "major": 10, "minor": 200, "access": "rwm"},  # /dev/net/tun
]

_SIGKILL = 9  # spelled out so that the hot path need not import the signal module
_UNLIMITED_V1 = 1 << 62  # v1 reports "no limit" as PAGE_COUNTER_MAX pages, just under 2**63
_FREEZE_TIMEOUT = 5.0
_DESTROY_TIMEOUT = 1.0


# ---------------------------------------------------------------------------------------------
# Host layout


class _Hierarchy:
    """One mounted hierarchy: where it is mounted, which cgroup the mount shows, where we are in it.

    A plain class, not a NamedTuple: ``typing`` costs start-up time on the container start path.
    """

    __slots__ = ("mountpoint", "own", "root")

    def __init__(self, mountpoint: str, root: str, own: str) -> None:
        self.mountpoint, self.root, self.own = mountpoint, root, own


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040 ...)."""
    if "\\" not in field:
        return field
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def _cgroup_mounts() -> list[tuple[str, str, str, set[str]]]:
    """(fstype, mount root, mountpoint, super options) of every cgroup and cgroup2 mount."""
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fstype, _, superopts = [*right.split(), "", "", ""][:3]
            if fstype in ("cgroup", "cgroup2"):
                fields = left.split()
                mounts.append((fstype, _unescape(fields[3]), _unescape(fields[4]), set(superopts.split(","))))
    return mounts


def _own_cgroups() -> dict[str, str]:
    """This process's cgroup per hierarchy: {"memory,...": path, ...}; "" is the v2 hierarchy."""
    own = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            own[controllers] = path
    return own


def _is_under(path: str, ancestor: str) -> bool:
    """Whether cgroup `path` is `ancestor` or inside it."""
    return ancestor == "/" or path == ancestor or path.startswith(ancestor.rstrip("/") + "/")


def _pick_mount(candidates: list[tuple[str, str]], own: str) -> tuple[str, str] | None:
    """Prefer a mount that shows our own cgroup (its root is one of our ancestors)."""
    for mountpoint, root in candidates:
        if _is_under(own, root):
            return mountpoint, root
    return candidates[0] if candidates else None


def _hierarchies() -> dict[str, _Hierarchy]:
    """Every hierarchy runc would join on this host, keyed as in ``Cgroup.paths``."""
    mounts = _cgroup_mounts()
    found: dict[str, _Hierarchy] = {}
    for controllers, own in _own_cgroups().items():
        if controllers == "":
            candidates = [(mp, root) for kind, root, mp, _ in mounts if kind == "cgroup2"]
            keys = [UNIFIED]
        else:
            names = set(controllers.split(","))
            candidates = [(mp, root) for kind, root, mp, opts in mounts if kind == "cgroup" and names <= opts]
            keys = [n for n in controllers.split(",") if n in V1_SUBSYSTEMS]
        picked = _pick_mount(candidates, own) if keys else None
        if picked:
            for key in keys:
                found[key] = _Hierarchy(picked[0], picked[1], own)
    return found


def _clean_inner(path: str) -> str:
    """Normalise like runc's CleanPath: a relative path can never climb out with "..". """
    cleaned = os.path.normpath("/" + path)
    return cleaned if path.startswith("/") else cleaned.lstrip("/")


def _is_v2_only(keys: object) -> bool:
    """A pure v2 layout: the unified hierarchy and no v1 controller (named v1 hierarchies don't count)."""
    return UNIFIED in keys and all(k == UNIFIED or k.startswith("name=") for k in keys)


# ---------------------------------------------------------------------------------------------
# File access


def _read(dirpath: str, name: str) -> str | None:
    """A control file's content, stripped; None when the file (or the cgroup) does not exist."""
    try:
        with open(os.path.join(dirpath, name)) as f:
            return f.read().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise SystemFailure(f"reading {os.path.join(dirpath, name)}: {e.strerror}") from e


def _write_raw(path: str, value: str) -> None:
    """One value in one write(2): the kernel parses each write to a cgroup file on its own."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _write(dirpath: str | None, name: str, value: str) -> None:
    """Write a requested setting, turning kernel answers into Skiff's errors."""
    if dirpath is None:
        raise Unsupported(f"cannot set {name}: its cgroup controller is not mounted on this host")
    try:
        _write_raw(os.path.join(dirpath, name), value)
    except OSError as e:
        raise _write_error(dirpath, name, value, e) from e


def _write_error(dirpath: str, name: str, value: str, e: OSError) -> Exception:
    """A missing file is a missing feature; EINVAL/ERANGE a refused value; the rest a kernel failure."""
    path = os.path.join(dirpath, name)
    if isinstance(e, FileNotFoundError):
        if not os.path.isdir(dirpath):
            return NotFound(f"cgroup {dirpath} does not exist")
        return Unsupported(f"cannot set {name}: {path} does not exist on this host")
    if e.errno in (errno.EINVAL, errno.ERANGE):
        return InvalidArgument(f"the kernel refused {value!r} for {path}: {e.strerror}")
    return SystemFailure(f"writing {value!r} to {path}: {e.strerror}")


def _procs(dirpath: str) -> list[int]:
    """Pids in one cgroup and all its descendants (a container may make sub-cgroups)."""
    pids: list[int] = []
    for dirname, _, _ in os.walk(dirpath):
        content = _read(dirname, "cgroup.procs")
        if content:
            pids.extend(int(p) for p in content.split())
    return pids


def _rmdir_tree(dirpath: str) -> bool:
    """Remove a cgroup and its sub-cgroups, children first; False while some are still busy."""
    done = True
    for dirname, _, _ in os.walk(dirpath, topdown=False):
        try:
            os.rmdir(dirname)
        except FileNotFoundError:
            pass
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise SystemFailure(f"removing cgroup {dirname}: {e.strerror}") from e
            done = False
    return done


# ---------------------------------------------------------------------------------------------
# Validation of linux.resources (done before any write, so a bad value changes nothing)


def _int(section: dict, key: str, where: str) -> int | None:
    """An integer field, or None when absent; booleans and strings are refused."""
    value = section.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"linux.resources.{where}.{key} must be an integer, not {value!r}")
    return value


def _limit(section: dict, key: str, where: str) -> int:
    """A byte limit: 0 or absent means unset, -1 unlimited, otherwise positive."""
    value = _int(section, key, where) or 0
    if value < -1:
        raise InvalidArgument(f"linux.resources.{where}.{key} must be -1 (unlimited) or positive: {value}")
    return value


def _check_memory(mem: dict) -> None:
    """Memory values runc would refuse."""
    limit, swap = _limit(mem, "limit", "memory"), _limit(mem, "swap", "memory")
    _limit(mem, "reservation", "memory")
    if limit > 0 and swap > 0 and swap < limit:
        raise InvalidArgument(f"memory+swap limit ({swap}) must be >= memory limit ({limit})")
    swappiness = _int(mem, "swappiness", "memory")
    if swappiness is not None and swappiness != -1 and not 0 <= swappiness <= 100:
        raise InvalidArgument(f"invalid memory swappiness value {swappiness} (valid range is 0-100)")


def _check_cpu(cpu: dict) -> None:
    """CPU values the kernel would refuse or silently clamp."""
    shares = _int(cpu, "shares", "cpu") or 0
    if shares and not 2 <= shares <= 262144:
        raise InvalidArgument(f"cpu shares must be between 2 and 262144, not {shares}")
    period = _int(cpu, "period", "cpu") or 0
    if period and not 1000 <= period <= 1_000_000:
        raise InvalidArgument(f"cpu period must be between 1000 and 1000000 microseconds, not {period}")
    quota = _int(cpu, "quota", "cpu") or 0
    if quota < -1 or 0 < quota < 1000:
        raise InvalidArgument(f"cpu quota must be -1 (unlimited) or at least 1000 microseconds, not {quota}")
    for key in ("realtimeRuntime", "realtimePeriod", "burst", "idle"):
        if (_int(cpu, key, "cpu") or 0) < -1:
            raise InvalidArgument(f"cpu {key} must not be negative")
    for key in ("cpus", "mems"):
        if cpu.get(key) is not None and not isinstance(cpu[key], str):
            raise InvalidArgument(f"cpu {key} must be a string like '0-3,6', not {cpu[key]!r}")


def _check_pids(pids: dict) -> None:
    """A pids limit is -1/0 (unlimited) or positive."""
    if (_int(pids, "limit", "pids") or 0) < -1:
        raise InvalidArgument(f"pids limit must be -1, 0 (unlimited) or positive, not {pids['limit']}")


def _device_line(rule: dict) -> str:
    """The v1 devices.allow/deny line for one OCI rule: "type major:minor access" or "a"."""
    kind = rule.get("type") or "a"
    access = rule.get("access") or "rwm"
    if kind not in ("a", "b", "c") or not access or set(access) - set("rwm"):
        raise InvalidArgument(f"invalid device rule {rule!r}: type must be a/b/c, access made of r, w, m")
    numbers = []
    for key in ("major", "minor"):
        value = rule.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < -1):
            raise InvalidArgument(f"invalid device rule {rule!r}: {key} must be an integer >= -1")
        numbers.append("*" if value is None or value == -1 else str(value))
    wildcard = numbers == ["*", "*"] and set(access) == set("rwm")
    if kind == "a" and wildcard:
        return "a"
    return f"{kind} {numbers[0]}:{numbers[1]} {access}"


def _check_blkio(bio: dict) -> None:
    """blkio weights live in 10..1000."""
    weight = _int(bio, "weight", "blockIO")
    if weight is not None and weight != 0 and not 10 <= weight <= 1000:
        raise InvalidArgument(f"blockIO weight must be between 10 and 1000, not {weight}")


def _check(resources: dict) -> None:
    """Validate every section before writing anything."""
    if not isinstance(resources, dict):
        raise InvalidArgument("linux.resources must be an object")
    for key, kind in (("memory", dict), ("cpu", dict), ("pids", dict), ("blockIO", dict), ("network", dict),
                      ("unified", dict), ("devices", list), ("hugepageLimits", list)):
        if resources.get(key) is not None and not isinstance(resources[key], kind):
            what = "an object" if kind is dict else "a list"
            raise InvalidArgument(f"linux.resources.{key} must be {what}")
    _check_memory(resources.get("memory") or {})
    _check_cpu(resources.get("cpu") or {})
    _check_pids(resources.get("pids") or {})
    _check_blkio(resources.get("blockIO") or {})
    for rule in resources.get("devices") or []:
        _device_line(rule)


# ---------------------------------------------------------------------------------------------
# Conversions runc makes for cgroup v2


def shares_to_weight(shares: int) -> int:
    """cpu.shares (2..262144) to cpu.weight (1..10000), runc's ConvertCPUSharesToCgroupV2Value."""
    return 0 if shares == 0 else 1 + ((shares - 2) * 9999) // 262142


def blkio_to_io_weight(weight: int) -> int:
    """blkio.weight (10..1000) to io.weight (1..10000), runc's ConvertBlkIOToIOWeightValue."""
    return 0 if weight == 0 else 1 + (weight - 10) * 9999 // 990


def swap_to_v2(swap: int, limit: int) -> int:
    """OCI swap is memory+swap; v2 memory.swap.max is swap alone (runc's ConvertMemorySwapToCgroupV2Value)."""
    if limit == -1 and swap == 0:
        return -1
    if swap in (-1, 0):
        return swap
    if limit in (0, -1):
        raise InvalidArgument("cannot set a swap limit without a memory limit on cgroup v2")
    return swap - limit


def _v2_num(value: int) -> str:
    """-1 is "max" in v2 files."""
    return "max" if value == -1 else str(value)


# ---------------------------------------------------------------------------------------------
# Writing resources on cgroup v1


def _v1_memory_limit(dirpath: str | None, value: int) -> None:
    """Lowering the limit below usage fails with EBUSY once reclaim gives up: say so clearly."""
    if dirpath is None:
        raise Unsupported("cannot set a memory limit: the memory controller is not mounted")
    path = os.path.join(dirpath, "memory.limit_in_bytes")
    try:
        _write_raw(path, str(value))
    except OSError as e:
        if e.errno != errno.EBUSY:
            raise _write_error(dirpath, "memory.limit_in_bytes", str(value), e) from e
        usage, peak = _read(dirpath, "memory.usage_in_bytes"), _read(dirpath, "memory.max_usage_in_bytes")
        raise InvalidArgument(
            f"unable to set memory limit to {value} (current usage: {usage}, peak usage: {peak})"
        ) from e


def _v1_memory(dirpath: str | None, mem: dict) -> None:
    """runc's setMemoryAndSwap: order the two writes so that memory <= memory+swap at every step."""
    if dirpath is None:
        if any(value not in (None, 0, False, -1) for value in mem.values()):
            raise Unsupported("cannot set memory limits: the memory controller is not mounted")
        return
    limit, swap = mem.get("limit") or 0, mem.get("swap") or 0
    has_swap = os.path.exists(os.path.join(dirpath, "memory.memsw.limit_in_bytes"))
    if limit == -1 and swap == 0 and has_swap:
        swap = -1  # "unlimited memory" also lifts the swap limit, as runc does
    swap_first = False
    if limit and swap:
        current = int(_read(dirpath, "memory.limit_in_bytes") or 0)
        swap_first = swap == -1 or current < swap
    if swap and swap_first:
        _write(dirpath, "memory.memsw.limit_in_bytes", str(swap))
    if limit:
        _v1_memory_limit(dirpath, limit)
    if swap and not swap_first:
        _write(dirpath, "memory.memsw.limit_in_bytes", str(swap))
    if mem.get("reservation"):
        _write(dirpath, "memory.soft_limit_in_bytes", str(mem["reservation"]))
    if mem.get("disableOOMKiller"):
        _write(dirpath, "memory.oom_control", "1")
    if mem.get("swappiness") not in (None, -1):
        _write(dirpath, "memory.swappiness", str(mem["swappiness"]))


def _v1_cpu(dirpath: str | None, cpu: dict) -> None:
    """Shares (read back to catch clamping), then CFS period and quota in an order the kernel accepts."""
    if cpu.get("shares"):
        _write(dirpath, "cpu.shares", str(cpu["shares"]))
        got = _read(dirpath, "cpu.shares") if dirpath else None
        if got != str(cpu["shares"]):
            raise InvalidArgument(f"cpu shares {cpu['shares']} not accepted (the kernel set {got})")
    period, quota = cpu.get("period") or 0, cpu.get("quota") or 0
    retry_period = False
    if period:
        try:
            _write(dirpath, "cpu.cfs_period_us", str(period))
        except InvalidArgument:
            # A shorter period can break the parent's quota until our quota is set: retry after it.
            if not quota:
                raise
            retry_period = True
    if quota:
        _write(dirpath, "cpu.cfs_quota_us", str(quota))
    if retry_period:
        _write(dirpath, "cpu.cfs_period_us", str(period))
    if cpu.get("burst") is not None:
        _write(dirpath, "cpu.cfs_burst_us", str(cpu["burst"]))
    if cpu.get("idle") is not None:
        _write(dirpath, "cpu.idle", str(cpu["idle"]))
    if cpu.get("realtimePeriod"):
        _write(dirpath, "cpu.rt_period_us", str(cpu["realtimePeriod"]))
    if cpu.get("realtimeRuntime"):
        _write(dirpath, "cpu.rt_runtime_us", str(cpu["realtimeRuntime"]))


def _cpuset(dirpath: str | None, cpu: dict) -> None:
    """cpuset.cpus / cpuset.mems have the same names on v1 and v2."""
    for key in ("cpus", "mems"):
        if cpu.get(key):
            _write(dirpath, f"cpuset.{key}", cpu[key])


def _pids(dirpath: str | None, pids: dict) -> None:
    """runc's specconv turns 0 into -1: both mean no limit ("max")."""
    if "limit" in pids and pids["limit"] is not None:
        limit = pids["limit"]
        _write(dirpath, "pids.max", "max" if limit <= 0 else str(limit))


def _v1_devices(dirpath: str | None, rules: list[dict]) -> None:
    """Each rule is one write to devices.allow or devices.deny; a deny-all rule resets the list.

    runc computes a minimal diff with an emulator to avoid a window with no access during live
    updates; writing the rules in order gives the same end state.
    """
    for rule in rules:
        _write(dirpath, "devices.allow" if rule.get("allow") else "devices.deny", _device_line(rule))


def _blkio_weight_file(dirpath: str | None, names: tuple[str, ...]) -> str:
    """The first of several equivalent weight files this kernel offers (bfq or cfq)."""
    for name in names:
        if dirpath and os.path.exists(os.path.join(dirpath, name)):
            return name
    raise Unsupported(f"cannot set a block I/O weight: none of {', '.join(names)} exists on this host")


def _throttle_lines(bio: dict) -> dict[str, list[str]]:
    """OCI throttle lists as "major:minor rate" lines, keyed by their v1 file."""
    lines: dict[str, list[str]] = {}
    for key, name in (("throttleReadBpsDevice", "read_bps"), ("throttleWriteBpsDevice", "write_bps"),
                      ("throttleReadIOPSDevice", "read_iops"), ("throttleWriteIOPSDevice", "write_iops")):
        for dev in bio.get(key) or []:
            lines.setdefault(name, []).append(f"{dev['major']}:{dev['minor']} {dev['rate']}")
    return lines


def _v1_blkio(dirpath: str | None, bio: dict) -> None:
    """Weight (cfq's blkio.weight or bfq's blkio.bfq.weight) and throttling."""
    if bio.get("weight"):
        _write(dirpath, _blkio_weight_file(dirpath, ("blkio.weight", "blkio.bfq.weight")), str(bio["weight"]))
    for dev in bio.get("weightDevice") or []:
        if dev.get("weight"):
            name = _blkio_weight_file(dirpath, ("blkio.weight_device", "blkio.bfq.weight_device"))
            _write(dirpath, name, f"{dev['major']}:{dev['minor']} {dev['weight']}")
    for name, lines in _throttle_lines(bio).items():
        for line in lines:
            _write(dirpath, f"blkio.throttle.{name}_device", line)


def _hugetlb(dirpath: str | None, limits: list[dict], suffix: str) -> None:
    """hugetlb.<size>.limit_in_bytes on v1, hugetlb.<size>.max on v2."""
    for item in limits:
        _write(dirpath, f"hugetlb.{item['pageSize']}.{suffix}", str(item["limit"]))


def _v1_network(paths: dict[str, str], net: dict) -> None:
    """net_cls class id and net_prio priorities (v1 only)."""
    if net.get("classID") is not None:
        _write(paths.get("net_cls"), "net_cls.classid", str(net["classID"]))
    for prio in net.get("priorities") or []:
        _write(paths.get("net_prio"), "net_prio.ifpriomap", f"{prio['name']} {prio['priority']}")


def _apply_v1(paths: dict[str, str], res: dict) -> None:
    """Every section to its v1 controller, in runc's subsystem order."""
    if res.get("unified"):
        raise Unsupported("linux.resources.unified needs a cgroup v2 host")
    cpu = res.get("cpu") or {}
    _cpuset(paths.get("cpuset"), cpu)
    if res.get("devices"):
        _v1_devices(paths.get("devices"), res["devices"])
    _v1_memory(paths.get("memory"), res.get("memory") or {})
    _v1_cpu(paths.get("cpu"), cpu)
    _pids(paths.get("pids"), res.get("pids") or {})
    _v1_blkio(paths.get("blkio"), res.get("blockIO") or {})
    _hugetlb(paths.get("hugetlb"), res.get("hugepageLimits") or [], "limit_in_bytes")
    _v1_network(paths, res.get("network") or {})


# ---------------------------------------------------------------------------------------------
# Writing resources on cgroup v2


def _v2_memory(dirpath: str, mem: dict) -> None:
    """memory.swap.max before memory.max, memory.low for the reservation, as runc writes them."""
    limit, swap = mem.get("limit") or 0, mem.get("swap") or 0
    if limit or swap:
        swap_v2 = swap_to_v2(swap, limit)
        if swap_v2 or swap > 0:  # swap == limit means "no swap": write 0, never leave it unset
            _write(dirpath, "memory.swap.max", _v2_num(swap_v2))
    if limit:
        _write(dirpath, "memory.max", _v2_num(limit))
    if mem.get("reservation"):
        _write(dirpath, "memory.low", _v2_num(mem["reservation"]))
    if mem.get("disableOOMKiller"):
        raise Unsupported("disabling the OOM killer is not possible on cgroup v2")
    if mem.get("swappiness") not in (None, -1):
        raise Unsupported("memory swappiness is not available on cgroup v2")


def _v2_cpu(dirpath: str, cpu: dict) -> None:
    """cpu.weight from shares, cpu.max as "quota period" ("max" when unlimited)."""
    if cpu.get("shares"):
        _write(dirpath, "cpu.weight", str(shares_to_weight(cpu["shares"])))
    quota, period = cpu.get("quota") or 0, cpu.get("period") or 0
    if quota or period:
        value = str(quota) if quota > 0 else "max"
        _write(dirpath, "cpu.max", f"{value} {period}" if period else value)
    if cpu.get("burst") is not None:
        _write(dirpath, "cpu.max.burst", str(cpu["burst"]))
    if cpu.get("idle") is not None:
        _write(dirpath, "cpu.idle", str(cpu["idle"]))
    if cpu.get("realtimePeriod") or cpu.get("realtimeRuntime"):
        raise Unsupported("real-time CPU scheduling limits are not available on cgroup v2")


def _v2_io(dirpath: str, bio: dict) -> None:
    """io.bfq.weight takes blkio's scale; io.weight needs runc's conversion. Throttles go to io.max."""
    if bio.get("weight"):
        if os.path.exists(os.path.join(dirpath, "io.bfq.weight")):
            _write(dirpath, "io.bfq.weight", str(bio["weight"]))
        else:
            _write(dirpath, "io.weight", str(blkio_to_io_weight(bio["weight"])))
    keys = {"read_bps": "rbps", "write_bps": "wbps", "read_iops": "riops", "write_iops": "wiops"}
    for name, lines in _throttle_lines(bio).items():
        for line in lines:
            device, rate = line.split()
            _write(dirpath, "io.max", f"{device} {keys[name]}={rate}")


def _v2_unified(dirpath: str, unified: dict[str, str]) -> None:
    """Raw v2 files named in linux.resources.unified, written last so they win."""
    for name, value in unified.items():
        if "/" in name or name.startswith("."):
            raise InvalidArgument(f"linux.resources.unified: {name!r} is not a cgroup file name")
        _write(dirpath, name, str(value))


def _apply_v2(dirpath: str, res: dict) -> None:
    """Every section to the one v2 directory.

    Device rules are not applied: on v2 they need an eBPF program attached to the cgroup
    (BPF_CGROUP_DEVICE), which this runtime does not build; the container's /dev is still
    limited to the nodes the runtime creates.
    """
    if (res.get("network") or {}).get("classID") or (res.get("network") or {}).get("priorities"):
        raise Unsupported("network classID and priorities need cgroup v1 (net_cls, net_prio)")
    cpu = res.get("cpu") or {}
    _cpuset(dirpath, cpu)
    _v2_memory(dirpath, res.get("memory") or {})
    _v2_cpu(dirpath, cpu)
    _pids(dirpath, res.get("pids") or {})
    _v2_io(dirpath, res.get("blockIO") or {})
    _hugetlb(dirpath, res.get("hugepageLimits") or [], "max")
    _v2_unified(dirpath, res.get("unified") or {})


# ---------------------------------------------------------------------------------------------
# Creating directories


def _below_mount(path: str) -> list[str]:
    """The directories from just below the cgroup mount down to `path`, top first."""
    chain, current = [], path
    while not os.path.ismount(current) and current != "/":
        chain.append(current)
        current = os.path.dirname(current)
    return chain[::-1]


def _mkdirs_copying_cpuset(path: str) -> None:
    """mkdir -p for v1 cpuset: a new cpuset is empty and refuses tasks, so copy cpus/mems from above.

    Levels that exist already but are empty (made by someone else) are filled too, as runc does.
    """
    for dirname in _below_mount(path):
        _mkdir(dirname)
        parent = os.path.dirname(dirname)
        for name in ("cpuset.cpus", "cpuset.mems"):
            inherited = _read(parent, name)
            if inherited and not _read(dirname, name):
                _write(dirname, name, inherited)


def _mkdir(path: str) -> None:
    """mkdir that tolerates a concurrent creator."""
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        pass
    except OSError as e:
        raise SystemFailure(f"creating cgroup {path}: {e.strerror}") from e


def _mkdirs_enabling_controllers(path: str) -> None:
    """mkdir -p on pure v2, enabling every available controller in each ancestor's subtree_control.

    Errors enabling a controller are ignored as runc does (a parent with processes in it cannot
    delegate); a limit that then has no file to go to raises Unsupported when it is applied.
    """
    for dirname in _below_mount(path):
        parent = os.path.dirname(dirname)
        available = (_read(parent, "cgroup.controllers") or "").split()
        enabled = (_read(parent, "cgroup.subtree_control") or "").split()
        for controller in available:
            if controller not in enabled:
                try:
                    _write_raw(os.path.join(parent, "cgroup.subtree_control"), f"+{controller}")
                except OSError:
                    pass
        _mkdir(dirname)


# ---------------------------------------------------------------------------------------------
# The container's cgroup


class Cgroup:
    """One container's cgroup: a directory in every hierarchy runc would join."""

    paths: dict[str, str]

    def __init__(self, paths: dict[str, str]) -> None:
        self.paths = dict(paths)

    def __repr__(self) -> str:
        return f"Cgroup({self.paths!r})"

    @classmethod
    def for_container(cls, cgroups_path: str | None, container_id: str) -> Cgroup:
        """Resolve the directories as runc does, creating nothing.

        An absolute cgroupsPath is taken from each hierarchy's root; a relative one (or the container
        id when there is none) is put under this process's own cgroup in each hierarchy, except on a
        pure v2 host, where runc uses the parent of our own cgroup (ours holds processes, so it
        cannot delegate controllers).
        """
        if not cgroups_path and not container_id:
            raise InvalidArgument("a cgroups path or a container id is needed")
        inner = _clean_inner(cgroups_path or container_id)
        found = _hierarchies()
        if not found:
            raise Unsupported("no cgroup hierarchy is mounted on this host")
        v2_only = _is_v2_only(found)
        paths = {}
        for key, h in found.items():
            if inner.startswith("/"):
                paths[key] = os.path.normpath(h.mountpoint + inner)
                continue
            own = os.path.dirname(h.own) if v2_only and key == UNIFIED else h.own
            rel = os.path.relpath(own, h.root) if _is_under(own, h.root) else "."
            paths[key] = os.path.normpath(os.path.join(h.mountpoint, rel, inner))
        return cls(paths)

    @classmethod
    def from_paths(cls, paths: dict[str, str]) -> Cgroup:
        """Rebuild from the map the runtime saved in its state file."""
        if not isinstance(paths, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v.startswith("/") for k, v in paths.items()
        ):
            raise InvalidArgument(f"cgroup paths must map hierarchy names to absolute paths: {paths!r}")
        return cls(paths)

    # -- helpers -----------------------------------------------------------------------------

    @property
    def v2(self) -> bool:
        """True when the unified hierarchy carries the limits (a pure v2 host)."""
        return _is_v2_only(self.paths)

    def _dirs(self) -> list[str]:
        """Each directory once (co-mounted controllers share one)."""
        return list(dict.fromkeys(self.paths.values()))

    def _freezer(self) -> tuple[str, str] | None:
        """("v1"|"v2", dir) of the freezer to use: v1's if mounted, else cgroup.freeze in the unified tree."""
        if "freezer" in self.paths:
            return "v1", self.paths["freezer"]
        unified = self.paths.get(UNIFIED)
        if unified and os.path.exists(os.path.join(unified, "cgroup.freeze")):
            return "v2", unified
        return None

    # -- lifecycle ---------------------------------------------------------------------------

    def create(self) -> None:
        """mkdir -p every directory, preparing v1 cpuset and v2 controller delegation on the way."""
        for key, dirpath in self.paths.items():
            if key == "cpuset":
                _mkdirs_copying_cpuset(dirpath)
            elif key == UNIFIED and self.v2:
                _mkdirs_enabling_controllers(dirpath)
            else:
                try:
                    os.makedirs(dirpath, 0o755, exist_ok=True)
                except OSError as e:
                    raise SystemFailure(f"creating cgroup {dirpath}: {e.strerror}") from e

    def apply(self, resources: dict) -> None:
        """Write OCI linux.resources; used at create time and by `update` on a live container."""
        if not resources:
            return
        _check(resources)
        if self.v2:
            _apply_v2(self.paths[UNIFIED], resources)
        else:
            _apply_v1(self.paths, resources)

    def add(self, pid: int) -> None:
        """Move a process into the container's cgroup in every hierarchy."""
        for dirpath in self._dirs():
            path = os.path.join(dirpath, "cgroup.procs")
            try:
                _write_raw(path, str(pid))
            except ProcessLookupError as e:
                raise NotFound(f"process {pid} does not exist") from e
            except FileNotFoundError as e:
                raise NotFound(f"cgroup {dirpath} does not exist (create it first)") from e
            except OSError as e:
                raise SystemFailure(f"adding process {pid} to {path}: {e.strerror}") from e

    def destroy(self) -> None:
        """Remove every directory, sub-cgroups first, retrying for ~1 s while the last tasks exit."""
        pending = self._dirs()
        deadline = time.monotonic() + _DESTROY_TIMEOUT
        delay = 0.005
        while True:
            pending = [d for d in pending if not _rmdir_tree(d)]
            if not pending:
                return
            if time.monotonic() >= deadline:
                raise SystemFailure(f"cgroup still busy after {_DESTROY_TIMEOUT:g}s: {', '.join(pending)}")
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    # -- processes ---------------------------------------------------------------------------

    def pids(self) -> list[int]:
        """Every process in the container's cgroup and its sub-cgroups (empty when it is gone)."""
        order = ["pids", "freezer", "memory", *sorted(self.paths), UNIFIED]
        for key in order:
            if key in self.paths:
                return sorted(set(_procs(self.paths[key])))
        return []

    def kill_all(self, sig: int) -> None:
        """Signal every process, without racing forks: cgroup.kill for SIGKILL, else freeze-signal-thaw.

        A paused container stays paused for other signals (they are delivered when it is thawed); it
        is thawed for SIGKILL, which a frozen v1 task could not act on.
        """
        if not any(os.path.isdir(d) for d in self._dirs()):
            return  # the cgroup is gone, and with it every process it held
        unified = self.paths.get(UNIFIED)
        if sig == _SIGKILL and unified and os.path.exists(os.path.join(unified, "cgroup.kill")):
            _write(unified, "cgroup.kill", "1")
            if self.v2:
                return
        was_frozen = self.frozen()
        try:
            if not was_frozen:
                self.freeze()
        except (Unsupported, SystemFailure):
            pass  # still signal what we can see, as runc does
        for pid in self.pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        if not was_frozen or sig == _SIGKILL:
            self.thaw()  # a frozen task cannot act on a fatal signal until thawed

    # -- freezer -----------------------------------------------------------------------------

    def freeze(self) -> None:
        """Freeze every process and wait until the kernel says the whole cgroup is frozen."""
        freezer = self._freezer()
        if freezer is None:
            raise Unsupported("no freezer: neither the v1 freezer controller nor cgroup.freeze is available")
        kind, dirpath = freezer
        if kind == "v1":
            _freeze_v1(dirpath)
        else:
            _freeze_v2(dirpath)

    def thaw(self) -> None:
        """Let the processes run again; a no-op without a freezer (nothing can be frozen then)."""
        freezer = self._freezer()
        if freezer is None:
            return
        kind, dirpath = freezer
        if kind == "v1":
            _write(dirpath, "freezer.state", "THAWED")
        else:
            _write(dirpath, "cgroup.freeze", "0")

    def frozen(self) -> bool:
        """Whether the cgroup is frozen (waiting briefly while a v1 freeze is still in progress)."""
        freezer = self._freezer()
        if freezer is None:
            return False
        kind, dirpath = freezer
        if kind == "v2":
            return _events(dirpath).get("frozen") == "1"
        deadline = time.monotonic() + 1.0
        while True:
            state = _read(dirpath, "freezer.state")
            if state != "FREEZING" or time.monotonic() >= deadline:
                return state == "FROZEN"
            time.sleep(0.001)

    # -- statistics --------------------------------------------------------------------------

    def stats(self) -> dict[str, dict[str, int | None]]:
        """Best-effort usage figures; keys whose file is missing are left out.

        ``{"memory": {"usage": bytes, "limit": bytes or None (unlimited), "max_usage": bytes},
        "cpu": {"usage_ns": total CPU time in nanoseconds},
        "pids": {"current": count, "limit": count or None (unlimited)}}``
        """
        if self.v2:
            return _stats_v2(self.paths[UNIFIED])
        return _stats_v1(self.paths)


def _freeze_v1(dirpath: str) -> None:
    """Write FROZEN until freezer.state says FROZEN (runc's loop: v1 can stick in FREEZING under forks)."""
    try:
        for attempt in range(1000):
            if attempt % 50 == 49:
                _write(dirpath, "freezer.state", "THAWED")  # an occasional thaw lets stuck forks finish
                time.sleep(0.01)
            _write(dirpath, "freezer.state", "FROZEN")
            state = _read(dirpath, "freezer.state")
            if state == "FROZEN":
                return
            if state != "FREEZING":
                raise SystemFailure(f"unexpected freezer state {state!r} in {dirpath}")
    except BaseException:
        _write(dirpath, "freezer.state", "THAWED")  # never leave it half frozen
        raise
    _write(dirpath, "freezer.state", "THAWED")
    raise SystemFailure(f"unable to freeze {dirpath}: it stayed FREEZING")


def _events(dirpath: str) -> dict[str, str]:
    """cgroup.events as a dict ("populated", "frozen")."""
    content = _read(dirpath, "cgroup.events") or ""
    return dict(line.split(" ", 1) for line in content.splitlines() if " " in line)


def _freeze_v2(dirpath: str) -> None:
    """Write 1 to cgroup.freeze, then poll cgroup.events until it reports "frozen 1"."""
    _write(dirpath, "cgroup.freeze", "1")
    deadline = time.monotonic() + _FREEZE_TIMEOUT
    while _events(dirpath).get("frozen") != "1":
        if time.monotonic() >= deadline:
            _write(dirpath, "cgroup.freeze", "0")
            raise SystemFailure(f"timed out after {_FREEZE_TIMEOUT:g}s waiting for {dirpath} to freeze")
        time.sleep(0.001)


def _number(value: str | None, unlimited: int | None = None) -> int | None:
    """A counter from a cgroup file; "max" or a v1 near-2**63 value means unlimited (None)."""
    if value is None or value == "max":
        return None
    number = int(value)
    return None if unlimited is not None and number >= unlimited else number


def _put(stats: dict[str, dict[str, int | None]], section: str, key: str, value: str | None,
         unlimited: int | None = None) -> None:
    """Record one figure if its file existed."""
    if value is not None:
        stats.setdefault(section, {})[key] = _number(value, unlimited)


def _stats_v1(paths: dict[str, str]) -> dict[str, dict[str, int | None]]:
    """Figures from the v1 memory, cpuacct and pids controllers."""
    stats: dict[str, dict[str, int | None]] = {}
    mem, acct, pids = paths.get("memory"), paths.get("cpuacct"), paths.get("pids")
    if mem:
        _put(stats, "memory", "usage", _read(mem, "memory.usage_in_bytes"))
        _put(stats, "memory", "limit", _read(mem, "memory.limit_in_bytes"), _UNLIMITED_V1)
        _put(stats, "memory", "max_usage", _read(mem, "memory.max_usage_in_bytes"))
    if acct:
        _put(stats, "cpu", "usage_ns", _read(acct, "cpuacct.usage"))
    if pids:
        _put(stats, "pids", "current", _read(pids, "pids.current"))
        _put(stats, "pids", "limit", _read(pids, "pids.max"))
    return stats


def _stats_v2(dirpath: str) -> dict[str, dict[str, int | None]]:
    """Figures from v2 files; cpu.stat counts microseconds."""
    stats: dict[str, dict[str, int | None]] = {}
    _put(stats, "memory", "usage", _read(dirpath, "memory.current"))
    _put(stats, "memory", "limit", _read(dirpath, "memory.max"))
    _put(stats, "memory", "max_usage", _read(dirpath, "memory.peak"))
    cpu = dict(line.split(" ", 1) for line in (_read(dirpath, "cpu.stat") or "").splitlines() if " " in line)
    if "usage_usec" in cpu:
        stats["cpu"] = {"usage_ns": int(cpu["usage_usec"]) * 1000}
    _put(stats, "pids", "current", _read(dirpath, "pids.current"))
    _put(stats, "pids", "limit", _read(dirpath, "pids.max"))
    return stats


def warm_attach_lock() -> int | None:
    """Start the kernel's wait for moving a process between cgroups now, in a throwaway child.

    Every write to ``cgroup.procs`` takes a global lock whose first writer waits for an RCU grace
    period (about 10 ms here) unless another writer held it within the last grace period. A child
    that moves itself into the cgroup it is already in starts that wait while the runtime reads the
    bundle and builds the container, so the real move later finds the lock warm. Returns the child's
    pid (the caller reaps it, or its own exit does), or None if there is nothing to warm.
    """
    try:
        target = next((os.path.join(h.mountpoint, os.path.relpath(h.own, h.root), "cgroup.procs")
                       for h in _hierarchies().values() if _is_under(h.own, h.root)), None)
    except OSError:
        return None
    if target is None:
        return None
    pid = os.fork()
    if pid == 0:
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CLOEXEC)
            os.write(fd, b"0")  # "0" means the writing process itself
        except OSError:
            pass
        os._exit(0)
    return pid
