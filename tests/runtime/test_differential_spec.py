"""More of config.json, each compared with runc: user namespaces, joining namespaces by path, sysctls,
devices, hooks, cgroup namespaces, oomScoreAdj, propagation, umask, and bind mounts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from skiff.runtime.bundle import make_busybox_bundle
from tests.runtime.harness import BundleFactory, Runtime
from tests.runtime.test_differential import HOSTNAME, compare, run_ok, sh

pytestmark = pytest.mark.peer


def test_user_namespace_maps_root_to_an_unprivileged_host_uid(runtime: Runtime, peer: Runtime | None,
                                                              bundle: BundleFactory) -> None:
    mappings = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    # The mapped root must be able to reach the rootfs: pytest's own temp dirs are private to root.
    base = Path(tempfile.mkdtemp(prefix="skt-userns-", dir="/tmp"))
    base.chmod(0o755)

    def observe(rt: Runtime) -> str:
        b = Path(make_busybox_bundle(
            base / rt.name, sh("id -u; cat /proc/self/uid_map /proc/self/gid_map; echo x > /tmp/probe || echo denied"),
            hostname=HOSTNAME, root={"path": "rootfs", "readonly": False},
            linux__uidMappings=mappings, linux__gidMappings=mappings,
            linux__namespaces=[{"type": t} for t in ("pid", "network", "ipc", "uts", "mount", "user")]))
        # The rootfs belongs to the mapped root, as it would after an image unpack for this container.
        subprocess.run(["chown", "-R", "100000:100000", str(b / "rootfs")], check=True)
        return " ".join(run_ok(rt, b).split())

    try:
        out = compare(runtime, peer, observe)
    finally:
        shutil.rmtree(base)
    assert out.startswith("0 0 100000 65536 0 100000 65536") and "denied" not in out


def test_join_a_network_namespace_by_path(runtime: Runtime, peer: Runtime | None, bundle: BundleFactory) -> None:
    name = f"skt-netns-{os.getpid()}-{runtime.name}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "add", "skt-v0", "type", "veth", "peer", "name", "skt-v1"],
                       check=True)
        namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
        namespaces.append({"type": "network", "path": f"/run/netns/{name}"})

        def observe(rt: Runtime) -> list[str]:
            out = run_ok(rt, bundle(sh("ls /sys/class/net"), hostname=HOSTNAME, linux__namespaces=namespaces))
            return sorted(out.split())

        assert compare(runtime, peer, observe) == ["lo", "skt-v0", "skt-v1"]
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=True)


def test_sysctls_are_written_in_the_container_namespaces(runtime: Runtime, peer: Runtime | None,
                                                         bundle: BundleFactory) -> None:
    sysctl = {"net.ipv4.ip_forward": "1", "kernel.shmmax": "123456789"}

    def observe(rt: Runtime) -> str:
        return run_ok(rt, bundle(sh("cat /proc/sys/net/ipv4/ip_forward /proc/sys/kernel/shmmax"),
                                 hostname=HOSTNAME, linux__sysctl=sysctl))

    assert compare(runtime, peer, observe).split() == ["1", "123456789"]
    with open("/proc/sys/kernel/shmmax") as f:
        assert f.read().strip() != "123456789", "the host's value must not change"


def test_devices_listed_in_the_spec_are_created(runtime: Runtime, peer: Runtime | None,
                                                bundle: BundleFactory) -> None:
    devices = [{"path": "/dev/skt-null", "type": "c", "major": 1, "minor": 3, "fileMode": 0o666,
                "uid": 1000, "gid": 1000}]
    rules = [{"allow": False, "access": "rwm"}, {"allow": True, "type": "c", "major": 1, "minor": 3,
                                                 "access": "rwm"}]

    def observe(rt: Runtime) -> str:
        script = "stat -c '%F %t:%T %a %u:%g' /dev/skt-null; echo hi > /dev/skt-null && echo written"
        return run_ok(rt, bundle(sh(script), hostname=HOSTNAME, linux__devices=devices,
                                 linux__resources={"devices": rules}))

    assert compare(runtime, peer, observe).split("\n")[:2] == ["character special file 1:3 666 1000:1000", "written"]


def test_hooks_run_at_their_points_with_the_state_on_stdin(runtime: Runtime, peer: Runtime | None,
                                                           bundle: BundleFactory, tmp_path: Path) -> None:
    def observe(rt: Runtime) -> list[tuple[str, str, str]]:
        log = tmp_path / f"hooks-{rt.name}.log"
        hook = tmp_path / "hook.sh"
        hook.write_text("#!/bin/sh\nread -r state\necho \"$1 $(echo \"$state\" | grep -o '\"status\": *\"[a-z]*\"' "
                        "| tr -d ' \"' ) $(echo \"$state\" | grep -c '\"pid\"')\" >> \"$LOG\"\n")
        hook.chmod(0o755)
        hooks = {point: [{"path": str(hook), "args": ["hook.sh", point], "env": [f"LOG={log}"]}]
                 for point in ("prestart", "createRuntime", "poststart", "poststop")}
        cid = rt.new_id("hooks")
        b = bundle(["true"], hostname=HOSTNAME, hooks=hooks)
        rt.create(b, cid)
        rt.ok("start", cid)
        rt.wait_status(cid, "stopped")
        rt.ok("delete", cid)
        return [tuple(line.split()) for line in log.read_text().splitlines()]

    seen = compare(runtime, peer, observe)
    assert [s[0] for s in seen] == ["prestart", "createRuntime", "poststart", "poststop"]
    assert seen[-1][1] == "status:stopped"


def test_failing_prestart_hook_fails_create_and_leaves_nothing(runtime: Runtime, bundle: BundleFactory) -> None:
    cid = runtime.new_id("badhook")
    b = bundle(["true"], hostname=HOSTNAME, hooks={"prestart": [{"path": "/bin/false"}]})
    r = runtime.create(b, cid)
    assert r.returncode != 0
    assert runtime("state", cid).returncode != 0


def test_cgroup_namespace_shows_the_container_cgroup_as_root(runtime: Runtime, peer: Runtime | None,
                                                             bundle: BundleFactory) -> None:
    def observe(rt: Runtime) -> list[str]:
        out = run_ok(rt, bundle(sh("cat /proc/self/cgroup"), hostname=HOSTNAME, linux__namespaces=[
            {"type": t} for t in ("pid", "network", "ipc", "uts", "mount", "cgroup")]))
        return sorted(line.split(":", 1)[1] for line in out.split())

    lines = compare(runtime, peer, observe)
    assert all(line.endswith(":/") for line in lines), lines


def test_oom_score_adj_and_umask(runtime: Runtime, peer: Runtime | None, bundle: BundleFactory) -> None:
    def observe(rt: Runtime) -> str:
        return run_ok(rt, bundle(sh("cat /proc/self/oom_score_adj; umask"), hostname=HOSTNAME,
                                 process__oomScoreAdj=123, process__user={"uid": 0, "gid": 0, "umask": 0o077}))

    assert compare(runtime, peer, observe).split() == ["123", "0077"]


def test_bind_mounts_read_only_and_read_write(runtime: Runtime, peer: Runtime | None, bundle: BundleFactory,
                                              tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "file").write_text("from the host\n")

    def observe(rt: Runtime) -> str:
        mounts = [{"destination": "/ro", "type": "bind", "source": str(shared), "options": ["rbind", "ro"]},
                  {"destination": "/rw", "type": "bind", "source": str(shared), "options": ["bind", "rw"]},
                  {"destination": "/etc/file-mount", "type": "bind", "source": str(shared / "file"),
                   "options": ["bind", "ro"]}]
        b = bundle(sh(f"cat /ro/file /etc/file-mount; touch /ro/x 2>/dev/null || echo ro-denied; "
                      f"echo {rt.name} > /rw/by-{rt.name} && echo rw-ok"), hostname=HOSTNAME)
        spec = json.loads((b / "config.json").read_text())
        spec["mounts"] += mounts
        (b / "config.json").write_text(json.dumps(spec))
        return run_ok(rt, b)

    assert compare(runtime, peer, observe).split("\n")[:4] == ["from the host", "from the host", "ro-denied", "rw-ok"]
    assert (shared / f"by-{runtime.name}").read_text() == f"{runtime.name}\n"
