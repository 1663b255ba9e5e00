"""The ReplicaSet controller in a real ``skiff server``: pods made and owned, scaling, replacing deleted pods,
adoption and release, status as kubectl reads it, which pods go first, and no double creation."""

from __future__ import annotations

import asyncio
import json

import pytest

from skiff.cluster.client import PODS, REPLICASETS, ApiClient
from tests.cluster.controllers.conftest import eventually, pods_of, run_pod

pytestmark = pytest.mark.asyncio


def replicaset(name: str, replicas: int, min_ready: int = 0) -> dict:
    return {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": name},
            "spec": {"replicas": replicas, "minReadySeconds": min_ready, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name, "tier": "web"}},
                                  "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}


async def count_is(client: ApiClient, selector: str, n: int) -> list[dict] | None:
    pods = await pods_of(client, selector)
    return pods if len(pods) == n else None


async def status_is(client: ApiClient, name: str, **wanted: int) -> dict | None:
    status = (await client.get(REPLICASETS, name, "default")).get("status") or {}
    return status if all(status.get(k, 0) == v for k, v in wanted.items()) else None


async def test_creates_owned_pods_and_reports_status(client: ApiClient, kubectl) -> None:
    kubectl("apply", "-f", "-", input=json.dumps(replicaset("rs-a", 3)))
    pods = await eventually(lambda: count_is(client, "app=rs-a", 3))
    rs = await client.get(REPLICASETS, "rs-a", "default")
    for pod in pods:
        assert pod["metadata"]["name"].startswith("rs-a-") and len(pod["metadata"]["name"]) == len("rs-a-") + 5
        assert pod["metadata"]["labels"] == {"app": "rs-a", "tier": "web"}
        assert pod["metadata"]["ownerReferences"] == [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs-a",
                                                       "uid": rs["metadata"]["uid"], "controller": True,
                                                       "blockOwnerDeletion": True}]
    status = await eventually(lambda: status_is(client, "rs-a", replicas=3, fullyLabeledReplicas=3,
                                                observedGeneration=1))
    assert "readyReplicas" not in status and "availableReplicas" not in status  # zero: omitted, as Go does
    assert kubectl("get", "rs", "rs-a", "--no-headers").stdout.split()[:4] == ["rs-a", "3", "3", "0"]
    for pod in pods[:2]:
        await run_pod(client, pod)
    await eventually(lambda: status_is(client, "rs-a", replicas=3, readyReplicas=2, availableReplicas=2))
    events = kubectl("get", "events", "--field-selector", "involvedObject.name=rs-a", "-o",
                     "jsonpath={.items[*].reason}").stdout.split()
    assert "SuccessfulCreate" in events


async def test_scales_and_replaces_deleted_pods(client: ApiClient, kubectl) -> None:
    kubectl("apply", "-f", "-", input=json.dumps(replicaset("rs-b", 2)))
    first = await eventually(lambda: count_is(client, "app=rs-b", 2))
    kubectl("delete", "pod", first[0]["metadata"]["name"], "--wait=false")
    replaced = await eventually(lambda: count_is(client, "app=rs-b", 2))
    assert first[0]["metadata"]["name"] not in {p["metadata"]["name"] for p in replaced}
    kubectl("scale", "rs/rs-b", "--replicas=5")
    await eventually(lambda: count_is(client, "app=rs-b", 5))
    await eventually(lambda: status_is(client, "rs-b", replicas=5, observedGeneration=2))
    kubectl("scale", "rs/rs-b", "--replicas=0")
    await eventually(lambda: count_is(client, "app=rs-b", 0))
    await eventually(lambda: status_is(client, "rs-b", replicas=0, observedGeneration=3))


async def test_scale_down_deletes_the_least_useful_pods_first(client: ApiClient, kubectl) -> None:
    kubectl("apply", "-f", "-", input=json.dumps(replicaset("rs-c", 5)))
    pods = await eventually(lambda: count_is(client, "app=rs-c", 5))
    names = [p["metadata"]["name"] for p in pods]
    await run_pod(client, pods[0], node="n1", ready_since=100)  # ready longest
    await run_pod(client, pods[1], node="n2", ready_since=50)
    await run_pod(client, pods[2], node="n2", ready=False)  # running, not ready
    await client.create_subresource(PODS, names[3], "binding", {  # scheduled, still pending
        "apiVersion": "v1", "kind": "Binding", "metadata": {"name": names[3]},
        "target": {"apiVersion": "v1", "kind": "Node", "name": "n1"}}, "default")
    # names[4]: never scheduled; goes first
    await eventually(lambda: status_is(client, "rs-c", readyReplicas=2))
    expected_order = [names[4], names[3], names[2], names[1]]
    for keep in (4, 3, 2, 1):
        kubectl("scale", "rs/rs-c", f"--replicas={keep}")
        left = await eventually(lambda keep=keep: count_is(client, "app=rs-c", keep))
        assert {p["metadata"]["name"] for p in left} == set(names) - set(expected_order[:5 - keep])


async def test_adopts_matching_orphans_and_releases_strays(client: ApiClient, kubectl) -> None:
    kubectl("run", "stray", "--image=busybox", "--labels=app=rs-d,tier=web")
    kubectl("apply", "-f", "-", input=json.dumps(replicaset("rs-d", 2)))
    pods = await eventually(lambda: count_is(client, "app=rs-d", 2))
    owners = {p["metadata"]["name"]: p["metadata"].get("ownerReferences") for p in pods}
    assert "stray" in owners and owners["stray"][0]["name"] == "rs-d"  # adopted: only one pod created
    kubectl("label", "pod", "stray", "app=elsewhere", "--overwrite")
    released = await eventually(lambda: _released(client, "stray"))
    assert released["metadata"]["labels"]["app"] == "elsewhere"
    await eventually(lambda: count_is(client, "app=rs-d", 2))  # and a replacement was made
    kubectl("delete", "pod", "stray", "--wait=false")


async def _released(client: ApiClient, name: str) -> dict | None:
    pod = await client.get(PODS, name, "default")
    return pod if not pod["metadata"].get("ownerReferences") else None


async def test_min_ready_seconds_delays_availability(client: ApiClient, kubectl) -> None:
    kubectl("apply", "-f", "-", input=json.dumps(replicaset("rs-e", 1, min_ready=2)))
    (pod,) = await eventually(lambda: count_is(client, "app=rs-e", 1))
    await run_pod(client, pod)  # ready just now
    status = await eventually(lambda: status_is(client, "rs-e", readyReplicas=1))
    assert status.get("availableReplicas", 0) == 0
    await eventually(lambda: status_is(client, "rs-e", readyReplicas=1, availableReplicas=1), timeout=10)


async def test_never_creates_more_than_asked(client: ApiClient, kubectl) -> None:
    """Expectations: however the syncs interleave with the cache, 60 replicas means 60 pods ever made."""
    since = (await client.list(PODS, "default"))["metadata"]["resourceVersion"]
    kubectl("apply", "-f", "-", input=json.dumps(replicaset("rs-f", 60)))
    await eventually(lambda: status_is(client, "rs-f", replicas=60), timeout=60)
    await asyncio.sleep(1.0)  # anything extra would have been made by now
    added = set()
    events = client.watch(PODS, "default", resource_version=since, label_selector="app=rs-f", timeout_seconds=2)
    async for event_type, obj in events:
        if event_type == "ADDED":
            added.add(obj["metadata"]["name"])
    assert len(added) == 60 and len(await pods_of(client, "app=rs-f")) == 60
    kubectl("delete", "rs", "rs-f")
    await eventually(lambda: count_is(client, "app=rs-f", 0), timeout=60)
