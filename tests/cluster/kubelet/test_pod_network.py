"""The agent's pod network on one node: given a pod CIDR (``--pod-cidr`` here; the node IPAM controller's
``spec.podCIDR`` in a cluster, see tests/cluster/local), the agent makes the ``skiff-pods`` bridge network on its
engine through the Engine API (subnet = the pod CIDR, gateway = its first address, no masquerade, routed
gateway mode) and puts the pods' sandboxes on it, so a pod's IP comes from the node's pod CIDR; and it
masquerades what its pods send outside the pod CIDRs (``podegress``)."""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from skiff.cluster.kubelet import podegress
from tests.cluster.api.conftest import ServerProcess
from tests.cluster.kubelet.conftest import (
    AgentProcess,
    Api,
    delete_pod,
    pod_manifest,
    started,
    wait_pod,
)
from tests.engine.conftest import EngineProcess


class PodCidrAgent(AgentProcess):
    def __init__(self, *args: Any, pod_cidr: str) -> None:
        super().__init__(*args)
        self.pod_cidr = pod_cidr

    def command(self) -> list[str]:
        return [*super().command(), "--pod-cidr", self.pod_cidr]


@pytest.fixture(scope="module")
def pod_cidr(busybox_engine: EngineProcess) -> str:
    return busybox_engine.net.subnet(60)  # inside the engine's reserved block


@pytest.fixture(scope="module")
def agent(api_server: ServerProcess, busybox_engine: EngineProcess, pod_cidr: str,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    with started(PodCidrAgent(tmp_path_factory.mktemp("agent"), api_server, busybox_engine,
                              pod_cidr=pod_cidr)) as process:
        yield process
    for network in busybox_engine.request("GET", "/networks").json():
        if network["Name"] == "skiff-pods":
            for container in busybox_engine.request("GET", "/containers/json?all=1").json():
                busybox_engine.request("DELETE", f"/containers/{container['Id']}?force=1")
            busybox_engine.request("DELETE", f"/networks/{network['Id']}")


def test_pods_get_addresses_from_the_pod_cidr(api: Api, agent: AgentProcess, busybox_engine: EngineProcess,
                                              pod_cidr: str) -> None:
    api("POST", "/api/v1/namespaces/default/pods",
        pod_manifest("netpod", [{"name": "web", "command": ["httpd", "-f", "-p", "80", "-h", "/etc"]}]))
    try:
        pod = wait_pod(api, "netpod", lambda p: p.get("status", {}).get("podIP") and
                       p["status"].get("phase") == "Running", agent=agent)
        assert ipaddress.ip_address(pod["status"]["podIP"]) in ipaddress.ip_network(pod_cidr)
        node = api("GET", "/api/v1/nodes/n1")
        assert node["spec"]["podCIDR"] == pod_cidr and node["spec"]["podCIDRs"] == [pod_cidr]

        networks = {n["Name"]: n for n in busybox_engine.request("GET", "/networks").json()}
        net = networks["skiff-pods"]
        assert net["IPAM"]["Config"] == [{"Subnet": pod_cidr, "Gateway": str(ipaddress.ip_network(pod_cidr)[1])}]
        assert net["Options"]["com.docker.network.bridge.enable_ip_masquerade"] == "false"
        assert net["Options"]["com.docker.network.bridge.gateway_mode_ipv4"] == "routed"
        sandboxes = busybox_engine.request(
            "GET", '/containers/json?filters={"label":["io.kubernetes.pod.name=netpod",'
                   '"io.kubernetes.docker.type=podsandbox"]}').json()
        assert [s["HostConfig"]["NetworkMode"] for s in sandboxes] == ["skiff-pods"]
        table = subprocess.run(["nft", "list", "table", "ip", podegress.TABLE], capture_output=True, text=True,
                               check=True).stdout  # traffic leaving the pod CIDRs is masqueraded
        assert f"ip saddr {pod_cidr} ip daddr != @pod-cidrs" in table and "masquerade" in table
    finally:
        delete_pod(api, "netpod")


def test_a_restarted_agent_keeps_the_network(api: Api, agent: AgentProcess,
                                             busybox_engine: EngineProcess) -> None:
    before = [n["Id"] for n in busybox_engine.request("GET", "/networks").json() if n["Name"] == "skiff-pods"]
    agent.stop()
    agent.start()
    after = [n["Id"] for n in busybox_engine.request("GET", "/networks").json() if n["Name"] == "skiff-pods"]
    assert before == after and len(after) == 1
