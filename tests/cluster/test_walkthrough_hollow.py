"""The seed's walk-through, on hollow nodes: a real ``skiff server`` (controllers and scheduler inside), ``skiff
hollow-nodes --count 3`` and the real kubectl 1.32, step by step as a user would type it.

The steps share one cluster and run in order: nodes, apply, self-healing, scaling, a rolling update watched
pod by pod, rollout status/history/undo, expose, get all.
"""

# The cluster's fixtures are imported from the scheduler's conftest, so the tests' parameters name them again.
# ruff: noqa: F401, F811

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from skiff.cluster.client import PODS, ApiClient
from tests.cluster.api.conftest import KubectlRun, ServerProcess, wait_for
from tests.cluster.controllers.conftest import client
from tests.cluster.controllers.test_deployment import RolloutWatcher, rolled_out
from tests.cluster.controllers.test_endpoints import pod_ips, wait_endpoints
from tests.cluster.scheduler.conftest import HollowNodesProcess, api_server, kubectl
from tests.cluster.scheduler.test_scheduling import running
from tests.cluster.seed import DEPLOYMENT_YAML

pytestmark = pytest.mark.usefixtures("hollow_nodes")
NODES = ["hollow-node-0", "hollow-node-1", "hollow-node-2"]


@pytest.fixture(scope="module")
def hollow_nodes(api_server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HollowNodesProcess]:
    nodes = HollowNodesProcess(api_server, tmp_path_factory.mktemp("hollow"), len(NODES))
    try:
        nodes.wait_registered()
        yield nodes
    finally:
        nodes.stop()


def images(pods: list[dict[str, Any]]) -> set[str]:
    return {p["spec"]["containers"][0]["image"] for p in pods}


def test_get_nodes_shows_three_ready_nodes(kubectl: KubectlRun) -> None:
    rows = [line.split() for line in kubectl("get", "nodes", "--no-headers").stdout.splitlines()]
    assert sorted((row[0], row[1]) for row in rows) == [(name, "Ready") for name in NODES]


def test_apply_runs_two_pods_on_different_nodes(kubectl: KubectlRun, tmp_path: Path) -> None:
    manifest = tmp_path / "deployment.yaml"
    manifest.write_text(DEPLOYMENT_YAML)
    assert kubectl("apply", "-f", str(manifest)).stdout.strip() == "deployment.apps/web created"
    pods = running(kubectl, "app=web", 2)
    assert len({p["spec"]["nodeName"] for p in pods}) == 2
    assert images(pods) == {"nginx:1.27"}
    rows = kubectl("get", "pods", "-l", "app=web", "--no-headers").stdout.splitlines()
    assert [row.split()[1:3] for row in rows] == [["1/1", "Running"]] * 2


def test_a_deleted_pod_is_replaced(kubectl: KubectlRun) -> None:
    victim = running(kubectl, "app=web", 2)[0]["metadata"]["name"]
    kubectl("delete", "pod", victim)

    def replaced() -> list[dict[str, Any]] | None:
        pods = running(kubectl, "app=web", 2)
        return None if victim in {p["metadata"]["name"] for p in pods} else pods
    wait_for(replaced, 30, interval=0.3)


def test_scale_to_five(kubectl: KubectlRun) -> None:
    assert "deployment.apps/web scaled" in kubectl("scale", "deployment/web", "--replicas=5").stdout
    running(kubectl, "app=web", 5)
    wait_for(lambda: kubectl("get", "deployment", "web", "--no-headers").stdout.split()[:4] == [
        "web", "5/5", "5", "5"], 30, interval=0.3)


class PodBounds:
    """Follows every pod change the server reports during a rollout: the most pods not being deleted, the fewest
    of them ready."""

    def __init__(self, client: ApiClient) -> None:
        self.client = client
        self.pods: dict[str, dict[str, Any]] = {}
        self.most = 0
        self.fewest_ready: int | None = None
        self.started = asyncio.Event()

    async def follow(self) -> None:
        listed = await self.client.list(PODS, "default", label_selector="app=web")
        self.pods = {p["metadata"]["name"]: p for p in listed["items"]}
        self._count()
        self.started.set()
        async for event_type, pod in self.client.watch(PODS, "default", label_selector="app=web",
                                                       resource_version=listed["metadata"]["resourceVersion"]):
            if event_type == "DELETED":
                self.pods.pop(pod["metadata"]["name"], None)
            else:
                self.pods[pod["metadata"]["name"]] = pod
            self._count()

    def _count(self) -> None:
        live = [p for p in self.pods.values() if not p["metadata"].get("deletionTimestamp")]
        ready = sum(1 for p in live if any(c["type"] == "Ready" and c["status"] == "True"
                                           for c in (p.get("status") or {}).get("conditions") or ()))
        self.most = max(self.most, len(live))
        self.fewest_ready = ready if self.fewest_ready is None else min(self.fewest_ready, ready)


@pytest.mark.asyncio
async def test_set_image_rolls_out_within_max_surge_and_max_unavailable(
        client: ApiClient, kubectl: KubectlRun) -> None:
    # the default strategy on 5 replicas: maxSurge 25% → 2 (rounded up), maxUnavailable 25% → 1 (rounded down)
    replicasets = RolloutWatcher(client, "web", replicas=5, surge=2, unavailable=1)
    pods = PodBounds(client)
    following = [asyncio.create_task(replicasets.follow()), asyncio.create_task(pods.follow())]
    await replicasets.started.wait()
    await pods.started.wait()
    out = await asyncio.to_thread(kubectl, "set", "image", "deployment/web", "nginx=nginx:1.28")
    assert "deployment.apps/web image updated" in out.stdout
    status = await rolled_out(kubectl, "web")
    await asyncio.sleep(0.5)
    for task in following:
        task.cancel()
    await asyncio.gather(*following, return_exceptions=True)
    assert 'deployment "web" successfully rolled out' in status
    assert replicasets.max_total <= 7 and replicasets.min_available >= 4
    assert pods.most <= 7, f"{pods.most} pods at once: more than replicas + maxSurge"
    assert pods.fewest_ready is not None and pods.fewest_ready >= 4, f"only {pods.fewest_ready} ready pods"
    final = await asyncio.to_thread(running, kubectl, "app=web", 5)
    assert images(final) == {"nginx:1.28"}


def test_rollout_status_history_and_undo(kubectl: KubectlRun) -> None:
    assert 'deployment "web" successfully rolled out' in kubectl("rollout", "status", "deployment/web").stdout
    history = kubectl("rollout", "history", "deployment/web").stdout.split()
    assert history[history.index("CHANGE-CAUSE") + 1:] == ["1", "<none>", "2", "<none>"]
    assert "nginx:1.27" in kubectl("rollout", "history", "deployment/web", "--revision=1").stdout
    assert "deployment.apps/web rolled back" in kubectl("rollout", "undo", "deployment/web").stdout
    assert "successfully rolled out" in kubectl("rollout", "status", "deployment/web", "--timeout=60s").stdout
    wait_for(lambda: images(running(kubectl, "app=web", 5)) == {"nginx:1.27"}, 30, interval=0.3)
    history = kubectl("rollout", "history", "deployment/web").stdout.split()
    assert history[history.index("CHANGE-CAUSE") + 1:] == ["2", "<none>", "3", "<none>"]


def test_expose_gives_a_service_and_endpoints_of_the_ready_pods(kubectl: KubectlRun) -> None:
    assert kubectl("expose", "deployment/web", "--port=80").stdout.strip() == "service/web exposed"
    svc = json.loads(kubectl("get", "service", "web", "-o", "json").stdout)
    cluster_ip = svc["spec"]["clusterIP"]
    assert cluster_ip and cluster_ip != "None"
    row = kubectl("get", "service", "web", "--no-headers").stdout.split()
    assert row[:5] == ["web", "ClusterIP", cluster_ip, "<none>", "80/TCP"]
    pods = running(kubectl, "app=web", 5)
    wait_endpoints(kubectl, "web", pod_ips(pods))
    printed = kubectl("get", "endpoints", "web", "--no-headers").stdout.split()
    assert printed[0] == "web" and printed[2:5] == ["+", "2", "more..."]  # three shown of five
    assert len(printed[1].split(",")) == 3 and all(a.endswith(":80") for a in printed[1].split(","))


def test_get_all_lists_pods_services_deployments_and_replicasets(kubectl: KubectlRun) -> None:
    names = [line.split()[0] for line in kubectl("get", "all", "--no-headers").stdout.splitlines() if line.strip()]
    kinds = {name.split("/")[0] for name in names}
    assert {"pod", "service", "deployment.apps", "replicaset.apps"} <= kinds
    assert "service/web" in names and "service/kubernetes" in names and "deployment.apps/web" in names
    assert sum(1 for n in names if n.startswith("pod/web-")) == 5
    assert sum(1 for n in names if n.startswith("replicaset.apps/web-")) == 2
