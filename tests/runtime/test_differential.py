"""The same bundles under Skiff's runtime and runc: what a container sees and what the CLI reports.

Every test is parametrized over the runtimes under test (``runtime``: runc and/or skiff) and asserts
the behaviour runc shows on this host (the expectations were read off runc 1.1.5). Tests marked
``peer`` also run the same observation under runc (``peer``, present only when the runtime under
test is not runc) and compare after normalising only what legitimately differs: container ids,
bundle paths, pids, timestamps.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.leakcheck import parse_mountinfo
from tests.runtime.harness import BundleFactory, ConsoleSocket, Runtime, cgroup_dirs, wait_for

T = TypeVar("T")

# CAP_KILL (5) | CAP_NET_BIND_SERVICE (10) | CAP_AUDIT_WRITE (29): the default spec's set.
DEFAULT_CAPS = f"{(1 << 5) | (1 << 10) | (1 << 29):016x}"
MIB = 1 << 20
HOSTNAME = "skt-box"


def compare(runtime: Runtime, peer: Runtime | None, observe: Callable[[Runtime], T]) -> T:
    """``observe(runtime)``, and when there is a peer, check it observes exactly the same."""
    mine = observe(runtime)
    if peer is not None:
        theirs = observe(peer)
        assert mine == theirs, (f"{runtime.name} and {peer.name} differ:\n"
                                f"{runtime.name}: {mine!r}\n{peer.name}: {theirs!r}")
    return mine


def run_ok(rt: Runtime, bundle_path: Path, cid: str | None = None) -> str:
    r = rt.run(bundle_path, cid)
    assert r.returncode == 0, f"{rt.name} run exited {r.returncode}: {r.stderr}"
    return r.stdout


def sh(script: str) -> list[str]:
    return ["sh", "-c", script]


def without_pid_ns() -> list[dict[str, str]]:
    return [{"type": t} for t in ("network", "ipc", "uts", "mount")]


def start_detached(rt: Runtime, bundle: BundleFactory, args: list[str] | None = None, **overrides: Any) -> str:
    """A running container (``run -d``), its id returned."""
    b = bundle(args or ["sleep", "300"], hostname=HOSTNAME, **overrides)
    cid = rt.new_id("d")
    r = rt.run(b, cid, detach=True)
    assert r.returncode == 0, r.stderr
    assert rt.wait_status(cid, "running") == "running"
    return cid


# --- exit status and signals -------------------------------------------------------------------


@pytest.mark.peer
@pytest.mark.parametrize("code", [0, 3, 255])
def test_exit_code_is_the_process_exit_code(runtime: Runtime, peer: Runtime | None, bundle: BundleFactory,
                                            code: int) -> None:
    def observe(rt: Runtime) -> tuple[int, str]:
        r = rt.run(bundle(sh(f"echo out; exit {code}")))
        return r.returncode, r.stdout

    assert compare(runtime, peer, observe) == (code, "out\n")


@pytest.mark.peer
def test_death_by_signal_is_128_plus_signal(runtime: Runtime, peer: Runtime | None, bundle: BundleFactory) -> None:
    # Without a pid namespace the process is not an init, so its own SIGTERM kills it.
    def observe(rt: Runtime) -> int:
        return rt.run(bundle(sh("kill -TERM $$; echo survived"), linux__namespaces=without_pid_ns())).returncode

    assert compare(runtime, peer, observe) == 128 + signal.SIGTERM


@pytest.mark.peer
def test_pid_1_ignores_its_own_unhandled_sigterm(runtime: Runtime, peer: Runtime | None,
                                                 bundle: BundleFactory) -> None:
    # Kernel semantics the runtime must not hide: an init gets no default action for its own signal.
    def observe(rt: Runtime) -> tuple[int, str]:
        r = rt.run(bundle(sh("kill -TERM $$; echo survived $$")))
        return r.returncode, r.stdout

    assert compare(runtime, peer, observe) == (0, "survived 1\n")


def test_foreground_run_reports_sigkill_from_kill(runtime: Runtime, bundle: BundleFactory) -> None:
    b = bundle(["sleep", "300"])
    cid = runtime.new_id("fg")
    runtime.prepare(b, cid)
    # No pipes: the container inherits run's stdio and would keep a pipe open after a failure.
    proc = subprocess.Popen([*runtime.cmd, "--root", str(runtime.root), "run", "--bundle", str(b), cid],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=runtime.env)
    try:
        assert runtime.wait_status(cid, "running") == "running"
        runtime.ok("kill", cid, "KILL")
        assert proc.wait(30) == 128 + signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert runtime.status(cid) is None, "run must delete the container when it exits"


def test_kill_forwards_a_handled_signal(runtime: Runtime, bundle: BundleFactory) -> None:
    cid = start_detached(runtime, bundle, sh("trap 'exit 7' USR1; while :; do sleep 0.1; done"))
    runtime.ok("kill", cid, "USR1")
    assert runtime.wait_status(cid, "stopped") == "stopped"
    runtime.ok("delete", cid)


# --- identity ----------------------------------------------------------------------------------


@pytest.mark.peer
@pytest.mark.parametrize(("user", "expected"), [
    ({"uid": 1000, "gid": 1000, "additionalGids": [2000, 3000]},
     "uid=1000(skiffuser) gid=1000(skiffgroup) groups=2000(extra),3000\nuser=skiffuser\nHOME=/home/skiffuser\n"
     "groups=2000 3000\n"),
    # Given as numbers, the user's /etc/group memberships are not added (runc behaviour).
    ({"uid": 1000, "gid": 1000},
     "uid=1000(skiffuser) gid=1000(skiffgroup)\nuser=skiffuser\nHOME=/home/skiffuser\ngroups=\n"),
    ({"uid": 65534, "gid": 65534},
     "uid=65534(nobody) gid=65534(nogroup)\nuser=nobody\nHOME=/nonexistent\ngroups=\n"),
    ({"uid": 0, "gid": 0}, "uid=0(root) gid=0(root)\nuser=root\nHOME=/root\ngroups=\n"),
    # Not in /etc/passwd: no name, and HOME falls back to /.
    ({"uid": 4242, "gid": 4343}, "uid=4242 gid=4343\nuser=4242\nHOME=/\ngroups=\n"),
], ids=["additional-gids", "uid-only", "nobody", "root", "not-in-passwd"])
def test_user_and_groups(runtime: Runtime, peer: Runtime | None, bundle: BundleFactory,
                         user: dict[str, Any], expected: str) -> None:
    script = ("id; echo user=$(id -un 2>/dev/null); echo HOME=$HOME;"
              " echo groups=$(grep Groups /proc/self/status | cut -f2)")

    def observe(rt: Runtime) -> str:
        return run_ok(rt, bundle(sh(script), process__user=user))

    assert compare(runtime, peer, observe) == expected


@pytest.mark.peer
def test_hostname(runtime: Runtime, peer: Runtime | None, bundle: BundleFactory) -> None:
    def observe(rt: Runtime) -> str:
        return run_ok(rt, bundle(sh("hostname; cat /proc/sys/kernel/hostname"), hostname="box-7.example"))

    assert compare(runtime, peer, observe) == "box-7.example\nbox-7.example\n"


# --- mounts and the file system ------------------------------------------------------------------


def mount_table(text: str, replace: dict[str, str]) -> list[tuple[str, str, str, str, str]]:
    """/proc/self/mountinfo reduced to (mountpoint, fstype, options, super options, root), sorted,
    with container ids and bundle paths replaced (mount ids and device numbers dropped)."""
    rows = []
    for m in parse_mountinfo(text):
        root = m["root"]
        for old, new in replace.items():
            root = root.replace(old, new)
        rows.append((m["mountpoint"], m["fstype"], m["options"], m["super_options"], root))
    return sorted(rows)


@pytest.mark.peer
def test_mount_table(runtime: Runtime, peer: Runtime | None, bundle: BundleFactory) -> None:
    def observe(rt: Runtime) -> list[tuple[str, str, str, str, str]]:
        b = bundle(["cat", "/proc/self/mountinfo"], hostname=HOSTNAME)
        cid = rt.new_id("mnt")
        return mount_table(run_ok(rt, b, cid), {cid: "<id>", str(b): "<bundle>"})

    table = compare(runtime, peer, observe)
    by_point = {row[0]: row for row in table}
    assert len(by_point) == len(table), f"a mount point is mounted twice: {table}"
    root = by_point["/"]
    assert root[2].split(",")[0] == "ro" and root[4] == "<bundle>/rootfs"
    for point, fstype in [("/proc", "proc"), ("/dev", "tmpfs"), ("/dev/pts", "devpts"), ("/dev/shm", "tmpfs"),
                          ("/dev/mqueue", "mqueue"), ("/sys", "sysfs"), ("/sys/fs/cgroup", "tmpfs")]:
        assert by_point[point][1] == fstype, by_point[point]
    assert by_point["/sys"][2].startswith("ro,")
    for opt in ("nosuid", "noexec", "nodev"):
        assert opt in by_point["/dev/shm"][2].split(",")
    assert "size=65536k" in by_point["/dev/shm"][3].split(",")
    assert {"gid=5", "mode=620", "ptmxmode=666"} <= set(by_point["/dev/pts"][3].split(","))
    # The spec's cgroup mount: each v1 controller bind-mounted read-only at the container's own cgroup.
    memory = by_point.get("/sys/fs/cgroup/memory")
    if memory is not None:
        assert memory[1] == "cgroup" and memory[4] == "/skiff-test/<id>" and memory[2].startswith("ro,")
    # Read-only paths are read-only binds of themselves; masked files are /dev/null binds.
    assert by_point["/proc/sys"][1] == "proc" and by_point["/proc/sys"][2].startswith("ro,")
    if Path("/proc/timer_list").exists():
        assert by_point["/proc/timer_list"][4] == "/null"
    # Nothing of the host leaks in.
    allowed = re.compile(r"^/$|^/(proc|dev|sys)(/|$)")
    assert [row for row in table if not allowed.match(row[0])] == []


@pytest.mark.peer
def test_masked_paths(runtime: Runtime, peer: Runtime | None, bundle: BundleFactory) -> None:
    script = ("cat /proc/kcore >/dev/null 2>&1; echo kcore=$?; echo timer_list=$(cat /proc/timer_list | wc -c);"
              " echo firmware=$(ls /sys/firmware | wc -l); echo keys=$(cat /proc/keys | wc -c)")

    def observe(rt: Runtime) -> str:
        return run_ok(rt, bundle(sh(script)))

    out = compare(runtime, peer, observe)
    assert "kcore=1\n" in out and "firmware=0\n" in out and "keys=0\n" in out
    if Path("/proc/timer_list").read_bytes():
        assert "timer_list=0\n" in out


@pytest.mark.peer
def test_readonly_paths(runtime: Runtime, peer: Runtime | None, bundle: BundleFactory) -> None:
    script = ("echo x > /proc/sys/kernel/domainname; echo sys=$?;"
              " echo 1 > /proc/sys/vm/drop_caches; echo vm=$?; ls /proc/irq >/dev/null; echo irq=$?")

    def observe(rt: Runtime) -> tuple[str, str]:
        r = rt.run(bundle(sh(script)))
        assert r.returncode == 0, r.stderr
        return r.stdout, r.stderr

    out, err = compare(runtime, peer, observe)
    assert out == "sys=1\nvm=1\nirq=0\n"
    assert err.count("Read-only file system") == 2


@pytest.mark.peer
def test_readonly_root(runtime: Runtime, peer: Runtime | None, bundle: BundleFactory) -> None:
    def observe(rt: Runtime) -> tuple[int, str]:
        r = rt.run(bundle(sh("touch /x; echo touch=$?; touch /dev/shm/x; echo shm=$?")))
        return r.returncode, r.stdout + r.stderr

    code, out = compare(runtime, peer, observe)
    assert code == 0 and "touch=1" in out and "shm=0" in out and "touch: /x: Read-only file system" in out


def test_writable_root_writes_into_the_bundle(runtime: Runtime, bundle: BundleFactory) -> None:
    b = bundle(sh("echo hello > /made-inside; mkdir /tmp/d; echo ok"), root={"readonly": False})
    assert run_ok(runtime, b) == "ok\n"
    assert (b / "rootfs/made-inside").read_text() == "hello\n"
    assert (b / "rootfs/tmp/d").is_dir()


@pytest.mark.peer
def test_dev_has_the_default_devices(runtime: Runtime, peer: Runtime | None, bundle: BundleFactory) -> None:
    script = ("for d in null zero full random urandom tty console ptmx; do [ -e /dev/$d ] && echo $d; done;"
              " echo hi > /dev/null && echo null-ok; head -c 4 /dev/zero | wc -c; ls -l /dev/ptmx | cut -c1;"
              " for l in fd stdin ptmx; do readlink /dev/$l; done")

    def observe(rt: Runtime) -> str:
        return run_ok(rt, bundle(sh(script)))

    out = compare(runtime, peer, observe)
    assert out.startswith("null\nzero\nfull\nrandom\nurandom\ntty\n") and "null-ok\n4\n" in out
    assert "/proc/self/fd\n/proc/self/fd/0\npts/ptmx\n" in out


# --- capabilities, no_new_privs, seccomp --------------------------------------------------------------


def status_fields(text: str, prefixes: tuple[str, ...] = ("Cap", "NoNewPrivs", "Seccomp")) -> dict[str, str]:
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.startswith(prefixes) and key != "Seccomp_filters":
            fields[key] = value.strip()
    return fields


@pytest.mark.peer
@pytest.mark.parametrize(("overrides", "expected"), [
    ({}, {"CapInh": 0, "CapPrm": DEFAULT_CAPS, "CapEff": DEFAULT_CAPS, "CapBnd": DEFAULT_CAPS, "CapAmb": 0,
          "NoNewPrivs": "1", "Seccomp": "0"}),
    # A non-root user keeps only the bounding set: the ambient set cannot be raised without the
    # inheritable one, and runc ignores that failure (so must Skiff).
    ({"process__user": {"uid": 1000, "gid": 1000}},
     {"CapInh": 0, "CapPrm": 0, "CapEff": 0, "CapBnd": DEFAULT_CAPS, "CapAmb": 0, "NoNewPrivs": "1",
      "Seccomp": "0"}),
    ({"process__user": {"uid": 1000, "gid": 1000},
      "process__capabilities": {k: ["CAP_KILL", "CAP_CHOWN"] for k in
                                ("bounding", "effective", "permitted", "inheritable", "ambient")}},
     {"CapInh": 0x21, "CapPrm": 0x21, "CapEff": 0x21, "CapBnd": 0x21, "CapAmb": 0x21, "NoNewPrivs": "1",
      "Seccomp": "0"}),
    ({"process__noNewPrivileges": False, "process__capabilities": None},
     {"CapInh": 0, "CapPrm": 0, "CapEff": 0, "CapBnd": 0, "CapAmb": 0, "NoNewPrivs": "0", "Seccomp": "0"}),
], ids=["default", "non-root", "ambient", "no-caps-no-nnp"])
def test_capabilities_and_no_new_privs(runtime: Runtime, peer: Runtime | None, bundle: BundleFactory,
                                       overrides: dict[str, Any], expected: dict[str, Any]) -> None:
    def observe(rt: Runtime) -> dict[str, str]:
        return status_fields(run_ok(rt, bundle(["cat", "/proc/self/status"], **overrides)))

    want = {k: f"{v:016x}" if isinstance(v, int) else v for k, v in expected.items()}
    assert compare(runtime, peer, observe) == want


MKDIR_EPERM = {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
               "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}


@pytest.mark.peer
@pytest.mark.parametrize(("profile", "expected"), [
    (None, "NoNewPrivs:\t1\nSeccomp:\t0\nmkdir=0\n"),
    (MKDIR_EPERM, "NoNewPrivs:\t1\nSeccomp:\t2\nmkdir=1\nmkdir: can't create directory '/dev/shm/d': "
                  "Operation not permitted\n"),
    # Without errnoRet, SCMP_ACT_ERRNO means EPERM.
    ({**MKDIR_EPERM, "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]},
     "NoNewPrivs:\t1\nSeccomp:\t2\nmkdir=1\nmkdir: can't create directory '/dev/shm/d': Operation not permitted\n"),
], ids=["none", "mkdir-eperm", "default-errno"])
def test_seccomp(runtime: Runtime, peer: Runtime | None, bundle: BundleFactory, profile: dict[str, Any] | None,
                 expected: str) -> None:
    script = "grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status; mkdir /dev/shm/d 2>/tmp/err; echo mkdir=$?"

    def observe(rt: Runtime) -> str:
        r = rt.run(bundle(sh(script + "; cat /tmp/err 2>/dev/null"), root={"readonly": False},
                          linux__seccomp=profile))
        assert r.returncode == 0, r.stderr
        return r.stdout

    assert compare(runtime, peer, observe) == expected


# --- resources ---------------------------------------------------------------------------------------


@pytest.mark.peer
def test_memory_limit_oom_kills_with_sigkill(runtime: Runtime, peer: Runtime | None,
                                             bundle: BundleFactory) -> None:
    def observe(rt: Runtime) -> int:
        b = bundle(sh("x=a; while true; do x=$x$x; done"), linux__resources__memory={"limit": 16 * MIB})
        return rt.run(b, timeout=120).returncode

    assert compare(runtime, peer, observe) == 128 + signal.SIGKILL


@pytest.mark.peer
def test_pids_limit_stops_a_fork_bomb(runtime: Runtime, peer: Runtime | None, bundle: BundleFactory) -> None:
    # pids.max 10 = the shell + 9 children; the 10th fork fails and the shell gives up (status 2).
    def observe(rt: Runtime) -> tuple[int, str, bool]:
        b = bundle(sh("for i in $(seq 50); do sleep 5 & echo $i; done; echo all-forked"),
                   linux__resources__pids={"limit": 10})
        r = rt.run(b)
        return r.returncode, r.stdout, "can't fork" in r.stderr

    code, out, fork_failed = compare(runtime, peer, observe)
    assert (code, out, fork_failed) == (2, "".join(f"{i}\n" for i in range(1, 10)), True)


@pytest.mark.peer
def test_cgroup_limits_are_visible_inside(runtime: Runtime, peer: Runtime | None, bundle: BundleFactory) -> None:
    script = ("cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max"
              " /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us /sys/fs/cgroup/cpu/cpu.shares")

    def observe(rt: Runtime) -> str:
        resources = {"memory": {"limit": 64 * MIB}, "pids": {"limit": 100},
                     "cpu": {"quota": 50000, "period": 100000, "shares": 512}}
        return run_ok(rt, bundle(sh(script), linux__resources=resources))

    if not os.path.isdir("/sys/fs/cgroup/memory"):
        pytest.skip("needs cgroup v1 memory, pids and cpu hierarchies")
    assert compare(runtime, peer, observe) == f"{64 * MIB}\n100\n50000\n100000\n512\n"


# --- network, rlimits, environment --------------------------------------------------------------------


@pytest.mark.peer
def test_new_network_namespace_has_only_lo_up(runtime: Runtime, peer: Runtime | None,
                                              bundle: BundleFactory) -> None:
    def observe(rt: Runtime) -> list[tuple[str, bool]]:
        out = run_ok(rt, bundle(["ip", "-o", "link"]))
        links = []
        for line in out.splitlines():
            _idx, name, rest = line.split(":", 2)
            flags = rest.strip().split(" ", 1)[0].strip("<>").split(",")
            links.append((name.strip(), "UP" in flags))
        return links

    assert compare(runtime, peer, observe) == [("lo", True)]


def test_without_network_namespace_the_host_links_show(runtime: Runtime, bundle: BundleFactory) -> None:
    namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
    out = run_ok(runtime, bundle(["ls", "/sys/class/net"], linux__namespaces=namespaces,
                                 mounts=[{"destination": "/proc", "type": "proc", "source": "proc"},
                                         {"destination": "/sys", "type": "bind", "source": "/sys",
                                          "options": ["rbind", "ro"]}]))
    assert sorted(out.split()) == sorted(os.listdir("/sys/class/net"))


@pytest.mark.peer
def test_rlimits(runtime: Runtime, peer: Runtime | None, bundle: BundleFactory) -> None:
    rlimits = [{"type": "RLIMIT_NOFILE", "soft": 512, "hard": 2048}, {"type": "RLIMIT_NPROC", "soft": 50, "hard": 100},
               {"type": "RLIMIT_CORE", "soft": 0, "hard": 0}]

    def observe(rt: Runtime) -> str:
        return run_ok(rt, bundle(sh("ulimit -n; ulimit -Hn; ulimit -u; ulimit -Hu; ulimit -c"),
                                 process__rlimits=rlimits))

    assert compare(runtime, peer, observe) == "512\n2048\n50\n100\n0\n"


@pytest.mark.peer
def test_default_rlimit_nofile(runtime: Runtime, peer: Runtime | None, bundle: BundleFactory) -> None:
    def observe(rt: Runtime) -> str:
        return run_ok(rt, bundle(sh("ulimit -n; ulimit -Hn")))

    assert compare(runtime, peer, observe) == "1024\n1024\n"


@pytest.mark.peer
def test_env_and_cwd(runtime: Runtime, peer: Runtime | None, bundle: BundleFactory) -> None:
    def observe(rt: Runtime) -> str:
        b = bundle(sh("pwd; env | sort"), process__env=["FOO=bar baz", "PATH=/bin", "EMPTY="], process__cwd="/tmp")
        return run_ok(rt, b)

    # HOME comes from /etc/passwd when the spec does not set it.
    assert compare(runtime, peer, observe) == "/tmp\nEMPTY=\nFOO=bar baz\nHOME=/root\nPATH=/bin\nPWD=/tmp\nSHLVL=1\n"


@pytest.mark.peer
def test_missing_cwd_is_created(runtime: Runtime, peer: Runtime | None, bundle: BundleFactory) -> None:
    # runc creates a cwd that does not exist in the rootfs (even with a read-only root).
    def observe(rt: Runtime) -> str:
        return run_ok(rt, bundle(["pwd"], process__cwd="/does/not/exist"))

    assert compare(runtime, peer, observe) == "/does/not/exist\n"


@pytest.mark.peer
def test_stdin_is_passed_through(runtime: Runtime, peer: Runtime | None, bundle: BundleFactory) -> None:
    def observe(rt: Runtime) -> str:
        b = bundle(sh("read a; read b; echo \"$b-$a\"; cat"))
        cid = rt.new_id("in")
        rt.prepare(b, cid)
        r = rt("run", "--bundle", str(b), cid, input="one\ntwo\nrest\n")
        assert r.returncode == 0, r.stderr
        return r.stdout

    assert compare(runtime, peer, observe) == "two-one\nrest\n"


# --- lifecycle ---------------------------------------------------------------------------------------


STATE_KEYS = {"ociVersion", "id", "pid", "status", "bundle", "rootfs", "created", "owner"}


def test_lifecycle_create_start_kill_delete(runtime: Runtime, bundle: BundleFactory, tmp_path: Path) -> None:
    b = bundle(["sleep", "300"], hostname=HOSTNAME)
    cid = runtime.new_id("lc")
    pid_file = tmp_path / "init.pid"
    r = runtime.create(b, cid, "--pid-file", str(pid_file))
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""

    created = runtime.state(cid)
    assert set(created) >= STATE_KEYS, created
    assert isinstance(created["ociVersion"], str) and created["ociVersion"].startswith("1.")
    assert created["id"] == cid and created["status"] == "created"
    assert created["bundle"] == str(b) and created["rootfs"] == str(b / "rootfs")
    pid = created["pid"]
    assert pid > 0 and int(pid_file.read_text()) == pid
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", created["created"]), created["created"]
    assert os.path.exists(f"/proc/{pid}"), "the init waits for start"
    # The init is already in the container's cgroup, waiting.
    assert any(str(pid) in Path(d, "cgroup.procs").read_text().split()
               for d in cgroup_dirs(f"/skiff-test/{cid}") if os.path.isdir(d))

    r = runtime("start", cid)
    assert r.returncode == 0 and r.stdout == "", r.stderr
    running = runtime.state(cid)
    assert running["status"] == "running" and running["pid"] == pid and running["created"] == created["created"]
    assert Path(f"/proc/{pid}/cmdline").read_bytes() == b"sleep\x00300\x00"

    r = runtime("start", cid)
    assert r.returncode != 0, "a running container cannot start again"

    runtime.ok("kill", cid, "KILL")
    assert runtime.wait_status(cid, "stopped") == "stopped"
    stopped = runtime.state(cid)
    assert stopped["pid"] == 0, "runc reports pid 0 for a stopped container"
    assert wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 10)

    r = runtime("delete", cid)
    assert r.returncode == 0 and r.stdout == "", r.stderr
    assert runtime("state", cid).returncode != 0
    assert not (runtime.root / cid).exists()
    assert not [d for d in cgroup_dirs(f"/skiff-test/{cid}") if os.path.isdir(d)]


def test_delete_refuses_a_running_container_unless_forced(runtime: Runtime, bundle: BundleFactory) -> None:
    cid = start_detached(runtime, bundle)
    pid = runtime.state(cid)["pid"]
    r = runtime("delete", cid)
    assert r.returncode != 0 and runtime.status(cid) == "running"
    runtime.ok("delete", "--force", cid)
    assert runtime.status(cid) is None
    assert wait_for(lambda: not os.path.exists(f"/proc/{pid}") or
                    Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z"), 10)


def test_delete_force_of_a_created_container(runtime: Runtime, bundle: BundleFactory) -> None:
    cid = runtime.new_id("cf")
    runtime.create(bundle(["sleep", "300"]), cid).check_returncode()
    pid = runtime.state(cid)["pid"]
    runtime.ok("delete", "--force", cid)
    assert runtime.status(cid) is None and not (runtime.root / cid).exists()
    assert wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 10)


def test_run_detached(runtime: Runtime, bundle: BundleFactory, tmp_path: Path) -> None:
    b = bundle(["sleep", "300"])
    cid = runtime.new_id("rd")
    pid_file = tmp_path / "pid"
    started = time.monotonic()
    r = runtime.run(b, cid, "--pid-file", str(pid_file), detach=True)
    assert r.returncode == 0 and r.stdout == "", r.stderr
    assert time.monotonic() - started < 20, "run -d must not wait for the process"
    state = runtime.state(cid)
    assert state["status"] == "running" and int(pid_file.read_text()) == state["pid"]
    runtime.ok("kill", cid, "KILL")
    assert runtime.wait_status(cid, "stopped") == "stopped"
    runtime.ok("delete", cid)


def test_run_detached_process_that_exits_is_stopped(runtime: Runtime, bundle: BundleFactory) -> None:
    cid = runtime.new_id("rdx")
    runtime.run(bundle(["true"]), cid, detach=True).check_returncode()
    assert runtime.wait_status(cid, "stopped") == "stopped"
    assert runtime.state(cid)["pid"] == 0
    runtime.ok("delete", cid)


# --- exec ----------------------------------------------------------------------------------------------


@pytest.mark.peer
def test_exec_sees_the_container(runtime: Runtime, peer: Runtime | None, bundle: BundleFactory) -> None:
    def observe(rt: Runtime) -> tuple[str, list[str]]:
        cid = start_detached(rt, bundle)
        r = rt.ok("exec", cid, "sh", "-c", "hostname; cat /proc/1/cmdline | tr '\\0' ' '; echo; ps -o pid,comm")
        host, init, *ps = r.stdout.splitlines()
        rows = [line.split() for line in ps]
        # The exec'd process's pid differs between runtimes (helpers use pids); pid 1 must not.
        return f"{host}\n{init}", [" ".join(row if row[0] in ("1", "PID") else row[1:]) for row in rows]

    (names, ps) = compare(runtime, peer, observe)
    assert names == f"{HOSTNAME}\nsleep 300 "
    assert ps == ["PID COMMAND", "1 sleep", "ps"]  # sh -c execs its last command


@pytest.mark.peer
def test_exec_exit_codes_and_flags(runtime: Runtime, peer: Runtime | None, bundle: BundleFactory) -> None:
    def observe(rt: Runtime) -> list[tuple[int, str]]:
        cid = start_detached(rt, bundle)
        cases = [([], ["sh", "-c", "exit 7"]),
                 (["--cwd", "/tmp", "--env", "A=1"], ["sh", "-c", "pwd; echo $A"]),
                 (["--user", "1000:2000"], ["id"]),
                 (["--user", "1000"], ["sh", "-c", "id; echo $HOME"]),
                 (["--additional-gids", "2000"], ["id"]),
                 ([], ["sh", "-c", "[ -t 0 ] || echo notty; echo $TERM"])]
        return [((r := rt("exec", *flags, cid, *args)).returncode, r.stdout) for flags, args in cases]

    assert compare(runtime, peer, observe) == [
        (7, ""),
        (0, "/tmp\n1\n"),
        (0, "uid=1000(skiffuser) gid=2000(extra)\n"),
        (0, "uid=1000(skiffuser) gid=0(root)\n/home/skiffuser\n"),
        (0, "uid=0(root) gid=0(root) groups=2000(extra)\n"),
        (0, "notty\nxterm\n"),
    ]


def test_exec_process_json(runtime: Runtime, bundle: BundleFactory, tmp_path: Path) -> None:
    cid = start_detached(runtime, bundle)
    process = {"args": ["sh", "-c", "echo from-json $FOO; id -u; pwd"], "env": ["FOO=bar", "PATH=/bin"],
               "cwd": "/tmp", "user": {"uid": 1000, "gid": 1000}, "terminal": False}
    path = tmp_path / "process.json"
    path.write_text(json.dumps(process))
    r = runtime("exec", "--process", str(path), cid)
    assert (r.returncode, r.stdout) == (0, "from-json bar\n1000\n/tmp\n"), r.stderr


def test_exec_detached(runtime: Runtime, bundle: BundleFactory, tmp_path: Path) -> None:
    cid = start_detached(runtime, bundle)
    pid_file = tmp_path / "exec.pid"
    r = runtime("exec", "-d", "--pid-file", str(pid_file), cid, "sleep", "200")
    assert r.returncode == 0, r.stderr
    pid = int(pid_file.read_text())
    pids = json.loads(runtime.ok("ps", "--format", "json", cid).stdout)
    assert pid in pids and runtime.state(cid)["pid"] in pids
    assert Path(f"/proc/{pid}/cmdline").read_bytes() == b"sleep\x00200\x00"


def test_exec_missing_executable_fails(runtime: Runtime, bundle: BundleFactory) -> None:
    cid = start_detached(runtime, bundle)
    r = runtime("exec", cid, "/no/such/binary")
    assert r.returncode != 0  # runc: 255, "exec failed: unable to start container process: exec: ..."
    assert "/no/such/binary" in r.stderr
    assert runtime.status(cid) == "running", "a failed exec leaves the container alone"


def test_exec_into_a_stopped_container_fails(runtime: Runtime, bundle: BundleFactory) -> None:
    cid = runtime.new_id("xs")
    runtime.run(bundle(["true"]), cid, detach=True).check_returncode()
    assert runtime.wait_status(cid, "stopped") == "stopped"
    r = runtime("exec", cid, "true")
    assert r.returncode != 0 and r.stderr.strip()


# --- pause, resume, update, ps, list -------------------------------------------------------------------------


def test_pause_and_resume(runtime: Runtime, bundle: BundleFactory) -> None:
    cid = start_detached(runtime, bundle, sh("i=0; while :; do i=$((i+1)); echo $i > /dev/shm/tick; sleep 0.02; done"))
    pid = runtime.state(cid)["pid"]
    tick = Path(f"/proc/{pid}/root/dev/shm/tick")  # the container's /dev/shm, seen from the host
    assert wait_for(lambda: tick.exists() and tick.read_text().strip())
    runtime.ok("pause", cid)
    assert runtime.state(cid)["status"] == "paused"
    frozen = tick.read_text()
    time.sleep(0.3)
    assert tick.read_text() == frozen, "the container kept running while paused"
    assert runtime("pause", cid).returncode != 0, "pausing a paused container fails (runc: container not running)"
    runtime.ok("resume", cid)
    assert runtime.state(cid)["status"] == "running"
    assert wait_for(lambda: tick.read_text() != frozen, 5), "the container did not resume"
    assert runtime("resume", cid).returncode != 0, "resuming a running container fails (runc: container not paused)"


def test_update_memory_and_pids_live(runtime: Runtime, bundle: BundleFactory) -> None:
    cid = start_detached(runtime, bundle, linux__resources={"memory": {"limit": 64 * MIB}, "pids": {"limit": 50}})
    read = "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max"
    assert runtime.ok("exec", cid, "sh", "-c", read).stdout == f"{64 * MIB}\n50\n"
    runtime.ok("update", "--memory", str(32 * MIB), "--pids-limit", "20", cid)
    assert runtime.ok("exec", cid, "sh", "-c", read).stdout == f"{32 * MIB}\n20\n"
    runtime.ok("update", "--memory", "48m", cid)
    assert runtime.ok("exec", cid, "cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes").stdout == f"{48 * MIB}\n"
    runtime.ok("update", "--cpu-quota", "20000", "--cpu-period", "100000", cid)
    assert runtime.ok("exec", cid, "cat", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us").stdout == "20000\n"


def test_ps(runtime: Runtime, bundle: BundleFactory) -> None:
    cid = start_detached(runtime, bundle)
    pid = runtime.state(cid)["pid"]
    pids = json.loads(runtime.ok("ps", "--format", "json", cid).stdout)
    assert pids == [pid]
    lines = runtime.ok("ps", cid).stdout.splitlines()
    header = lines[0].split()
    assert "PID" in header and "CMD" in header, lines
    col = header.index("PID")
    assert [int(line.split()[col]) for line in lines[1:]] == [pid]
    assert lines[1].rstrip().endswith("sleep 300")


def test_list(runtime: Runtime, bundle: BundleFactory) -> None:
    assert json.loads(runtime.ok("list", "--format", "json").stdout) in (None, [])  # runc prints "null"
    assert runtime.ok("list").stdout.split() == ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]
    running = start_detached(runtime, bundle)
    created = runtime.new_id("lst")
    runtime.create(bundle(["sleep", "300"]), created).check_returncode()
    listed = {c["id"]: c for c in runtime.list_json()}
    assert set(listed) == {running, created}
    assert listed[running]["status"] == "running" and listed[created]["status"] == "created"
    for c in listed.values():
        assert set(c) >= STATE_KEYS and c["pid"] == runtime.state(c["id"])["pid"]
        assert c["owner"] == "root", "list reports the owner's name (state reports \"\")"
    table = runtime.ok("list").stdout.splitlines()
    assert table[0].split() == ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]
    rows = {line.split()[0]: line.split() for line in table[1:]}
    assert rows[running][2] == "running" and rows[created][2] == "created" and rows[running][5] == "root"
    assert runtime.ok("list", "-q").stdout.split() == sorted([running, created])


# --- terminal -------------------------------------------------------------------------------------------------


def test_terminal_through_console_socket(runtime: Runtime, bundle: BundleFactory,
                                         console_socket: Callable[[], ConsoleSocket]) -> None:
    cs = console_socket()
    b = bundle(sh("tty; stty size >/dev/null && echo stty-ok; read line; echo got:$line"), terminal=True)
    cid = runtime.new_id("tty")
    r = runtime.create(b, cid, "--console-socket", cs.path)
    assert r.returncode == 0, r.stderr
    assert cs.received.wait(10) and cs.master is not None
    runtime.ok("start", cid)
    cs.write(b"hello-pty\n")
    out = cs.wait(30).decode()
    lines = out.splitlines()
    assert "/dev/pts/0" in lines and "stty-ok" in lines and "got:hello-pty" in lines, out
    assert runtime.wait_status(cid, "stopped") == "stopped"
    runtime.ok("delete", cid)


def test_run_detached_with_terminal(runtime: Runtime, bundle: BundleFactory,
                                    console_socket: Callable[[], ConsoleSocket]) -> None:
    cs = console_socket()
    b = bundle(sh("echo $TERM; tty; [ -t 1 ] && echo is-a-tty"), terminal=True)
    cid = runtime.new_id("ttyd")
    r = runtime.run(b, cid, "--console-socket", cs.path, detach=True)
    assert r.returncode == 0, r.stderr
    assert cs.wait(30).decode() == "xterm\n/dev/pts/0\nis-a-tty\n"


def test_exec_with_terminal(runtime: Runtime, bundle: BundleFactory,
                            console_socket: Callable[[], ConsoleSocket]) -> None:
    cid = start_detached(runtime, bundle)
    cs = console_socket()
    r = runtime("exec", "-t", "-d", "--console-socket", cs.path, cid, "sh", "-c", "tty; echo exec-tty")
    assert r.returncode == 0, r.stderr
    out = cs.wait(30).decode().splitlines()
    assert out[-1] == "exec-tty" and out[0].startswith("/dev/pts/"), out
