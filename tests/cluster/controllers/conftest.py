"""Fixtures and helpers for the controller tests: a real ``skiff server`` (its controllers run in it, as by
default), the real kubectl 1.32, an ``ApiClient`` with the admin's credentials.

There are no nodes here: tests observe what the controllers create and play the scheduler's and the node's
part themselves, binding pods (``pods/binding``) and marking them Running and Ready (``pods/status``). So the
servers run without their scheduler (``--disable-scheduler``), which would otherwise write the same pods.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from skiff.cluster.client import PODS, ApiClient, ApiStatusError, load_kubeconfig
from tests.cluster.api.conftest import (  # noqa: F401 - fixtures
    ServerProcess,
    kubectl,
    kubectl_cache,
)

NO_SCHEDULER = "--disable-scheduler"


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server per test module, its controllers running in it and its scheduler not."""
    server = ServerProcess(tmp_path_factory.mktemp("controllers"), NO_SCHEDULER)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest_asyncio.fixture
async def client(api_server: ServerProcess) -> AsyncIterator[ApiClient]:
    async with ApiClient.from_config(load_kubeconfig(api_server.kubeconfig)) as api:
        yield api


async def eventually(probe: Callable[[], Awaitable[Any]], timeout: float = 20.0, interval: float = 0.1) -> Any:
    """Await ``probe()`` until it returns something other than None or False (an empty list counts: "no pods
    left" is an answer); that value (AssertionError on timeout)."""
    deadline = asyncio.get_running_loop().time() + timeout
    last: Any = None
    while True:
        last = await probe()
        if last is not None and last is not False:
            return last
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met in {timeout} s (last: {last!r})")
        await asyncio.sleep(interval)


def rfc3339(offset: float = 0.0) -> str:
    moment = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=offset)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


async def pods_of(client: ApiClient, selector: str, namespace: str = "default") -> list[dict[str, Any]]:
    """The live (not terminating) pods matching ``selector``, oldest first."""
    items = (await client.list(PODS, namespace, label_selector=selector))["items"]
    live = [p for p in items if not p["metadata"].get("deletionTimestamp")]
    return sorted(live, key=lambda p: (p["metadata"]["creationTimestamp"], p["metadata"]["name"]))


async def run_pod(client: ApiClient, pod: dict[str, Any], node: str = "node-a", ready: bool = True,
                  ready_since: float = 0.0) -> dict[str, Any]:
    """Play the node: bind ``pod`` to ``node`` and report it Running (and Ready, since ``ready_since`` s ago)."""
    meta = pod["metadata"]
    if not pod["spec"].get("nodeName"):
        await client.create_subresource(PODS, meta["name"], "binding", {
            "apiVersion": "v1", "kind": "Binding", "metadata": {"name": meta["name"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node}}, meta["namespace"])
    status = {"phase": "Running", "podIP": "10.42.0.10", "conditions": [
        {"type": "Ready", "status": "True" if ready else "False", "lastTransitionTime": rfc3339(-ready_since)}]}
    return await client.patch(PODS, meta["name"], {"status": status}, namespace=meta["namespace"],
                              subresource="status")


class FakeKubelet:
    """Plays every node at once for the pods matching ``selector``: binds each new pod and reports it Running and
    Ready, at most ``per_round`` pods every ``interval`` seconds (so a rollout advances step by step), and
    removes pods being deleted (the kubelet's final delete).
    ``paused`` stops it; a test can flip that to hold a rollout where it is."""

    def __init__(self, client: ApiClient, selector: str, namespace: str = "default", per_round: int = 100,
                 interval: float = 0.1) -> None:
        self.client, self.selector, self.namespace = client, selector, namespace
        self.per_round, self.interval = per_round, interval
        self.paused = False
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> FakeKubelet:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            if not self.paused:
                try:
                    await self.round()
                except (OSError, aiohttp.ClientError, ApiStatusError):
                    pass  # a pod deleted under us, or the server restarting: next round
            await asyncio.sleep(self.interval)

    async def round(self) -> None:
        items = (await self.client.list(PODS, self.namespace, label_selector=self.selector))["items"]
        going = [p for p in items if p["metadata"].get("deletionTimestamp")]
        pending = [p for p in items if not p["metadata"].get("deletionTimestamp") and not _is_ready(p)]
        pending.sort(key=lambda p: (p["metadata"]["creationTimestamp"], p["metadata"]["name"]))
        # a kubelet's last word on a pod being deleted: its containers stopped, the pod goes
        await asyncio.gather(*(self.client.delete(PODS, p["metadata"]["name"], self.namespace,
                                                  grace_period_seconds=0) for p in going), return_exceptions=True)
        await asyncio.gather(*(run_pod(self.client, p) for p in pending[:self.per_round]))


def _is_ready(pod: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or ())
