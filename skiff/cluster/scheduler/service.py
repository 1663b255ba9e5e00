"""The scheduler as a service: a client of the API that binds each pending pod to a node.

Two informers feed it: pods (not finished) and nodes. Pending pods whose ``schedulerName`` is one of ours
enter the ``SchedulingQueue``; pods on nodes and the nodes themselves make up the ``SchedulerCache``. The
loop pops a pod, decides synchronously (``Algorithm``), *assumes* it onto the chosen node and sends the
``pods/<name>/binding`` in the background, many binds in flight at once, so the next decision does not wait
for the API. A pod no node fits gets a ``FailedScheduling`` event and its ``PodScheduled=False`` condition
with kube-scheduler's message, and waits in the unschedulable pool until a node or pod changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from skiff.cluster.client import NODES, PODS, ApiClient, ApiStatusError, Informer
from skiff.cluster.scheduler.algorithm import Algorithm, FitError
from skiff.cluster.scheduler.cache import SchedulerCache
from skiff.cluster.scheduler.events import EventWriter
from skiff.cluster.scheduler.podinfo import PodInfo
from skiff.cluster.scheduler.queue import QueuedPod, SchedulingQueue
from skiff.errors import InvalidArgument, SkiffError

log = logging.getLogger(__name__)
DEFAULT_SCHEDULER_NAME = "default-scheduler"
UNFINISHED_PODS = "status.phase!=Succeeded,status.phase!=Failed"  # finished pods hold no resources
YIELD_EVERY = 0.005  # seconds of deciding before the loop lets watch events and bind answers in
EXPIRE_INTERVAL = 5.0


@dataclass
class SchedulerOptions:
    scheduler_names: tuple[str, ...] = (DEFAULT_SCHEDULER_NAME,)
    percentage_of_nodes_to_score: int = 0  # 0: kube's adaptive percentage
    parallel_binds: int = 64  # bindings in flight at once (more only adds connections: the server is one loop)
    initial_backoff: float = 1.0
    max_backoff: float = 10.0


@dataclass
class SchedulerStats:
    scheduled: int = 0
    unschedulable: int = 0  # attempts that found no node
    bind_errors: int = 0
    attempts: int = 0
    deciding_seconds: float = 0.0  # time spent in the algorithm
    started: float = field(default_factory=time.monotonic)


class Scheduler:
    def __init__(self, client: ApiClient, options: SchedulerOptions | None = None, owns_client: bool = False) -> None:
        self.client = client
        self._owns_client = owns_client  # stop() closes it
        self.options = options or SchedulerOptions()
        self.names = frozenset(self.options.scheduler_names)
        self.cache = SchedulerCache()
        self.queue = SchedulingQueue(self.options.initial_backoff, self.options.max_backoff)
        self.algorithm = Algorithm(self.cache, self.options.percentage_of_nodes_to_score)
        self.events = EventWriter(client, self.options.scheduler_names[0], busy=lambda: self._binds_in_flight > 0)
        self.stats = SchedulerStats()
        self.pods = Informer(client, PODS, field_selector=UNFINISHED_PODS)
        self.nodes = Informer(client, NODES)
        self._binds = asyncio.Semaphore(self.options.parallel_binds)
        self._binds_in_flight = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._main: asyncio.Task[None] | None = None
        self._register_handlers()

    # Running --------------------------------------------------------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        if self._main is None:
            self._main = asyncio.create_task(self.run(), name="scheduler")
        return self._main

    async def run(self) -> None:
        self.events.start()
        self.nodes.start()
        self.pods.start()
        expiry = asyncio.create_task(self._expire_assumed_periodically())
        try:
            await self.nodes.wait_synced()
            await self.pods.wait_synced()
            log.info("scheduler: %d nodes, %d pods to schedule", len(self.cache.node_list), len(self.queue))
            await self._schedule_forever()
        finally:
            expiry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await expiry

    async def stop(self) -> None:
        self.queue.close()
        if self._main is not None:
            self._main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._main
            self._main = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.pods.stop()
        await self.nodes.stop()
        await self.events.stop()
        if self._owns_client:
            await self.client.close()

    async def _schedule_forever(self) -> None:
        slice_started = time.perf_counter()
        while True:
            qp = self.queue.pop_nowait()
            if qp is None:
                qp = await self.queue.pop()
                if qp is None:
                    return
                slice_started = time.perf_counter()
            if self._binds.locked():
                await self._binds.acquire()  # the API is the bottleneck: wait for a bind to finish
                self._binds.release()
            self.schedule_one(qp)
            now = time.perf_counter()
            if now - slice_started > YIELD_EVERY:
                await asyncio.sleep(0)
                slice_started = time.perf_counter()

    async def _expire_assumed_periodically(self) -> None:
        while True:
            await asyncio.sleep(EXPIRE_INTERVAL)
            for key in self.cache.expire_assumed():
                log.warning("scheduler: the binding of %s was never confirmed; forgetting it", key)

    # One pod ------------------------------------------------------------------------------------------------

    def schedule_one(self, qp: QueuedPod) -> None:
        pod = qp.pod
        obj = self.pods.get_by_key(pod.key)
        if obj is None or (obj.get("spec") or {}).get("nodeName") or (obj.get("metadata") or {}).get(
                "deletionTimestamp"):
            self.queue.done(pod.key)  # gone, bound by someone else, or going away
            return
        self.stats.attempts += 1
        started = time.perf_counter()
        try:
            decision = self.algorithm.schedule(pod)
        except FitError as exc:
            self.stats.deciding_seconds += time.perf_counter() - started
            self.stats.unschedulable += 1
            self.queue.requeue(qp, unschedulable=True)
            self._report_unschedulable(obj, exc.message)
            return
        self.stats.deciding_seconds += time.perf_counter() - started
        self.cache.assume(pod, decision.node)
        self._spawn(self._bind(qp, obj, decision.node))

    async def _bind(self, qp: QueuedPod, obj: dict[str, Any], node: str) -> None:
        pod = qp.pod
        body = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": pod.name, "namespace": pod.namespace},
                "target": {"apiVersion": "v1", "kind": "Node", "name": node}}
        self._binds_in_flight += 1
        try:
            async with self._binds:
                await self.client.create_subresource(PODS, pod.name, "binding", body, pod.namespace)
        except ApiStatusError as exc:
            self._bind_failed(qp, obj, exc, retry=not (exc.not_found or exc.conflict))
            return
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self._bind_failed(qp, obj, exc, retry=True)
            return
        finally:
            self._binds_in_flight -= 1
        self.cache.finish_binding(pod.key)
        self.queue.done(pod.key)
        self.stats.scheduled += 1
        self.events.scheduled(obj, node)

    def _bind_failed(self, qp: QueuedPod, obj: dict[str, Any], exc: Exception, retry: bool) -> None:
        """Forget the assumption; retry after back-off unless the pod is gone or already bound (409)."""
        self.stats.bind_errors += 1
        self.cache.forget(qp.pod.key)
        log.info("scheduler: binding %s failed: %s", qp.pod.key, exc)
        if retry:
            self.queue.requeue(qp, unschedulable=False)
            self.events.failed(obj, f"Binding rejected: {exc}")
        else:
            self.queue.done(qp.pod.key)

    def _report_unschedulable(self, obj: dict[str, Any], message: str) -> None:
        self.events.failed(obj, message)
        condition = next((c for c in (obj.get("status") or {}).get("conditions") or ()
                          if c.get("type") == "PodScheduled"), None)
        if condition and condition.get("status") == "False" and condition.get("message") == message:
            return
        meta = obj["metadata"]
        patch = {"status": {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                            "message": message, "lastProbeTime": None,
                                            "lastTransitionTime": _now()}]}}
        self._spawn(self._patch_status(meta["name"], meta.get("namespace"), patch))

    async def _patch_status(self, name: str, namespace: str | None, patch: dict[str, Any]) -> None:
        try:
            await self.client.patch(PODS, name, patch, namespace=namespace, patch_type="strategic",
                                    subresource="status")
        except (SkiffError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.debug("scheduler: could not update the PodScheduled condition of %s: %s", name, exc)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # Watch events --------------------------------------------------------------------------------------------

    def _register_handlers(self) -> None:
        self.pods.on_add(self._pod_added)
        self.pods.on_update(self._pod_updated)
        self.pods.on_delete(self._pod_deleted)
        self.nodes.on_add(self._node_added)
        self.nodes.on_update(self._node_updated)
        self.nodes.on_delete(self._node_deleted)

    def _pod_added(self, obj: dict[str, Any]) -> None:
        spec = obj.get("spec") or {}
        if spec.get("nodeName"):
            self._placed(obj)
        elif self._ours(obj):
            info = self._info(obj)
            if info is not None:
                self.queue.add(info)

    def _pod_updated(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        if (new.get("spec") or {}).get("nodeName"):
            self._placed(new, old)
            return
        if not self._ours(new):
            self.queue.delete(_key(new))
            return
        if _scheduling_relevant(old) == _scheduling_relevant(new) and _key(new) in self.queue.pods:
            return  # only its status changed (our own PodScheduled condition, say): nothing new to try
        info = self._info(new)
        if info is not None:
            self.queue.add(info)

    def _pod_deleted(self, obj: dict[str, Any]) -> None:
        key = _key(obj)
        self.queue.delete(key)
        if self.cache.remove_pod(key) is not None:
            self.queue.move_all_to_active_or_backoff()  # its resources are free again

    def _placed(self, obj: dict[str, Any], old: dict[str, Any] | None = None) -> None:
        """A pod on a node: confirm our assumption, or take it into the cache (bound elsewhere, or before us)."""
        key = _key(obj)
        self.queue.delete(key)
        node = obj["spec"]["nodeName"]
        known = self.cache.pods.get(key)
        if known is not None and known.node_name == node:
            self.cache.assumed.pop(key, None)
            if old is None or _placement_relevant(old) == _placement_relevant(obj):
                return
        info = self._info(obj)
        if info is None:
            return
        info.node_name = node
        self.cache.add_pod(info)
        if info.has_pod_affinity or any(qp.pod.has_pod_affinity or qp.pod.spread for qp in
                                        self.queue.unschedulable.values()):
            self.queue.move_all_to_active_or_backoff()

    def _node_added(self, obj: dict[str, Any]) -> None:
        self.cache.set_node(obj)
        self.queue.move_all_to_active_or_backoff()

    def _node_updated(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        if _node_relevant(old) == _node_relevant(new):
            return  # a heartbeat: nothing the scheduler reads changed
        self.cache.set_node(new)
        self.queue.move_all_to_active_or_backoff()

    def _node_deleted(self, obj: dict[str, Any]) -> None:
        self.cache.remove_node(obj["metadata"]["name"])

    def _ours(self, obj: dict[str, Any]) -> bool:
        return (obj.get("spec") or {}).get("schedulerName", DEFAULT_SCHEDULER_NAME) in self.names \
            and not (obj.get("metadata") or {}).get("deletionTimestamp")

    @staticmethod
    def _info(obj: dict[str, Any]) -> PodInfo | None:
        try:
            return PodInfo.of(obj)
        except InvalidArgument as exc:
            log.warning("scheduler: pod %s cannot be scheduled: %s", _key(obj), exc)
            return None


def _key(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{meta.get('namespace') or 'default'}/{meta['name']}"


def _scheduling_relevant(obj: dict[str, Any]) -> tuple[Any, ...]:
    """What a pending pod's scheduling reads (kube's isPodUpdated ignores status and bookkeeping)."""
    meta = obj.get("metadata") or {}
    return obj.get("spec"), meta.get("labels"), meta.get("deletionTimestamp")


def _placement_relevant(obj: dict[str, Any]) -> tuple[Any, ...]:
    """What others' scheduling reads of a pod on a known node: the status changes of a running pod do not count,
    nor the binding of a pod we assumed there (its spec was parsed before it was bound)."""
    meta = obj.get("metadata") or {}
    return meta.get("labels"), meta.get("deletionTimestamp")


def _node_relevant(obj: dict[str, Any]) -> tuple[Any, ...]:
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    ready = next((c.get("status") for c in status.get("conditions") or () if c.get("type") == "Ready"), None)
    return (meta.get("labels"), spec.get("taints"), spec.get("unschedulable"), status.get("allocatable"),
            status.get("capacity"), ready)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def scheduler_names(values: Iterable[str]) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(v for v in values if v))
    return names or (DEFAULT_SCHEDULER_NAME,)
