"""The cluster's store: a revisioned key-value store with watch under the Kubernetes API server.

One contract (``Store``, semantics in ``interface``), two backends:

* ``sqlite`` (the default): embedded, one file, kine's log design: ``SQLiteStore``;
* ``etcd``: a real etcd v3 cluster over its JSON gateway: ``EtcdStore``.

``open_store(url)`` picks one from a URL, so the API server is configured with a string:
``/var/lib/skiff/server/store.db`` or ``sqlite:///path``, or ``etcd://127.0.0.1:2379[,host:port...]``.
"""

from __future__ import annotations

from skiff.cluster.store.interface import Compacted, Event, EventType, KeyValue, Store, Watch
from skiff.errors import InvalidArgument

__all__ = ["Compacted", "Event", "EventType", "KeyValue", "Store", "Watch", "open_store"]


async def open_store(url: str) -> Store:
    """Open the store ``url`` names: ``etcd://HOST:PORT[,HOST:PORT]``, ``sqlite://PATH`` or a file path."""
    if url.startswith("etcd://"):
        from skiff.cluster.store.etcd import EtcdStore  # aiohttp only when etcd is used

        return await EtcdStore.open(url)
    if url.startswith("sqlite://"):
        url = url.removeprefix("sqlite://")
    elif "://" in url:
        raise InvalidArgument(f"unknown store URL {url!r}: expected etcd://HOST:PORT, sqlite://PATH or a path")
    if not url:
        raise InvalidArgument("the SQLite store needs a file path")
    from skiff.cluster.store.sqlite import SQLiteStore

    return await SQLiteStore.open(url)
