"""Events a controller records about the objects it acts on (``kubectl describe`` shows them).

Fire-and-forget, as kube's EventRecorder: an event that cannot be written is logged and dropped, never an
error of the sync that made it. Repeats of the same event within a few minutes bump ``count`` on the
existing Event instead of creating another.
"""

from __future__ import annotations

import asyncio
import logging
import time

from skiff.cluster.client import EVENTS, ApiClient
from skiff.cluster.controllers.objects import Obj, now_rfc3339

log = logging.getLogger(__name__)
_DEDUP_SECONDS = 600.0


class EventRecorder:
    def __init__(self, client: ApiClient, component: str) -> None:
        self.client = client
        self.component = component
        self._recent: dict[tuple[str, str, str, str], tuple[str, int, float]] = {}  # -> (event name, count, at)
        self._tasks: set[asyncio.Task[None]] = set()

    def normal(self, obj: Obj, reason: str, message: str) -> None:
        self._record(obj, "Normal", reason, message)

    def warning(self, obj: Obj, reason: str, message: str) -> None:
        self._record(obj, "Warning", reason, message)

    def _record(self, obj: Obj, event_type: str, reason: str, message: str) -> None:
        task = asyncio.get_running_loop().create_task(self._write(obj, event_type, reason, message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, obj: Obj, event_type: str, reason: str, message: str) -> None:
        meta = obj["metadata"]
        namespace = meta.get("namespace") or "default"
        key = (meta["uid"], event_type, reason, message)
        now = now_rfc3339()
        try:
            recent = self._recent.get(key)
            if recent is not None and time.monotonic() - recent[2] < _DEDUP_SECONDS:
                name, count = recent[0], recent[1] + 1
                await self.client.patch(EVENTS, name, {"count": count, "lastTimestamp": now}, namespace=namespace)
                self._recent[key] = (name, count, time.monotonic())
                return
            event = {
                "apiVersion": "v1", "kind": "Event",
                "metadata": {"generateName": f"{meta['name']}.", "namespace": namespace},
                "involvedObject": {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "name": meta["name"],
                                   "namespace": meta.get("namespace"), "uid": meta["uid"],
                                   "resourceVersion": meta.get("resourceVersion")},
                "reason": reason, "message": message, "type": event_type, "count": 1,
                "firstTimestamp": now, "lastTimestamp": now, "source": {"component": self.component},
                "reportingComponent": self.component, "reportingInstance": "",
            }
            made = await self.client.create(EVENTS, event, namespace)
            self._recent[key] = (made["metadata"]["name"], 1, time.monotonic())
            if len(self._recent) > 4096:
                self._recent.pop(next(iter(self._recent)))
        except Exception as exc:  # an event is never worth failing a sync (or a crash)
            log.debug("event %s for %s dropped: %s", reason, meta.get("name"), exc)
