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
import logging

from skiff.aiotasks import cancel_and_wait
from skiff.cluster.store import Compacted, EventType, KeyValue, Store

log = logging.getLogger(__name__)
ROOT = "/registry/"
SYNC_TIMEOUT = 1.0  # seconds a read waits for the cache before it reads the store itself


def _parent(key: str) -> str:
    """The collection a key is in: ``/registry/pods/ns/name`` -> ``/registry/pods/ns/``. Lists name one
    (a namespace's pods) or a few (every namespace's pods), so they never walk unrelated objects."""
    return key[:key.rindex("/") + 1]


def _key_of(kv: KeyValue) -> str:
    return kv.key


class WatchCache:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.revision = 0  # every change up to this revision is applied
        self._objects: dict[str, dict[str, KeyValue]] = {}  # collection (``_parent``) -> key -> state
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._load()
        self._task = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        for _, waiter in self._waiters:
            if not waiter.done():
                waiter.cancel()

    async def _load(self) -> None:
        items, revision, _ = await self.store.list(ROOT)
        objects: dict[str, dict[str, KeyValue]] = {}
        for kv in items:
            objects.setdefault(_parent(kv.key), {})[kv.key] = kv
        self._objects = objects
        self._advance(revision)

    async def _follow(self) -> None:
        while True:
            try:
                async with await self.store.watch(ROOT, self.revision + 1) as watch:
                    async for event in watch:
                        burst = [event, *watch.ready()]  # a commit's changes together: one advance for all
                        for change in burst:
                            self._apply(change.type, change.kv)
                        self._advance(burst[-1].revision)
                return  # the store closed
            except Compacted:
                await self._load()  # fell behind past the store's history: start over from a fresh list
            except Exception:
                log.exception("watch cache: the store watch failed; reloading")
                await asyncio.sleep(1)
                await self._load()

    def _apply(self, kind: EventType, kv: KeyValue) -> None:
        parent = _parent(kv.key)
        if kind is not EventType.DELETE:
            self._objects.setdefault(parent, {})[kv.key] = kv
            return
        collection = self._objects.get(parent)
        if collection is not None:
            collection.pop(kv.key, None)
            if not collection:
                del self._objects[parent]

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
            async with asyncio.timeout(SYNC_TIMEOUT):  # no task per wait, unlike wait_for: every read may wait
                await waiter
        except TimeoutError:
            log.warning("watch cache is behind the store (at %d, store at %d): reading the store", self.revision,
                        target)
            return False
        return True

    def get(self, key: str) -> KeyValue | None:
        """The key's latest state as the cache has it (call ``synced()`` first)."""
        return self._objects.get(_parent(key), {}).get(key)

    def list(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Every key under ``prefix``, in key order, and the revision they are current at."""
        items: list[KeyValue] = []
        for parent, collection in self._objects.items():
            if parent.startswith(prefix):
                items += collection.values()
            elif prefix.startswith(parent):  # a prefix ending inside names
                items += (kv for key, kv in collection.items() if key.startswith(prefix))
        items.sort(key=_key_of)
        return items, self.revision
