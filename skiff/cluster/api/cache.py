"""The watch cache: the latest state of every object, in memory, so gets and lists skip the store.

Like kube-apiserver's cacher with consistent reads: one store watch keeps the cache current, and a read
first asks the store for its current revision (for the embedded SQLite store that is a field in memory)
and waits until the cache has applied every change up to it. So a client always reads its own writes,
and a read costs no thread hop and no SQL. Reads at an older revision (continue tokens, Exact) go to the
store, which keeps history until compaction.

Use it only where every revision of the store is a change under ``/registry/`` (the SQLite store the
server owns): a revision made elsewhere (a shared etcd) never reaches the cache's watch, so waiting for
it would always time out. A wait that times out falls back to the store all the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from skiff.cluster.store import Compacted, EventType, KeyValue, Store

log = logging.getLogger(__name__)
ROOT = "/registry/"
SYNC_TIMEOUT = 1.0  # seconds a read waits for the cache before it reads the store itself


def _bucket(key: str) -> str:
    """The resource a key belongs to: ``/registry/pods/ns/name`` -> ``pods``."""
    return key[len(ROOT):].split("/", 1)[0]


class WatchCache:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.revision = 0  # every change up to this revision is applied
        self._objects: dict[str, dict[str, KeyValue]] = {}
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._load()
        self._task = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for _, waiter in self._waiters:
            if not waiter.done():
                waiter.cancel()

    async def _load(self) -> None:
        items, revision, _ = await self.store.list(ROOT)
        objects: dict[str, dict[str, KeyValue]] = {}
        for kv in items:
            objects.setdefault(_bucket(kv.key), {})[kv.key] = kv
        self._objects = objects
        self._advance(revision)

    async def _follow(self) -> None:
        while True:
            try:
                async with await self.store.watch(ROOT, self.revision + 1) as watch:
                    async for event in watch:
                        bucket = self._objects.setdefault(_bucket(event.kv.key), {})
                        if event.type is EventType.DELETE:
                            bucket.pop(event.kv.key, None)
                        else:
                            bucket[event.kv.key] = event.kv
                        self._advance(event.revision)
                return  # the store closed
            except Compacted:
                await self._load()  # fell behind past the store's history: start over from a fresh list
            except Exception:
                log.exception("watch cache: the store watch failed; reloading")
                await asyncio.sleep(1)
                await self._load()

    def _advance(self, revision: int) -> None:
        self.revision = max(self.revision, revision)
        if self._waiters:
            ready = [w for w in self._waiters if w[0] <= self.revision]
            self._waiters = [w for w in self._waiters if w[0] > self.revision]
            for _, waiter in ready:
                if not waiter.done():
                    waiter.set_result(None)

    async def synced(self) -> bool:
        """Wait until the cache holds everything the store has committed so far; False on timeout."""
        target = await self.store.current_revision()
        if self.revision >= target:
            return True
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((target, waiter))
        try:
            await asyncio.wait_for(waiter, SYNC_TIMEOUT)
        except TimeoutError:
            log.warning("watch cache is behind the store (at %d, store at %d): reading the store", self.revision,
                        target)
            return False
        return True

    def get(self, key: str) -> KeyValue | None:
        """The key's latest state as the cache has it (call ``synced()`` first)."""
        return self._objects.get(_bucket(key), {}).get(key)

    def list(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Every key under ``prefix``, in key order, and the revision they are current at."""
        bucket = self._objects.get(_bucket(prefix), {})
        items = [kv for key, kv in bucket.items() if key.startswith(prefix)]
        items.sort(key=lambda kv: kv.key)
        return items, self.revision
