"""The same agent on a plain dockerd: it only speaks the Engine API, so a private dockerd (its own data root,
exec root, socket and cgroup parent; no bridge and no iptables, so the host's firewall is never touched) runs
its pods too. Skipped when no dockerd is installed (bench/engine.py finds the same one)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.kubelet.conftest import (
    IMAGE,
    IMPORT_CHANGES,
    NODE,
    AgentProcess,
    Api,
    ServerProcess,
    condition,
    container_status,
    delete_pod,
    pod_manifest,
    started,
    unmount_below,
    wait_for,
    wait_pod,
)
from tests.engine.conftest import docker_runner, request
from tests.image import testimages

UNPACKED = Path("/tmp/dockerpkg/root/usr/sbin/dockerd")  # where bench/engine.py also looks
CGROUP_PARENT = f"skiff-test-kubelet-dockerd-{os.getpid()}"


class PlainDockerd:
    """A private dockerd: what ``EngineProcess`` is for ``skiff engine``, enough for AgentProcess."""

    def __init__(self, root: Path, binary: str) -> None:
        self.root = root
        self.binary = binary
        self.socket = root / "d.sock"
        self.process: subprocess.Popen[bytes] | None = None
        (root / "daemon.json").write_text("{}\n")

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def request(self, method: str, path: str) -> Any:
        return request(str(self.socket), method, path)

    def start(self) -> None:
        here = Path(self.binary).resolve().parent
        env = dict(os.environ, PATH=os.pathsep.join([str(here), str(here.parent / "bin"), os.environ["PATH"]]))
        command = [self.binary, "--data-root", str(self.root / "data"), "--exec-root", str(self.root / "exec"),
                   "-H", self.host, "--pidfile", str(self.root / "pid"),
                   "--config-file", str(self.root / "daemon.json"),
                   "--bridge", "none", "--iptables=false", "--ip6tables=false", "--ip-forward=false",
                   "--ip-masq=false", "--userland-proxy=false", "--cgroup-parent", f"/{CGROUP_PARENT}",
                   "--exec-opt", "native.cgroupdriver=cgroupfs"]
        with open(self.root / "dockerd.log", "ab") as log:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.root,
                                            env=env, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dockerd exited: {(self.root / 'dockerd.log').read_text()[-2000:]}")
            try:
                if self.socket.exists() and self.request("GET", "/_ping").status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("dockerd did not answer")

    def stop(self) -> None:
        if self.process is None:
            return
        for container in self.request("GET", "/containers/json?all=1").json():
            self.request("DELETE", f"/containers/{container['Id']}?force=1")
        os.kill(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None
        unmount_below(self.root)
        for hierarchy in Path("/sys/fs/cgroup").iterdir():
            for path in (hierarchy / CGROUP_PARENT, Path("/sys/fs/cgroup") / CGROUP_PARENT):
                for _ in range(50):
                    try:
                        path.rmdir()
                        break
                    except FileNotFoundError:
                        break
                    except OSError:
                        time.sleep(0.1)


def dockerd_binary() -> str | None:
    found = shutil.which("dockerd")
    if found:
        return found
    return str(UNPACKED) if os.access(UNPACKED, os.X_OK) else None


@pytest.fixture(scope="module")
def dockerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlainDockerd]:
    binary = dockerd_binary()
    if binary is None or os.geteuid() != 0:
        pytest.skip("no dockerd installed (or not root)")
    daemon = PlainDockerd(tmp_path_factory.mktemp("dockerd"), binary)
    daemon.start()
    try:
        scratch = tmp_path_factory.mktemp("img")
        rootfs = testimages.busybox_rootfs_tar(str(scratch / "busybox.tar"))
        docker = docker_runner(daemon.host, scratch / "cfg")
        docker("import", *[a for c in IMPORT_CHANGES for a in ("-c", c)], rootfs, IMAGE, check=True)
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def dockerd_agent(api_server: ServerProcess, dockerd: PlainDockerd,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    with started(AgentProcess(tmp_path_factory.mktemp("agent"), api_server, dockerd)) as process:  # type: ignore[arg-type]
        yield process


def test_agent_runs_a_pod_on_plain_dockerd(dockerd_agent: AgentProcess, dockerd: PlainDockerd, api: Api) -> None:
    node = api("GET", f"/api/v1/nodes/{NODE}")
    version = dockerd.request("GET", "/version").json()["Version"]
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"] == f"skiff://{version}"
    env = [{"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
    pod = api("POST", "/api/v1/namespaces/default/pods",
              pod_manifest("ondocker", [{"name": "main", "command": ["sleep", "3600"], "env": env}]))
    uid = pod["metadata"]["uid"]
    pod = wait_pod(api, "ondocker", lambda p: condition(p, "Ready") == "True", agent=dockerd_agent)
    assert pod["status"]["phase"] == "Running"
    assert container_status(pod)["containerID"].startswith("skiff://")
    listed = dockerd.request("GET", "/containers/json").json()
    names = sorted(c["Names"][0].lstrip("/") for c in listed if c["Labels"].get("io.kubernetes.pod.uid") == uid)
    assert names == [f"k8s_POD_ondocker_default_{uid}_0", f"k8s_main_ondocker_default_{uid}_0"]
    delete_pod(api, "ondocker")
    wait_for(lambda: not any(c["Labels"].get("io.kubernetes.pod.uid") == uid
                             for c in dockerd.request("GET", "/containers/json?all=1").json()), timeout=30)
