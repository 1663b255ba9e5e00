"""``Informer``: a local, indexed cache of one resource kept current by list + watch (client-go's informer).

It lists (in pages, at one snapshot), then watches from the list's resourceVersion; each event updates the
cache and then calls the registered handlers. When the watch ends it resumes from the last resourceVersion
it saw (bookmarks keep that fresh on quiet resources); when the server says that version is gone (410) it
lists again and turns the difference into add/update/delete calls, so handlers never miss a deletion.
Failures back off exponentially (0.5 s doubling to 30 s).

Cached objects are shared with every handler and reader: treat them as read-only (copy before changing).
Handlers are plain functions run on the event loop; they should only note work (enqueue a key), not do it.

Every object is passed through ``transform`` before it is cached (and handed to handlers); the default drops
``metadata.managedFields``, which no client of the cache reads and which is often the larger part of an object
(kube-controller-manager and kube-scheduler trim their informers the same way). Writing back an object read
from the cache is still safe: the server keeps the stored object's managedFields when a write carries none.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Iterable
from typing import Any

import aiohttp

from skiff.aiotasks import cancel_and_wait
from skiff.cluster.client.api import ApiClient, Obj
from skiff.cluster.client.errors import ApiStatusError
from skiff.cluster.client.resources import Resource

log = logging.getLogger(__name__)
IndexFunc = Callable[[Obj], Iterable[str]]
NAMESPACE_INDEX = "namespace"
_BACKOFF_START, _BACKOFF_MAX = 0.5, 30.0


def object_key(obj: Obj) -> str:
    """``namespace/name`` (``name`` for cluster-scoped objects): the key caches and work queues use."""
    meta = obj["metadata"]
    namespace = meta.get("namespace")
    return f"{namespace}/{meta['name']}" if namespace else meta["name"]


def strip_managed_fields(obj: Obj) -> Obj:
    """The object without ``metadata.managedFields`` (changed in place: it was just decoded for the cache)."""
    meta = obj.get("metadata")
    if meta:
        meta.pop("managedFields", None)
    return obj


def split_key(key: str) -> tuple[str | None, str]:
    namespace, _, name = key.rpartition("/")
    return namespace or None, name


class Informer:
    def __init__(self, client: ApiClient, res: Resource, namespace: str | None = None, *,
                 label_selector: str | None = None, field_selector: str | None = None, page_size: int = 500,
                 transform: Callable[[Obj], Obj] | None = strip_managed_fields) -> None:
        self.client = client
        self.transform = transform
        self.resource = res
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.page_size = page_size
        self.resource_version: str | None = None
        self._objects: dict[str, Obj] = {}
        self._index_funcs: dict[str, IndexFunc] = {}
        self._indices: dict[str, dict[str, set[str]]] = {}
        self._on_add: list[Callable[[Obj], Any]] = []
        self._on_update: list[Callable[[Obj, Obj], Any]] = []
        self._on_delete: list[Callable[[Obj], Any]] = []
        self._synced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.add_index(NAMESPACE_INDEX, lambda obj: [obj["metadata"].get("namespace") or ""])

    # --- reading the cache ---------------------------------------------------------------------------------

    def get(self, namespace: str | None, name: str) -> Obj | None:
        return self._objects.get(f"{namespace}/{name}" if namespace else name)

    def get_by_key(self, key: str) -> Obj | None:
        return self._objects.get(key)

    def list(self, namespace: str | None = None) -> list[Obj]:
        if namespace is None:
            return list(self._objects.values())
        return self.by_index(NAMESPACE_INDEX, namespace)

    def keys(self) -> list[str]:
        return list(self._objects)

    def __len__(self) -> int:
        return len(self._objects)

    def add_index(self, name: str, fn: IndexFunc) -> None:
        """Index the cache by ``fn(obj)``'s values (built now for what is cached, kept up to date after)."""
        self._index_funcs[name] = fn
        index: dict[str, set[str]] = {}
        for key, obj in self._objects.items():
            for value in fn(obj):
                index.setdefault(value, set()).add(key)
        self._indices[name] = index

    def has_index(self, name: str) -> bool:
        return name in self._index_funcs

    def by_index(self, name: str, value: str) -> list[Obj]:
        keys = self._indices[name].get(value, ())
        return [self._objects[k] for k in keys]

    # --- handlers -----------------------------------------------------------------------------------------

    def on_add(self, fn: Callable[[Obj], Any]) -> Callable[[Obj], Any]:
        """Call ``fn(obj)`` for each new object (and now, for those already cached). Usable as a decorator."""
        self._on_add.append(fn)
        for obj in list(self._objects.values()):
            self._call(fn, obj)
        return fn

    def on_update(self, fn: Callable[[Obj, Obj], Any]) -> Callable[[Obj, Obj], Any]:
        """Call ``fn(old, new)`` for each change."""
        self._on_update.append(fn)
        return fn

    def on_delete(self, fn: Callable[[Obj], Any]) -> Callable[[Obj], Any]:
        """Call ``fn(last_known_state)`` for each deletion."""
        self._on_delete.append(fn)
        return fn

    def _call(self, fn: Callable[..., Any], *args: Obj) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("%s informer handler %r failed", self.resource.plural, fn)

    # --- running ------------------------------------------------------------------------------------------

    @property
    def has_synced(self) -> bool:
        return self._synced.is_set()

    async def wait_synced(self) -> None:
        """Until the first list has been cached (and its handlers called)."""
        await self._synced.wait()

    def start(self) -> asyncio.Task[None]:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=f"informer-{self.resource.plural}")
        return self._task

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def run(self) -> None:
        """List (unless restarted after ``stop()``: then resume the watch where it was), then watch forever."""
        delay = _BACKOFF_START
        must_list = not self.has_synced
        while True:
            try:
                if must_list:
                    await self._list()
                    must_list = False
                await self._watch()
                delay = _BACKOFF_START  # a watch that ended normally: resume at once
                continue
            except ApiStatusError as exc:
                if exc.gone:
                    log.info("%s: resourceVersion %s is gone: relisting", self.resource.plural,
                             self.resource_version)
                    must_list = True
                    continue
                log.warning("%s informer: %s", self.resource.plural, exc)
            except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
                log.info("%s informer: %s: %s", self.resource.plural, type(exc).__name__, exc)
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, _BACKOFF_MAX)

    async def _list(self) -> None:
        items: list[Obj] = []
        continue_token: str | None = None
        while True:
            page = await self.client.list(self.resource, self.namespace, label_selector=self.label_selector,
                                          field_selector=self.field_selector, limit=self.page_size,
                                          continue_=continue_token)
            items.extend(page.get("items") or ())
            meta = page.get("metadata") or {}
            continue_token = meta.get("continue")
            if not continue_token:
                break
        self._replace(items, meta.get("resourceVersion"))

    def _replace(self, items: list[Obj], resource_version: str | None) -> None:
        """The cache becomes exactly ``items``; handlers hear of every difference."""
        kind = self.resource.kind
        fresh = {}
        for obj in items:
            if self.transform is not None:
                obj = self.transform(obj)
            obj.setdefault("kind", kind)  # list items carry no kind; watch events do
            obj.setdefault("apiVersion", self.resource.api_version)
            fresh[object_key(obj)] = obj
        gone = [obj for key, obj in self._objects.items() if key not in fresh]
        for obj in gone:
            self._remove(object_key(obj))
            for fn in self._on_delete:
                self._call(fn, obj)
        for key, obj in fresh.items():
            old = self._objects.get(key)
            if old is not None and _rv(old) == _rv(obj):
                continue
            self._store_and_notify(key, old, obj)
        self.resource_version = resource_version
        self._synced.set()

    async def _watch(self) -> None:
        timeout = int(random.uniform(300, 600))  # spread watch renewals, as client-go does
        events = self.client.watch(self.resource, self.namespace, resource_version=self.resource_version,
                                   label_selector=self.label_selector, field_selector=self.field_selector,
                                   allow_bookmarks=True, timeout_seconds=timeout)
        async for event_type, obj in events:
            rv = (obj.get("metadata") or {}).get("resourceVersion")
            if event_type == "BOOKMARK":
                self.resource_version = rv or self.resource_version
                continue
            self._apply(event_type, obj)
            if rv:
                self.resource_version = rv

    def _apply(self, event_type: str, obj: Obj) -> None:
        if self.transform is not None:
            obj = self.transform(obj)
        key = object_key(obj)
        old = self._objects.get(key)
        if event_type == "DELETED":
            if old is None:
                return
            self._remove(key)
            for fn in self._on_delete:
                self._call(fn, obj)
            return
        self._store_and_notify(key, old, obj)

    def _store_and_notify(self, key: str, old: Obj | None, obj: Obj) -> None:
        """Cache ``obj``, then tell the handlers: an add if there was no ``old``, else an update."""
        self._store(key, obj)
        if old is None:
            for fn in self._on_add:
                self._call(fn, obj)
        else:
            for fn in self._on_update:
                self._call(fn, old, obj)

    def _store(self, key: str, obj: Obj) -> None:
        old = self._objects.get(key)
        if old is not None:
            self._unindex(key, old)
        self._objects[key] = obj
        for name, fn in self._index_funcs.items():
            index = self._indices[name]
            for value in fn(obj):
                index.setdefault(value, set()).add(key)

    def _remove(self, key: str) -> None:
        old = self._objects.pop(key, None)
        if old is not None:
            self._unindex(key, old)

    def _unindex(self, key: str, obj: Obj) -> None:
        for name, fn in self._index_funcs.items():
            index = self._indices[name]
            for value in fn(obj):
                keys = index.get(value)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del index[value]


def _rv(obj: Obj) -> str | None:
    return (obj.get("metadata") or {}).get("resourceVersion")


class SharedInformers:
    """One informer per (resource, namespace, selectors), shared by the controllers of one process."""

    def __init__(self, client: ApiClient) -> None:
        self.client = client
        self._informers: dict[tuple[Resource, str | None, str | None, str | None], Informer] = {}

    def informer(self, res: Resource, namespace: str | None = None, *, label_selector: str | None = None,
                 field_selector: str | None = None) -> Informer:
        key = (res, namespace, label_selector, field_selector)
        if key not in self._informers:
            self._informers[key] = Informer(self.client, res, namespace, label_selector=label_selector,
                                            field_selector=field_selector)
        return self._informers[key]

    async def stop(self) -> None:
        for informer in self._informers.values():
            await informer.stop()
