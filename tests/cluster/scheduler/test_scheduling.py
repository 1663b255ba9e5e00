"""The scheduler against a real ``skiff server`` with hollow nodes, driven by the real kubectl 1.32: pods get
bound and run, replicas spread, nodeSelector / taints / affinity hold, and a pod that fits nowhere waits with
a FailedScheduling event until a node that fits appears."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.api.conftest import KubectlRun, ServerProcess, wait_for
from tests.cluster.scheduler.conftest import HOLLOW_COUNT, HollowNodesProcess

pytestmark = pytest.mark.usefixtures("hollow_nodes")
NODES = [f"hollow-node-{i}" for i in range(HOLLOW_COUNT)]


def pod(name: str, labels: dict[str, str] | None = None, cpu: str = "100m", **spec: Any) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or {}},
                       "spec": {"containers": [{"name": "main", "image": "busybox",
                                                "resources": {"requests": {"cpu": cpu, "memory": "16Mi"}}}], **spec}})


def get_pods(kubectl: KubectlRun, selector: str) -> list[dict[str, Any]]:
    return json.loads(kubectl("get", "pods", "-l", selector, "-o", "json").stdout)["items"]


def running(kubectl: KubectlRun, selector: str, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Wait until ``count`` pods match and all are Running and Ready with a pod IP; return them."""
    def check() -> list[dict[str, Any]] | None:
        items = get_pods(kubectl, selector)
        ok = len(items) == count and all(
            p["status"].get("phase") == "Running" and p["status"].get("podIP") and any(
                c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions") or ())
            for p in items)
        return items if ok else None
    return wait_for(check, timeout, interval=0.2)


def node_of(items: list[dict[str, Any]]) -> Counter[str]:
    return Counter(p["spec"]["nodeName"] for p in items)


def test_kubectl_get_nodes_shows_the_hollow_nodes_ready(kubectl: KubectlRun) -> None:
    out = kubectl("get", "nodes", "--no-headers").stdout.splitlines()
    rows = {line.split()[0]: line.split()[1] for line in out}
    assert {n: rows.get(n) for n in NODES} == dict.fromkeys(NODES, "Ready")
    wide = kubectl("get", "nodes", "-o", "wide").stdout
    assert "INTERNAL-IP" in wide and "198.18.0.1 " in wide and "v1.32.0-hollow" in wide


def test_hollow_nodes_renew_their_leases(kubectl: KubectlRun) -> None:
    def renew_time() -> str:
        return json.loads(kubectl("get", "lease", "-n", "kube-node-lease", NODES[0], "-o", "json").stdout)[
            "spec"]["renewTime"]
    first = renew_time()
    wait_for(lambda: renew_time() != first, timeout=15, interval=0.5)


def test_pods_are_bound_run_and_show_their_node(kubectl: KubectlRun) -> None:
    for i in range(5):
        kubectl("apply", "-f", "-", input=pod(f"plain-{i}", {"test": "plain"}))
    items = running(kubectl, "test=plain", 5)
    # least allocated: five equal pods on five empty nodes take one node each
    assert sorted(node_of(items)) == NODES
    wide = kubectl("get", "pods", "-l", "test=plain", "-o", "wide").stdout
    header, *rows = wide.splitlines()
    assert "NODE" in header.split() and "IP" in header.split()
    node_column = header.split().index("NODE")
    assert sorted(row.split()[node_column] for row in rows) == NODES
    for p in items:
        node = p["spec"]["nodeName"]
        index = int(node.rsplit("-", 1)[1])
        assert p["status"]["podIP"].startswith(f"10.42.{index}.")  # from its node's pod CIDR
        assert p["status"]["hostIP"] == f"198.18.0.{index + 1}"
    events = kubectl("get", "events", "--field-selector", "reason=Scheduled", "-o", "json").stdout
    messages = {e["message"] for e in json.loads(events)["items"]}
    assert f"Successfully assigned default/plain-0 to {items[0]['spec']['nodeName']}" in messages or any(
        m.startswith("Successfully assigned default/plain-") for m in messages)
    kubectl("delete", "pod", "-l", "test=plain", "--wait=true", timeout=60)
    assert get_pods(kubectl, "test=plain") == []


def test_replicas_of_a_replicaset_spread_over_the_nodes(kubectl: KubectlRun) -> None:
    rs = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "spread"},
          "spec": {"replicas": 10, "selector": {"matchLabels": {"test": "spread"}},
                   "template": {"metadata": {"labels": {"test": "spread"}},
                                "spec": {"containers": [{"name": "main", "image": "busybox"}]}}}}
    kubectl("apply", "-f", "-", input=json.dumps(rs))
    items = running(kubectl, "test=spread", 10, timeout=60)
    assert sorted(node_of(items).values()) == [2] * HOLLOW_COUNT
    kubectl("delete", "replicaset", "spread", "--wait=true", timeout=60)


def test_node_selector(kubectl: KubectlRun) -> None:
    kubectl("label", "node", NODES[3], "disk=ssd")
    try:
        for i in range(3):
            kubectl("apply", "-f", "-", input=pod(f"ssd-{i}", {"test": "ssd"}, nodeSelector={"disk": "ssd"}))
        assert set(node_of(running(kubectl, "test=ssd", 3))) == {NODES[3]}
    finally:
        kubectl("delete", "pod", "-l", "test=ssd", "--wait=false")
        kubectl("label", "node", NODES[3], "disk-")


def test_taints_and_tolerations(kubectl: KubectlRun) -> None:
    tainted = NODES[:-1]
    for name in tainted:
        kubectl("taint", "node", name, "dedicated=gpu:NoSchedule")
    try:
        for i in range(3):
            kubectl("apply", "-f", "-", input=pod(f"untolerant-{i}", {"test": "untolerant"}))
        assert set(node_of(running(kubectl, "test=untolerant", 3))) == {NODES[-1]}
        toleration = [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]
        kubectl("apply", "-f", "-", input=pod("tolerant", {"test": "tolerant"}, tolerations=toleration,
                                              nodeSelector={"kubernetes.io/hostname": NODES[0]}))
        assert set(node_of(running(kubectl, "test=tolerant", 1))) == {NODES[0]}
    finally:
        kubectl("delete", "pod", "-l", "test in (untolerant,tolerant)", "--wait=false")
        for name in tainted:
            kubectl("taint", "node", name, "dedicated-")


def test_required_pod_anti_affinity_and_affinity(kubectl: KubectlRun) -> None:
    anti = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"test": "db"}}, "topologyKey": "kubernetes.io/hostname"}]}}
    for i in range(3):
        kubectl("apply", "-f", "-", input=pod(f"db-{i}", {"test": "db"}, affinity=anti))
    placed = node_of(running(kubectl, "test=db", 3))
    assert len(placed) == 3
    near = {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"test": "db"}}, "topologyKey": "kubernetes.io/hostname"}]}}
    for i in range(4):
        kubectl("apply", "-f", "-", input=pod(f"near-{i}", {"test": "near"}, affinity=near))
    assert set(node_of(running(kubectl, "test=near", 4))) <= set(placed)
    kubectl("delete", "pod", "-l", "test in (db,near)", "--wait=false")


def test_unschedulable_pod_waits_with_an_event_until_a_node_fits(kubectl: KubectlRun, api_server: ServerProcess,
                                                               tmp_path: Path) -> None:
    kubectl("apply", "-f", "-", input=pod("huge", {"test": "huge"}, cpu="12"))
    message = f"0/{HOLLOW_COUNT} nodes are available: {HOLLOW_COUNT} Insufficient cpu."

    def failed_event() -> bool:
        out = kubectl("get", "events", "--field-selector", "involvedObject.name=huge,reason=FailedScheduling",
                      "-o", "json").stdout
        return any(e["message"] == message and e["type"] == "Warning" for e in json.loads(out)["items"])
    wait_for(failed_event, timeout=20, interval=0.3)
    live = get_pods(kubectl, "test=huge")[0]
    assert live["status"]["phase"] == "Pending" and not live["spec"].get("nodeName")
    condition = next(c for c in live["status"]["conditions"] if c["type"] == "PodScheduled")
    assert (condition["status"], condition["reason"], condition["message"]) == ("False", "Unschedulable", message)
    assert message in kubectl("describe", "pod", "huge").stdout

    big = HollowNodesProcess(api_server, tmp_path / "big", 1, "--name-prefix", "big-", "--cpu", "16",
                             "--cluster-cidr", "10.99.0.0/16")
    try:
        big.wait_registered()
        items = running(kubectl, "test=huge", 1, timeout=30)
        assert items[0]["spec"]["nodeName"] == "big-0"
    finally:
        kubectl("delete", "pod", "huge", "--wait=false")
        big.stop()
        kubectl("delete", "node", "big-0")


def test_deleting_a_running_pod_is_confirmed_by_its_hollow_node(kubectl: KubectlRun) -> None:
    kubectl("apply", "-f", "-", input=pod("short-lived", {"test": "short"}))
    running(kubectl, "test=short", 1)
    kubectl("delete", "pod", "short-lived", "--wait=true", timeout=30)  # returns once the pod is really gone
    assert get_pods(kubectl, "test=short") == []
