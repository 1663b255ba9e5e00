"""What only the etcd backend has: endpoints, failover, and leases it must not leak."""

from __future__ import annotations

import time

import pytest

from skiff.cluster.store import open_store
from skiff.cluster.store.etcd import EtcdStore
from skiff.cluster.store.etcd_process import EtcdProcess, free_port
from skiff.errors import AlreadyExists, Conflict, InvalidArgument, SystemFailure

pytestmark = pytest.mark.asyncio


async def lease_ids(store: EtcdStore) -> set[str]:
    reply = await store._gateway.call("lease/leases", {})
    return {lease["ID"] for lease in reply.get("leases", [])}


async def test_refused_writes_leave_no_lease_behind(etcd_server: EtcdProcess, keys: str) -> None:
    async with await EtcdStore.open(etcd_server.url) as store:
        revision = await store.create(keys + "a", b"")
        before = await lease_ids(store)
        with pytest.raises(AlreadyExists):
            await store.create(keys + "a", b"", lease_ttl=60)
        with pytest.raises(Conflict):
            await store.update(keys + "a", b"", revision + 100, lease_ttl=60)
        assert await lease_ids(store) == before


async def test_the_first_reachable_endpoint_serves(etcd_server: EtcdProcess, keys: str) -> None:
    url = f"etcd://127.0.0.1:{free_port()},127.0.0.1:{etcd_server.client_port}"
    async with await open_store(url) as store:
        revision = await store.create(keys + "a", b"v")
        assert (await store.get(keys + "a")).mod_revision == revision


async def test_no_reachable_endpoint_fails_fast() -> None:
    start = time.monotonic()
    with pytest.raises(SystemFailure):
        await EtcdStore.open(f"etcd://127.0.0.1:{free_port()}")
    assert time.monotonic() - start < 5
    with pytest.raises(InvalidArgument):
        await EtcdStore.open("etcd://")
