"""The garbage collector in a real ``skiff server``: dependents whose owners do not exist are deleted, and
references to missing owners are removed from dependents that still have another owner."""

from __future__ import annotations

import asyncio

import pytest

from skiff.cluster.client import DEPLOYMENTS, PODS, ApiClient, ApiStatusError
from tests.cluster.controllers.conftest import eventually

pytestmark = pytest.mark.asyncio
MISSING_UID = "6f0c1b6e-0000-4000-8000-000000000000"


def pod(name: str, *owners: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"gc": name}, "ownerReferences": list(owners)},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}


def ref(kind: str, name: str, uid: str, api_version: str = "apps/v1", controller: bool = False) -> dict:
    return {"apiVersion": api_version, "kind": kind, "name": name, "uid": uid, "controller": controller}


async def gone(client: ApiClient, name: str) -> bool | None:
    try:
        await client.get(PODS, name, "default")
    except ApiStatusError as exc:
        return True if exc.not_found else None
    return None


async def test_a_dependent_of_a_missing_owner_is_deleted(client: ApiClient) -> None:
    await client.create(PODS, pod("gc-orphan", ref("ReplicaSet", "never-was", MISSING_UID, controller=True)),
                        "default")
    await eventually(lambda: gone(client, "gc-orphan"))


async def test_references_to_missing_owners_are_removed(client: ApiClient, kubectl) -> None:
    kubectl("create", "deployment", "gc-owner", "--image=busybox", "--replicas=0")
    owner = await client.get(DEPLOYMENTS, "gc-owner", "default")
    await client.create(PODS, pod("gc-half", ref("Deployment", "gc-owner", owner["metadata"]["uid"]),
                                  ref("ReplicaSet", "never-was", MISSING_UID)), "default")

    async def pruned() -> list | None:
        refs = (await client.get(PODS, "gc-half", "default"))["metadata"].get("ownerReferences") or []
        return refs if len(refs) == 1 else None
    (kept,) = await eventually(pruned)
    assert kept["uid"] == owner["metadata"]["uid"]
    kubectl("delete", "deployment", "gc-owner", "--cascade=orphan")  # the server orphans: the pod stays
    refs = await eventually(lambda: _no_refs(client, "gc-half"))
    assert refs == []
    assert not await gone(client, "gc-half")
    await client.delete(PODS, "gc-half", "default")


async def _no_refs(client: ApiClient, name: str) -> list | None:
    refs = (await client.get(PODS, name, "default"))["metadata"].get("ownerReferences") or []
    return refs if not refs else None


async def test_owners_of_unknown_kinds_are_assumed_to_exist(client: ApiClient) -> None:
    await client.create(PODS, pod("gc-foreign", ref("Widget", "w", MISSING_UID, api_version="example.com/v1")),
                        "default")
    await client.create(PODS, pod("gc-marker", ref("ReplicaSet", "never-was", MISSING_UID)), "default")
    await eventually(lambda: gone(client, "gc-marker"))  # the collector has looked at both by now
    await asyncio.sleep(0.5)
    assert not await gone(client, "gc-foreign")
    await client.delete(PODS, "gc-foreign", "default")
