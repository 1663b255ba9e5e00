"""Acknowledged writes survive a SIGKILL: of the process that embeds the SQLite store, and of etcd.

A write counts as acknowledged once the store's ``create`` returned to its caller. The SQLite store
runs in a child process that acknowledges over a pipe; etcd is a member of our own, killed and
restarted on the same data directory.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from skiff.cluster.store import Watch
from skiff.cluster.store.etcd import EtcdStore
from skiff.cluster.store.etcd_process import EtcdProcess, etcd_binary
from skiff.cluster.store.sqlite import SQLiteStore
from skiff.errors import SkiffError

pytestmark = pytest.mark.asyncio
REPO = Path(__file__).resolve().parents[2]
ACKS_BEFORE_KILL = 500


def _read_acks_then_kill(child: subprocess.Popen[str], wanted: int) -> dict[str, int]:
    """Collect ``key revision`` acknowledgements until ``wanted`` arrived, SIGKILL the child mid-stream,
    and keep the acknowledgements that were already on their way through the pipe."""
    assert child.stdout is not None
    assert child.stdout.readline() == "ready\n"
    acks: dict[str, int] = {}
    for line in child.stdout:
        key, revision = line.split()
        acks[key] = int(revision)
        if len(acks) >= wanted:
            break
    os.kill(child.pid, signal.SIGKILL)
    child.wait(10)
    for line in child.stdout:
        if line.endswith("\n"):  # a line cut by the kill was never acknowledged
            key, revision = line.split()
            acks[key] = int(revision)
    return acks


async def test_sqlite_keeps_acknowledged_writes_across_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-m", "tests.cluster.store_writer", str(path)], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, text=True)
    try:
        acks = await asyncio.to_thread(_read_acks_then_kill, child, ACKS_BEFORE_KILL)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)

    async with await SQLiteStore.open(path) as store:  # the dead owner's lock is gone with it
        for key, revision in acks.items():
            kv = await store.get(key)
            assert kv is not None, f"acknowledged {key} at {revision} is lost"
            assert kv.mod_revision == revision
        assert await store.current_revision() >= max(acks.values())
        # The log is consistent after the crash: it takes writes again where it stopped.
        assert await store.create("/after-crash", b"") == await store.current_revision()


async def _write_until_failure(store: EtcdStore, acks: dict[str, int], writer: int) -> None:
    for n in range(10**9):
        key = f"/durable/{writer}/{n}"
        try:
            acks[key] = await store.create(key, b"x")
        except SkiffError:
            return  # etcd is gone: this write was never acknowledged


async def test_etcd_keeps_acknowledged_writes_across_sigkill(tmp_path: Path) -> None:
    if etcd_binary() is None:
        pytest.skip("etcd is not installed (Debian package etcd-server)")
    server = EtcdProcess(tmp_path / "etcd")
    await asyncio.to_thread(server.start)
    try:
        acks: dict[str, int] = {}
        async with await EtcdStore.open(server.url) as store:
            watch = await store.watch("/durable/", await store.current_revision() + 1)
            writers = [asyncio.create_task(_write_until_failure(store, acks, w)) for w in range(8)]
            while len(acks) < ACKS_BEFORE_KILL:
                await asyncio.sleep(0.01)
            server.kill()  # mid-stream: writes are in flight
            await asyncio.wait_for(asyncio.gather(*writers), 30)

            await asyncio.to_thread(server.start)
            for key, revision in acks.items():
                kv = await store.get(key)
                assert kv is not None, f"acknowledged {key} at {revision} is lost"
                assert kv.mod_revision == revision

            # The watch lived through the crash: it resumed where it was, without gaps or repeats.
            last = await store.create("/durable/after-restart", b"")
            seen = await _revisions_until(watch, last)
            assert seen == sorted(set(seen))
            assert set(acks.values()) <= set(seen)
            await watch.close()
    finally:
        await asyncio.to_thread(server.stop)


async def _revisions_until(watch: Watch, revision: int) -> list[int]:
    seen: list[int] = []
    async with asyncio.timeout(20):
        async for event in watch:
            seen.append(event.revision)
            if event.revision >= revision:
                return seen
    return seen
