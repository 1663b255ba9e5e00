"""The per-container monitor, driven through ``Monitor`` with real runtimes and busybox containers.

Every container gets ``linux.cgroupsPath = /skiff-test/<session tag>-mon<N>`` so the session's leak
check sees its cgroup; the ``boxes`` fixture checks after each test that each monitor has exited and
its container, runtime state, socket and temporary files are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from skiff import errors
from skiff.engine.logs import read_logs
from skiff.engine.monitor import EXIT_FILE, SOCKET_NAME
from skiff.engine.monitor_client import AttachSession, ExitStatus, Monitor, MonitorSpawner
from skiff.runtime.bundle import make_busybox_bundle
from tests.leakcheck import CGROUP_MARKER, SESSION_TAG
from tests.runtime.harness import cgroup_dirs, runtime_commands

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.skipif(os.geteuid() != 0, reason="running containers needs root"),
]

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 15.0
RFC3339NANO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")
_ids = itertools.count(1)


def _runtime(name: str) -> list[str]:
    cmd = runtime_commands()[name]
    if cmd is None:
        pytest.skip(f"{name} is not installed")
    return cmd


# "skiff-spawned": Skiff's runtime called in-process by a monitor forked from a MonitorSpawner, as the
# engine runs it; "skiff": its command, run by a monitor started as its own interpreter.
both_runtimes = pytest.mark.parametrize("runtime", ["skiff", "skiff-spawned", "runc"])


class Box:
    """One container under test: its monitor handle and where its files live."""

    def __init__(self, boxes: Boxes, cid: str, runtime: list[str], monitor: Monitor | None = None,
                 spawned: bool = False) -> None:
        self.cid, self.runtime, self.spawned = cid, runtime, spawned
        self.dir = boxes.root / cid
        self.bundle = self.dir / "bundle"
        self.state_dir = str(self.dir / "state")
        self.log_path = str(self.dir / "container.log")
        self.runtime_root = str(boxes.root / "runtime-root")
        self.monitor = monitor

    @property
    def m(self) -> Monitor:
        assert self.monitor is not None
        return self.monitor

    def log_records(self) -> list[dict[str, Any]]:
        with open(self.log_path) as f:
            return [json.loads(line) for line in f]

    def runtime_state(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.runtime, "--root", self.runtime_root, "state", self.cid],
                              capture_output=True, text=True, timeout=30)

    def process_spec(self, args: list[str]) -> dict[str, Any]:
        """An OCI process for an exec: the bundle's own, with other args."""
        spec = json.loads((self.bundle / "config.json").read_text())
        return {**spec["process"], "args": args}


class Boxes:
    """Launches containers under monitors and checks that each one left nothing behind."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.made: list[Box] = []
        self.spawner = MonitorSpawner()

    def new(self, runtime: str = "skiff") -> Box:
        spawned = runtime == "skiff-spawned"
        box = Box(self, f"{SESSION_TAG}-mon{next(_ids)}", _runtime("skiff" if spawned else runtime), spawned=spawned)
        self.made.append(box)
        return box

    async def launch(self, args: list[str], *, runtime: str = "skiff", tty: bool = False, open_stdin: bool = False,
                     stdin_once: bool = False, log_opts: dict[str, str] | None = None, **overrides: Any) -> Box:
        box = self.new(runtime)
        make_busybox_bundle(box.bundle, args, terminal=tty, linux__cgroupsPath=f"/{CGROUP_MARKER}/{box.cid}",
                            **overrides)
        box.monitor = await asyncio.wait_for(Monitor.launch(
            container_id=box.cid, bundle=str(box.bundle), state_dir=box.state_dir, log_path=box.log_path,
            runtime=box.runtime, runtime_root=box.runtime_root, tty=tty, open_stdin=open_stdin,
            stdin_once=stdin_once, log_opts=log_opts, in_process=box.spawned,
            spawner=self.spawner if box.spawned else None), TIMEOUT)
        return box

    async def cleanup(self) -> list[str]:
        await self.spawner.stop()
        problems = []
        for box in self.made:
            problems += await self._finish(box)
        return problems

    async def _finish(self, box: Box) -> list[str]:
        """Kill what still runs, then check the monitor, container, state and files are all gone."""
        monitor = await Monitor.connect(box.state_dir) if os.path.isdir(box.state_dir) else None
        if monitor is not None:
            with contextlib.suppress(errors.SkiffError):
                await monitor.kill(signal.SIGKILL)
            with contextlib.suppress(errors.SkiffError, TimeoutError):
                await asyncio.wait_for(monitor.wait(), TIMEOUT)
        problems = []
        pid = box.monitor.monitor_pid if box.monitor else monitor.monitor_pid if monitor else 0
        if pid and not await _gone(pid):
            problems.append(f"{box.cid}: monitor {pid} still running")
            os.kill(pid, signal.SIGKILL)
        if box.runtime_state().returncode == 0:
            problems.append(f"{box.cid}: the runtime still has the container")
            subprocess.run([*box.runtime, "--root", box.runtime_root, "delete", "--force", box.cid], timeout=30)
        problems += [f"{box.cid}: cgroup {d} remains" for d in cgroup_dirs(f"/{CGROUP_MARKER}/{box.cid}")
                     if os.path.isdir(d)]
        if os.path.isdir(box.state_dir):
            left = [n for n in os.listdir(box.state_dir) if n == SOCKET_NAME or n.startswith(("runtime-", "exec-"))]
            problems += [f"{box.cid}: {name} left in the state dir" for name in left]
        return problems


def _state(pid: int) -> str | None:
    """A process's state letter (``Z`` for a zombie), None if there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


async def _gone(pid: int, timeout: float = TIMEOUT) -> bool:
    """Wait until ``pid`` has exited. A monitor's parent is init (it double-forks), whose reaping we
    do not control, so an unreaped zombie counts as gone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _state(pid) in (None, "Z"):
            return True
        await asyncio.sleep(0.02)
    return False


async def _fd_count(pid: int, at_most: int | None = None) -> int:
    """How many fds ``pid`` has, once connections of requests just answered have been closed."""
    deadline = time.monotonic() + 2
    while True:
        count = len(os.listdir(f"/proc/{pid}/fd"))
        if (at_most is None or count <= at_most) or time.monotonic() > deadline:
            return count
        await asyncio.sleep(0.02)


@pytest_asyncio.fixture
async def boxes(tmp_path: Path) -> Any:
    b = Boxes(tmp_path)
    yield b
    problems = await b.cleanup()
    assert not problems, "left behind:\n" + "\n".join(problems)


async def read_all(session: AttachSession, timeout: float = TIMEOUT) -> list[tuple[int, bytes]]:
    """Every item a session yields until its end."""
    items = []
    while (item := await asyncio.wait_for(session.read(), timeout)) is not None:
        items.append(item)
    return items


async def read_until(session: AttachSession, needle: bytes, seen: bytearray) -> None:
    """Read into ``seen`` until it holds ``needle``."""
    while needle not in seen:
        item = await asyncio.wait_for(session.read(), TIMEOUT)
        assert item is not None, f"stream ended before {needle!r}; got {bytes(seen)!r}"
        seen += item[1]


def joined(items: list[tuple[int, bytes]], stream: int) -> bytes:
    return b"".join(data for s, data in items if s == stream)


def zombies_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError):
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                if fields[0] == "Z" and int(fields[1]) == pid:
                    found.append(int(entry))
    return found


# --- life cycle --------------------------------------------------------------------------------------

@both_runtimes
async def test_create_start_log_and_exit(boxes: Boxes, runtime: str) -> None:
    box = await boxes.launch(["sh", "-c", "echo out; echo err >&2; printf partial; exit 3"], runtime=runtime)
    status = await box.m.status()
    assert status["status"] == "created" and status["pid"] == box.m.pid > 0
    assert box.runtime_state().returncode == 0
    await box.m.start()
    exit_ = await asyncio.wait_for(box.m.wait(), TIMEOUT)
    assert exit_.exit_code == 3 and not exit_.oom_killed
    assert RFC3339NANO.match(exit_.finished_at)

    with open(box.log_path) as f:
        raw = f.read().splitlines()
    assert all(line.startswith('{"log":') for line in raw)  # Docker's field order
    records = [json.loads(line) for line in raw]
    assert sorted((r["stream"], r["log"]) for r in records) == [
        ("stderr", "err\n"), ("stdout", "out\n"), ("stdout", "partial")]
    assert all(RFC3339NANO.match(r["time"]) and list(r) == ["log", "stream", "time"] for r in records)

    # The exit is on disk, the runtime forgot the container, the monitor left.
    assert Monitor.read_exit(box.state_dir) == exit_ == box.m.exit_status()
    assert await _gone(box.m.monitor_pid)
    assert await Monitor.connect(box.state_dir) is None
    assert box.runtime_state().returncode != 0
    assert await asyncio.wait_for(box.m.wait(), TIMEOUT) == exit_  # read from the exit file now
    with pytest.raises(errors.Conflict):
        await box.m.kill(signal.SIGKILL)


@both_runtimes
async def test_sigkill_reports_137(boxes: Boxes, runtime: str) -> None:
    box = await boxes.launch(["sleep", "30"], runtime=runtime)
    await box.m.start()
    assert (await box.m.status())["status"] == "running"
    await box.m.kill(signal.SIGKILL)
    assert (await asyncio.wait_for(box.m.wait(), TIMEOUT)).exit_code == 137


async def test_sigterm_trapped_exit_143(boxes: Boxes) -> None:
    # pid 1 of a pid namespace ignores signals it has no handler for, so the shell traps TERM.
    box = await boxes.launch(["sh", "-c", 'trap "exit 143" TERM; echo ready; sleep 30 & wait'])
    session = await box.m.attach(stdin=False, stdout=True, stderr=False)
    await box.m.start()
    await read_until(session, b"ready", bytearray())
    await box.m.kill(signal.SIGTERM)
    assert (await asyncio.wait_for(box.m.wait(), TIMEOUT)).exit_code == 143
    await session.close()


async def test_kill_before_start_and_start_twice(boxes: Boxes) -> None:
    box = await boxes.launch(["sleep", "30"])
    await box.m.start()
    with pytest.raises(errors.Conflict):
        await box.m.start()
    await box.m.kill(signal.SIGKILL)
    await asyncio.wait_for(box.m.wait(), TIMEOUT)
    created = await boxes.launch(["sleep", "30"])
    await created.m.kill(signal.SIGKILL)  # a created container can be killed: init dies in its fifo wait
    assert (await asyncio.wait_for(created.m.wait(), TIMEOUT)).exit_code == 137


@both_runtimes
async def test_missing_executable_reports_the_runtimes_message(boxes: Boxes, runtime: str) -> None:
    # runc and Skiff's runtime both look the executable up at create; either step may report it.
    with pytest.raises(errors.SystemFailure, match=r'exec: "no-such-cmd": executable file not found in \$PATH'):
        box = await boxes.launch(["no-such-cmd"], runtime=runtime)
        await box.m.start()
    assert await Monitor.connect(boxes.made[-1].state_dir) is None


async def test_a_runtime_that_cannot_run_fails_the_launch(boxes: Boxes, tmp_path: Path) -> None:
    box = boxes.new()
    make_busybox_bundle(box.bundle, ["true"], linux__cgroupsPath=f"/{CGROUP_MARKER}/{box.cid}")
    with pytest.raises(errors.SystemFailure, match="cannot run the runtime"):
        await Monitor.launch(container_id=box.cid, bundle=str(box.bundle), state_dir=box.state_dir, log_path=None,
                             runtime=[str(tmp_path / "no-runtime")], runtime_root=box.runtime_root, tty=False,
                             open_stdin=False, stdin_once=False)
    with pytest.raises(errors.InvalidArgument):
        await Monitor.launch(container_id=box.cid, bundle=str(box.bundle), state_dir=box.state_dir, log_path=None,
                             runtime=box.runtime, runtime_root=box.runtime_root, tty=False, open_stdin=False,
                             stdin_once=False, log_opts={"max-size": "lots"})


@both_runtimes
async def test_state_dirs_longer_than_a_socket_path(boxes: Boxes, runtime: str) -> None:
    """monitor.sock and the console sockets are reached through /proc/<pid>/fd/<dir> when too long."""
    box = boxes.new(runtime)
    box.state_dir = os.path.join(box.state_dir, "x" * 60, "y" * 60)
    assert len(os.path.join(box.state_dir, SOCKET_NAME)) > 108
    make_busybox_bundle(box.bundle, ["sh", "-c", "stty size; sleep 30"], terminal=True,
                        linux__cgroupsPath=f"/{CGROUP_MARKER}/{box.cid}")
    box.monitor = await Monitor.launch(container_id=box.cid, bundle=str(box.bundle), state_dir=box.state_dir,
                                       log_path=box.log_path, runtime=box.runtime, runtime_root=box.runtime_root,
                                       tty=True, open_stdin=False, stdin_once=False)
    await box.m.resize(11, 22)
    session = await box.m.attach(stdin=False, stdout=True, stderr=True)
    await box.m.start()
    await read_until(session, b"11 22", bytearray())
    exec_ = await box.m.exec("long", box.process_spec(["stty", "size"]), tty=True, open_stdin=False)
    await exec_.start()
    assert (await exec_.wait()).exit_code == 0
    await exec_.close()
    assert (await Monitor.connect(box.state_dir)) is not None
    await box.m.kill(signal.SIGKILL)
    assert (await asyncio.wait_for(box.m.wait(), TIMEOUT)).exit_code == 137
    await session.close()


async def test_oom_kill_is_detected(boxes: Boxes) -> None:
    limit = 32 << 20
    box = await boxes.launch(["sh", "-c", 'x=$(head -c 200000000 /dev/zero | tr "\\0" a); echo survived'],
                             linux__resources={"memory": {"limit": limit, "swap": limit}})
    await box.m.start()
    exit_ = await asyncio.wait_for(box.m.wait(), TIMEOUT)
    assert (exit_.exit_code, exit_.oom_killed) == (137, True)


# --- stdio and attach -----------------------------------------------------------------------------

@both_runtimes
async def test_stdin_sent_before_start_is_delivered(boxes: Boxes, runtime: str) -> None:
    """``echo x | docker run -i``: the bytes and the EOF arrive before the start."""
    box = await boxes.launch(["cat"], runtime=runtime, open_stdin=True, stdin_once=True)
    session = await box.m.attach(stdin=True, stdout=True, stderr=True)
    await session.write(b"hello\n" * 20000)  # more than a pipe holds: the monitor buffers the rest
    await session.close_stdin()
    await box.m.start()
    items = await read_all(session)
    assert joined(items, 1) == b"hello\n" * 20000 and not joined(items, 2)
    assert (await asyncio.wait_for(box.m.wait(), TIMEOUT)).exit_code == 0
    await session.close()
    assert "".join(r["log"] for r in box.log_records()) == "hello\n" * 20000


async def test_attach_streams_are_tagged_and_shared(boxes: Boxes) -> None:
    box = await boxes.launch(["sh", "-c", "read x; echo out-$x; echo err-$x >&2"], open_stdin=True)
    both = await box.m.attach(stdin=True, stdout=True, stderr=True)
    only_out = await box.m.attach(stdin=False, stdout=True, stderr=False)
    await box.m.start()
    await both.write(b"1\n")
    got_both, got_out = await asyncio.gather(read_all(both), read_all(only_out))
    assert (joined(got_both, 1), joined(got_both, 2)) == (b"out-1\n", b"err-1\n")
    assert got_out == [(1, b"out-1\n")]
    assert (await asyncio.wait_for(box.m.wait(), TIMEOUT)).exit_code == 0
    for s in (both, only_out):
        await s.close()


async def test_stdin_stays_open_without_stdin_once(boxes: Boxes) -> None:
    """A client leaving does not close stdin unless StdinOnce; ``close_stdin`` does."""
    box = await boxes.launch(["cat"], open_stdin=True, stdin_once=False)
    first = await box.m.attach(stdin=True, stdout=False, stderr=False)
    await first.write(b"one\n")
    await first.close_stdin()
    await first.close()
    await box.m.start()
    second = await box.m.attach(stdin=True, stdout=True, stderr=False)
    await second.write(b"two\n")
    await read_until(second, b"two\n", bytearray())
    assert (await box.m.status())["status"] == "running"
    await box.m.close_stdin()
    assert (await asyncio.wait_for(box.m.wait(), TIMEOUT)).exit_code == 0
    await second.close()
    assert "".join(r["log"] for r in box.log_records()) == "one\ntwo\n"


@both_runtimes
async def test_tty_output_is_raw_and_resize_reaches_the_terminal(boxes: Boxes, runtime: str) -> None:
    box = await boxes.launch(["sh", "-c", "stty size; read x; stty size; exit 4"], runtime=runtime, tty=True,
                             open_stdin=True)
    await box.m.resize(24, 80)
    session = await box.m.attach(stdin=True, stdout=True, stderr=True)
    await box.m.start()
    seen = bytearray()
    await read_until(session, b"24 80\r\n", seen)
    await box.m.resize(40, 100)
    await session.write(b"\n")
    items = await read_all(session)
    assert {stream for stream, _ in items} <= {0}
    assert b"40 100\r\n" in bytes(seen) + joined(items, 0)
    assert (await asyncio.wait_for(box.m.wait(), TIMEOUT)).exit_code == 4
    await session.close()
    records = box.log_records()
    assert {r["stream"] for r in records} == {"stdout"} and "24 80\r\n" in [r["log"] for r in records]
    with pytest.raises(errors.Conflict):
        await box.m.resize(10, 10)


# --- the daemon going away ---------------------------------------------------------------------------

_DAEMON = """
import asyncio, json, sys
from skiff.engine.monitor_client import Monitor
async def main(a):
    m = await Monitor.launch(container_id=a["cid"], bundle=a["bundle"], state_dir=a["state"], log_path=a["log"],
                             runtime=a["runtime"], runtime_root=a["root"], tty=False, open_stdin=True,
                             stdin_once=True)
    await m.start()
    print(json.dumps({"pid": m.pid, "monitor_pid": m.monitor_pid}), flush=True)
    await asyncio.sleep(60)
asyncio.run(main(json.loads(sys.argv[1])))
"""


async def test_monitor_survives_the_daemon_and_reconnects(boxes: Boxes) -> None:
    box = boxes.new()
    make_busybox_bundle(box.bundle, ["sh", "-c", "read x; echo got-$x"],
                        linux__cgroupsPath=f"/{CGROUP_MARKER}/{box.cid}")
    spec = {"cid": box.cid, "bundle": str(box.bundle), "state": box.state_dir, "log": box.log_path,
            "runtime": box.runtime, "root": box.runtime_root}
    daemon = subprocess.Popen([sys.executable, "-c", _DAEMON, json.dumps(spec)], cwd=REPO, stdout=subprocess.PIPE,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        line = await asyncio.wait_for(asyncio.to_thread(daemon.stdout.readline), TIMEOUT)  # type: ignore[union-attr]
        launched = json.loads(line)
    finally:
        daemon.kill()  # the daemon dies hard, mid-run
        daemon.wait()
        daemon.stdout.close()  # type: ignore[union-attr]
    assert os.path.exists(f"/proc/{launched['monitor_pid']}")

    monitor = await Monitor.connect(box.state_dir)
    assert monitor is not None
    box.monitor = monitor
    assert (monitor.pid, monitor.monitor_pid) == (launched["pid"], launched["monitor_pid"])
    assert (await monitor.status())["status"] == "running"
    session = await monitor.attach(stdin=True, stdout=True, stderr=True)
    await session.write(b"again\n")
    assert await read_all(session) == [(1, b"got-again\n")]
    assert (await asyncio.wait_for(monitor.wait(), TIMEOUT)).exit_code == 0
    await session.close()
    assert await Monitor.connect(box.state_dir) is None
    recorded = Monitor.read_exit(box.state_dir)
    assert recorded is not None and recorded.exit_code == 0


@both_runtimes
async def test_a_monitor_whose_state_dir_is_gone_still_exits_with_its_container(boxes: Boxes, runtime: str) -> None:
    """Its container's init killed from outside and its state dir removed (a data root wiped by hand while the
    daemon was dead): nothing is left to record the exit in, and the monitor must not stay behind for it."""
    box = await boxes.launch(["sleep", "60"], runtime=runtime)
    await box.m.start()
    monitor_pid, init_pid = box.m.monitor_pid, box.m.pid
    await box.m.close()
    box.monitor = None
    shutil.rmtree(box.state_dir)
    os.kill(init_pid, signal.SIGKILL)
    gone = await _gone(monitor_pid)
    if not gone:
        os.kill(monitor_pid, signal.SIGKILL)
    assert gone, f"monitor {monitor_pid} outlived its container"
    assert box.runtime_state().returncode != 0  # and it still had the runtime delete the container


# --- exec --------------------------------------------------------------------------------------------

@both_runtimes
async def test_exec_output_and_exit_code(boxes: Boxes, runtime: str) -> None:
    box = await boxes.launch(["sh", "-c", "echo main; sleep 30"], runtime=runtime)
    await box.m.start()
    await asyncio.sleep(0.1)
    before = await _fd_count(box.m.monitor_pid)
    for n in range(3):
        session = await box.m.exec(f"e{n}", box.process_spec(["sh", "-c", "echo hi; echo oops >&2; exit 5"]),
                                   tty=False, open_stdin=False)
        await session.start()
        assert session.pid > 0
        items = await read_all(session)
        assert (joined(items, 1), joined(items, 2)) == (b"hi\n", b"oops\n")
        assert (await session.wait()).exit_code == 5
        await session.close()
    # The execs were reaped, their fds closed, their files removed; their output is not in the log.
    assert zombies_of(box.m.monitor_pid) == []
    assert await _fd_count(box.m.monitor_pid, at_most=before) == before
    assert not [n for n in os.listdir(box.state_dir) if n.startswith("exec-")]
    await box.m.kill(signal.SIGKILL)
    await asyncio.wait_for(box.m.wait(), TIMEOUT)
    assert [r["log"] for r in box.log_records()] == ["main\n"]


@both_runtimes
async def test_exec_with_tty_stdin_and_resize(boxes: Boxes, runtime: str) -> None:
    box = await boxes.launch(["sleep", "30"], runtime=runtime)
    await box.m.start()
    session = await box.m.exec("tty1", box.process_spec(["sh", "-c", "read x; stty size; exit 7"]),
                               tty=True, open_stdin=True)
    await session.start()
    await session.resize(30, 90)
    await session.write(b"go\n")
    items = await read_all(session)
    assert {s for s, _ in items} == {0} and b"30 90\r\n" in joined(items, 0)
    assert (await session.wait()).exit_code == 7
    await session.close()
    await box.m.kill(signal.SIGKILL)
    await asyncio.wait_for(box.m.wait(), TIMEOUT)


async def test_exec_stdin_eof_and_failures(boxes: Boxes) -> None:
    box = await boxes.launch(["sleep", "30"])
    with pytest.raises(errors.Conflict):  # not running yet
        await box.m.exec("early", box.process_spec(["true"]), tty=False, open_stdin=False)
    await box.m.start()
    cat = await box.m.exec("cat", box.process_spec(["cat"]), tty=False, open_stdin=True)
    await cat.start()
    await cat.write(b"echoed\n")
    await cat.close_stdin()
    assert await read_all(cat) == [(1, b"echoed\n")]
    assert (await cat.wait()).exit_code == 0
    await cat.close()

    missing = await box.m.exec("missing", box.process_spec(["no-such-cmd"]), tty=False, open_stdin=False)
    with pytest.raises(errors.SystemFailure, match="executable file not found"):
        await missing.start()
    assert await read_all(missing) == []
    await missing.close()

    killed = await box.m.exec("sleeper", box.process_spec(["sleep", "30"]), tty=False, open_stdin=False)
    await killed.start()
    await killed.kill(signal.SIGKILL)
    assert (await asyncio.wait_for(killed.wait(), TIMEOUT)).exit_code == 137
    await killed.close()
    await box.m.kill(signal.SIGKILL)
    await asyncio.wait_for(box.m.wait(), TIMEOUT)


async def test_running_execs_end_with_the_container(boxes: Boxes) -> None:
    box = await boxes.launch(["sleep", "30"])
    await box.m.start()
    session = await box.m.exec("long", box.process_spec(["sleep", "30"]), tty=False, open_stdin=False)
    await session.start()
    await box.m.kill(signal.SIGKILL)
    assert (await asyncio.wait_for(session.wait(), TIMEOUT)).exit_code == 137
    assert (await asyncio.wait_for(box.m.wait(), TIMEOUT)).exit_code == 137
    await session.close()


# --- logs of a live container ---------------------------------------------------------------------

async def test_follow_logs_of_a_running_container(boxes: Boxes) -> None:
    box = await boxes.launch(["sh", "-c", "for i in 1 2 3; do echo line$i; sleep 0.1; done; echo bye >&2"],
                             log_opts={"max-size": "150", "max-file": "5"})
    stop = asyncio.Event()

    async def follow() -> list[tuple[int, bytes]]:
        return [item async for item in read_logs(box.log_path, follow=True, stop=stop, timestamps=True)]

    reader = asyncio.create_task(follow())
    await box.m.start()
    exit_: ExitStatus = await asyncio.wait_for(box.m.wait(), TIMEOUT)
    stop.set()
    items = await asyncio.wait_for(reader, TIMEOUT)
    assert exit_.exit_code == 0
    assert [(s, d.split(b" ", 1)[1]) for s, d in items] == [
        (1, b"line1\n"), (1, b"line2\n"), (1, b"line3\n"), (2, b"bye\n")]
    assert all(RFC3339NANO.match(d.split(b" ", 1)[0].decode()) for _, d in items)
    assert os.path.exists(box.log_path + ".1")  # rotated at 150 bytes while being followed
    assert [d async for _, d in read_logs(box.log_path, tail=2)] == [b"line3\n", b"bye\n"]
    assert os.path.exists(os.path.join(box.state_dir, EXIT_FILE))


async def test_spawner_ends_with_its_daemon_and_its_monitors_carry_on(boxes: Boxes) -> None:
    box = await boxes.launch(["sh", "-c", "read line; echo got $line"], runtime="skiff-spawned", open_stdin=True,
                             stdin_once=True)
    spawner_pid = boxes.spawner._proc.pid if boxes.spawner._proc else 0
    assert spawner_pid and _state(spawner_pid) not in (None, "Z")
    assert box.m.monitor_pid != spawner_pid
    await boxes.spawner.stop()  # what a daemon's exit does: its end of the socket closes
    assert await _gone(spawner_pid)
    session = await box.m.attach(stdin=True, stdout=True, stderr=True)
    await box.m.start()
    await session.write(b"hello\n")
    await session.close_stdin()
    assert (await asyncio.wait_for(box.m.wait(), TIMEOUT)).exit_code == 0
    assert b"got hello" in b"".join([item[1] async for item in _items(session)])
    await session.close()
    again = await boxes.launch(["true"], runtime="skiff-spawned")  # a stopped spawner starts again when asked
    assert (await asyncio.wait_for(again.m.start(), TIMEOUT)) is None
    assert (await asyncio.wait_for(again.m.wait(), TIMEOUT)).exit_code == 0
    assert boxes.spawner._proc is not None and boxes.spawner._proc.pid != spawner_pid


async def _items(session: AttachSession) -> Any:
    while (item := await asyncio.wait_for(session.read(), TIMEOUT)) is not None:
        yield item


async def test_spawned_monitors_share_the_spawners_memory(boxes: Boxes) -> None:
    """A forked monitor keeps fewer private pages than a started interpreter (what it shares with the
    spawner is paid once for all containers)."""
    started = await boxes.launch(["sleep", "30"], runtime="skiff")
    spawned = await boxes.launch(["sleep", "30"], runtime="skiff-spawned")
    for box in (started, spawned):
        await box.m.start()
    private = {box.spawned: _private_kib(box.m.monitor_pid) for box in (started, spawned)}
    assert private[True] < 0.8 * private[False], private
    for box in (started, spawned):
        await box.m.kill(signal.SIGKILL)
        await asyncio.wait_for(box.m.wait(), TIMEOUT)


def _private_kib(pid: int) -> int:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:])
    return sum(int(fields[k].split()[0]) for k in ("Private_Clean", "Private_Dirty"))
