"""``skiff cluster``: a real 2-node local cluster (each node a network namespace with its own engine; node 1 runs
``skiff server`` with its in-process agent, node 2 ``skiff agent``), driven by the real ``skiff cluster``
command, the real kubectl and docker-py on the nodes' engine sockets.

Shown here: every node Ready with its own pod CIDR; the busybox image loaded on every node by ``skiff cluster
load``; pods pinned to different nodes get addresses from their node's pod CIDR; a pod on node 1 reaches a pod
on node 2 by its IP and is seen there with its own address (routed, not NATed), while traffic leaving the pod
CIDRs (to the host) is seen with the node's address (masqueraded); ``skiff cluster delete``
removes every process, namespace, link, mount, cgroup and file even after node 2's processes were SIGKILLed.

The nodes' subnet is the test engines' reserved 10.K block (``reserve_net_block``), so sessions side by side
never share addresses or names; nothing is sent anywhere but to addresses inside that block.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.api.conftest import REPO, wait_for
from tests.engine.conftest import NetBlock, reserve_net_block
from tests.image import testimages

IMAGE = "skiff-test/busybox:test"
KUBECTL = "kubectl"


class Cluster:
    def __init__(self, root: Path, net: NetBlock) -> None:
        self.root = root
        self.net = net
        self.name = f"t{net.k}"
        self.subnet = f"{net.prefix}.0.0/24"

    def skiff(self, *args: str, check: bool = True, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        result = subprocess.run([sys.executable, "-m", "skiff.cli.main", "cluster", *args], capture_output=True,
                                text=True, env=env, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise AssertionError(f"skiff cluster {' '.join(args)}: exit {result.returncode}\n{result.stderr}")
        return result

    def own(self, verb: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.skiff(verb, "--name", self.name, "--root", str(self.root), *args, check=check)

    @property
    def state(self) -> dict[str, Any]:
        return json.loads((self.root / "cluster.json").read_text())

    def kubectl(self, *args: str) -> str:
        result = subprocess.run([KUBECTL, "--kubeconfig", str(self.root.parent / "kubeconfig"), *args],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
        return result.stdout

    def engine(self, index: int) -> Any:
        import docker

        return docker.APIClient(base_url=f"unix://{self.root}/n{index}/engine.sock", version="auto", timeout=60)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> str:
    if os.geteuid() != 0:
        pytest.skip("a local cluster needs root")
    try:
        return testimages.busybox_docker_archive(str(tmp_path_factory.mktemp("img") / "busybox.tar"), IMAGE)
    except testimages.TestImageUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def cluster(archive: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    net = reserve_net_block()
    base = tmp_path_factory.mktemp("skc")
    made = Cluster(base / "c", net)
    try:
        made.own("create", "--nodes", "2", "--subnet", made.subnet, "--timeout", "300",
                 "--agent-arg=--lease-interval=2", "--agent-arg=--resync-interval=2")
        (base / "kubeconfig").write_text(made.own("kubeconfig").stdout)
        yield made
    finally:
        if (made.root / "cluster.json").exists():
            made.own("delete", check=False)
        net.release()


def nodes(cluster: Cluster) -> dict[str, dict[str, Any]]:
    return {n["metadata"]["name"]: n for n in json.loads(cluster.kubectl("get", "nodes", "-o", "json"))["items"]}


def test_every_node_is_ready_with_a_pod_cidr_of_its_own(cluster: Cluster) -> None:
    found = nodes(cluster)
    assert set(found) == {f"{cluster.name}-1", f"{cluster.name}-2"}
    cidrs = {name: ipaddress.ip_network(n["spec"]["podCIDR"]) for name, n in found.items()}
    assert len(set(cidrs.values())) == 2
    assert all(c.prefixlen == 24 and c.subnet_of(ipaddress.ip_network("10.42.0.0/16")) for c in cidrs.values())
    for name, node in found.items():
        assert any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"])
        address = next(a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP")
        assert ipaddress.ip_address(address) in ipaddress.ip_network(cluster.subnet), name
    kubeconfig = cluster.own("kubeconfig").stdout
    assert f"server: https://{cluster.net.prefix}.0.2:6443" in kubeconfig
    status = json.loads(cluster.own("status").stdout)
    assert [n["address"] for n in status["nodes"]] == [f"{cluster.net.prefix}.0.2", f"{cluster.net.prefix}.0.3"]
    assert status["nodes"][0]["running"] == {"engine": True, "server": True}
    assert status["nodes"][1]["running"] == {"engine": True, "agent": True}


def test_load_puts_the_image_on_every_node(cluster: Cluster, archive: str) -> None:
    out = cluster.own("load", archive).stdout
    assert IMAGE in out
    for index in (1, 2):
        engine = cluster.engine(index)
        try:
            assert any(IMAGE in (image.get("RepoTags") or ()) for image in engine.images())
        finally:
            engine.close()


def pod(name: str, node: str, command: list[str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
            "spec": {"nodeSelector": {"kubernetes.io/hostname": node}, "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": name, "image": IMAGE, "command": command}]}}


def running_pod(cluster: Cluster, name: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        doc = json.loads(cluster.kubectl("get", "pod", name, "-o", "json"))
        status = doc.get("status") or {}
        return doc if status.get("phase") == "Running" and status.get("podIP") else None

    return wait_for(check, timeout=60, interval=0.3)


def container_of(engine: Any, pod_name: str) -> str:
    found = engine.containers(all=True, filters={"label": [f"io.kubernetes.pod.name={pod_name}",
                                                 "io.kubernetes.docker.type=container"]})
    assert len(found) == 1, found
    return found[0]["Id"]


def test_a_pod_reaches_a_pod_on_another_node_by_its_ip(cluster: Cluster) -> None:
    first, second = f"{cluster.name}-1", f"{cluster.name}-2"
    manifests = [pod("web", second, ["httpd", "-f", "-v", "-p", "8080", "-h", "/etc"]),
                 pod("client", first, ["sleep", "3600"])]
    subprocess.run([KUBECTL, "--kubeconfig", str(cluster.root.parent / "kubeconfig"), "apply", "-f", "-"],
                   input=json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests}), text=True,
                   check=True, capture_output=True)
    web, client = running_pod(cluster, "web"), running_pod(cluster, "client")
    assert (web["spec"]["nodeName"], client["spec"]["nodeName"]) == (second, first)
    cidrs = {name: ipaddress.ip_network(n["spec"]["podCIDR"]) for name, n in nodes(cluster).items()}
    web_ip, client_ip = web["status"]["podIP"], client["status"]["podIP"]
    assert ipaddress.ip_address(web_ip) in cidrs[second]
    assert ipaddress.ip_address(client_ip) in cidrs[first]

    node1, node2 = cluster.engine(1), cluster.engine(2)
    try:
        exec_id = node1.exec_create(container_of(node1, "client"),
                                    ["timeout", "10", "wget", "-qO-", f"http://{web_ip}:8080/hostname"])
        output = node1.exec_start(exec_id)
        assert node1.exec_inspect(exec_id)["ExitCode"] == 0, output
        assert output.decode().strip() == "web"
        logs = node2.logs(container_of(node2, "web")).decode()
        assert client_ip in logs, f"web saw no request from {client_ip} (NATed?):\n{logs}"  # httpd -v: peer address
    finally:
        node1.close()
        node2.close()
        cluster.kubectl("delete", "pod", "web", "client", "--wait=false")


class PeerEcho:
    """An HTTP server on the host's end of the cluster bridge (outside every pod CIDR) that answers with the
    address it saw the request come from. Its socket is bound to the bridge, so even an answer to an
    unmasqueraded pod address could only go back onto the cluster's bridge, never out of the host."""

    def __init__(self, address: str, bridge: str) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, bridge.encode())
        self.sock.bind((address, 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.url = f"http://{address}:{self.sock.getsockname()[1]}/"
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, (peer, _port) = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    conn.recv(4096)
                    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n" + peer.encode())

    def close(self) -> None:
        self.stopping.set()
        self.thread.join()
        self.sock.close()


def test_pod_traffic_leaving_the_pod_cidrs_is_masqueraded(cluster: Cluster) -> None:
    """A pod reaching an address in no pod CIDR (the host, here) is seen there with its node's address, so the
    answer finds its way back; between pods the pod's own address is kept (the test above)."""
    state, found = cluster.state, nodes(cluster)
    echo = PeerEcho(state["gateway"], state["bridge"])
    names = [f"{cluster.name}-1", f"{cluster.name}-2"]
    pods = [pod(f"egress{i}", name, ["sleep", "3600"]) for i, name in enumerate(names, 1)]
    subprocess.run([KUBECTL, "--kubeconfig", str(cluster.root.parent / "kubeconfig"), "apply", "-f", "-"],
                   input=json.dumps({"apiVersion": "v1", "kind": "List", "items": pods}), text=True,
                   check=True, capture_output=True)
    try:
        for index, name in enumerate(names, 1):
            running_pod(cluster, f"egress{index}")
            node_ip = next(a["address"] for a in found[name]["status"]["addresses"] if a["type"] == "InternalIP")
            engine = cluster.engine(index)
            try:
                exec_id = engine.exec_create(container_of(engine, f"egress{index}"),
                                             ["timeout", "10", "wget", "-qO-", echo.url])
                output = engine.exec_start(exec_id).decode().strip()
                assert engine.exec_inspect(exec_id)["ExitCode"] == 0, output
            finally:
                engine.close()
            assert output == node_ip, f"the host saw {output!r} from a pod on {name}, not its node's {node_ip}"
    finally:
        echo.close()
        cluster.kubectl("delete", "pod", "egress1", "egress2", "--wait=false")


def test_routes_follow_the_nodes(cluster: Cluster) -> None:
    """Node 1 routes node 2's pod CIDR via node 2's address (and the reverse), with the agents' protocol."""
    found = nodes(cluster)
    for index, other in ((1, 2), (2, 1)):
        other_node = found[f"{cluster.name}-{other}"]
        routes = pod_routes(cluster, index)
        assert f"{other_node['spec']['podCIDR']} via {cluster.net.prefix}.0.{other + 1} dev eth0" in routes


def test_bad_input_is_refused(cluster: Cluster) -> None:
    bad = cluster.skiff("create", "--name", "Bad_Name", check=False)
    assert bad.returncode == 2 and "invalid cluster name" in bad.stderr
    again = cluster.own("create", "--nodes", "1", check=False)
    assert again.returncode == 1 and "exists already" in again.stderr
    twin = cluster.skiff("create", "--name", cluster.name, "--root", str(cluster.root.parent / "twin"), "--nodes", "1",
                         check=False)  # same names, another root: refused before anything is made or removed
    assert twin.returncode == 1 and "exists already" in twin.stderr
    assert not (cluster.root.parent / "twin").exists()
    assert len(nodes(cluster)) == 2
    missing = cluster.skiff("kubeconfig", "--name", "nothere", "--root", str(cluster.root.parent / "none"),
                            check=False)
    assert missing.returncode == 1 and "no cluster" in missing.stderr


def pod_routes(cluster: Cluster, index: int) -> str:
    return subprocess.run(["ip", "-n", f"skc-{cluster.name}-{index}", "route", "show", "proto", "77"],
                          capture_output=True, text=True, check=True).stdout


def test_a_deleted_node_loses_its_route(cluster: Cluster) -> None:
    """Node 2's Node object deleted: node 1's agent drops the route to its pod CIDR (runs just before delete:
    node 2's agent keeps running without its Node)."""
    gone = nodes(cluster)[f"{cluster.name}-2"]["spec"]["podCIDR"]
    assert gone in pod_routes(cluster, 1)
    cluster.kubectl("delete", "node", f"{cluster.name}-2")
    wait_for(lambda: gone not in pod_routes(cluster, 1), timeout=30, interval=0.2)


def test_delete_removes_everything_even_after_a_crash(cluster: Cluster) -> None:
    state = cluster.state
    second = state["nodes"][1]
    for process in second["processes"].values():  # node 2 "crashed": its agent and engine are gone
        os.kill(process["pid"], signal.SIGKILL)
    time.sleep(0.5)
    cluster.own("delete")
    assert_nothing_left(cluster, state)


def assert_nothing_left(cluster: Cluster, state: dict[str, Any]) -> None:
    """After ``skiff cluster delete``: no root, namespace, veth, bridge, process, cgroup, mount or route of the
    cluster (recorded in ``state``) is left (the nodes' nftables tables lived in their namespaces)."""
    assert not cluster.root.exists()
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    for node in state["nodes"]:
        assert node["netns"] not in netns
        assert f" {node['veth']}@" not in links and f" {node['veth']}:" not in links
        for pid in (p["pid"] for p in node["processes"].values()):
            assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
        hierarchies = [Path("/sys/fs/cgroup"), *(m for m in Path("/sys/fs/cgroup").iterdir() if m.is_dir())]
        assert not any(Path(m, node["cgroup_parent"].strip("/")).exists() for m in hierarchies)
    assert f" {state['bridge']}:" not in links
    with open("/proc/self/mountinfo") as f:
        assert str(cluster.root) not in f.read()
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    assert cluster.net.prefix + ".0.0/24" not in routes
