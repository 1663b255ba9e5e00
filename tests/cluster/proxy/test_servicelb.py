"""``ServiceLBController`` against a real ``skiff server``: LoadBalancer Services get the Ready nodes'
InternalIPs in status.loadBalancer.ingress, follow node changes, and Services of another class or type are
left alone. (That the proxy DNATs those addresses: test_proxy's load-balancer test.)"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from skiff.cluster.client import NODES, SERVICES, ApiClient, ApiNotFound, SharedInformers
from skiff.cluster.controllers.servicelb import ServiceLBController
from tests.cluster.proxy.conftest import make_service

pytestmark = pytest.mark.asyncio


async def put_node(client: ApiClient, name: str, address: str, ready: bool) -> None:
    with contextlib.suppress(ApiNotFound):
        await client.delete(NODES, name)
    await client.create(NODES, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
    status = {"addresses": [{"type": "InternalIP", "address": address}, {"type": "Hostname", "address": name}],
              "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    await client.patch(NODES, name, {"status": status}, subresource="status")


@pytest_asyncio.fixture
async def controller(client: ApiClient, informers: SharedInformers) -> AsyncIterator[ServiceLBController]:
    c = ServiceLBController(client, informers)
    task = asyncio.create_task(c.run())
    yield c
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    for name in ("lb-a", "lb-b", "lb-c"):
        with contextlib.suppress(ApiNotFound):
            await client.delete(NODES, name)


async def ingress(client: ApiClient, name: str, want: list[str], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        svc = await client.get(SERVICES, name, "default")
        got = [i.get("ip") for i in ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []]
        if got == want:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{name}: ingress {got}, not {want}")
        await asyncio.sleep(0.05)


async def test_ingress_follows_ready_nodes(client: ApiClient, controller: ServiceLBController) -> None:
    await put_node(client, "lb-a", "192.0.2.11", ready=True)
    await put_node(client, "lb-b", "192.0.2.10", ready=True)
    await put_node(client, "lb-c", "192.0.2.12", ready=False)
    await make_service(client, "lb", [{"port": 80, "targetPort": 8080}], type="LoadBalancer")
    await ingress(client, "lb", ["192.0.2.10", "192.0.2.11"])
    await client.patch(NODES, "lb-c", {"status": {"conditions": [{"type": "Ready", "status": "True"}]}},
                       subresource="status", patch_type="strategic")
    await ingress(client, "lb", ["192.0.2.10", "192.0.2.11", "192.0.2.12"])
    await client.delete(NODES, "lb-a")
    await ingress(client, "lb", ["192.0.2.10", "192.0.2.12"])
    # another implementation's Service, and a plain ClusterIP one: untouched
    await make_service(client, "lb-other", [{"port": 80}], type="LoadBalancer", loadBalancerClass="example.com/lb")
    await make_service(client, "plain", [{"port": 80}])
    await asyncio.sleep(0.5)
    await ingress(client, "lb-other", [], timeout=0)
    await ingress(client, "plain", [], timeout=0)
