"""Hollow nodes' pure parts: pod CIDRs per node, pod addresses, the Node object and the Running status."""

from __future__ import annotations

import ipaddress

import pytest

from skiff.cluster.hollow.nodes import HollowNode, HollowNodes, HollowOptions, pod_cidrs
from skiff.cluster.kubelet.status import qos_class
from skiff.errors import InvalidArgument


def test_pod_cidrs_are_consecutive_subnets() -> None:
    assert [str(c) for c in pod_cidrs("10.42.0.0/16", 24, 3)] == ["10.42.0.0/24", "10.42.1.0/24", "10.42.2.0/24"]
    assert len(pod_cidrs("10.128.0.0/9", 24, 5000)) == 5000


@pytest.mark.parametrize(("cidr", "mask", "count"), [("10.42.0.0/16", 24, 257), ("nonsense", 24, 1),
                                                     ("10.42.0.0/16", 8, 1), ("10.42.0.0/16", 31, 1)])
def test_impossible_pod_cidrs_are_refused(cidr: str, mask: int, count: int) -> None:
    with pytest.raises(InvalidArgument):
        pod_cidrs(cidr, mask, count)


def test_pod_addresses_are_unique_reused_after_release_and_exhaustion_is_an_error() -> None:
    node = HollowNode("n", 0, "198.18.0.1", ipaddress.ip_network("10.1.0.0/29"))  # hosts .2-.6 for pods
    addresses = [node.allocate(f"uid{i}") for i in range(5)]
    assert addresses == [f"10.1.0.{i}" for i in range(2, 7)]
    assert node.allocate("uid0") == "10.1.0.2"  # the same pod keeps its address
    with pytest.raises(InvalidArgument):
        node.allocate("one-too-many")
    node.release("uid3")
    assert node.allocate("new") == "10.1.0.5"


@pytest.mark.parametrize(("resources", "qos"), [
    ([{}], "BestEffort"),
    ([{"requests": {"cpu": "100m"}}], "Burstable"),
    ([{"limits": {"cpu": "1", "memory": "1Gi"}}], "Guaranteed"),
    ([{"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "1", "memory": "1Gi"}}], "Guaranteed"),
    ([{"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "500m"}}], "Burstable"),
    ([{"limits": {"cpu": "1", "memory": "1Gi"}}, {}], "Burstable"),
])
def test_qos_class(resources: list[dict], qos: str) -> None:
    pod = {"spec": {"containers": [{"name": f"c{i}", "resources": r} for i, r in enumerate(resources)]}}
    assert qos_class(pod) == qos


def test_node_object_and_running_status() -> None:
    nodes = HollowNodes(client=None, options=HollowOptions(count=3, zones=2, cpu="8"))  # type: ignore[arg-type]
    node = nodes.nodes["hollow-node-2"]
    obj = nodes.node_object(node)
    assert obj["metadata"]["labels"]["topology.kubernetes.io/zone"] == "zone-0"
    assert obj["spec"]["podCIDR"] == "10.42.2.0/24"
    assert obj["status"]["allocatable"]["cpu"] == "8"
    assert {c["type"]: c["status"] for c in obj["status"]["conditions"]}["Ready"] == "True"
    assert obj["status"]["addresses"][0] == {"type": "InternalIP", "address": "198.18.0.3"}
    pod = {"metadata": {"name": "p", "uid": "u1"}, "spec": {"containers": [{"name": "a", "image": "nginx"}]}}
    status = nodes.running_status(pod, node)
    assert status["phase"] == "Running" and status["podIP"] == "10.42.2.2" and status["hostIP"] == "198.18.0.3"
    assert {c["type"] for c in status["conditions"] if c["status"] == "True"} >= {"Ready", "ContainersReady",
                                                                                  "PodScheduled"}
    assert status["containerStatuses"][0]["ready"] is True


def test_counts_are_checked() -> None:
    with pytest.raises(InvalidArgument):
        HollowNodes(client=None, options=HollowOptions(count=0))  # type: ignore[arg-type]
