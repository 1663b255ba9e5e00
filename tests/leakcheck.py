"""The leak check every test session ends with: kernel objects made during the session must be gone.

At session start it snapshots the host's mounts, named network namespaces, cgroup directories (in
every cgroup hierarchy mounted on the host: each v1 controller and the cgroup2 one), network links,
nftables tables and processes; at session end it snapshots again and reports what is new. A leftover makes the
session fail (exit status 1) after printing what was left behind.

Processes count as leaked when they were started during the session and are still alive at its end
and either descend from the pytest process, or sit in a cgroup of this session's test containers
(``/skiff-test/<SESSION_TAG>-...``), or have their cwd, root or command line inside one of the
session's temp directories. That catches a container init that was reparented to pid 1. Cgroups
under ``/skiff-test/`` that carry another session's tag belong to that session and are skipped;
everything else new on the host counts, so unrelated work on the same host can show up here.

The functions (``snapshot``, ``diff``) are usable on their own; ``LeakCheckPlugin`` wires them into
pytest. Set ``SKIFF_LEAKCHECK=0`` to turn the check off, ``SKIFF_LEAKCHECK_IGNORE`` to a
comma-separated list of fnmatch patterns (matched against each reported line, e.g.
``cgroup:memory:/machine/*``) to ignore things other software on the host makes meanwhile.
"""

from __future__ import annotations

import collections
import contextlib
import fnmatch
import os
import shutil
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import pytest

# Marker directory test containers' cgroups live under (linux.cgroupsPath = /skiff-test/<id>).
CGROUP_MARKER = "skiff-test"
# Every container id this session makes starts with this tag, so that sessions running side by side
# on one host (a developer's and CI's) each account only for their own containers.
SESSION_TAG = f"skt{os.getpid() % 100000}"


@dataclass(frozen=True)
class Hierarchy:
    """One mounted cgroup hierarchy: its mount point and a short name (controller list or 'unified')."""

    mountpoint: str
    name: str


@dataclass
class Snapshot:
    mounts: collections.Counter[tuple[str, str, str, str]]
    netns: set[str]
    cgroups: dict[Hierarchy, set[str]]
    links: set[str]
    procs: dict[int, int]  # pid -> start time (clock ticks since boot)
    own_cgroups: dict[str, str] = field(default_factory=dict)  # hierarchy name -> our cgroup path
    nft_tables: set[str] = field(default_factory=set)  # "<family> <name>"


def _unescape(s: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal.
    return s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def parse_mountinfo(text: str) -> list[dict[str, str]]:
    """Parse /proc/<pid>/mountinfo into dicts: id, parent, dev, root, mountpoint, options, fstype,
    source, super_options."""
    result = []
    for line in text.splitlines():
        if not line.strip():
            continue
        left, _, right = line.partition(" - ")
        f = left.split()
        r = right.split()
        result.append({
            "id": f[0], "parent": f[1], "dev": f[2], "root": _unescape(f[3]), "mountpoint": _unescape(f[4]),
            "options": f[5], "fstype": r[0] if r else "", "source": _unescape(r[1]) if len(r) > 1 else "",
            "super_options": r[2] if len(r) > 2 else "",
        })
    return result


def read_mounts() -> collections.Counter[tuple[str, str, str, str]]:
    with open("/proc/self/mountinfo") as f:
        entries = parse_mountinfo(f.read())
    return collections.Counter((m["mountpoint"], m["root"], m["fstype"], m["source"]) for m in entries)


# cgroup v1 mount options that are not controllers.
_CGROUP_FLAGS = {"rw", "ro", "clone_children", "noprefix", "xattr", "cpuset_v2_mode", "all", "none"}


def cgroup_hierarchies() -> list[Hierarchy]:
    """Every cgroup hierarchy mounted on the host (first mount of each), v1 and v2."""
    with open("/proc/self/mountinfo") as f:
        entries = parse_mountinfo(f.read())
    seen: dict[str, Hierarchy] = {}
    for m in entries:
        if m["fstype"] == "cgroup2":
            key = "unified"
        elif m["fstype"] == "cgroup":
            opts = [o for o in m["super_options"].split(",")
                    if o.startswith("name=") or ("=" not in o and o not in _CGROUP_FLAGS)]
            key = ",".join(sorted(opts)) or m["mountpoint"]
        else:
            continue
        if m["root"] != "/":
            continue  # a bind of a sub-tree: the full hierarchy is listed elsewhere
        seen.setdefault(key, Hierarchy(m["mountpoint"], key))
    return list(seen.values())


def read_cgroups(hierarchies: Iterable[Hierarchy]) -> dict[Hierarchy, set[str]]:
    result: dict[Hierarchy, set[str]] = {}
    for h in hierarchies:
        dirs: set[str] = set()
        for dirpath, _dirnames, _files in os.walk(h.mountpoint):
            rel = "/" + os.path.relpath(dirpath, h.mountpoint)
            dirs.add("/" if rel == "/." else rel)
        result[h] = dirs
    return result


def own_cgroups() -> dict[str, str]:
    """This process's cgroup per hierarchy, keyed like ``Hierarchy.name``."""
    result = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _num, controllers, path = line.rstrip("\n").split(":", 2)
            key = "unified" if controllers == "" else ",".join(sorted(controllers.split(",")))
            result[key] = path
    return result


def read_netns() -> set[str]:
    try:
        return set(os.listdir("/run/netns"))
    except FileNotFoundError:
        return set()


def read_links() -> set[str]:
    """Network link names in this network namespace (``ip -o link``; /sys/class/net without ip)."""
    ip = shutil.which("ip")
    if ip:
        out = subprocess.run([ip, "-o", "link"], capture_output=True, text=True, check=False).stdout
        names = set()
        for line in out.splitlines():
            parts = line.split(":", 2)
            if len(parts) >= 2:
                names.add(parts[1].strip().split("@", 1)[0])
        return names
    return set(os.listdir("/sys/class/net"))


def read_nft_tables() -> set[str]:
    """nftables tables in this network namespace, as ``<family> <name>`` (empty without ``nft``)."""
    nft = shutil.which("nft")
    if not nft:
        return set()
    out = subprocess.run([nft, "list", "tables"], capture_output=True, text=True, check=False).stdout
    return {line.split(None, 1)[1].strip() for line in out.splitlines() if line.startswith("table ")}


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    return raw[raw.rindex(")") + 2:].split()


def read_procs() -> dict[int, int]:
    procs = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat_fields(int(name))
            if fields is not None:
                procs[int(name)] = int(fields[19])  # starttime is field 22; fields[0] is field 3
    return procs


def snapshot() -> Snapshot:
    hierarchies = cgroup_hierarchies()
    return Snapshot(mounts=read_mounts(), netns=read_netns(), cgroups=read_cgroups(hierarchies),
                    links=read_links(), procs=read_procs(), own_cgroups=own_cgroups(),
                    nft_tables=read_nft_tables())


def _proc_info(pid: int) -> dict[str, str]:
    info: dict[str, str] = {}
    for key in ("cwd", "root", "exe"):
        try:
            info[key] = os.readlink(f"/proc/{pid}/{key}")
        except OSError:
            info[key] = ""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            info["cmdline"] = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        info["cmdline"] = ""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            info["cgroup"] = f.read()
    except OSError:
        info["cgroup"] = ""
    fields = _stat_fields(pid) or ["?", "0"]
    info["state"], info["ppid"] = fields[0], fields[1]
    return info


def _is_descendant(pid: int, ancestor: int) -> bool:
    seen = 0
    while pid > 1 and seen < 1000:
        fields = _stat_fields(pid)
        if fields is None:
            return False
        pid = int(fields[1])
        if pid == ancestor:
            return True
        seen += 1
    return False


def _ignored_cgroup(h: Hierarchy, path: str, own: dict[str, str]) -> bool:
    """Cgroups next to the one this session runs in belong to whoever started us (a session manager
    makes one per command): not ours to account for. Our own sub-tree is still checked."""
    mine = own.get(h.name)
    if not mine or mine == "/":
        return False
    parent = os.path.dirname(mine)
    inside_parent = path == parent or path.startswith(parent.rstrip("/") + "/")
    inside_mine = path == mine or path.startswith(mine + "/")
    return inside_parent and not inside_mine


def _other_sessions_cgroup(path: str, tag: str) -> bool:
    """``/skiff-test`` itself (shared by all sessions) or a container cgroup with another session's tag."""
    marker = f"/{CGROUP_MARKER}"
    if path == marker:
        return True
    return path.startswith(marker + "/") and not path.startswith(f"{marker}/{tag}-")


def diff(before: Snapshot, after: Snapshot, *, session_pid: int | None = None,
         tmp_dirs: Sequence[str] = (), tag: str = SESSION_TAG, ignore: Sequence[str] = ()) -> list[str]:
    """What ``after`` has that ``before`` lacked, one line per leftover (``kind: detail``)."""
    leaks: list[str] = []
    for (mountpoint, root, fstype, source), n in sorted((after.mounts - before.mounts).items()):
        leaks.append(f"mount: {mountpoint} ({fstype} from {source}, root {root})" + (f" x{n}" if n > 1 else ""))
    leaks += [f"netns: /run/netns/{name}" for name in sorted(after.netns - before.netns)]
    for h, dirs in after.cgroups.items():
        old = before.cgroups.get(h, set())
        for path in sorted(dirs - old):
            if not _ignored_cgroup(h, path, before.own_cgroups) and not _other_sessions_cgroup(path, tag):
                leaks.append(f"cgroup: {h.name}:{path} ({os.path.join(h.mountpoint, path.lstrip('/'))})")
    leaks += [f"link: {name}" for name in sorted(after.links - before.links)]
    leaks += [f"nft table: {table}" for table in sorted(after.nft_tables - before.nft_tables)]
    tmp_dirs = [os.path.realpath(d) for d in tmp_dirs if d]
    for pid, start in sorted(after.procs.items()):
        if before.procs.get(pid) == start or pid == os.getpid():
            continue
        info = _proc_info(pid)
        if not info["cmdline"] and not info["exe"] and info["state"] != "Z":
            continue  # a kernel thread, or gone already
        reasons = []
        if session_pid is not None and _is_descendant(pid, session_pid):
            reasons.append("child of the test session")
        if f"/{CGROUP_MARKER}/{tag}-" in info["cgroup"]:
            reasons.append("in a test cgroup")
        for d in tmp_dirs:
            for key in ("cwd", "root", "cmdline"):
                if info[key] and (info[key] == d or d + "/" in info[key] + "/"):
                    reasons.append(f"{key} in the session's temp dir")
                    break
        if reasons:
            zombie = " (zombie)" if info["state"] == "Z" else ""
            leaks.append(f"process: pid {pid}{zombie} ppid {info['ppid']} {info['cmdline'] or info['exe']!r}: "
                         + ", ".join(dict.fromkeys(reasons)))
    return [leak for leak in leaks if not any(fnmatch.fnmatch(leak, pat) for pat in ignore)]


def remove_marker_cgroups(marker: str = CGROUP_MARKER) -> None:
    """Remove the (empty) ``/<marker>`` parent directory in every hierarchy, deepest first.

    Runtimes create parents of a container's cgroupsPath and, like runc, leave them behind; a
    non-empty marker tree stays, so the leak check reports what is inside.
    """
    for h in cgroup_hierarchies():
        top = os.path.join(h.mountpoint, marker)
        if not os.path.isdir(top):
            continue
        for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda e: -e[0].count("/")):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)


class LeakCheckPlugin:
    """Snapshot at session start, compare at session finish, fail the session on leftovers."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.before: Snapshot | None = None
        self.tmp_dirs: list[str] = []
        self.leaks: list[str] = []
        self.ignore = [p.strip() for p in os.environ.get("SKIFF_LEAKCHECK_IGNORE", "").split(",") if p.strip()]

    def add_tmp_dir(self, path: str | os.PathLike[str]) -> None:
        self.tmp_dirs.append(os.fspath(path))

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self.before = snapshot()

    def check(self, settle: float = 3.0) -> list[str]:
        """Compare now with the start snapshot; retry briefly, as killed processes take a moment to go."""
        assert self.before is not None
        remove_marker_cgroups()
        deadline = time.monotonic() + settle
        while True:
            leaks = diff(self.before, snapshot(), session_pid=os.getpid(), tmp_dirs=self.tmp_dirs,
                         ignore=self.ignore)
            if not leaks or time.monotonic() >= deadline:
                return leaks
            time.sleep(0.2)
            remove_marker_cgroups()

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.before is None:
            return
        self.leaks = self.check()
        if not self.leaks:
            return
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        lines = ["LEAK CHECK FAILED: the test session left these behind:", *(f"  {x}" for x in self.leaks)]
        if reporter is not None:
            reporter.write_sep("=", "leak check", red=True, bold=True)
            for line in lines:
                reporter.write_line(line, red=True)
        else:
            print("\n".join(lines))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
