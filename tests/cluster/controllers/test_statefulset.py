"""The StatefulSet controller in a real ``skiff server`` (its scheduler binding the pods) on two hollow nodes, driven
by the real kubectl 1.32: stable names and hostnames, ordered start, scaling down from the top, a pod made again
under its name, a rolling update, and what the API refuses."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from skiff.cluster.controllers.objects import parse_time
from tests.cluster.api.conftest import KUBECTL, KubectlRun, make_kubectl, running_server, wait_for
from tests.cluster.scheduler.conftest import HollowNodesProcess


@pytest.fixture(scope="module")
def kubectl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubectlRun]:
    if not Path(KUBECTL).exists():
        pytest.skip("kubectl is not installed")
    root = tmp_path_factory.mktemp("statefulsets")
    with running_server(root / "server") as server:
        nodes = HollowNodesProcess(server, root / "hollow", 2)
        try:
            nodes.wait_registered()
            yield make_kubectl(server, root / "cache")
        finally:
            nodes.stop()


def statefulset(name: str, replicas: int = 3, image: str = "redis:7", **spec: Any) -> str:
    return json.dumps({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name}, "spec": {
        "serviceName": name, "replicas": replicas, "selector": {"matchLabels": {"app": name}},
        "template": {"metadata": {"labels": {"app": name}},
                     "spec": {"containers": [{"name": "db", "image": image}]}}, **spec}})


def pods(kubectl: KubectlRun, name: str) -> dict[str, dict[str, Any]]:
    items = json.loads(kubectl("get", "pods", "-l", f"app={name}", "-o", "json").stdout)["items"]
    return {p["metadata"]["name"]: p for p in items if not p["metadata"].get("deletionTimestamp")}


def ready_since(pod: dict[str, Any]) -> float:
    condition = next(c for c in pod["status"]["conditions"] if c["type"] == "Ready")
    return parse_time(condition["lastTransitionTime"]) or 0.0


def test_pods_get_stable_names_in_order_and_keep_them(kubectl: KubectlRun) -> None:
    kubectl("apply", "-f", "-", input=statefulset("db"))
    out = kubectl("rollout", "status", "sts/db", "--timeout=60s", timeout=70).stdout
    assert "partitioned roll out complete: 3 new pods have been updated" in out, out  # kube defaults partition 0
    made = pods(kubectl, "db")
    assert sorted(made) == ["db-0", "db-1", "db-2"]
    for name, pod in made.items():
        assert (pod["spec"]["hostname"], pod["spec"]["subdomain"]) == (name, "db")
        assert pod["metadata"]["labels"]["statefulset.kubernetes.io/pod-name"] == name
    # OrderedReady: each pod was made only once the one before it was Ready
    for before, after in (("db-0", "db-1"), ("db-1", "db-2")):
        assert parse_time(made[after]["metadata"]["creationTimestamp"]) >= ready_since(made[before])
    assert kubectl("get", "sts", "db").stdout.splitlines()[1].split()[:2] == ["db", "3/3"]

    # a pod deleted by hand comes back under its name
    uid = made["db-1"]["metadata"]["uid"]
    kubectl("delete", "pod", "db-1", "--wait=false")
    wait_for(lambda: "db-1" in (now := pods(kubectl, "db")) and now["db-1"]["metadata"]["uid"] != uid, timeout=30)

    # scaling down takes the highest ordinals
    kubectl("scale", "sts/db", "--replicas=1")
    wait_for(lambda: sorted(pods(kubectl, "db")) == ["db-0"], timeout=30)
    kubectl("scale", "sts/db", "--replicas=2")
    kubectl("rollout", "status", "sts/db", "--timeout=60s", timeout=70)
    assert sorted(pods(kubectl, "db")) == ["db-0", "db-1"]

    # a rolling update replaces every pod, the new revision on all of them in the end
    kubectl("set", "image", "sts/db", "db=redis:8")
    kubectl("rollout", "status", "sts/db", "--timeout=60s", timeout=70)
    wait_for(lambda: {p["spec"]["containers"][0]["image"] for p in pods(kubectl, "db").values()} == {"redis:8"},
             timeout=30)
    status = json.loads(kubectl("get", "sts", "db", "-o", "json").stdout)["status"]
    assert status["currentRevision"] == status["updateRevision"] and status["updatedReplicas"] == 2
    kubectl("delete", "sts", "db")
    wait_for(lambda: not pods(kubectl, "db"), timeout=30)


def test_parallel_pods_start_together(kubectl: KubectlRun) -> None:
    kubectl("apply", "-f", "-", input=statefulset("cache", replicas=4, podManagementPolicy="Parallel"))
    kubectl("rollout", "status", "sts/cache", "--timeout=60s", timeout=70)
    assert sorted(pods(kubectl, "cache")) == ["cache-0", "cache-1", "cache-2", "cache-3"]
    kubectl("delete", "sts", "cache")


def test_what_the_api_refuses(kubectl: KubectlRun) -> None:
    claims = statefulset("disk", volumeClaimTemplates=[{"metadata": {"name": "data"}, "spec": {
        "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}])
    result = kubectl("create", "-f", "-", input=claims, check=False)
    assert "spec.volumeClaimTemplates: Forbidden: PersistentVolumeClaims are not supported by this server yet" \
        in result.stderr, result.stderr
    kubectl("apply", "-f", "-", input=statefulset("fixed", replicas=0))
    result = kubectl("patch", "sts", "fixed", "--type=merge", "-p", '{"spec": {"serviceName": "other"}}', check=False)
    assert "updates to statefulset spec for fields other than" in result.stderr, result.stderr
    kubectl("delete", "sts", "fixed")
