"""Fixtures for the client tests: the API server suite's real ``skiff server`` (one per module), and
``config``/``client`` for it (the admin's kubeconfig through ``load_kubeconfig``; an ``ApiClient`` per test).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from skiff.cluster.client import ApiClient, ClusterConfig, load_kubeconfig
from tests.cluster.api.conftest import ServerProcess, api_server, kubectl, kubectl_cache  # noqa: F401 - fixtures


@pytest.fixture
def config(api_server: ServerProcess) -> ClusterConfig:  # noqa: F811 - the fixture imported above
    return load_kubeconfig(api_server.kubeconfig)


@pytest_asyncio.fixture
async def client(config: ClusterConfig) -> AsyncIterator[ApiClient]:
    async with ApiClient.from_config(config) as api:
        yield api
