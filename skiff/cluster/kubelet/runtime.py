"""The node's engine as the agent sees it: the Docker Engine API through docker-py, nothing else.

docker-py is synchronous; every call runs on a small thread pool of its own so the agent's event loop never
blocks on the engine. Stopping is a signal plus an asynchronous wait (no thread sleeps through a grace period).
The engine's event stream is read on one thread and handed to the loop, so a container's exit wakes its pod's
sync at once instead of at the next resync.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import docker
import docker.errors

from skiff.cluster.kubelet import naming
from skiff.errors import NotFound, SkiffError

log = logging.getLogger(__name__)
T = TypeVar("T")
_TIMEOUT = 120


class RuntimeError_(SkiffError):  # "RuntimeError" is a builtin
    """The engine refused or failed a request; the message is the engine's."""


class ImagePullError(RuntimeError_):
    """The image could not be pulled (the engine's message says why)."""


@dataclass
class EngineContainer:
    """What the agent needs to know of one container: from a listing, completed by an inspect."""

    id: str
    name: str
    labels: dict[str, str]
    state: str  # created | running | exited | dead | ...
    image: str = ""
    image_id: str = ""
    exit_code: int = 0
    started_at: str = ""
    finished_at: str = ""
    error: str = ""
    oom_killed: bool = False
    ip_address: str = ""
    pid: int = 0
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def container_name(self) -> str:
        return self.labels.get(naming.CONTAINER_NAME, "")

    @property
    def attempt(self) -> int:
        try:
            return int(self.labels.get(naming.RESTART_COUNT, "0"))
        except ValueError:
            return 0

    @property
    def running(self) -> bool:
        return self.state in ("running", "paused", "restarting")

    @property
    def is_sandbox(self) -> bool:
        return self.labels.get(naming.CONTAINER_TYPE) == naming.TYPE_SANDBOX

    @classmethod
    def from_inspect(cls, doc: dict[str, Any]) -> EngineContainer:
        state = doc.get("State") or {}
        config = doc.get("Config") or {}
        networks = ((doc.get("NetworkSettings") or {}).get("Networks") or {}).values()
        address = next((n.get("IPAddress") for n in networks if n.get("IPAddress")), "") or \
            (doc.get("NetworkSettings") or {}).get("IPAddress") or ""
        return cls(id=doc["Id"], name=(doc.get("Name") or "").lstrip("/"), labels=config.get("Labels") or {},
                   state=state.get("Status") or "", image=config.get("Image") or "", image_id=doc.get("Image") or "",
                   exit_code=int(state.get("ExitCode") or 0), started_at=_timestamp(state.get("StartedAt")),
                   finished_at=_timestamp(state.get("FinishedAt")), error=state.get("Error") or "",
                   oom_killed=bool(state.get("OOMKilled")), ip_address=address, pid=int(state.get("Pid") or 0),
                   raw=doc)


def _timestamp(value: str | None) -> str:
    """An engine time (RFC 3339 with nanoseconds) as the API's seconds-precision form; "" for the zero time."""
    if not value or value.startswith("0001-"):
        return ""
    return value[:19] + "Z"


def split_image(reference: str) -> tuple[str, str]:
    """``repository`` and ``tag`` (or ``@digest``) of an image reference; ``latest`` when it names none."""
    if "@" in reference:
        repository, digest = reference.split("@", 1)
        return repository, digest
    slash = reference.rfind("/")
    colon = reference.rfind(":")
    if colon > slash:
        return reference[:colon], reference[colon + 1:]
    return reference, "latest"


def normalize_image(reference: str) -> str:
    repository, tag = split_image(reference)
    return f"{repository}@{tag}" if tag.startswith("sha256:") else f"{repository}:{tag}"


class EngineRuntime:
    """docker-py's low-level client on one engine socket, made asynchronous."""

    def __init__(self, base_url: str, *, threads: int = 16) -> None:
        self.base_url = base_url
        self._api: docker.APIClient | None = None
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="kubelet-engine")
        self._events_stream: Any = None
        self._events_thread: threading.Thread | None = None

    @property
    def api(self) -> docker.APIClient:
        if self._api is None:
            raise RuntimeError_(f"not connected to the engine at {self.base_url}")
        return self._api

    async def connect(self, wait: float) -> None:
        """Connect (docker-py asks /version to settle the API version), trying for up to ``wait`` seconds: an
        agent started beside its engine may come up first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while self._api is None:
            try:
                self._api = await loop.run_in_executor(self._pool, functools.partial(
                    docker.APIClient, base_url=self.base_url, version="auto", timeout=_TIMEOUT))
            except docker.errors.DockerException as exc:
                if loop.time() >= deadline:
                    raise RuntimeError_(f"the engine at {self.base_url} does not answer: {exc}") from None
                await asyncio.sleep(0.5)

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))
        except docker.errors.NotFound as exc:
            raise NotFound(_explain(exc)) from None
        except docker.errors.APIError as exc:
            raise RuntimeError_(_explain(exc)) from None

    def close(self) -> None:
        self.stop_events()
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._api is not None:
            self._api.close()

    # --- the engine --------------------------------------------------------------------------------------------

    async def version(self) -> dict[str, Any]:
        return await self.call(self.api.version)

    async def ping(self) -> bool:
        try:
            return bool(await asyncio.wait_for(self.call(self.api.ping), 10))
        except (SkiffError, OSError, TimeoutError, docker.errors.DockerException):
            return False

    # --- images ------------------------------------------------------------------------------------------------

    async def image_id(self, reference: str) -> str | None:
        """The id of the local image ``reference``; None when the engine has no such image."""
        try:
            return (await self.call(self.api.inspect_image, normalize_image(reference)))["Id"]
        except NotFound:
            return None

    async def pull(self, reference: str) -> str:
        """Pull ``reference``; its image id (``ImagePullError`` with the engine's message on failure)."""
        repository, tag = split_image(reference)

        def pull() -> None:
            for message in self.api.pull(repository, tag, stream=True, decode=True):
                if message.get("error"):
                    raise ImagePullError(message["error"])

        try:
            await self.call(pull)
        except (RuntimeError_, NotFound) as exc:
            raise ImagePullError(str(exc)) from None
        image_id = await self.image_id(reference)
        if image_id is None:
            raise ImagePullError(f"pulled {reference} but the engine does not list it")
        return image_id

    # --- containers --------------------------------------------------------------------------------------------

    async def containers(self, labels: dict[str, str]) -> list[EngineContainer]:
        """Every container (running or not) carrying ``labels``, inspected."""
        filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
        listed = await self.call(self.api.containers, all=True, filters=filters)
        found = []
        for item in listed:
            with contextlib.suppress(NotFound):  # removed between the list and the inspect
                found.append(await self.inspect(item["Id"]))
        return found

    async def inspect(self, container_id: str) -> EngineContainer:
        return EngineContainer.from_inspect(await self.call(self.api.inspect_container, container_id))

    async def create(self, name: str, config: dict[str, Any]) -> str:
        """Create a container from a raw Engine API config (``HostConfig`` inside); its id."""
        answer = await self.call(self.api.create_container_from_config, config, name)
        return answer["Id"]

    async def start(self, container_id: str) -> None:
        await self.call(self.api.start, container_id)

    async def signal(self, container_id: str, signal: str) -> None:
        with contextlib.suppress(NotFound):
            await self.call(self.api.kill, container_id, signal)

    async def stop(self, container_id: str, grace: float, stop_signal: str = "SIGTERM") -> None:
        """``stop_signal``, up to ``grace`` seconds for the process to end, then SIGKILL."""
        try:
            current = await self.inspect(container_id)
        except NotFound:
            return
        if not current.running:
            return
        if grace > 0:
            with contextlib.suppress(RuntimeError_):  # exited meanwhile: the engine says "is not running"
                await self.signal(container_id, stop_signal)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
                try:
                    if not (await self.inspect(container_id)).running:
                        return
                except NotFound:
                    return
        with contextlib.suppress(RuntimeError_):
            await self.signal(container_id, "SIGKILL")
        for _ in range(100):
            try:
                if not (await self.inspect(container_id)).running:
                    return
            except NotFound:
                return
            await asyncio.sleep(0.05)

    async def remove(self, container_id: str) -> None:
        with contextlib.suppress(NotFound):
            await self.call(self.api.remove_container, container_id, force=True, v=True)

    async def exec(self, container_id: str, command: list[str], timeout: float) -> tuple[int, bytes]:
        """Run ``command`` in the container; (exit code, combined output). TimeoutError after ``timeout``."""
        def run() -> tuple[int, bytes]:
            created = self.api.exec_create(container_id, command, stdout=True, stderr=True)
            output = self.api.exec_start(created["Id"])
            code = self.api.exec_inspect(created["Id"]).get("ExitCode")
            return (code if code is not None else -1), output or b""

        return await asyncio.wait_for(self.call(run), timeout)

    # --- events ------------------------------------------------------------------------------------------------

    def watch_events(self, loop: asyncio.AbstractEventLoop, callback: Callable[[dict[str, Any]], None],
                     labels: dict[str, str]) -> None:
        """Call ``callback(event)`` on ``loop`` for each container event of containers with ``labels``; the
        stream is reopened when the engine goes away and comes back."""
        filters = {"type": ["container"], "label": [f"{k}={v}" for k, v in labels.items()]}

        def read() -> None:
            while self._events_thread is not None:
                try:
                    self._events_stream = self.api.events(decode=True, filters=filters)
                    for event in self._events_stream:
                        loop.call_soon_threadsafe(callback, event)
                except Exception as exc:  # the engine restarting, or the stream closed by us
                    log.debug("engine event stream ended: %s", exc)
                if self._events_thread is not None:
                    time.sleep(1.0)

        self._events_thread = threading.Thread(target=read, name="kubelet-engine-events", daemon=True)
        self._events_thread.start()

    def stop_events(self) -> None:
        thread, self._events_thread = self._events_thread, None
        if self._events_stream is not None:
            with contextlib.suppress(Exception):
                self._events_stream.close()
        if thread is not None:
            thread.join(timeout=2)


def _explain(exc: docker.errors.APIError) -> str:
    return str(exc.explanation or exc)
