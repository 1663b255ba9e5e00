"""``skiff server`` with its in-process node agent: one command gives a one-node cluster.

A real ``skiff server`` (no ``--disable-agent``) on a private ``skiff engine`` that has only the busybox test image:
the node turns Ready in ``kubectl get nodes``, the agent makes its own sandbox image (``skiff/pause:3.10``, from
the machine's static busybox, through the Engine API) because the engine lacks it, and a pod created with
``kubectl run`` is bound by the in-process scheduler and runs. ``--disable-agent`` gives no node; an engine that
does not answer gives a NotReady node saying why, while the server keeps serving.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.api.conftest import KUBECTL, make_kubectl
from tests.cluster.kubelet.conftest import IMAGE, EngineProcess, ServerProcess, unmount_below, wait_for
from tests.engine.conftest import docker_runner

NODE = "onebox"
PAUSE = "skiff/pause:3.10"


@pytest.fixture(scope="module")
def pause_missing_at_start(busybox_engine: EngineProcess) -> bool:
    return busybox_engine.request("GET", f"/images/{PAUSE}/json").status == 404


@pytest.fixture(scope="module")
def one_node(busybox_engine: EngineProcess, pause_missing_at_start: bool,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """``skiff server`` with its agent on the module's engine (node ``onebox`` at 127.0.0.1)."""
    if not Path(KUBECTL).exists():
        pytest.skip("kubectl is not installed")
    server = ServerProcess(tmp_path_factory.mktemp("one-node"), "--node-name", NODE, "--node-ip", "127.0.0.1",
                           "--engine", busybox_engine.host, "--log-level", "info", "--kubelet-port", "0",
                           "--disable-proxy", agent=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        unmount_below(server.data_dir / "agent")


@pytest.fixture(scope="module")
def kubectl(one_node: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return make_kubectl(one_node, tmp_path_factory.mktemp("kubectl-cache"))


def node_ready(kubectl: Any, name: str) -> dict[str, Any] | None:
    result = kubectl("get", "node", name, "-o", "json", check=False)
    if result.returncode != 0:
        return None
    node = json.loads(result.stdout)
    ready = [c for c in node["status"].get("conditions", ()) if c["type"] == "Ready"]
    return node if ready and ready[0]["status"] == "True" else None


def test_one_command_gives_a_ready_node(one_node: ServerProcess, kubectl: Any) -> None:
    node = wait_for(lambda: node_ready(kubectl, NODE), timeout=30, interval=0.2)
    assert node["status"]["addresses"][0] == {"type": "InternalIP", "address": "127.0.0.1"}
    table = kubectl("get", "nodes").stdout.splitlines()
    assert table[0].split()[:2] == ["NAME", "STATUS"]
    assert [line.split()[:2] for line in table[1:]] == [[NODE, "Ready"]]
    # the agent authenticates with the node certificate the server made for it
    assert (one_node.data_dir / "tls" / f"node-{NODE}.crt").exists()


def test_the_pause_image_is_made_when_missing(one_node: ServerProcess, busybox_engine: EngineProcess,
                                              pause_missing_at_start: bool, kubectl: Any) -> None:
    assert pause_missing_at_start
    wait_for(lambda: node_ready(kubectl, NODE), timeout=30, interval=0.2)
    image = busybox_engine.request("GET", f"/images/{PAUSE}/json").json()
    assert image["RepoTags"] == [PAUSE]
    assert image["Config"]["Labels"] == {"io.skiff.image": "pause"}
    assert image["Config"]["Entrypoint"][:2] == ["/bin/sh", "-c"]


def test_pause_container_exits_at_once_on_sigterm(one_node: ServerProcess, busybox_engine: EngineProcess,
                                                  kubectl: Any, tmp_path: Path) -> None:
    """PID 1 ignores signals it has no handler for: the sandbox's trap is what makes SIGTERM stop it (exit 0,
    not the 137 of the SIGKILL that would follow the grace period)."""
    wait_for(lambda: node_ready(kubectl, NODE), timeout=30, interval=0.2)
    docker = docker_runner(busybox_engine.host, tmp_path / "cfg")
    container = docker("run", "-d", PAUSE, check=True).stdout.strip()
    try:
        docker("stop", "-t", "60", container, check=True)
        state = json.loads(docker("inspect", container, check=True).stdout)[0]["State"]
        assert (state["Status"], state["ExitCode"]) == ("exited", 0)
    finally:
        docker("rm", "-f", container)


def test_kubectl_run_pod_is_scheduled_and_runs(one_node: ServerProcess, busybox_engine: EngineProcess,
                                                kubectl: Any) -> None:
    wait_for(lambda: node_ready(kubectl, NODE), timeout=30, interval=0.2)
    kubectl("run", "hello", f"--image={IMAGE}", "--restart=Never", "--command", "--", "sleep", "3600")

    def running() -> dict[str, Any] | None:
        pod = json.loads(kubectl("get", "pod", "hello", "-o", "json").stdout)
        return pod if pod["status"].get("phase") == "Running" else None

    pod = wait_for(running, timeout=60, interval=0.2)
    assert pod["spec"]["nodeName"] == NODE  # bound by the server's scheduler
    uid = pod["metadata"]["uid"]
    ours = [c for c in busybox_engine.request("GET", "/containers/json").json()
            if c["Labels"].get("io.kubernetes.pod.uid") == uid]
    assert sorted((c["Names"][0].lstrip("/"), c["Image"]) for c in ours) == [
        (f"k8s_POD_hello_default_{uid}_0", PAUSE), (f"k8s_hello_hello_default_{uid}_0", IMAGE)]
    assert kubectl("get", "pod", "hello", "-o", "wide").stdout.split("\n")[1].split()[2] == "Running"
    # the in-process agent serves the kubelet API with a certificate of the server's CA: logs and exec work
    assert kubectl("exec", "hello", "--", "sh", "-c", "echo to-the-log > /proc/1/fd/1; cat /etc/hostname").stdout \
        == "hello\n"
    assert wait_for(lambda: "to-the-log" in kubectl("logs", "hello").stdout, timeout=10, interval=0.2)
    failed = kubectl("exec", "hello", "--", "sh", "-c", "exit 3", check=False)
    assert failed.returncode == 3
    kubectl("delete", "pod", "hello", "--grace-period=1", "--wait=true", timeout=90)
    wait_for(lambda: not any(c["Labels"].get("io.kubernetes.pod.uid") == uid
                             for c in busybox_engine.request("GET", "/containers/json?all=1").json()), timeout=30)


def test_pause_image_is_made_again_when_removed(one_node: ServerProcess, busybox_engine: EngineProcess,
                                                kubectl: Any) -> None:
    """Housekeeping (every resync, 10 s by default) puts back a sandbox image someone removed."""
    wait_for(lambda: node_ready(kubectl, NODE), timeout=30, interval=0.2)
    assert busybox_engine.request("DELETE", f"/images/{PAUSE}").status == 200
    wait_for(lambda: busybox_engine.request("GET", f"/images/{PAUSE}/json").status == 200, timeout=40, interval=0.5)


def test_disable_agent_gives_no_node(tmp_path: Path) -> None:
    if not Path(KUBECTL).exists():
        pytest.skip("kubectl is not installed")
    server = ServerProcess(tmp_path / "server")  # ServerProcess passes --disable-agent unless agent=True
    assert "--disable-agent" in server.command()
    server.start()
    try:
        kubectl = make_kubectl(server, tmp_path / "cache")
        result = kubectl("get", "nodes")
        assert result.stdout == "" and "No resources found" in result.stderr
        assert not (server.data_dir / "agent").exists()
    finally:
        server.stop()


def test_engine_down_node_not_ready_server_serves(tmp_path: Path) -> None:
    if not Path(KUBECTL).exists():
        pytest.skip("kubectl is not installed")
    missing = tmp_path / "no-engine.sock"
    server = ServerProcess(tmp_path / "server", "--node-name", "lonely", "--node-ip", "127.0.0.1",
                           "--engine", f"unix://{missing}", "--kubelet-port", "0", "--disable-proxy",
                           agent=True)
    server.start()
    try:
        kubectl = make_kubectl(server, tmp_path / "cache")

        def not_ready() -> dict[str, Any] | None:
            result = kubectl("get", "node", "lonely", "-o", "json", check=False)
            if result.returncode != 0:
                return None
            ready = [c for c in json.loads(result.stdout)["status"]["conditions"] if c["type"] == "Ready"]
            return ready[0] if ready and ready[0]["status"] == "False" else None

        condition = wait_for(not_ready, timeout=30, interval=0.2)
        assert condition["reason"] == "KubeletNotReady"
        assert condition["message"].startswith("container runtime is down: the engine at unix://")
        assert str(missing) in condition["message"]
        table = kubectl("get", "nodes").stdout.splitlines()
        assert [line.split()[:2] for line in table[1:]] == [["lonely", "NotReady"]]
        assert kubectl("get", "namespaces", "-o", "name").stdout.split() == [
            "namespace/default", "namespace/kube-node-lease", "namespace/kube-public", "namespace/kube-system"]
        assert server.process is not None and server.process.poll() is None
    finally:
        server.stop()
