"""Fixtures for the proxy and DNS tests: a real ``skiff server`` (the API suite's, one per module), an
``ApiClient`` on it, and helpers writing Services and EndpointSlices through the API.

The Services have no selector, so their EndpointSlices are the test's to write (no controller owns them).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio

from skiff.cluster.client import ENDPOINT_SLICES, SERVICES, ApiClient, ApiNotFound, SharedInformers, load_kubeconfig
from tests.cluster.api.conftest import ServerProcess, api_server, kubectl, kubectl_cache  # noqa: F401 - fixtures
from tests.cluster.proxy.netlab import NetLab


@pytest_asyncio.fixture
async def client(api_server: ServerProcess) -> AsyncIterator[ApiClient]:  # noqa: F811 - the fixture above
    async with ApiClient.from_config(load_kubeconfig(api_server.kubeconfig)) as api:
        yield api


@pytest_asyncio.fixture
async def informers(client: ApiClient) -> AsyncIterator[SharedInformers]:
    shared = SharedInformers(client)
    yield shared
    await shared.stop()


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest) -> Iterator[NetLab]:
    net = NetLab(request.module.__name__.rsplit("_", 1)[-1][:4])
    try:
        yield net
    finally:
        net.close()


async def make_service(client: ApiClient, name: str, ports: list[dict[str, Any]], namespace: str = "default",
                       **spec: Any) -> dict[str, Any]:
    """A selector-less Service (replaced if there already); the server allocates its ClusterIP."""
    try:
        await client.delete(SERVICES, name, namespace)
    except ApiNotFound:
        pass
    body = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"ports": ports, **spec}}
    return await client.create(SERVICES, body, namespace)


async def set_endpoints(client: ApiClient, service: str, endpoints: list[dict[str, Any]],
                        ports: list[dict[str, Any]], namespace: str = "default", slice_name: str | None = None) -> None:
    """The Service's one EndpointSlice holds ``endpoints`` (created or replaced)."""
    name = slice_name or f"{service}-test"
    body = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {"kubernetes.io/service-name": service,
                                    "endpointslice.kubernetes.io/managed-by": "skiff-tests"}},
            "endpoints": endpoints, "ports": ports}
    try:
        live = await client.get(ENDPOINT_SLICES, name, namespace)
    except ApiNotFound:
        await client.create(ENDPOINT_SLICES, body, namespace)
        return
    body["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"]
    await client.replace(ENDPOINT_SLICES, body)


def ready(*ips: str, **extra: Any) -> list[dict[str, Any]]:
    return [{"addresses": [ip], "conditions": {"ready": True}, **extra} for ip in ips]


async def until(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)
