"""The leak checker notices what a test leaves behind: a mount, a cgroup, a process."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import leakcheck

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting and making cgroups need root")


@needs_root
def test_leak_check_sees_a_tmpfs_mount_a_cgroup_and_a_process(tmp_path: Path) -> None:
    before = leakcheck.snapshot()
    target = tmp_path / "mnt"
    target.mkdir()
    hierarchies = leakcheck.cgroup_hierarchies()
    assert hierarchies, "no cgroup hierarchy is mounted"
    name = f"skiff-leakcheck-{os.getpid()}"
    made = [Path(h.mountpoint) / name for h in hierarchies]
    proc = None
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "leaktest", str(target)], check=True)
        for d in made:
            d.mkdir()
        proc = subprocess.Popen(["sleep", "60"], cwd=tmp_path)
        leaks = leakcheck.diff(before, leakcheck.snapshot(), session_pid=os.getpid(), tmp_dirs=[str(tmp_path)])
        text = "\n".join(leaks)
        assert f"mount: {target} (tmpfs from leaktest" in text
        for h in hierarchies:
            assert f"cgroup: {h.name}:/{name} " in text
        assert f"process: pid {proc.pid} " in text
        assert "child of the test session" in text and "cwd in the session's temp dir" in text
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        subprocess.run(["umount", str(target)], check=False)
        for d in made:
            with contextlib.suppress(FileNotFoundError):
                d.rmdir()
    deadline = time.monotonic() + 3
    while (leaks := leakcheck.diff(before, leakcheck.snapshot(), session_pid=os.getpid(),
                                   tmp_dirs=[str(tmp_path)])) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert leaks == []


def test_leak_check_sees_a_process_reparented_to_init(tmp_path: Path) -> None:
    """A detached grandchild (parent 1) is still found through its cwd in the session's temp dir."""
    before = leakcheck.snapshot()
    code = ("import subprocess; p = subprocess.Popen(['sleep', '60'], start_new_session=True,"
            " stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); print(p.pid)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    pid = int(out.stdout)
    try:
        leaks = leakcheck.diff(before, leakcheck.snapshot(), session_pid=None, tmp_dirs=[str(tmp_path)])
        assert any(leak.startswith(f"process: pid {pid} ") and "cwd in the session's temp dir" in leak
                   for leak in leaks), leaks
    finally:
        os.kill(pid, 9)
        # Reaped by init, not by us: wait until it is gone so the session's own check stays clean.
        deadline = time.monotonic() + 3
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.05)


def test_marker_cgroups_are_ignored_when_they_existed_before() -> None:
    snap = leakcheck.snapshot()
    assert leakcheck.diff(snap, snap) == []


def test_parse_mountinfo_unescapes_and_splits() -> None:
    line = r"36 35 98:0 /mnt\040a /mnt/b\040c rw,noatime master:1 - ext3 /dev/root rw,errors=continue"
    (m,) = leakcheck.parse_mountinfo(line)
    assert (m["root"], m["mountpoint"], m["fstype"], m["source"]) == ("/mnt a", "/mnt/b c", "ext3", "/dev/root")
    assert m["options"] == "rw,noatime" and m["super_options"] == "rw,errors=continue"


@needs_root
def test_leak_check_attributes_test_cgroups_to_their_session() -> None:
    """A process in this session's /skiff-test/<tag>-... cgroup is ours; another session's cgroup is not."""
    hierarchies = [h for h in leakcheck.cgroup_hierarchies() if h.name != "unified"] or \
        leakcheck.cgroup_hierarchies()
    h = hierarchies[0]
    top = Path(h.mountpoint) / leakcheck.CGROUP_MARKER
    top_existed = top.exists()
    mine = top / f"{leakcheck.SESSION_TAG}-leaktest"
    theirs = top / "sktother-1-runc-x"
    before = leakcheck.snapshot()
    proc = None
    try:
        mine.mkdir(parents=True)
        theirs.mkdir()
        proc = subprocess.Popen(["sleep", "60"], cwd="/")
        (mine / "cgroup.procs").write_text(str(proc.pid))
        leaks = leakcheck.diff(before, leakcheck.snapshot(), session_pid=None)
        assert any(f"process: pid {proc.pid} " in leak and "in a test cgroup" in leak for leak in leaks), leaks
        assert any(leak.startswith(f"cgroup: {h.name}:/{leakcheck.CGROUP_MARKER}/{mine.name} ") for leak in leaks)
        assert not [leak for leak in leaks if "sktother" in leak or leak.startswith(
            f"cgroup: {h.name}:/{leakcheck.CGROUP_MARKER} ")], leaks
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        for d in (mine, theirs):
            deadline = time.monotonic() + 3
            while d.exists():
                try:
                    d.rmdir()
                except OSError:  # the killed process may take a moment to leave the cgroup
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        if not top_existed:
            with contextlib.suppress(OSError):  # another session may be using it
                top.rmdir()


@needs_root
def test_leak_check_sees_an_nftables_table() -> None:
    name = f"skiff-leakcheck-{os.getpid()}"
    before = leakcheck.snapshot()
    subprocess.run(["nft", "add", "table", "inet", name], check=True)
    try:
        assert f"nft table: inet {name}" in leakcheck.diff(before, leakcheck.snapshot())
    finally:
        subprocess.run(["nft", "delete", "table", "inet", name], check=True)
    assert not [leak for leak in leakcheck.diff(before, leakcheck.snapshot()) if name in leak]
