"""Container cgroups against the real kernel: resolution, limits, processes, freezer, teardown.

Every test works under a unique ``skiff-test-<uuid>`` cgroup that its fixture removes (processes
killed, directories removed, parents included); the module ends by checking nothing is left.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from skiff.errors import InvalidArgument, NotFound, SystemFailure, Unsupported
from skiff.runtime import cgroups
from skiff.runtime.cgroups import DEFAULT_DEVICE_RULES, UNIFIED, Cgroup

PREFIX = "skiff-test-"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="cgroups need root")


# --- helpers ----------------------------------------------------------------------------------


def own_cgroups() -> dict[str, str]:
    """/proc/self/cgroup keyed like Cgroup.paths (one key per co-mounted controller)."""
    own = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for name in controllers.split(",") if controllers else [UNIFIED]:
                own[name] = path
    return own


def read(dirpath: str, name: str) -> str:
    with open(os.path.join(dirpath, name)) as f:
        return f.read().strip()


def proc_state(pid: int) -> str:
    """The one-letter scheduler state from /proc/<pid>/stat (after the parenthesised comm)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def remove_tree(path: str) -> None:
    """rmdir a cgroup tree bottom-up (cgroup dirs cannot be rm -rf'ed)."""
    if not os.path.isdir(path):
        return
    for dirname, _, _ in os.walk(path, topdown=False):
        os.rmdir(dirname)


def leftovers() -> list[str]:
    """Any skiff-test-* cgroup directory at the top of a hierarchy or below our own cgroups."""
    found = []
    probe = Cgroup.for_container("probe", "probe").paths
    for dirpath in set(probe.values()):
        own_dir = os.path.dirname(dirpath)
        mount = own_dir
        while not os.path.ismount(mount):
            mount = os.path.dirname(mount)
        for base in {own_dir, mount}:
            found += [os.path.join(base, n) for n in os.listdir(base) if n.startswith(PREFIX)]
    return sorted(found)


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def no_leaks() -> Iterator[None]:
    before = leftovers()
    yield
    assert leftovers() == before, "cgroup directories left behind"


@pytest.fixture
def procs() -> Iterator[Callable[..., subprocess.Popen]]:
    """Start helper processes; every one is killed and reaped at the end."""
    started: list[subprocess.Popen] = []

    def start(*args: str, **kw: object) -> subprocess.Popen:
        p = subprocess.Popen(list(args), **kw)  # type: ignore[call-overload]
        started.append(p)
        return p

    yield start
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait()


@pytest.fixture
def make_cgroup() -> Iterator[Callable[..., Cgroup]]:
    """Cgroups at /skiff-test-<uuid>/<name>; the finalizer kills, thaws and removes them and their parent.

    ``v2_only`` makes one in the unified hierarchy alone, so that the cgroup v2 code path runs on a
    hybrid host too (such a Cgroup is what a pure v2 host resolves to).
    """
    made: list[tuple[Cgroup, list[str]]] = []

    def make(name: str = "ctr", v2_only: bool = False) -> Cgroup:
        top = f"/{PREFIX}{uuid.uuid4().hex[:12]}"
        cg = Cgroup.for_container(f"{top}/{name}", "unused")
        if v2_only:
            if UNIFIED not in cg.paths:
                pytest.skip("no cgroup2 hierarchy mounted")
            cg = Cgroup.from_paths({UNIFIED: cg.paths[UNIFIED]})
        made.append((cg, [p[: p.index(top) + len(top)] for p in cg.paths.values()]))
        return cg

    yield make
    for cg, parents in made:
        try:
            cg.kill_all(signal.SIGKILL)
        except (NotFound, Unsupported, SystemFailure):
            pass
        cg.destroy()
        for parent in set(parents):
            remove_tree(parent)


@pytest.fixture
def cg(make_cgroup: Callable[..., Cgroup]) -> Cgroup:
    c = make_cgroup()
    c.create()
    return c


def allocator(megabytes: int) -> list[str]:
    """A python3 that waits for a line on stdin, touches `megabytes` MB, says "ready", then sleeps."""
    code = (
        "import sys, time; sys.stdin.readline(); "
        f"b = b'x' * ({megabytes} << 20); print('ready', flush=True); time.sleep(60)"
    )
    return [sys.executable, "-c", code]


# --- path resolution --------------------------------------------------------------------------


def test_absent_path_joins_container_id_under_own_cgroup() -> None:
    paths = Cgroup.for_container(None, "cid1").paths
    own = own_cgroups()
    assert {"memory", "cpu", "pids", "freezer", "devices"} <= set(paths)
    assert "name=systemd" in paths, "runc joins the named systemd hierarchy too"
    assert UNIFIED in paths, "on a hybrid host runc also joins the cgroup2 hierarchy"
    for key, path in paths.items():
        suffix = os.path.join(own[key], "cid1")
        assert path.endswith(suffix), (key, path, suffix)
        assert os.path.ismount(path[: -len(suffix)] or "/"), f"{key}: {path} is not below its mount"
        assert not os.path.exists(path), "for_container must create nothing"


def test_relative_path_is_under_own_cgroup_and_cannot_climb_out() -> None:
    own = own_cgroups()
    nested = Cgroup.for_container("a/b", "ignored").paths
    climbing = Cgroup.for_container("../../x", "ignored").paths
    for key in nested:
        assert nested[key].endswith(os.path.join(own[key], "a/b"))
        assert climbing[key].endswith(os.path.join(own[key], "x"))


def test_absolute_path_is_taken_from_each_hierarchy_root() -> None:
    paths = Cgroup.for_container("/skiff-abs/ctr", "ignored").paths
    assert paths["memory"].endswith("/skiff-abs/ctr") and "process_api" not in paths["memory"]
    for path in paths.values():
        assert os.path.ismount(path[: -len("/skiff-abs/ctr")])


def test_from_paths_round_trips_and_rejects_garbage() -> None:
    cg = Cgroup.for_container("/skiff-abs/ctr", "x")
    assert Cgroup.from_paths(json.loads(json.dumps(cg.paths))).paths == cg.paths
    with pytest.raises(InvalidArgument):
        Cgroup.from_paths({"memory": "relative/path"})


# --- creating and limiting --------------------------------------------------------------------


def test_create_makes_every_directory_and_fills_cpuset(cg: Cgroup) -> None:
    for path in cg.paths.values():
        assert os.path.isdir(path)
    cpuset = cg.paths["cpuset"]
    assert read(cpuset, "cpuset.cpus") == read(os.path.dirname(cpuset), "cpuset.cpus") != ""
    assert read(cpuset, "cpuset.mems") != ""
    cg.create()  # idempotent


def test_apply_memory_cpu_pids_blkio_read_back(cg: Cgroup) -> None:
    cg.apply({
        "memory": {"limit": 64 << 20, "swap": 96 << 20, "reservation": 32 << 20, "swappiness": 10},
        "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0", "mems": "0"},
        "pids": {"limit": 42},
        "blockIO": {"weight": 300},
    })
    mem, cpu = cg.paths["memory"], cg.paths["cpu"]
    assert read(mem, "memory.limit_in_bytes") == str(64 << 20)
    assert read(mem, "memory.memsw.limit_in_bytes") == str(96 << 20)
    assert read(mem, "memory.soft_limit_in_bytes") == str(32 << 20)
    assert read(mem, "memory.swappiness") == "10"
    assert (read(cpu, "cpu.shares"), read(cpu, "cpu.cfs_quota_us"), read(cpu, "cpu.cfs_period_us")) == (
        "512", "50000", "100000")
    assert read(cg.paths["cpuset"], "cpuset.cpus") == "0"
    assert read(cg.paths["pids"], "pids.max") == "42"
    has_cfq = os.path.exists(cg.paths["blkio"] + "/blkio.weight")
    weight_file = "blkio.weight" if has_cfq else "blkio.bfq.weight"
    assert read(cg.paths["blkio"], weight_file).split()[-1] == "300"


def test_unlimited_values(cg: Cgroup) -> None:
    cg.apply({"memory": {"limit": 64 << 20}, "cpu": {"quota": 20000}, "pids": {"limit": 10}})
    cg.apply({"memory": {"limit": -1}, "cpu": {"quota": -1}, "pids": {"limit": 0}})
    assert int(read(cg.paths["memory"], "memory.limit_in_bytes")) > 1 << 62
    assert int(read(cg.paths["memory"], "memory.memsw.limit_in_bytes")) > 1 << 62
    assert read(cg.paths["cpu"], "cpu.cfs_quota_us") == "-1"
    assert read(cg.paths["pids"], "pids.max") == "max"
    cg.apply({"pids": {"limit": -1}})
    assert read(cg.paths["pids"], "pids.max") == "max"


def test_devices_deny_all_then_defaults(cg: Cgroup) -> None:
    rules = [{"allow": False, "access": "rwm"}, *DEFAULT_DEVICE_RULES,
             {"allow": True, "type": "b", "major": 8, "minor": -1, "access": "r"}]
    cg.apply({"devices": rules})
    listed = read(cg.paths["devices"], "devices.list").splitlines()
    assert listed == [
        "c *:* m", "b *:* m", "c 1:3 rwm", "c 1:8 rwm", "c 1:7 rwm", "c 5:0 rwm", "c 1:5 rwm",
        "c 1:9 rwm", "c 136:* rwm", "c 5:2 rwm", "c 10:200 rwm", "b 8:* r",
    ]
    cg.apply({"devices": [{"allow": False, "type": "c", "major": 1, "minor": 3, "access": "rwm"}]})
    assert "c 1:3 rwm" not in read(cg.paths["devices"], "devices.list").splitlines()


def test_oom_disable(cg: Cgroup) -> None:
    cg.apply({"memory": {"limit": 32 << 20, "disableOOMKiller": True}})
    assert "oom_kill_disable 1" in read(cg.paths["memory"], "memory.oom_control")


@pytest.mark.parametrize("resources", [
    {"memory": {"limit": -2}},
    {"memory": {"limit": "64m"}},
    {"memory": {"limit": True}},
    {"memory": {"limit": 64 << 20, "swap": 32 << 20}},
    {"memory": {"swappiness": 101}},
    {"memory": []},
    {"cpu": {"shares": -1}},
    {"cpu": {"shares": 1}},
    {"cpu": {"shares": 1 << 20}},
    {"cpu": {"quota": 500}},
    {"cpu": {"quota": -5}},
    {"cpu": {"period": 10}},
    {"cpu": {"cpus": 3}},
    {"pids": {"limit": -3}},
    {"devices": [{"allow": True, "type": "x", "access": "rwm"}]},
    {"devices": [{"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwz"}]},
    {"devices": [{"allow": True, "type": "c", "major": "1", "access": "r"}]},
    {"blockIO": {"weight": 5}},
    "not an object",
])
def test_invalid_values_are_refused_before_anything_is_written(cg: Cgroup, resources: object) -> None:
    if isinstance(resources, dict) and "pids" not in resources:
        resources = {"pids": {"limit": 5}, **resources}  # a valid setting that must not be written
    with pytest.raises(InvalidArgument):
        cg.apply(resources)  # type: ignore[arg-type]
    assert read(cg.paths["pids"], "pids.max") == "max"


def test_value_the_kernel_refuses_is_invalid_argument(cg: Cgroup) -> None:
    with pytest.raises(InvalidArgument, match=r"cpuset\.cpus"):
        cg.apply({"cpu": {"cpus": "4096"}})


def test_settings_the_host_cannot_do_are_unsupported(cg: Cgroup) -> None:
    with pytest.raises(Unsupported):
        cg.apply({"unified": {"memory.high": "1G"}})
    with pytest.raises(Unsupported):
        cg.apply({"hugepageLimits": [{"pageSize": "3MB", "limit": 1 << 20}]})
    if "net_cls" not in cg.paths:
        with pytest.raises(Unsupported):
            cg.apply({"network": {"classID": 0x100001}})


def test_missing_cgroup_is_not_found(make_cgroup: Callable[..., Cgroup]) -> None:
    cg = make_cgroup()  # not created
    with pytest.raises(NotFound):
        cg.apply({"pids": {"limit": 5}})
    with pytest.raises(NotFound):
        cg.add(os.getpid())
    assert cg.pids() == []
    cg.destroy()  # nothing there: fine


# --- processes --------------------------------------------------------------------------------


def test_add_and_pids_include_sub_cgroups(cg: Cgroup, procs: Callable[..., subprocess.Popen]) -> None:
    first, second = procs("sleep", "60"), procs("sleep", "60")
    cg.add(first.pid)
    with open(f"/proc/{first.pid}/cgroup") as f:
        joined = {line.split(":", 2)[1] or UNIFIED: line.split(":", 2)[2] for line in f.read().splitlines()}
    for key, path in cg.paths.items():
        assert path.endswith(joined[key]), (key, path, joined[key])
    # A process the container moved into a sub-cgroup of its own still belongs to it.
    sub = os.path.join(cg.paths["pids"], "child")
    os.mkdir(sub)
    cg.add(second.pid)
    with open(os.path.join(sub, "cgroup.procs"), "w") as f:
        f.write(str(second.pid))
    assert cg.pids() == sorted([first.pid, second.pid])


def test_add_missing_process_is_not_found(cg: Cgroup) -> None:
    p = subprocess.Popen(["true"])
    p.wait()
    with pytest.raises(NotFound):
        cg.add(p.pid)


def test_freeze_and_thaw_a_real_process(cg: Cgroup, procs: Callable[..., subprocess.Popen]) -> None:
    p = procs("sleep", "60")
    cg.add(p.pid)
    assert not cg.frozen()
    cg.freeze()
    assert cg.frozen()
    assert read(cg.paths["freezer"], "freezer.state") == "FROZEN"
    assert proc_state(p.pid) == "D", "a frozen task shows as uninterruptible"
    cg.thaw()
    assert not cg.frozen()
    assert wait_for(lambda: proc_state(p.pid) == "S")


def test_kill_all_with_sigterm_leaves_it_thawed(cg: Cgroup, procs: Callable[..., subprocess.Popen]) -> None:
    ps = [procs("sleep", "60") for _ in range(3)]
    for p in ps:
        cg.add(p.pid)
    cg.kill_all(signal.SIGTERM)
    assert [p.wait(5) for p in ps] == [-signal.SIGTERM] * 3
    assert not cg.frozen()
    assert wait_for(lambda: cg.pids() == [])


def test_kill_all_sigkill_on_a_frozen_container(cg: Cgroup, procs: Callable[..., subprocess.Popen]) -> None:
    p = procs("sleep", "60")
    cg.add(p.pid)
    cg.freeze()
    cg.kill_all(signal.SIGKILL)
    assert p.wait(5) == -signal.SIGKILL


def test_destroy_waits_for_exiting_tasks_and_removes_sub_cgroups(
    cg: Cgroup, procs: Callable[..., subprocess.Popen]
) -> None:
    p = procs("sleep", "60")
    cg.add(p.pid)
    os.mkdir(os.path.join(cg.paths["memory"], "nested"))
    cg.kill_all(signal.SIGKILL)
    cg.destroy()  # right away: the kernel may still hold the dying task for a moment
    for path in cg.paths.values():
        assert not os.path.exists(path)
    cg.destroy()  # a second time is fine


def test_destroy_with_a_live_process_fails_after_retrying(
    cg: Cgroup, procs: Callable[..., subprocess.Popen]
) -> None:
    p = procs("sleep", "60")
    cg.add(p.pid)
    start = time.monotonic()
    with pytest.raises(SystemFailure, match="busy"):
        cg.destroy()
    assert 0.9 < time.monotonic() - start < 3


# --- memory behaviour -------------------------------------------------------------------------


def test_live_update_of_memory_limit(cg: Cgroup, procs: Callable[..., subprocess.Popen]) -> None:
    cg.apply({"memory": {"limit": 64 << 20}})
    p = procs("sleep", "60")
    cg.add(p.pid)
    cg.apply({"memory": {"limit": 128 << 20, "swap": 256 << 20}})
    assert read(cg.paths["memory"], "memory.limit_in_bytes") == str(128 << 20)
    assert read(cg.paths["memory"], "memory.memsw.limit_in_bytes") == str(256 << 20)
    cg.apply({"memory": {"limit": 48 << 20, "swap": 48 << 20}})  # lowering both: memory must go first
    assert read(cg.paths["memory"], "memory.memsw.limit_in_bytes") == str(48 << 20)
    assert p.poll() is None


def test_lowering_memory_below_usage_is_invalid_argument(
    cg: Cgroup, procs: Callable[..., subprocess.Popen]
) -> None:
    cg.apply({"memory": {"limit": 256 << 20}})
    p = procs(*allocator(100), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    cg.add(p.pid)
    p.stdin.write("go\n")
    p.stdin.flush()
    assert p.stdout.readline().strip() == "ready"
    with pytest.raises(InvalidArgument, match="current usage"):
        cg.apply({"memory": {"limit": 16 << 20}})
    assert read(cg.paths["memory"], "memory.limit_in_bytes") == str(256 << 20)
    stats = cg.stats()
    assert stats["memory"]["usage"] > 100 << 20
    assert stats["memory"]["limit"] == 256 << 20
    assert stats["memory"]["max_usage"] >= stats["memory"]["usage"]
    assert stats["pids"]["current"] == 1 and stats["cpu"]["usage_ns"] > 0


def test_memory_limit_oom_kills_with_sigkill(cg: Cgroup, procs: Callable[..., subprocess.Popen]) -> None:
    cg.apply({"memory": {"limit": 32 << 20, "swap": 32 << 20}})
    p = procs(*allocator(200), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    cg.add(p.pid)
    p.stdin.write("go\n")
    p.stdin.flush()
    assert p.wait(30) == -signal.SIGKILL
    assert "oom_kill 1" in read(cg.paths["memory"], "memory.oom_control")


def test_stats_of_an_unlimited_cgroup(cg: Cgroup) -> None:
    stats = cg.stats()
    assert stats["memory"]["limit"] is None and stats["pids"]["limit"] is None
    assert stats["pids"]["current"] == 0


# --- the cgroup v2 code path, on the unified hierarchy this host has --------------------------


def unified_only(make_cgroup: Callable[..., Cgroup]) -> Cgroup:
    """A v2-only Cgroup, its directory made by hand: create() would delegate controllers in the
    hierarchy root's cgroup.subtree_control, a host-wide change a test should not make."""
    cg = make_cgroup(v2_only=True)
    os.makedirs(cg.paths[UNIFIED])
    return cg


def test_v2_freeze_thaw_and_cgroup_kill(
    make_cgroup: Callable[..., Cgroup], procs: Callable[..., subprocess.Popen]
) -> None:
    cg = unified_only(make_cgroup)
    assert cg.v2
    p = procs("sleep", "60")
    cg.add(p.pid)
    assert cg.pids() == [p.pid]
    cg.freeze()
    assert cg.frozen() and "frozen 1" in read(cg.paths[UNIFIED], "cgroup.events")
    cg.thaw()
    assert not cg.frozen()
    cg.kill_all(signal.SIGKILL)  # through cgroup.kill
    assert p.wait(5) == -signal.SIGKILL
    cg.destroy()
    assert not os.path.exists(cg.paths[UNIFIED])


def test_v2_controller_not_delegated_is_unsupported(make_cgroup: Callable[..., Cgroup]) -> None:
    cg = unified_only(make_cgroup)
    if os.path.exists(cg.paths[UNIFIED] + "/pids.max"):
        pytest.skip("pids is delegated here")
    with pytest.raises(Unsupported):
        cg.apply({"pids": {"limit": 10}})
    with pytest.raises(Unsupported):
        cg.apply({"memory": {"limit": 32 << 20, "disableOOMKiller": True}})
    cg.apply({"devices": [{"allow": False, "access": "rwm"}]})  # v2 devices need eBPF: ignored


def test_v2_conversions_match_runc() -> None:
    assert [cgroups.shares_to_weight(s) for s in (0, 2, 1024, 262144)] == [0, 1, 39, 10000]
    assert [cgroups.blkio_to_io_weight(w) for w in (0, 10, 500, 1000)] == [0, 1, 4950, 10000]
    assert cgroups.swap_to_v2(0, -1) == -1
    assert cgroups.swap_to_v2(-1, 100) == -1
    assert cgroups.swap_to_v2(300, 100) == 200
    assert cgroups.swap_to_v2(100, 100) == 0
    with pytest.raises(InvalidArgument):
        cgroups.swap_to_v2(300, 0)


# --- start-up cost and the runc peer ----------------------------------------------------------


@pytest.mark.peer
@pytest.mark.skipif(not shutil.which("runc") or not shutil.which("busybox"), reason="needs runc and busybox")
@pytest.mark.parametrize("absolute", [True, False])
def test_same_paths_and_values_as_runc(tmp_path: object, absolute: bool) -> None:
    """runc creates a container in a cgroup; ours resolves to the same place and writes the same values."""
    top = ("/" if absolute else "") + f"{PREFIX}{uuid.uuid4().hex[:12]}"
    resources = {
        "memory": {"limit": 48 << 20, "swap": 64 << 20, "reservation": 16 << 20},
        "cpu": {"shares": 300, "quota": 30000, "period": 50000},
        "pids": {"limit": 7},
        "devices": [{"allow": False, "access": "rwm"},
                    {"allow": True, "type": "c", "major": 4, "minor": 64, "access": "rw"}],
    }
    bundle, root = str(tmp_path), f"{tmp_path}/state"
    make_bundle(bundle, f"{top}/runc", resources)
    theirs = Cgroup.for_container(f"{top}/runc", "x")
    ours = Cgroup.for_container(f"{top}/ours", "x")
    try:
        # No pipes: the container's init inherits runc's stdio and would hold a pipe open forever.
        with open(f"{bundle}/runc.log", "w") as log:
            done = subprocess.run(["runc", "--root", root, "create", "-b", bundle, "peer"], timeout=30,
                                  stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        assert done.returncode == 0, read(bundle, "runc.log")
        with open(f"{root}/peer/state.json") as f:
            runc_paths = json.load(f)["cgroup_paths"]
        assert {(k or UNIFIED): v for k, v in runc_paths.items()} == theirs.paths
        ours.create()
        ours.apply({**resources, "devices": resources["devices"] + DEFAULT_DEVICE_RULES})
        for key, names in {
            "memory": ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes", "memory.soft_limit_in_bytes"],
            "cpu": ["cpu.shares", "cpu.cfs_quota_us", "cpu.cfs_period_us"],
            "pids": ["pids.max"],
            "cpuset": ["cpuset.cpus", "cpuset.mems"],
            "devices": ["devices.list"],
        }.items():
            for name in names:
                got, want = read(ours.paths[key], name), read(theirs.paths[key], name)
                assert sorted(got.splitlines()) == sorted(want.splitlines()), (key, name)
    finally:
        subprocess.run(["runc", "--root", root, "delete", "-f", "peer"], timeout=30,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ours.destroy()
        for path in Cgroup.for_container(top, "x").paths.values():
            remove_tree(path)  # runc leaves the parents of its cgroups behind


def make_bundle(bundle: str, cgroups_path: str, resources: dict) -> None:
    """A busybox bundle whose process just sleeps."""
    os.makedirs(f"{bundle}/rootfs/bin")
    shutil.copy(shutil.which("busybox") or "", f"{bundle}/rootfs/bin/busybox")
    os.symlink("busybox", f"{bundle}/rootfs/bin/sleep")
    subprocess.run(["runc", "spec"], cwd=bundle, check=True)
    with open(f"{bundle}/config.json") as f:
        config = json.load(f)
    config["process"].update(terminal=False, args=["sleep", "60"])
    config["linux"].update(cgroupsPath=cgroups_path, resources=resources)
    with open(f"{bundle}/config.json", "w") as f:
        json.dump(config, f)


PURE_V2_SCRIPT = r"""
import json, os, signal, subprocess, sys
from skiff.errors import Unsupported
from skiff.runtime.cgroups import Cgroup, UNIFIED

top = sys.argv[1]
# Turn this private mount namespace into a pure v2 host: drop every cgroup mount, mount cgroup2 alone.
mounts = [line.split()[4] for line in open("/proc/self/mountinfo")]
mounts = [m for m in mounts if m.startswith("/sys/fs/cgroup")]
for mountpoint in sorted(mounts, key=len, reverse=True):
    subprocess.run(["umount", mountpoint], check=True)
subprocess.run(["mount", "-t", "cgroup2", "cgroup2", "/sys/fs/cgroup"], check=True)
os.makedirs(f"/sys/fs/cgroup/{top}/self")
with open(f"/sys/fs/cgroup/{top}/self/cgroup.procs", "w") as f:
    f.write(str(os.getpid()))
out = {}
out["relative"] = Cgroup.for_container("rel", "x").paths
cg = Cgroup.for_container(f"/{top}/ctr", "x")
out["absolute"] = cg.paths
cg.create()
out["delegated"] = open(f"/sys/fs/cgroup/{top}/cgroup.subtree_control").read().split()
cg.apply({"hugepageLimits": [{"pageSize": "2MB", "limit": 8 << 20}], "devices": [{"allow": False}]})
out["hugetlb"] = open(cg.paths[UNIFIED] + "/hugetlb.2MB.max").read().strip()
try:
    cg.apply({"pids": {"limit": 5}})
except Unsupported as e:
    out["pids"] = "unsupported"
p = subprocess.Popen(["sleep", "60"])
cg.add(p.pid)
out["pids_in"] = cg.pids() == [p.pid]
cg.freeze()
out["frozen"] = cg.frozen()
cg.thaw()
out["thawed"] = not cg.frozen()
cg.kill_all(signal.SIGKILL)
out["killed"] = p.wait(5)
cg.destroy()
out["destroyed"] = not os.path.exists(cg.paths[UNIFIED])
print(json.dumps(out))
"""


def test_pure_v2_host_in_a_private_mount_namespace(make_cgroup: Callable[..., Cgroup]) -> None:
    """The v2 code path end to end: a mount namespace where cgroup2 alone is at /sys/fs/cgroup."""
    outside = make_cgroup(v2_only=True)  # the same hierarchy seen from here: its finalizer cleans up
    if not shutil.which("unshare"):
        pytest.skip("needs unshare")
    mount = outside.paths[UNIFIED].rsplit("/", 2)[0]
    top = outside.paths[UNIFIED].rsplit("/", 2)[1]
    root_delegates = read(mount, "cgroup.subtree_control").split()
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        done = subprocess.run(["unshare", "-m", sys.executable, "-c", PURE_V2_SCRIPT, top], cwd=repo,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout)
    finally:
        remove_tree(os.path.join(mount, top))
        for controller in set(read(mount, "cgroup.subtree_control").split()) - set(root_delegates):
            with open(os.path.join(mount, "cgroup.subtree_control"), "w") as f:
                f.write(f"-{controller}")  # undo create()'s delegation at the hierarchy root
    assert out["relative"] == {UNIFIED: f"/sys/fs/cgroup/{top}/rel"}, "v2: beside our own cgroup, as runc"
    assert out["absolute"] == {UNIFIED: f"/sys/fs/cgroup/{top}/ctr"}
    assert "hugetlb" in out["delegated"]
    assert out["hugetlb"] == str(8 << 20)
    assert out["pids"] == "unsupported"
    assert out["pids_in"] and out["frozen"] and out["thawed"] and out["destroyed"]
    assert out["killed"] == -signal.SIGKILL
