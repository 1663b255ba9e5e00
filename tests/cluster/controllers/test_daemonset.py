"""The DaemonSet controller in a real ``skiff server`` (its scheduler binding the daemon pods) on three hollow
nodes, driven by the real kubectl 1.32: one pod a node, node selectors and taints, a rolling update, deletion."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from skiff.cluster.controllers.daemonset import HASH_LABEL, rolling_victims
from tests.cluster.api.conftest import KUBECTL, KubectlRun, make_kubectl, running_server, wait_for
from tests.cluster.scheduler.conftest import HollowNodesProcess

NODES = ["hollow-node-0", "hollow-node-1", "hollow-node-2"]


@pytest.fixture(scope="module")
def kubectl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubectlRun]:
    if not Path(KUBECTL).exists():
        pytest.skip("kubectl is not installed")
    root = tmp_path_factory.mktemp("daemonsets")
    with running_server(root / "server") as server:
        nodes = HollowNodesProcess(server, root / "hollow", len(NODES))
        try:
            nodes.wait_registered()
            yield make_kubectl(server, root / "cache")
        finally:
            nodes.stop()


def daemonset(name: str, image: str = "fluentd:1", **pod_spec: Any) -> str:
    return json.dumps({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": name}, "spec": {
        "selector": {"matchLabels": {"app": name}},
        "template": {"metadata": {"labels": {"app": name}},
                     "spec": {"containers": [{"name": "agent", "image": image}], **pod_spec}}}})


def placed(kubectl: KubectlRun, name: str) -> dict[str, str]:
    """node -> the image of the daemon pod bound there (pods being deleted left out)."""
    pods = json.loads(kubectl("get", "pods", "-l", f"app={name}", "-o", "json").stdout)["items"]
    return {p["spec"]["nodeName"]: p["spec"]["containers"][0]["image"] for p in pods
            if p["spec"].get("nodeName") and not p["metadata"].get("deletionTimestamp")}


def test_one_pod_on_every_node_and_rollout_status(kubectl: KubectlRun) -> None:
    kubectl("apply", "-f", "-", input=daemonset("logs"))
    out = kubectl("rollout", "status", "ds/logs", "--timeout=60s", timeout=70).stdout
    assert 'daemon set "logs" successfully rolled out' in out
    assert placed(kubectl, "logs") == dict.fromkeys(NODES, "fluentd:1")
    row = kubectl("get", "ds", "logs").stdout.splitlines()
    assert row[0].split() == ["NAME", "DESIRED", "CURRENT", "READY", "UP-TO-DATE", "AVAILABLE", "NODE", "SELECTOR",
                              "AGE"]
    assert row[1].split()[:7] == ["logs", "3", "3", "3", "3", "3", "<none>"]

    # a rolling update replaces them all, the new template's pods on every node in the end
    kubectl("set", "image", "ds/logs", "agent=fluentd:2")
    kubectl("rollout", "status", "ds/logs", "--timeout=60s", timeout=70)
    wait_for(lambda: placed(kubectl, "logs") == dict.fromkeys(NODES, "fluentd:2"), timeout=30)
    status = json.loads(kubectl("get", "ds", "logs", "-o", "json").stdout)["status"]
    assert (status["desiredNumberScheduled"], status["updatedNumberScheduled"], status["numberAvailable"]) == (3, 3, 3)

    # a pod deleted by hand comes back; the DaemonSet's deletion takes its pods with it
    victim = json.loads(kubectl("get", "pods", "-l", "app=logs", "-o", "json").stdout)["items"][0]
    kubectl("delete", "pod", victim["metadata"]["name"], "--wait=false")
    wait_for(lambda: len(placed(kubectl, "logs")) == 3 and victim["metadata"]["name"] not in
             kubectl("get", "pods", "-l", "app=logs", "-o", "name").stdout, timeout=30)
    kubectl("delete", "ds", "logs")
    wait_for(lambda: not placed(kubectl, "logs"), timeout=30)


def test_node_selectors_and_taints_choose_the_nodes(kubectl: KubectlRun) -> None:
    kubectl("apply", "-f", "-", input=daemonset("edge", nodeSelector={"role": "edge"}))
    assert placed(kubectl, "edge") == {}  # no node has the label yet
    kubectl("label", "node", NODES[1], "role=edge")
    wait_for(lambda: set(placed(kubectl, "edge")) == {NODES[1]}, timeout=30)
    kubectl("label", "node", NODES[2], "role=edge")
    wait_for(lambda: set(placed(kubectl, "edge")) == {NODES[1], NODES[2]}, timeout=30)
    kubectl("label", "node", NODES[1], "role-")
    wait_for(lambda: set(placed(kubectl, "edge")) == {NODES[2]}, timeout=30)
    kubectl("delete", "ds", "edge")
    kubectl("label", "node", NODES[2], "role-")

    # NoSchedule keeps new daemon pods off a node (a pod already there stays); NoExecute evicts them too
    kubectl("taint", "node", NODES[0], "dedicated=db:NoSchedule")
    try:
        kubectl("apply", "-f", "-", input=daemonset("spread"))
        wait_for(lambda: set(placed(kubectl, "spread")) == {NODES[1], NODES[2]}, timeout=30)
        tolerant = daemonset("tolerant", tolerations=[{"key": "dedicated", "operator": "Exists"}])
        kubectl("apply", "-f", "-", input=tolerant)
        wait_for(lambda: set(placed(kubectl, "tolerant")) == set(NODES), timeout=30)
        kubectl("taint", "node", NODES[1], "dedicated=db:NoExecute")
        wait_for(lambda: set(placed(kubectl, "spread")) == {NODES[2]}, timeout=30)
        assert set(placed(kubectl, "tolerant")) == set(NODES)
    finally:
        for node, taint in ((NODES[0], "dedicated=db:NoSchedule-"), (NODES[1], "dedicated=db:NoExecute-")):
            kubectl("taint", "node", node, taint, check=False)
        kubectl("delete", "ds", "spread", "tolerant", check=False)


def test_invalid_daemonsets_are_refused(kubectl: KubectlRun) -> None:
    bad = json.loads(daemonset("bad"))
    bad["spec"]["template"]["spec"]["restartPolicy"] = "Never"
    result = kubectl("create", "-f", "-", input=json.dumps(bad), check=False)
    assert 'spec.template.spec.restartPolicy: Unsupported value: "Never": supported values: "Always"' \
        in result.stderr, result.stderr
    mismatched = json.loads(daemonset("bad"))
    mismatched["spec"]["selector"] = {"matchLabels": {"app": "other"}}
    result = kubectl("create", "-f", "-", input=json.dumps(mismatched), check=False)
    assert "`selector` does not match template `labels`" in result.stderr, result.stderr


def _pod(name: str, revision: str, available: bool) -> dict[str, Any]:
    condition = {"type": "Ready", "status": "True" if available else "False",
                 "lastTransitionTime": "2026-01-01T00:00:00Z"}
    return {"metadata": {"name": name, "labels": {HASH_LABEL: revision}},
            "status": {"phase": "Running", "conditions": [condition]}}


@pytest.mark.parametrize(("strategy", "pods", "victims"), [
    ({}, [("a", "old", True), ("b", "old", True), ("c", "old", True)], ["a"]),  # maxUnavailable 1
    ({"rollingUpdate": {"maxUnavailable": 2}}, [("a", "old", True), ("b", "old", True), ("c", "new", True)],
     ["a", "b"]),
    ({}, [("a", "old", True), ("b", "old", False), ("c", "new", True)], ["b"]),  # down anyway: no room left
    ({"rollingUpdate": {"maxUnavailable": "50%"}}, [("a", "old", True), ("b", "old", True), ("c", "old", True)],
     ["a", "b"]),  # 50% of 3, rounded up
    ({"type": "OnDelete"}, [("a", "old", True)], []),
])
def test_a_rolling_update_replaces_at_most_max_unavailable_at_once(strategy: dict, pods: list, victims: list) -> None:
    ds = {"spec": {"updateStrategy": {"type": "RollingUpdate", **strategy}}}
    per_node = [[_pod(name, revision, ok)] for name, revision, ok in pods]
    chosen = rolling_victims(ds, per_node, "new", [], now=1e10)
    assert [p["metadata"]["name"] for p in chosen] == victims
