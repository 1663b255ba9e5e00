"""Fixtures for the store suites: one ``store`` fixture parametrized over the backends (SQLite twice: its two writers).

The SQLite store gets a fresh file per test. etcd costs about a second to start, so one etcd member
(on free loopback ports, its data in the session's temp dir) serves the whole session and each test
writes under a key prefix of its own (``keys``); tests therefore assert revisions relative to the
ones they see, never absolute numbers.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from skiff.cluster.store import Store
from skiff.cluster.store.etcd import EtcdStore
from skiff.cluster.store.etcd_process import EtcdProcess, etcd_binary
from skiff.cluster.store.sqlite import SQLiteStore

# sqlite commits on the event loop (synchronous=NORMAL); sqlite-full in its writer thread (FULL fsyncs).
BACKENDS = ["sqlite", "sqlite-full", "etcd"]
_counter = itertools.count()


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdProcess]:
    if etcd_binary() is None:
        pytest.skip("etcd is not installed (Debian package etcd-server)")
    server = EtcdProcess(tmp_path_factory.mktemp("etcd"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest_asyncio.fixture
async def store(backend: str, request: pytest.FixtureRequest, tmp_path) -> AsyncIterator[Store]:
    if backend.startswith("sqlite"):
        synchronous = "FULL" if backend == "sqlite-full" else "NORMAL"
        opened: Store = await SQLiteStore.open(tmp_path / "store.db", synchronous=synchronous)
    else:
        opened = await EtcdStore.open(request.getfixturevalue("etcd_server").url)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def keys() -> str:
    """A key prefix no other test uses (they share one etcd)."""
    return f"/test{next(_counter)}/"
