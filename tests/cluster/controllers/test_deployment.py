"""The Deployment controller in a real ``skiff server``, driven by the real kubectl 1.32.

Pods are played by ``FakeKubelet`` (bound and marked Ready by the test), so a rollout advances as they
become ready. Rolling updates are checked against maxSurge/maxUnavailable on every ReplicaSet change the
server reports, not on samples.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from typing import Any

import pytest

from skiff.cluster.client import DEPLOYMENTS, PODS, REPLICASETS, ApiClient, load_kubeconfig
from tests.cluster.api.conftest import REPO, ServerProcess, make_kubectl
from tests.cluster.controllers.conftest import NO_SCHEDULER, FakeKubelet, eventually, pods_of

pytestmark = pytest.mark.asyncio
REVISION = "deployment.kubernetes.io/revision"


def deployment(name: str, replicas: int = 2, image: str = "nginx:1.25", **spec: Any) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "web", "image": image}]}}, **spec}}


async def replicasets_of(client: ApiClient, name: str) -> dict[str, dict]:
    items = (await client.list(REPLICASETS, "default", label_selector=f"app={name}"))["items"]
    return {rs["metadata"]["name"]: rs for rs in items}


async def rolled_out(kubectl, name: str, timeout: int = 60) -> str:
    result = await asyncio.to_thread(kubectl, "rollout", "status", f"deployment/{name}", f"--timeout={timeout}s",
                                     timeout=timeout + 10)
    return result.stdout


def condition(obj: dict, kind: str) -> dict:
    return next(c for c in obj["status"]["conditions"] if c["type"] == kind)


async def test_apply_creates_a_replicaset_and_pods_then_rolls_out(client: ApiClient, kubectl) -> None:
    kubectl("apply", "-f", "-", input=json.dumps(deployment("d-a")))
    async with FakeKubelet(client, "app=d-a"):
        assert 'deployment "d-a" successfully rolled out' in await rolled_out(kubectl, "d-a")
    d = await client.get(DEPLOYMENTS, "d-a", "default")
    (rs,) = (await replicasets_of(client, "d-a")).values()
    template_hash = rs["metadata"]["labels"]["pod-template-hash"]
    assert rs["metadata"]["name"] == f"d-a-{template_hash}" and 1 <= len(template_hash) <= 10
    assert set(template_hash) <= set("bcdfghjklmnpqrstvwxz2456789")
    assert rs["spec"]["selector"]["matchLabels"] == {"app": "d-a", "pod-template-hash": template_hash}
    assert rs["metadata"]["ownerReferences"][0]["uid"] == d["metadata"]["uid"]
    assert rs["metadata"]["annotations"] == {REVISION: "1", "deployment.kubernetes.io/desired-replicas": "2",
                                             "deployment.kubernetes.io/max-replicas": "3"}
    assert d["metadata"]["annotations"][REVISION] == "1"
    pods = await pods_of(client, "app=d-a")
    assert len(pods) == 2 and all(p["metadata"]["labels"]["pod-template-hash"] == template_hash for p in pods)
    status = d["status"]
    assert {k: status.get(k) for k in ("observedGeneration", "replicas", "updatedReplicas", "readyReplicas",
                                       "availableReplicas")} == {"observedGeneration": 1, "replicas": 2,
                                                                 "updatedReplicas": 2, "readyReplicas": 2,
                                                                 "availableReplicas": 2}
    assert "unavailableReplicas" not in status
    assert condition(d, "Available")["reason"] == "MinimumReplicasAvailable"
    progressing = condition(d, "Progressing")
    assert (progressing["status"], progressing["reason"]) == ("True", "NewReplicaSetAvailable")
    assert progressing["message"] == f'ReplicaSet "{rs["metadata"]["name"]}" has successfully progressed.'
    assert kubectl("get", "deploy", "d-a", "--no-headers").stdout.split()[:4] == ["d-a", "2/2", "2", "2"]


async def test_scale_and_self_heal(client: ApiClient, kubectl) -> None:
    kubectl("apply", "-f", "-", input=json.dumps(deployment("d-b")))
    async with FakeKubelet(client, "app=d-b"):
        await rolled_out(kubectl, "d-b")
        kubectl("scale", "deployment/d-b", "--replicas=5")
        await rolled_out(kubectl, "d-b")
        assert len(await pods_of(client, "app=d-b")) == 5
        victim = (await pods_of(client, "app=d-b"))[0]["metadata"]["name"]
        kubectl("delete", "pod", victim, "--wait=false")
        pods = await eventually(lambda: _exactly(client, "app=d-b", 5, without=victim))
        assert victim not in {p["metadata"]["name"] for p in pods}
        await rolled_out(kubectl, "d-b")
    assert len(await replicasets_of(client, "d-b")) == 1  # scaling is not a new revision


async def _exactly(client: ApiClient, selector: str, n: int, without: str = "") -> list | None:
    pods = await pods_of(client, selector)
    names = {p["metadata"]["name"] for p in pods}
    return pods if len(pods) == n and without not in names else None


class RolloutWatcher:
    """Follows every ReplicaSet change the server reports and checks the rolling-update bounds on each."""

    def __init__(self, client: ApiClient, name: str, replicas: int, surge: int, unavailable: int) -> None:
        self.client, self.name = client, name
        self.replicas, self.surge, self.unavailable = replicas, surge, unavailable
        self.state: dict[str, dict] = {}
        self.max_total = 0
        self.min_available = replicas
        self.events = 0
        self.started = asyncio.Event()

    async def follow(self) -> None:
        listed = await self.client.list(REPLICASETS, "default", label_selector=f"app={self.name}")
        self.state = {rs["metadata"]["name"]: rs for rs in listed["items"]}
        since = listed["metadata"]["resourceVersion"]
        self.started.set()
        async for event_type, rs in self.client.watch(REPLICASETS, "default", resource_version=since,
                                                      label_selector=f"app={self.name}"):
            self.events += 1
            if event_type == "DELETED":
                self.state.pop(rs["metadata"]["name"], None)
            else:
                self.state[rs["metadata"]["name"]] = rs
            specs = sum(r["spec"]["replicas"] for r in self.state.values())
            available = sum(min(r["spec"]["replicas"], (r.get("status") or {}).get("availableReplicas", 0))
                            for r in self.state.values())
            self.max_total = max(self.max_total, specs)
            self.min_available = min(self.min_available, available)


async def test_rolling_update_stays_within_max_surge_and_max_unavailable(client: ApiClient, kubectl) -> None:
    strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": "25%"}}
    kubectl("apply", "-f", "-", input=json.dumps(deployment("d-c", replicas=4, strategy=strategy)))
    async with FakeKubelet(client, "app=d-c", per_round=1, interval=0.2):
        await rolled_out(kubectl, "d-c")
        watcher = RolloutWatcher(client, "d-c", replicas=4, surge=1, unavailable=1)
        following = asyncio.create_task(watcher.follow())
        await watcher.started.wait()
        kubectl("set", "image", "deployment/d-c", "web=nginx:1.26")
        out = await rolled_out(kubectl, "d-c")
        await asyncio.sleep(0.3)
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)
    assert "new replicas have been updated" in out and 'deployment "d-c" successfully rolled out' in out
    assert watcher.events >= 6
    assert watcher.max_total == 5  # replicas + maxSurge, reached and never passed
    assert watcher.min_available == 3  # replicas - maxUnavailable (25% of 4), never fewer
    sets = await replicasets_of(client, "d-c")
    assert sorted((rs["spec"]["replicas"], rs["metadata"]["annotations"][REVISION]) for rs in sets.values()) == [
        (0, "1"), (4, "2")]
    images = {p["spec"]["containers"][0]["image"] for p in await pods_of(client, "app=d-c")}
    assert images == {"nginx:1.26"}


async def test_history_and_undo_reuse_the_old_replicaset(client: ApiClient, kubectl) -> None:
    kubectl("apply", "-f", "-", input=json.dumps(deployment("d-d")))
    async with FakeKubelet(client, "app=d-d"):
        await rolled_out(kubectl, "d-d")
        first = set(await replicasets_of(client, "d-d"))
        kubectl("set", "image", "deployment/d-d", "web=nginx:1.26")
        await rolled_out(kubectl, "d-d")
        history = kubectl("rollout", "history", "deployment/d-d").stdout.split()
        assert history[history.index("CHANGE-CAUSE") + 1:] == ["1", "<none>", "2", "<none>"]
        kubectl("rollout", "undo", "deployment/d-d")
        await rolled_out(kubectl, "d-d")
    sets = await replicasets_of(client, "d-d")
    assert len(sets) == 2  # the undo made no new ReplicaSet: revision 1's came back as revision 3
    (back,) = [rs for name, rs in sets.items() if name in first]
    assert back["spec"]["replicas"] == 2
    assert back["metadata"]["annotations"][REVISION] == "3"
    assert back["metadata"]["annotations"]["deployment.kubernetes.io/revision-history"] == "1"
    history = kubectl("rollout", "history", "deployment/d-d").stdout.split()
    assert history[history.index("CHANGE-CAUSE") + 1:] == ["2", "<none>", "3", "<none>"]
    assert "nginx:1.25" in kubectl("rollout", "history", "deployment/d-d", "--revision=3").stdout


async def test_recreate_stops_every_old_pod_before_starting_new_ones(client: ApiClient, kubectl) -> None:
    kubectl("apply", "-f", "-", input=json.dumps(deployment("d-e", replicas=3, strategy={"type": "Recreate"})))
    async with FakeKubelet(client, "app=d-e"):
        await rolled_out(kubectl, "d-e")
        since = (await client.list(PODS, "default"))["metadata"]["resourceVersion"]
        kubectl("set", "image", "deployment/d-e", "web=nginx:1.26")
        await rolled_out(kubectl, "d-e")
    live: dict[str, str] = {}
    overlap = False
    events = client.watch(PODS, "default", resource_version=since, label_selector="app=d-e", timeout_seconds=1)
    async for event_type, pod in events:
        name, image = pod["metadata"]["name"], pod["spec"]["containers"][0]["image"]
        if event_type == "DELETED":
            live.pop(name, None)
        else:
            live[name] = image
        overlap = overlap or len(set(live.values())) > 1
    assert not overlap, "an old pod was still there when a new one was created"
    assert sorted(live.values()) == ["nginx:1.26"] * 3


async def test_pause_and_resume(client: ApiClient, kubectl) -> None:
    kubectl("apply", "-f", "-", input=json.dumps(deployment("d-f")))
    async with FakeKubelet(client, "app=d-f"):
        await rolled_out(kubectl, "d-f")
        kubectl("rollout", "pause", "deployment/d-f")
        kubectl("set", "image", "deployment/d-f", "web=nginx:1.26")
        d = await eventually(lambda: _progressing_reason(client, "d-f", "DeploymentPaused"))
        assert condition(d, "Progressing")["status"] == "Unknown"
        await asyncio.sleep(0.5)
        assert len(await replicasets_of(client, "d-f")) == 1  # paused: no rollout
        kubectl("scale", "deployment/d-f", "--replicas=3")  # but scaling still happens
        await eventually(lambda: _exactly(client, "app=d-f", 3))
        kubectl("rollout", "resume", "deployment/d-f")
        await rolled_out(kubectl, "d-f")
    assert len(await replicasets_of(client, "d-f")) == 2
    assert {p["spec"]["containers"][0]["image"] for p in await pods_of(client, "app=d-f")} == {"nginx:1.26"}


async def _progressing_reason(client: ApiClient, name: str, reason: str) -> dict | None:
    d = await client.get(DEPLOYMENTS, name, "default")
    conditions = (d.get("status") or {}).get("conditions") or []
    return d if any(c["type"] == "Progressing" and c["reason"] == reason for c in conditions) else None


async def test_progress_deadline_exceeded(client: ApiClient, kubectl) -> None:
    kubectl("apply", "-f", "-", input=json.dumps(deployment("d-g", progressDeadlineSeconds=2)))  # never ready
    d = await eventually(lambda: _progressing_reason(client, "d-g", "ProgressDeadlineExceeded"), timeout=15)
    cond = condition(d, "Progressing")
    assert cond["status"] == "False" and cond["message"].endswith("has timed out progressing.")
    result = kubectl("rollout", "status", "deployment/d-g", "--timeout=10s", check=False)
    assert result.returncode != 0 and 'deployment "d-g" exceeded its progress deadline' in result.stderr
    async with FakeKubelet(client, "app=d-g"):  # progress again: the condition recovers
        await eventually(lambda: _progressing_reason(client, "d-g", "NewReplicaSetAvailable"), timeout=15)


async def test_revision_history_limit_deletes_the_oldest(client: ApiClient, kubectl) -> None:
    kubectl("apply", "-f", "-", input=json.dumps(deployment("d-h", revisionHistoryLimit=1)))
    async with FakeKubelet(client, "app=d-h"):
        await rolled_out(kubectl, "d-h")
        for tag in ("1.26", "1.27", "1.28"):
            kubectl("set", "image", "deployment/d-h", f"web=nginx:{tag}")
            await rolled_out(kubectl, "d-h")
    sets = await eventually(lambda: _count_sets(client, "d-h", 2))
    assert sorted(rs["metadata"]["annotations"][REVISION] for rs in sets.values()) == ["3", "4"]


async def _count_sets(client: ApiClient, name: str, n: int) -> dict | None:
    sets = await replicasets_of(client, name)
    return sets if len(sets) == n else None


async def test_scaling_mid_rollout_is_proportional(client: ApiClient, kubectl) -> None:
    strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 3, "maxUnavailable": 2}}
    kubectl("apply", "-f", "-", input=json.dumps(deployment("d-i", replicas=10, strategy=strategy)))
    async with FakeKubelet(client, "app=d-i") as kubelet:
        await rolled_out(kubectl, "d-i")
        kubelet.paused = True  # the new pods never become ready: the rollout stops at old 8, new 5
        kubectl("set", "image", "deployment/d-i", "web=nginx:1.26")
        await eventually(lambda: _sizes(client, "d-i", [5, 8]))
        kubectl("scale", "deployment/d-i", "--replicas=20")
        # allowed 20 + 3 = 23, 10 to add: old gets round(8 * 23 / 13) - 8 = 6, new round(5 * 23 / 13) - 5 = 4
        await eventually(lambda: _sizes(client, "d-i", [9, 14]))


async def _sizes(client: ApiClient, name: str, wanted: list[int]) -> list[int] | None:
    sizes = sorted(rs["spec"]["replicas"] for rs in (await replicasets_of(client, name)).values())
    return sizes if sizes == wanted else None


async def test_sigkill_mid_rollout_then_restart_finishes_it(tmp_path, kubectl_cache) -> None:
    server = ServerProcess(tmp_path / "server", NO_SCHEDULER)
    server.start()
    try:
        kubectl = make_kubectl(server, kubectl_cache)
        strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
        kubectl("apply", "-f", "-", input=json.dumps(deployment("d-k", replicas=6, strategy=strategy)))
        async with ApiClient.from_config(load_kubeconfig(server.kubeconfig)) as client:
            async with FakeKubelet(client, "app=d-k", per_round=1, interval=0.3):
                await rolled_out(kubectl, "d-k")
                kubectl("set", "image", "deployment/d-k", "web=nginx:1.26")
                await eventually(lambda: _new_pods_ready(client, "d-k", "nginx:1.26", 2))
                server.kill()  # mid-rollout: some new pods ready, old ones still serving
                await asyncio.to_thread(server.start)
                out = await rolled_out(kubectl, "d-k", timeout=90)
            assert 'deployment "d-k" successfully rolled out' in out
            sets = await replicasets_of(client, "d-k")
            assert len(sets) == 2  # one per template: nothing duplicated
            assert sorted(rs["spec"]["replicas"] for rs in sets.values()) == [0, 6]
            pods = await pods_of(client, "app=d-k")
            assert len(pods) == 6 and {p["spec"]["containers"][0]["image"] for p in pods} == {"nginx:1.26"}
            d = await client.get(DEPLOYMENTS, "d-k", "default")
            assert d["metadata"]["annotations"][REVISION] == "2" and d["status"]["updatedReplicas"] == 6
    finally:
        server.stop()


async def _new_pods_ready(client: ApiClient, name: str, image: str, n: int) -> bool | None:
    pods = await pods_of(client, f"app={name}")
    ready = [p for p in pods if p["spec"]["containers"][0]["image"] == image
             and (p.get("status") or {}).get("phase") == "Running"]
    return True if len(ready) >= n else None


async def test_skiff_controller_manager_runs_alone(tmp_path, kubectl_cache) -> None:
    """``skiff server --disable-controllers`` runs none; ``skiff controller-manager`` with the server's
    controller credentials (a token for system:kube-controller-manager, RBAC-bound) does the work."""
    server = ServerProcess(tmp_path / "server", "--disable-controllers", NO_SCHEDULER)
    server.start()
    manager = None
    try:
        kubectl = make_kubectl(server, kubectl_cache)
        kubectl("apply", "-f", "-", input=json.dumps(deployment("d-m")))
        assert kubectl("get", "rs", "-o", "name").stdout == ""  # nobody acts on it yet
        credentials = server.data_dir / "cred" / "controller-manager.kubeconfig"
        assert load_kubeconfig(credentials).token and not load_kubeconfig(credentials).cert_pem
        whoami = kubectl("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}", kubeconfig=credentials)
        assert whoami.stdout == "system:kube-controller-manager"
        assert kubectl("auth", "can-i", "delete", "nodes", kubeconfig=credentials, check=False).stdout.strip() == "yes"
        assert kubectl("auth", "can-i", "create", "clusterroles", kubeconfig=credentials,
                       check=False).stdout.strip() == "no"
        manager = subprocess.Popen([*server.command()[:3], "controller-manager", "--kubeconfig", str(credentials)],
                                   env=server_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(200):
            if len(kubectl("get", "pods", "-l", "app=d-m", "-o", "name").stdout.split()) == 2:
                break
            await asyncio.sleep(0.1)
        assert len(kubectl("get", "pods", "-l", "app=d-m", "-o", "name").stdout.split()) == 2
    finally:
        if manager is not None:
            manager.terminate()
            manager.wait(10)
            manager.stderr.close()  # type: ignore[union-attr]
        server.stop()


def server_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO))
