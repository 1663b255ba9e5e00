"""Bad input: every mistake fails with a non-zero exit, and leaves nothing behind.

For every runtime: non-zero exit status, no state directory under ``--root``, no cgroup, nothing
listed. Skiff-only: exactly one clear line on stderr (runc writes logrus lines, not checked). The
runc messages quoted in comments are runc 1.1.5's, for reference.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.runtime.harness import BundleFactory, Runtime, cgroup_dirs


def assert_failed(rt: Runtime, r: subprocess.CompletedProcess[str], *, mentions: str | None = None) -> None:
    """Non-zero exit; for Skiff, exactly one non-empty stderr line (mentioning ``mentions``)."""
    assert r.returncode != 0, f"{rt.name} {r.args[3:]} succeeded: {r.stdout}"
    if rt.name != "runc":  # Skiff-only expectation
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].strip(), f"want exactly one stderr line, got {r.stderr!r}"
        if mentions is not None:
            assert mentions.lower() in lines[0].lower(), lines[0]


def assert_nothing_left(rt: Runtime, cid: str) -> None:
    assert not (rt.root / cid).exists(), f"{rt.name} left its state dir {rt.root / cid}"
    left = [d for d in cgroup_dirs(f"/skiff-test/{cid}") if os.path.isdir(d)]
    assert not left, f"{rt.name} left cgroups {left}"
    assert cid not in [c["id"] for c in rt.list_json()]
    assert rt("state", cid).returncode != 0


@pytest.mark.parametrize("verb", ["create", "run"])
def test_malformed_config_json(runtime: Runtime, bundle: BundleFactory, verb: str) -> None:
    b = bundle(["true"])
    (b / "config.json").write_text('{"ociVersion": "1.0.2", "process": ')
    cid = runtime.new_id("badjson")
    r = getattr(runtime, verb)(b, cid)  # runc: "runc create failed: unexpected EOF"
    assert_failed(runtime, r, mentions="config.json")
    assert_nothing_left(runtime, cid)


def test_missing_config_json(runtime: Runtime, tmp_path: Path) -> None:
    cid = runtime.new_id("nocfg")
    r = runtime.create(tmp_path, cid)  # runc: "JSON specification file config.json not found"
    assert_failed(runtime, r, mentions="config.json")
    assert_nothing_left(runtime, cid)


@pytest.mark.parametrize("verb", ["create", "run"])
def test_missing_rootfs(runtime: Runtime, bundle: BundleFactory, verb: str) -> None:
    b = bundle(["true"], root={"path": "no-such-rootfs"})
    cid = runtime.new_id("noroot")
    r = getattr(runtime, verb)(b, cid)  # runc: "invalid rootfs: stat <bundle>/no-such-rootfs: no such file ..."
    assert_failed(runtime, r, mentions="no-such-rootfs")
    assert_nothing_left(runtime, cid)


@pytest.mark.parametrize("exe", ["/bin/no-such-binary", "/etc/passwd", "no-such-command"],
                         ids=["missing", "not-executable", "not-in-path"])
def test_bad_executable_fails_at_create_or_start(runtime: Runtime, bundle: BundleFactory, exe: str) -> None:
    """runc 1.1.5 finds out at create (exit 1, 'exec: "/bin/no-such-binary": stat ...: no such file or
    directory' / 'permission denied' / 'executable file not found in $PATH'); failing at start is fine too."""
    cid = runtime.new_id("noexe")
    r = runtime.create(bundle([exe, "arg"]), cid)
    if r.returncode == 0:
        started = runtime("start", cid)
        assert started.returncode != 0, f"{runtime.name} started {exe!r}"
        r = started
        runtime("delete", "--force", cid)
    assert_failed(runtime, r, mentions=exe)
    assert_nothing_left(runtime, cid)


def test_bad_executable_fails_run(runtime: Runtime, bundle: BundleFactory) -> None:
    cid = runtime.new_id("noexe-run")
    r = runtime.run(bundle(["/bin/no-such-binary"]), cid)
    assert r.returncode != 0  # runc: 1; a runtime that fails at exec time would report 127
    assert "/bin/no-such-binary" in r.stderr
    assert_nothing_left(runtime, cid)


def test_unknown_namespace_type(runtime: Runtime, bundle: BundleFactory) -> None:
    b = bundle(["true"], linux__namespaces=[{"type": "pid"}, {"type": "bogus"}, {"type": "mount"}])
    cid = runtime.new_id("badns")
    r = runtime.create(b, cid)  # runc: 'namespace {"bogus" ""} does not exist'
    assert_failed(runtime, r, mentions="bogus")
    assert_nothing_left(runtime, cid)


def test_hostname_without_uts_namespace(runtime: Runtime, bundle: BundleFactory) -> None:
    b = bundle(["true"], linux__namespaces=[{"type": "pid"}, {"type": "mount"}])
    cid = runtime.new_id("nouts")
    r = runtime.run(b, cid)  # runc: "unable to set hostname without a private UTS namespace"
    assert_failed(runtime, r, mentions="UTS")
    assert_nothing_left(runtime, cid)


def test_user_namespace_without_mappings(runtime: Runtime, bundle: BundleFactory) -> None:
    b = bundle(["true"], linux__namespaces=[{"type": t} for t in ("pid", "user", "mount", "uts")])
    cid = runtime.new_id("nomap")
    r = runtime.run(b, cid)  # runc: "User namespaces enabled, but no uid mappings found."
    assert_failed(runtime, r)
    assert_nothing_left(runtime, cid)


def test_terminal_without_console_socket(runtime: Runtime, bundle: BundleFactory) -> None:
    b = bundle(["true"], terminal=True)
    cid = runtime.new_id("notty")
    r = runtime.create(b, cid)  # runc: "cannot allocate tty if runc will detach without setting console socket"
    assert_failed(runtime, r, mentions="console")
    assert_nothing_left(runtime, cid)
    r = runtime.run(b, cid, detach=True)
    assert_failed(runtime, r, mentions="console")
    assert_nothing_left(runtime, cid)


@pytest.mark.parametrize("cid", ["../escape", "a/b", ".."], ids=["dotdot-slash", "slash", "dotdot"])
def test_invalid_container_id(runtime: Runtime, bundle: BundleFactory, cid: str) -> None:
    b = bundle(["true"])
    runtime.root.mkdir(parents=True, exist_ok=True)
    before = set(os.listdir(runtime.root))
    r = runtime("create", "--bundle", str(b), cid)  # runc: "invalid container ID format"
    assert_failed(runtime, r)
    assert set(os.listdir(runtime.root)) == before
    assert not (runtime.root.parent / "escape").exists()


def test_duplicate_id_on_create(runtime: Runtime, bundle: BundleFactory) -> None:
    b = bundle(["sleep", "300"])
    cid = runtime.new_id("dup")
    first = runtime.create(b, cid)
    assert first.returncode == 0, first.stderr
    pid = runtime.state(cid)["pid"]
    r = runtime.create(b, cid)  # runc: "container with given ID already exists"
    assert_failed(runtime, r, mentions="exists")
    state = runtime.state(cid)
    assert (state["status"], state["pid"]) == ("created", pid), "the first container must be untouched"
    r = runtime.run(b, cid, detach=True)
    assert_failed(runtime, r, mentions="exists")
    assert runtime.state(cid)["pid"] == pid
    runtime.ok("delete", "--force", cid)
    assert_nothing_left(runtime, cid)


def test_kill_a_stopped_container(runtime: Runtime, bundle: BundleFactory) -> None:
    cid = runtime.new_id("ks")
    runtime.run(bundle(["true"]), cid, detach=True).check_returncode()
    assert runtime.wait_status(cid, "stopped") == "stopped"
    r = runtime("kill", cid, "KILL")  # runc: exit 1, "container not running"
    assert_failed(runtime, r, mentions="not running")
    r = runtime("start", cid)  # runc: "cannot start a container that has stopped"
    assert_failed(runtime, r, mentions="stopped")
    assert runtime.status(cid) == "stopped"
    runtime.ok("delete", cid)
    assert_nothing_left(runtime, cid)


def test_bad_signal(runtime: Runtime, bundle: BundleFactory) -> None:
    cid = runtime.new_id("sig")
    runtime.run(bundle(["sleep", "300"]), cid, detach=True).check_returncode()
    for sig in ("NOTASIG", "999"):  # runc: 'unknown signal "NOTASIG"', "unable to signal init: invalid argument"
        assert_failed(runtime, runtime("kill", cid, sig))
    assert runtime.status(cid) == "running"
    runtime.ok("kill", cid, "0")  # signal 0 only checks the process exists


@pytest.mark.parametrize("args", [["delete"], ["state"], ["start"], ["kill"], ["pause"], ["resume"], ["ps"],
                                  ["update", "--memory", "64m"], ["exec"]],
                         ids=lambda a: a[0])
def test_unknown_container(runtime: Runtime, args: list[str]) -> None:
    cid = runtime.new_id("nosuch")
    tail = ["true"] if args[0] == "exec" else []
    r = runtime(*args, cid, *tail)  # runc: "container does not exist" (exec: exit 255, others 1)
    assert_failed(runtime, r, mentions="does not exist" if runtime.name == "runc" else None)
    assert not (runtime.root / cid).exists()


def test_delete_force_of_an_unknown_container_succeeds(runtime: Runtime) -> None:
    # runc: exit 0 and silent; engines rely on ``delete --force`` being idempotent.
    r = runtime("delete", "--force", runtime.new_id("nosuch"))
    assert (r.returncode, r.stdout) == (0, "")


def test_bad_update_value(runtime: Runtime, bundle: BundleFactory) -> None:
    cid = runtime.new_id("upd")
    runtime.run(bundle(["sleep", "300"]), cid, detach=True).check_returncode()
    r = runtime("update", "--memory", "lots", cid)
    assert_failed(runtime, r)
    assert runtime.status(cid) == "running"


def test_exec_with_malformed_process_json(runtime: Runtime, bundle: BundleFactory, tmp_path: Path) -> None:
    cid = runtime.new_id("xp")
    runtime.run(bundle(["sleep", "300"]), cid, detach=True).check_returncode()
    bad = tmp_path / "process.json"
    bad.write_text("{not json")
    r = runtime("exec", "--process", str(bad), cid)
    assert_failed(runtime, r)
    missing_args = tmp_path / "noargs.json"
    missing_args.write_text(json.dumps({"cwd": "/", "user": {"uid": 0, "gid": 0}}))
    assert_failed(runtime, runtime("exec", "--process", str(missing_args), cid))
    assert runtime.status(cid) == "running"


def test_create_killed_midway_is_cleaned_by_delete_force(runtime: Runtime, bundle: BundleFactory,
                                                        tmp_path: Path) -> None:
    """SIGKILL the runtime while create waits on a slow prestart hook: `delete --force` removes it all."""
    if runtime.name == "runc":
        pytest.skip("runc 1.1 leaves the cgroups of a killed create behind")
    import signal
    import time

    marker = tmp_path / "hook-started"
    hook = tmp_path / "slow-hook.sh"
    hook.write_text(f"#!/bin/sh\ntouch {marker}\nexec sleep 30\n")
    hook.chmod(0o755)
    cid = runtime.new_id("killed")
    b = bundle(["true"], hooks={"prestart": [{"path": str(hook)}]})
    runtime.prepare(b, cid)
    proc = subprocess.Popen([*runtime.cmd, "--root", str(runtime.root), "create", "--bundle", str(b), cid],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not marker.exists():
            assert time.monotonic() < deadline and proc.poll() is None, "the hook never ran"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    r = runtime("delete", "--force", cid)
    assert r.returncode == 0, r.stderr
    assert not (runtime.root / cid).exists()
    assert [d for d in cgroup_dirs(f"/skiff-test/{cid}") if os.path.exists(d)] == []


def test_a_file_that_is_not_executable_is_permission_denied(runtime: Runtime, bundle: BundleFactory) -> None:
    """Engines map the text to exit codes (docker: "permission denied" -> 126): it must be Go's wording."""
    r = runtime.run(bundle(["/etc/passwd"]))
    assert r.returncode != 0
    if runtime.name != "runc":
        assert "permission denied" in r.stderr and "no such file" not in r.stderr, r.stderr
