"""One node's agent for as long as it runs, as ``skiff agent`` and ``skiff server`` (in-process) both run it.

The kubelet needs its engine before it can do anything, but a node whose engine is down must still say so:
until the engine answers, the Node is registered NotReady with the reason in its Ready condition's message,
and the engine is asked again every ``retry`` seconds. Once it answers, the kubelet starts (it posts Ready),
then the node's services beside it. ``start()`` returns at once; ``started`` is set once the kubelet runs.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket

import aiohttp
import docker.errors

from skiff.aiotasks import cancel_and_wait
from skiff.cluster.client import ApiClient, ApiStatusError
from skiff.cluster.kubelet import pause
from skiff.cluster.kubelet.kubelet import Kubelet, KubeletOptions
from skiff.cluster.proxy.node import NodeServiceOptions, NodeServices
from skiff.errors import InvalidArgument, SkiffError

log = logging.getLogger(__name__)
DEFAULT_ENGINE = "unix:///run/skiff/engine.sock"
_API_DOWN = (aiohttp.ClientError, OSError, TimeoutError, ApiStatusError)
_ENGINE_DOWN = (SkiffError, OSError, docker.errors.DockerException)  # requests' errors are OSErrors
_NODE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def default_node_name() -> str:
    """The host name, lower-cased as a Node's name must be."""
    return socket.gethostname().lower()


def check_node_name(name: str) -> str:
    """``name`` if it can name a Node (a DNS subdomain: it is also the agent's user, system:node:<name>)."""
    if len(name) > 253 or not _NODE_NAME.fullmatch(name):
        raise InvalidArgument(f"node name {name!r} is not a DNS subdomain (lower-case letters, digits, '-', '.')")
    return name


class NodeAgent:
    """The kubelet of one node and the services beside it, started in the background (``start``/``stop``)."""

    def __init__(self, client: ApiClient, options: KubeletOptions, retry: float = 2.0,
                 owns_client: bool = False, services: NodeServiceOptions | None = None) -> None:
        self.client = client
        self._owns_client = owns_client  # stop() closes it
        self.options = options
        self.retry = retry
        self.kubelet = Kubelet(client, options)
        # the Service proxy and cluster DNS (skiff/cluster/proxy/node.py); None: not on this node
        self.services = NodeServices(client, services) if services is not None else None
        self.started = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._connected = False
        self._kubelet_running = False

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"agent-{self.options.node_name}")
        self._task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("node %s: the agent could not start: %s", self.options.node_name, task.exception())

    async def wait_started(self) -> None:
        """Until the kubelet runs; raises what ended start-up if it failed for good."""
        assert self._task is not None
        waiter = asyncio.create_task(self.started.wait())
        await asyncio.wait({waiter, self._task}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if not self.started.is_set():
            self._task.result()

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        if self.services is not None:
            await self.services.stop()
        if self._kubelet_running:
            await self.kubelet.stop()
        else:
            await asyncio.to_thread(self.kubelet.runtime.close)
        if self._owns_client:
            await self.client.close()

    async def _run(self) -> None:
        await self._wait_for_engine()
        self._kubelet_running = True
        await self.kubelet.start()
        if self.services is not None:  # in the background: a proxy that cannot start yet retries alone
            self.services.start(self.kubelet.identity.address)
        self.started.set()

    async def _wait_for_engine(self) -> None:
        """Connect to the engine and make the pause image when it is ours and missing; until both are done keep
        the Node registered NotReady, saying why."""
        posted = ""
        while (problem := await self._engine_problem()) is not None:
            if problem != posted:
                log.warning("node %s: %s; retrying every %g s", self.options.node_name, problem, self.retry)
                posted = await self._post_not_ready(problem)
            if self._connected:  # a failed connect() has waited already
                await asyncio.sleep(self.retry)

    async def _engine_problem(self) -> str | None:
        runtime = self.kubelet.runtime
        try:
            await runtime.connect(self.retry)
        except _ENGINE_DOWN as exc:
            return f"container runtime is down: {exc}"
        self._connected = True
        try:
            await pause.provide(runtime, self.options.pause_image)
        except _ENGINE_DOWN as exc:
            return f"cannot make the sandbox image {self.options.pause_image}: {exc}"
        return None

    async def _post_not_ready(self, message: str) -> str:
        """Register the Node NotReady with ``message``; the message posted ('' when the API did not take it)."""
        try:
            await self.kubelet.registration.register(False, message)
            return message
        except (SkiffError, *_API_DOWN) as exc:
            log.warning("node %s: cannot register: %s", self.options.node_name, exc)
            return ""
