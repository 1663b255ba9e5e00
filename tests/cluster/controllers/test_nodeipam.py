"""The node IPAM controller in a real ``skiff server``: each Node gets its own /24 of the cluster CIDR, a Node
that brings its own keeps it, a deleted Node's range is handed out again, and a restarted server keeps every
assignment (the Nodes are the record)."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from skiff.cluster.client import NODES, ApiClient, ApiStatusError, load_kubeconfig
from skiff.cluster.controllers.nodeipam import CidrPlan
from skiff.errors import InvalidArgument
from tests.cluster.api.conftest import ServerProcess
from tests.cluster.controllers.conftest import NO_SCHEDULER, eventually

pytestmark = pytest.mark.asyncio


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server whose controllers allocate node CIDRs (off by default, as kube-controller-manager's)."""
    server = ServerProcess(tmp_path_factory.mktemp("nodeipam"), NO_SCHEDULER, "--allocate-node-cidrs")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def node(name: str, pod_cidr: str | None = None) -> dict[str, Any]:
    spec = {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]} if pod_cidr else {}
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "spec": spec}


async def cidr_of(client: ApiClient, name: str) -> str | None:
    spec = (await client.get(NODES, name)).get("spec") or {}
    if spec.get("podCIDR"):
        assert spec["podCIDRs"] == [spec["podCIDR"]]
    return spec.get("podCIDR")


async def delete_nodes(client: ApiClient, *names: str) -> None:
    for name in names:
        try:
            await client.delete(NODES, name)
        except ApiStatusError as exc:
            if not exc.not_found:
                raise


async def test_cidr_plan_cuts_the_cluster_cidr_in_blocks() -> None:
    plan = CidrPlan.parse("10.42.0.0/16")
    assert plan.size == 256
    assert str(plan.block(0)) == "10.42.0.0/24" and str(plan.block(255)) == "10.42.255.0/24"
    assert plan.index_of("10.42.7.0/24") == 7 and plan.index_of("10.43.0.0/24") is None
    assert str(plan.first_free({0, 1, 3})) == "10.42.2.0/24"
    assert CidrPlan.parse("10.0.0.0/30", 31).first_free({0, 1}) is None
    for bad in ("10.42.0.1/16", "nonsense"):
        with pytest.raises(InvalidArgument):
            CidrPlan.parse(bad)
    with pytest.raises(InvalidArgument):
        CidrPlan.parse("10.42.0.0/16", 8)


async def test_nodes_get_distinct_pod_cidrs_and_released_ones_come_back(client: ApiClient) -> None:
    await client.create(NODES, node("ipam-own", "10.42.0.0/24"))  # brought its own: kept, and counts as taken
    for name in ("ipam-a", "ipam-b"):
        await client.create(NODES, node(name))
    try:
        a = await eventually(lambda: cidr_of(client, "ipam-a"))
        b = await eventually(lambda: cidr_of(client, "ipam-b"))
        assert await cidr_of(client, "ipam-own") == "10.42.0.0/24"
        assert {a, b} == {"10.42.1.0/24", "10.42.2.0/24"}
        assert all(ipaddress.ip_network(c).subnet_of(ipaddress.ip_network("10.42.0.0/16")) for c in (a, b))

        await delete_nodes(client, "ipam-a")
        await client.create(NODES, node("ipam-c"))
        assert await eventually(lambda: cidr_of(client, "ipam-c")) == a  # the lowest free block: a's, released
    finally:
        await delete_nodes(client, "ipam-own", "ipam-a", "ipam-b", "ipam-c")


async def test_assignments_survive_a_server_restart(api_server: ServerProcess) -> None:
    async with ApiClient.from_config(load_kubeconfig(api_server.kubeconfig)) as client:
        await client.create(NODES, node("ipam-r1"))
        first = await eventually(lambda: cidr_of(client, "ipam-r1"))
    api_server.stop()
    api_server.start()
    async with ApiClient.from_config(load_kubeconfig(api_server.kubeconfig)) as client:
        try:
            await client.create(NODES, node("ipam-r2"))
            second = await eventually(lambda: cidr_of(client, "ipam-r2"))
            assert await cidr_of(client, "ipam-r1") == first
            assert second != first
        finally:
            await delete_nodes(client, "ipam-r1", "ipam-r2")


async def test_without_the_flag_nodes_get_no_cidr(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "plain", NO_SCHEDULER)
    server.start()
    try:
        async with ApiClient.from_config(load_kubeconfig(server.kubeconfig)) as client:
            await client.create(NODES, node("plain"))
            await asyncio.sleep(2)  # what an allocation takes here is ~0.1 s
            assert await cidr_of(client, "plain") is None
    finally:
        server.stop()
