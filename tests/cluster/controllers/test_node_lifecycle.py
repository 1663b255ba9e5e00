"""Node lifecycle end to end: a real ``skiff server`` (its scheduler and controllers, short times given by its
flags), hollow nodes in two ``skiff hollow-nodes`` processes, the real kubectl 1.32.

SIGKILL of the process running one node stops its heartbeats: the node turns NotReady with the unreachable
taints, its pods are deleted once their (server-defaulted) tolerations run out and replaced on the other
nodes; a pod tolerating the taint forever stays, marked not Ready. Restarting the process brings the node
back Ready, without taints, and that pod Ready again. A NoExecute taint nobody tolerates evicts at once; with
every node killed the controller keeps no NoExecute taint at all (kube's full disruption).
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.api.conftest import KubectlRun, ServerProcess, wait_for
from tests.cluster.scheduler.conftest import HollowNodesProcess

GRACE, TOLERATION = 5, 2  # seconds: --node-monitor-grace-period, --default-*-toleration-seconds
SERVER_FLAGS = ("--disable-agent", "--node-monitor-grace-period", str(GRACE), "--node-monitor-period", "1",
                "--default-not-ready-toleration-seconds", str(TOLERATION),
                "--default-unreachable-toleration-seconds", str(TOLERATION))
# two groups of nodes, each its own process: killing one kills only its nodes
STEADY = ("--name-prefix", "steady-", "--lease-interval", "1")
DOOMED = ("--name-prefix", "doomed-", "--lease-interval", "1", "--cluster-cidr", "10.44.0.0/16")
VICTIM = "doomed-0"

DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 6
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      topologySpreadConstraints:
      - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: ScheduleAnyway,
         labelSelector: {matchLabels: {app: web}}}
      containers: [{name: web, image: nginx}]
"""
# stays through any outage: it tolerates both taints with no time limit
STAYER = f"""
apiVersion: v1
kind: Pod
metadata: {{name: stayer}}
spec:
  nodeSelector: {{kubernetes.io/hostname: {VICTIM}}}
  tolerations:
  - {{key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute}}
  - {{key: node.kubernetes.io/not-ready, operator: Exists, effect: NoExecute}}
  containers: [{{name: c, image: busybox}}]
"""


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("nodelifecycle"), *SERVER_FLAGS)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def hollow(api_server: ServerProcess, tmp_path: Path) -> Iterator[dict[str, HollowNodesProcess]]:
    groups = {"steady": HollowNodesProcess(api_server, tmp_path / "steady", 2, *STEADY),
              "doomed": HollowNodesProcess(api_server, tmp_path / "doomed", 1, *DOOMED)}
    try:
        for group in groups.values():
            group.wait_registered()
        yield groups
    finally:
        for group in groups.values():
            group.stop()


def get_json(kubectl: KubectlRun, *args: str) -> Any:
    return json.loads(kubectl("get", *args, "-o", "json").stdout)


def node_status(kubectl: KubectlRun, name: str) -> str:
    """The STATUS column of ``kubectl get nodes``."""
    line = kubectl("get", "nodes", name, "--no-headers").stdout.split()
    return line[1]


def web_pods(kubectl: KubectlRun) -> list[dict[str, Any]]:
    return get_json(kubectl, "pods", "-l", "app=web")["items"]


def is_ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or ())


def taints(kubectl: KubectlRun, name: str) -> set[tuple[str, str]]:
    return {(t["key"], t["effect"]) for t in get_json(kubectl, "node", name)["spec"].get("taints") or ()}


def test_a_node_that_dies_is_tainted_its_pods_move_and_it_recovers(
        api_server: ServerProcess, hollow: dict[str, HollowNodesProcess], kubectl: KubectlRun) -> None:
    nodes = ["steady-0", "steady-1", VICTIM]
    wait_for(lambda: all(node_status(kubectl, n) == "Ready" for n in nodes), timeout=30)
    kubectl("apply", "-f", "-", input=DEPLOYMENT)
    kubectl("apply", "-f", "-", input=STAYER)
    kubectl("rollout", "status", "deployment/web", "--timeout=60s")
    wait_for(lambda: is_ready(get_json(kubectl, "pod", "stayer")), timeout=30)
    pods = web_pods(kubectl)
    # the DefaultTolerationSeconds admission gave every pod the server's --default-*-toleration-seconds
    assert {(t["key"], t.get("tolerationSeconds")) for t in pods[0]["spec"]["tolerations"]} == {
        ("node.kubernetes.io/not-ready", TOLERATION), ("node.kubernetes.io/unreachable", TOLERATION)}
    doomed_pods = {p["metadata"]["name"] for p in pods if p["spec"]["nodeName"] == VICTIM}
    assert doomed_pods, f"the spread put nothing on {VICTIM}: {[p['spec']['nodeName'] for p in pods]}"

    hollow["doomed"].process.send_signal(signal.SIGKILL)  # no goodbye: its lease simply stops being renewed
    hollow["doomed"].process.wait()

    wait_for(lambda: node_status(kubectl, VICTIM) == "NotReady", timeout=GRACE + 20)
    conditions = {c["type"]: c for c in get_json(kubectl, "node", VICTIM)["status"]["conditions"]}
    for kind in ("Ready", "MemoryPressure", "DiskPressure", "PIDPressure"):
        assert conditions[kind]["status"] == "Unknown"
        assert conditions[kind]["reason"] == "NodeStatusUnknown"
        assert conditions[kind]["message"] == "Kubelet stopped posting node status."
    wait_for(lambda: {("node.kubernetes.io/unreachable", "NoExecute"),
                      ("node.kubernetes.io/unreachable", "NoSchedule")} <= taints(kubectl, VICTIM), timeout=10)
    assert all(node_status(kubectl, n) == "Ready" for n in nodes[:2])

    # its pods are deleted after the toleration (Terminating: no kubelet is there to confirm) and replaced
    def moved() -> bool:
        pods = web_pods(kubectl)
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        gone = all(p["metadata"].get("deletionTimestamp") for p in pods if p["metadata"]["name"] in doomed_pods)
        return (gone and len(live) == 6 and all(p["spec"].get("nodeName") in nodes[:2] for p in live)
                and all(p["status"].get("phase") == "Running" and is_ready(p) for p in live))
    wait_for(moved, timeout=60)
    evicted = [p for p in web_pods(kubectl) if p["metadata"]["name"] in doomed_pods]
    for pod in evicted:
        reasons = {c["type"]: c.get("reason") for c in pod["status"]["conditions"]}
        assert reasons.get("DisruptionTarget") == "DeletionByTaintManager"
        assert not is_ready(pod)  # marked not Ready when the node went silent
    events = get_json(kubectl, "events", "--field-selector", "reason=TaintManagerEviction")["items"]
    assert doomed_pods <= {e["involvedObject"]["name"] for e in events}
    kubectl("rollout", "status", "deployment/web", "--timeout=30s")

    # the pod tolerating the taints forever stays, no longer Ready
    stayer = get_json(kubectl, "pod", "stayer")
    assert not stayer["metadata"].get("deletionTimestamp")
    assert not is_ready(stayer)

    # the node comes back: Ready, its taints gone, the terminated pods finally gone, the stayer Ready again
    hollow["doomed"] = HollowNodesProcess(api_server, hollow["doomed"].root.with_name("doomed-again"), 1, *DOOMED)
    hollow["doomed"].wait_registered()
    wait_for(lambda: node_status(kubectl, VICTIM) == "Ready", timeout=20)
    wait_for(lambda: not taints(kubectl, VICTIM), timeout=20)
    wait_for(lambda: not any(p["metadata"]["name"] in doomed_pods for p in web_pods(kubectl)), timeout=20)
    wait_for(lambda: is_ready(get_json(kubectl, "pod", "stayer")), timeout=20)
    assert len([p for p in web_pods(kubectl) if is_ready(p)]) == 6
    kubectl("delete", "deployment", "web", "--wait=false")
    kubectl("delete", "pod", "stayer", "--wait=false")


def test_a_noexecute_taint_not_tolerated_evicts_at_once(
        api_server: ServerProcess, hollow: dict[str, HollowNodesProcess], kubectl: KubectlRun) -> None:
    wait_for(lambda: all(node_status(kubectl, n) == "Ready" for n in ("steady-0", "steady-1", VICTIM)), timeout=30)
    kubectl("run", "lone", "--image=busybox", "--overrides",
            json.dumps({"spec": {"nodeSelector": {"kubernetes.io/hostname": "steady-1"}}}))
    wait_for(lambda: get_json(kubectl, "pod", "lone")["status"].get("phase") == "Running", timeout=30)
    kubectl("taint", "nodes", "steady-1", "skiff-test=drain:NoExecute")
    try:
        def evicted() -> bool:
            result = kubectl("get", "pod", "lone", "-o", "json", check=False)
            return result.returncode != 0 or bool(json.loads(result.stdout)["metadata"].get("deletionTimestamp"))
        wait_for(evicted, timeout=15)
    finally:
        kubectl("taint", "nodes", "steady-1", "skiff-test=drain:NoExecute-")
    assert taints(kubectl, "steady-1") == set()


def test_when_every_node_is_down_no_noexecute_taint_is_kept(
        api_server: ServerProcess, hollow: dict[str, HollowNodesProcess], kubectl: KubectlRun) -> None:
    """kube's full disruption: with no node Ready anywhere the controller assumes it is the one cut off, and
    keeps no NoExecute taint (the NoSchedule ones stay)."""
    nodes = ["steady-0", "steady-1", VICTIM]
    wait_for(lambda: all(node_status(kubectl, n) == "Ready" for n in nodes), timeout=30)
    for group in hollow.values():
        group.process.send_signal(signal.SIGKILL)
    for group in hollow.values():
        group.process.wait()
    wait_for(lambda: all(node_status(kubectl, n) == "NotReady" for n in nodes), timeout=GRACE + 20)

    def only_no_schedule() -> bool:
        return all(taints(kubectl, n) == {("node.kubernetes.io/unreachable", "NoSchedule")} for n in nodes)
    wait_for(only_no_schedule, timeout=10)

    hollow["steady"] = HollowNodesProcess(api_server, hollow["steady"].root.with_name("steady-again"), 2, *STEADY)
    hollow["doomed"] = HollowNodesProcess(api_server, hollow["doomed"].root.with_name("doomed-again"), 1, *DOOMED)
    for group in hollow.values():
        group.wait_registered()
    wait_for(lambda: all(node_status(kubectl, n) == "Ready" and not taints(kubectl, n) for n in nodes), timeout=20)
