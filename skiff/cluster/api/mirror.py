"""An in-memory mirror of a few small, hot kinds (RBAC objects, namespaces), kept current by one store watch.

Requests read these on every call (the authorizer its roles and bindings, create its namespace), so
they are served from memory instead of the store. The mirror trails the store by the time one event
takes to reach it; callers that must not act on a stale view (a namespace just created) fall back to
the store when the mirror does not have what they look for.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from skiff.aiotasks import cancel_and_wait
from skiff.cluster.store import Compacted, EventType, Store

log = logging.getLogger(__name__)


class StoreMirror:
    """``objects[prefix][key]``: the decoded value of every key under each prefix."""

    def __init__(self, store: Store, prefixes: tuple[str, ...]) -> None:
        self.store = store
        self.prefixes = prefixes
        self.objects: dict[str, dict[str, dict[str, Any]]] = {p: {} for p in prefixes}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        revision = await self._load()
        self._task = asyncio.create_task(self._follow(revision + 1))

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def _load(self) -> int:
        revision = 0
        for prefix in self.prefixes:
            items, snapshot, _ = await self.store.list(prefix)
            mirrored = self.objects[prefix]  # refilled in place: readers keep references to these dicts
            mirrored.clear()
            mirrored.update((kv.key, json.loads(kv.value)) for kv in items)
            revision = max(revision, snapshot)
        return revision

    async def _follow(self, start: int) -> None:
        # One watch on the common root; events for other kinds are dropped by key before any decoding.
        root = _common_prefix(self.prefixes)
        while True:
            try:
                async with await self.store.watch(root, start) as watch:
                    async for event in watch:
                        start = event.revision + 1
                        self._apply(event.kv.key, event.type, event.kv.value)
                return  # the store closed
            except Compacted:
                start = await self._load() + 1
            except Exception:  # a broken etcd stream: reload and go on
                log.exception("store mirror watch failed; reloading")
                await asyncio.sleep(1)
                start = await self._load() + 1

    def _apply(self, key: str, kind: EventType, value: bytes) -> None:
        for prefix in self.prefixes:
            if key.startswith(prefix):
                if kind is EventType.DELETE:
                    self.objects[prefix].pop(key, None)
                else:
                    self.objects[prefix][key] = json.loads(value)
                return


def _common_prefix(prefixes: tuple[str, ...]) -> str:
    first, last = min(prefixes), max(prefixes)
    size = 0
    while size < min(len(first), len(last)) and first[size] == last[size]:
        size += 1
    return first[:size]
