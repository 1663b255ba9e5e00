"""What only the SQLite backend has: its file, its threads, its watch buffers and its compaction."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from skiff.cluster.store import Compacted, EventType, localwatch, open_store, sqlite
from skiff.cluster.store.sqlite import SQLiteStore
from skiff.errors import AlreadyExists, Conflict, InvalidArgument
from tests.cluster.events import take

pytestmark = pytest.mark.asyncio


def rows_of(path: Path, key: str) -> list[int]:
    """The log rows (revisions) a key has on disk, read behind the store's back."""
    with sqlite3.connect(path) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM kine WHERE name = ? ORDER BY id", (key,))]


async def test_a_store_file_has_one_owner_and_reopens_where_it_was(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = await SQLiteStore.open(path)
    revision = await store.create("/a", b"1")
    with pytest.raises(Conflict):
        await SQLiteStore.open(path)
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(Conflict):
        await store.get("/a")

    async with await SQLiteStore.open(path) as again:
        assert await again.current_revision() == revision
        assert (await again.get("/a")).value == b"1"
        assert await again.create("/b", b"") == revision + 1


async def test_open_store_urls(tmp_path: Path) -> None:
    async with await open_store(f"sqlite://{tmp_path}/a.db") as store:
        assert isinstance(store, SQLiteStore)
    async with await open_store(str(tmp_path / "b.db")) as store:
        assert isinstance(store, SQLiteStore)
    with pytest.raises(InvalidArgument):
        await open_store("mysql://localhost/x")
    with pytest.raises(InvalidArgument):
        await SQLiteStore.open(tmp_path / "c.db", synchronous="OFF")
    async with await SQLiteStore.open(tmp_path / "d.db", synchronous="full") as store:
        assert await store.create("/x", b"") == 2


async def test_a_batch_of_racing_creates_admits_exactly_one(tmp_path: Path) -> None:
    async with await SQLiteStore.open(tmp_path / "store.db") as store:
        before = await store.current_revision()
        results = await asyncio.gather(*(store.create("/same", str(i).encode()) for i in range(20)),
                                       return_exceptions=True)
        assert sum(isinstance(r, int) for r in results) == 1
        assert all(isinstance(r, AlreadyExists) for r in results if not isinstance(r, int))
        assert await store.current_revision() == before + 1


async def test_a_watcher_that_falls_behind_resumes_from_the_log(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(localwatch, "MAX_BUFFERED", 10)
    monkeypatch.setattr(localwatch, "REPLAY_PAGE", 7)
    async with await SQLiteStore.open(tmp_path / "store.db") as store:
        watch = await store.watch("/k/", 1)
        revisions = [await store.create(f"/k/{i:03}", b"") for i in range(60)]  # nobody reads meanwhile
        events = await take(watch, 60)
        assert [e.revision for e in events] == revisions
        more = [await store.create(f"/k/more{i}", b"") for i in range(3)]
        assert [e.revision for e in await take(watch, 3)] == more
        await watch.close()


async def test_ready_hands_over_a_burst_in_order_and_never_skips_history(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(localwatch, "REPLAY_PAGE", 4)
    async with await SQLiteStore.open(tmp_path / "store.db") as store:
        start = await store.current_revision() + 1
        async with await store.watch("/k/", start) as watch:
            assert watch.ready() == []  # history not read yet: nothing is at hand without the log
            history = [await store.create(f"/k/{i}", b"") for i in range(10)]
            burst = await asyncio.gather(*(store.create(f"/k/b{i}", b"") for i in range(5)))  # one commit
            seen = []
            while len(seen) < 15:
                seen += [(await watch.__anext__()).revision, *(e.revision for e in watch.ready())]
            assert seen == history + sorted(burst)
            assert watch.ready() == []
            later = await asyncio.gather(*(store.create(f"/k/c{i}", b"") for i in range(3)))
            assert [(await watch.__anext__()).revision, *(e.revision for e in watch.ready())] == sorted(later)


async def test_a_watcher_behind_compacted_history_gets_compacted(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(localwatch, "MAX_BUFFERED", 10)
    async with await SQLiteStore.open(tmp_path / "store.db") as store:
        start = await store.current_revision() + 1
        async with await store.watch("/k/", start) as watch:
            for i in range(30):
                await store.create(f"/k/{i}", b"")
            await store.compact(await store.current_revision())
            with pytest.raises(Compacted):
                await take(watch, 30)


async def test_closing_the_store_ends_its_watches(tmp_path: Path) -> None:
    store = await SQLiteStore.open(tmp_path / "store.db")
    watch = await store.watch("/", 2)
    reader = asyncio.create_task(take(watch, 1))
    await asyncio.sleep(0.05)
    await store.close()
    assert await asyncio.wait_for(reader, 5) == []


async def test_compaction_removes_superseded_rows_in_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite, "COMPACT_SPAN", 7)  # many small transactions
    path = tmp_path / "store.db"
    async with await SQLiteStore.open(path) as store:
        revision = await store.create("/hot", b"0")
        for i in range(50):
            revision = await store.update("/hot", str(i).encode(), revision)
        gone = await store.create("/gone", b"")
        gone_at, _ = await store.delete("/gone")
        await store.create("/last", b"")
        assert len(rows_of(path, "/hot")) == 51

        await store.compact(gone_at)
        assert rows_of(path, "/hot") == [revision]
        assert rows_of(path, "/gone") == [gone_at]  # the tombstone at the compact revision stays...
        async with await store.watch("/gone", gone_at) as watch:
            [event] = await take(watch, 1)
        assert event.type is EventType.DELETE and event.prev_kv.mod_revision == gone

        await store.compact(await store.current_revision())
        assert rows_of(path, "/gone") == []  # ...until the next compaction passes it
        assert (await store.get("/hot")).value == b"49"


async def test_lease_expiry_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    async with await SQLiteStore.open(path) as store:
        created = await store.create("/lease/a", b"", lease_ttl=1)
    await asyncio.sleep(1.1)  # expired while no process had the store open
    async with await SQLiteStore.open(path) as store:
        async with await store.watch("/lease/", created + 1) as watch:
            [event] = await take(watch, 1, timeout=5)
        assert event.type is EventType.DELETE
        assert event.revision == created + 1
        assert await store.get("/lease/a") is None


async def test_an_update_with_a_new_lease_moves_the_expiry(tmp_path: Path) -> None:
    async with await SQLiteStore.open(tmp_path / "store.db") as store:
        created = await store.create("/lease/a", b"", lease_ttl=1)
        await store.update("/lease/a", b"longer", created, lease_ttl=60)
        await asyncio.sleep(1.3)
        assert (await store.get("/lease/a")).value == b"longer"


SQLITE_AUTOCHECKPOINT_PAGES = 1000  # SQLite's default for PRAGMA wal_autocheckpoint


async def _write_without_pause(store: SQLiteStore, path: Path, keys: int, at_once: int = 5) -> int:
    """Create ``keys`` keys, ``at_once`` at a time without pause; the largest the WAL file got meanwhile."""
    wal, largest = Path(f"{path}-wal"), 0
    for first in range(0, keys, at_once):
        await asyncio.gather(*(store.create(f"/w/{i:05}", b"v" * 500) for i in range(first, first + at_once)))
        largest = max(largest, wal.stat().st_size)
    return largest


def _wal_restarts(path: Path) -> int:
    """How many times the WAL started again from its beginning: the checkpoint sequence number in its header."""
    return int.from_bytes(Path(f"{path}-wal").read_bytes()[12:16], "big")


async def test_checkpoints_keep_the_wal_bounded_while_writes_never_pause(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite, "CHECKPOINT_INTERVAL", 0.005)
    monkeypatch.setattr(sqlite, "WAL_LIMIT", 256 * 1024)
    path = tmp_path / "store.db"
    async with await SQLiteStore.open(path) as store:
        largest = await _write_without_pause(store, path, 2000)
        restarts = _wal_restarts(path)
        # Unbounded, the WAL would reach 12 MiB with no restart. Here it stays near 1 MiB (about 20 restarts), but
        # a starved checkpoint thread lets it grow further while one PASSIVE checkpoint runs (5 MiB was seen on
        # CI): that the writer's WAL was folded back and reused is the property; how often depends on the load,
        # and the size bound only has to tell "bounded" from "never folded back".
        assert restarts >= 1, restarts
        assert largest < 9 * 1024 * 1024, largest
        assert len((await store.list("/w/"))[0]) == 2000
    async with await SQLiteStore.open(path) as store:  # everything copied back is readable after a reopen
        assert (await store.get("/w/01999")).value == b"v" * 500


async def test_commits_leave_checkpoints_to_the_checkpointer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite, "CHECKPOINT_INTERVAL", 3600.0)  # it never gets round to one
    path = tmp_path / "store.db"
    async with await SQLiteStore.open(path) as store:
        # One create per commit: how many creates the writer groups into a commit varies with load, and so
        # would the frame count.
        largest = await _write_without_pause(store, path, 1500, at_once=1)
        with sqlite3.connect(path) as conn:
            busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    # SQLite's own autocheckpoint would have folded the WAL back every SQLITE_AUTOCHECKPOINT_PAGES frames; the
    # frame count is independent of how many creates shared a transaction (that varies with load), the file size
    # is not.
    assert frames > SQLITE_AUTOCHECKPOINT_PAGES, frames
    assert (busy, frames) == (0, copied)
    assert largest >= frames * 4096
