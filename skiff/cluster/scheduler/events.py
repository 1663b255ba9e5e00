"""The scheduler's Events (``Scheduled``, ``FailedScheduling``), written in the background.

Binding comes first: events go through a bounded queue drained by a few writers that hold back ``Scheduled``
events while the scheduler reports itself busy (binds in flight); ``FailedScheduling`` warnings go first and
do not wait. When the queue is full new events are dropped, as client-go's event broadcaster drops them (its
channel holds 1,000). So a burst of thousands of pods is bound at full speed and its first thousand
``Scheduled`` events are written after it. Repeats of a pod's FailedScheduling with the same message bump
``count`` on the Event already written.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import logging
from collections.abc import Callable
from typing import Any

from skiff.aiotasks import cancel_and_wait
from skiff.cluster.client import EVENTS, ApiClient
from skiff.errors import SkiffError

log = logging.getLogger(__name__)
QUEUE_LENGTH = 1000
WRITERS = 2
_REMEMBERED = 8192  # pods whose last FailedScheduling Event is kept for deduplication
_BUSY_PAUSE = 0.05  # seconds a writer waits before asking again whether the scheduler is busy


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class EventWriter:
    def __init__(self, client: ApiClient, component: str, busy: Callable[[], bool] = lambda: False) -> None:
        self.client = client
        self.component = component
        self.busy = busy
        # (0 for warnings, which go first and never wait, 1 for the rest; arrival order; the event)
        self._queue: asyncio.PriorityQueue[tuple[int, int, tuple[dict[str, Any], str, str, str]]] = \
            asyncio.PriorityQueue(QUEUE_LENGTH)
        self._arrivals = itertools.count()
        self._failures: dict[str, tuple[str, str, int]] = {}  # pod uid -> (event name, message, count)
        self._writers: list[asyncio.Task[None]] = []
        self.dropped = 0

    def start(self) -> None:
        self._writers = [asyncio.create_task(self._drain(), name=f"scheduler-events-{i}") for i in range(WRITERS)]

    async def stop(self) -> None:
        await cancel_and_wait(*self._writers)
        self._writers = []

    def scheduled(self, pod: dict[str, Any], node: str) -> None:
        meta = pod["metadata"]
        self._put(pod, "Normal", "Scheduled", f"Successfully assigned {meta.get('namespace')}/{meta['name']} to {node}")

    def failed(self, pod: dict[str, Any], message: str) -> None:
        self._put(pod, "Warning", "FailedScheduling", message)

    def _put(self, pod: dict[str, Any], event_type: str, reason: str, message: str) -> None:
        try:
            self._queue.put_nowait((0 if event_type == "Warning" else 1, next(self._arrivals),
                                    (pod, event_type, reason, message)))
        except asyncio.QueueFull:
            self.dropped += 1

    async def _drain(self) -> None:
        while True:
            rank, _, (pod, event_type, reason, message) = await self._queue.get()
            while rank and self.busy():
                await asyncio.sleep(_BUSY_PAUSE)
            try:
                await self._write(pod, event_type, reason, message)
            except (SkiffError, OSError, TimeoutError, ValueError) as exc:
                log.debug("event %s for %s dropped: %s", reason, pod["metadata"].get("name"), exc)
            except Exception as exc:  # aiohttp's errors among them: an event is never worth a crash
                log.debug("event %s for %s dropped: %r", reason, pod["metadata"].get("name"), exc)

    async def _write(self, pod: dict[str, Any], event_type: str, reason: str, message: str) -> None:
        meta = pod["metadata"]
        namespace, uid, now = meta.get("namespace") or "default", meta.get("uid") or "", now_rfc3339()
        if reason == "FailedScheduling":
            earlier = self._failures.get(uid)
            if earlier is not None and earlier[1] == message:
                name, count = earlier[0], earlier[2] + 1
                await self.client.patch(EVENTS, name, {"count": count, "lastTimestamp": now}, namespace=namespace)
                self._failures[uid] = (name, message, count)
                return
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": namespace},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "namespace": namespace,
                               "uid": uid, "resourceVersion": meta.get("resourceVersion")},
            "reason": reason, "message": message, "type": event_type, "count": 1,
            "firstTimestamp": now, "lastTimestamp": now, "source": {"component": self.component},
            "reportingComponent": self.component, "reportingInstance": self.component, "action": "Scheduling",
        }
        made = await self.client.create(EVENTS, event, namespace)
        if reason == "FailedScheduling":
            if len(self._failures) >= _REMEMBERED:
                self._failures.pop(next(iter(self._failures)))
            self._failures[uid] = (made["metadata"]["name"], message, 1)
        else:
            self._failures.pop(uid, None)
