"""The store contract, checked the same way on both backends (SQLite and a real etcd).

Each test runs once per backend (``store`` is parametrized); etcd is the reference: where the two
could differ, these tests pin etcd's behaviour and the SQLite backend must match it.
"""

from __future__ import annotations

import asyncio

import pytest

from skiff.cluster.store import Compacted, EventType, KeyValue, Store
from skiff.errors import AlreadyExists, Conflict, InvalidArgument, NotFound
from tests.cluster.events import nothing_more, take

pytestmark = pytest.mark.asyncio


async def test_create_get_update_revisions(store: Store, keys: str) -> None:
    key = keys + "a"
    assert await store.get(key) is None
    before = await store.current_revision()

    created = await store.create(key, b"one")
    assert created > before
    assert await store.current_revision() == created
    assert await store.get(key) == KeyValue(key, b"one", created, created, 1)

    updated = await store.update(key, b"two", created)
    assert updated == created + 1
    assert await store.get(key) == KeyValue(key, b"two", created, updated, 2)
    assert await store.get(key, revision=created) == KeyValue(key, b"one", created, created, 1)
    assert await store.get(key, revision=before) is None

    with pytest.raises(AlreadyExists):
        await store.create(key, b"again")
    assert await store.current_revision() == updated  # a refused write makes no revision


async def test_recreated_key_starts_a_new_life(store: Store, keys: str) -> None:
    key = keys + "a"
    first = await store.create(key, b"1")
    await store.update(key, b"2", first)
    deleted, _ = await store.delete(key)
    again = await store.create(key, b"3")
    assert again == deleted + 1
    assert await store.get(key) == KeyValue(key, b"3", again, again, 1)
    assert await store.get(key, revision=deleted) is None


async def test_update_is_compare_and_swap(store: Store, keys: str) -> None:
    key = keys + "a"
    first = await store.create(key, b"1")
    second = await store.update(key, b"2", first)
    with pytest.raises(Conflict):
        await store.update(key, b"stale", first)
    with pytest.raises(NotFound):
        await store.update(keys + "missing", b"x", second)
    assert await store.get(key) == KeyValue(key, b"2", first, second, 2)
    assert await store.current_revision() == second


async def test_delete_returns_previous_state_and_honours_expected_revision(store: Store, keys: str) -> None:
    key = keys + "a"
    first = await store.create(key, b"1")
    second = await store.update(key, b"2", first)
    with pytest.raises(NotFound):
        await store.delete(keys + "missing")
    with pytest.raises(Conflict):
        await store.delete(key, expected_mod_revision=first)

    revision, previous = await store.delete(key, expected_mod_revision=second)
    assert revision == second + 1
    assert previous == KeyValue(key, b"2", first, second, 2)
    assert await store.get(key) is None
    assert (await store.get(key, revision=second)).value == b"2"
    with pytest.raises(NotFound):
        await store.delete(key)


async def test_values_are_bytes_unchanged(store: Store, keys: str) -> None:
    value = bytes(range(256)) * 40 + b"\n\x00{}"
    await store.create(keys + "binary", value)
    assert (await store.get(keys + "binary")).value == value
    await store.create(keys + "empty", b"")
    assert (await store.get(keys + "empty")).value == b""


async def test_list_matches_prefix_only(store: Store, keys: str) -> None:
    for name in ("a/1", "a/2", "a/sub/3", "ab/1", "a0", "a", "b/1"):
        await store.create(keys + name, name.encode())
    items, revision, more = await store.list(keys + "a/")
    assert [kv.key for kv in items] == [keys + "a/1", keys + "a/2", keys + "a/sub/3"]
    assert [kv.value for kv in items] == [b"a/1", b"a/2", b"a/sub/3"]
    assert revision == await store.current_revision()
    assert more is False
    assert await store.count(keys + "a/") == 3
    assert await store.count(keys) == 7
    assert await store.list(keys + "zzz/") == ([], revision, False)


async def test_list_excludes_deleted_keys(store: Store, keys: str) -> None:
    created = await store.create(keys + "a", b"")
    await store.create(keys + "b", b"")
    await store.delete(keys + "a", created)
    items, _, _ = await store.list(keys)
    assert [kv.key for kv in items] == [keys + "b"]
    assert await store.count(keys) == 1


async def test_paging_reads_one_snapshot_while_writes_go_on(store: Store, keys: str) -> None:
    for i in range(10):
        await store.create(f"{keys}{i:02}", b"v0")
    page, snapshot, more = await store.list(keys, limit=4)
    assert more is True
    seen = list(page)

    # Writes between pages: none of them may show in the pages of the snapshot.
    kv5 = await store.get(f"{keys}05")
    await store.update(f"{keys}05", b"v1", kv5.mod_revision)
    await store.delete(f"{keys}07")
    await store.create(f"{keys}99", b"new")
    await store.create(f"{keys}00a", b"new")

    while more:
        page, revision, more = await store.list(keys, revision=snapshot, limit=4, start_after=seen[-1].key)
        assert revision == snapshot
        seen += page
    assert [kv.key for kv in seen] == [f"{keys}{i:02}" for i in range(10)]
    assert {kv.value for kv in seen} == {b"v0"}

    now, _, _ = await store.list(keys)
    assert [kv.key for kv in now] == [f"{keys}{i}" for i in ("00", "00a", "01", "02", "03", "04", "05", "06", "08",
                                                             "09", "99")]


async def test_exact_page_boundary_has_no_more(store: Store, keys: str) -> None:
    for i in range(4):
        await store.create(f"{keys}{i}", b"")
    first, snapshot, more = await store.list(keys, limit=2)
    assert more is True
    second, _, more = await store.list(keys, revision=snapshot, limit=2, start_after=first[-1].key)
    assert [kv.key for kv in second] == [f"{keys}2", f"{keys}3"]
    assert more is False


async def test_list_at_an_older_revision(store: Store, keys: str) -> None:
    a = await store.create(keys + "a", b"a1")
    await store.create(keys + "b", b"b1")
    old = await store.current_revision()
    await store.update(keys + "a", b"a2", a)
    await store.delete(keys + "b")
    await store.create(keys + "c", b"c1")

    items, revision, _ = await store.list(keys, revision=old)
    assert revision == old
    assert [(kv.key, kv.value) for kv in items] == [(keys + "a", b"a1"), (keys + "b", b"b1")]
    items, _, _ = await store.list(keys)
    assert [(kv.key, kv.value) for kv in items] == [(keys + "a", b"a2"), (keys + "c", b"c1")]


async def test_future_and_invalid_revisions_are_refused(store: Store, keys: str) -> None:
    future = await store.current_revision() + 1000
    with pytest.raises(InvalidArgument):
        await store.get(keys + "a", revision=future)
    with pytest.raises(InvalidArgument):
        await store.list(keys, revision=future)
    with pytest.raises(InvalidArgument):
        await store.compact(future)
    with pytest.raises(InvalidArgument):
        await store.get(keys + "a", revision=0)
    with pytest.raises(InvalidArgument):
        await store.create("", b"")


async def test_watch_replays_history_then_streams_live(store: Store, keys: str) -> None:
    a = await store.create(keys + "a", b"1")
    a2 = await store.update(keys + "a", b"2", a)
    b = await store.create(keys + "b", b"x")
    gone, _ = await store.delete(keys + "a")

    async with await store.watch(keys, a) as watch:
        history = await take(watch, 4)
        assert [e.revision for e in history] == [a, a2, b, gone]
        assert [e.type for e in history] == [EventType.PUT, EventType.PUT, EventType.PUT, EventType.DELETE]
        assert [e.created for e in history] == [True, False, True, False]
        assert history[0].prev_kv is None
        assert history[1].kv == KeyValue(keys + "a", b"2", a, a2, 2)
        assert history[1].prev_kv == KeyValue(keys + "a", b"1", a, a, 1)
        assert history[3].kv.key == keys + "a" and history[3].kv.mod_revision == gone
        assert history[3].prev_kv == KeyValue(keys + "a", b"2", a, a2, 2)

        live = await store.create(keys + "c", b"live")
        updated = await store.update(keys + "b", b"y", b)
        events = await take(watch, 2)
        assert [(e.revision, e.kv.key, e.created) for e in events] == [(live, keys + "c", True),
                                                                        (updated, keys + "b", False)]
        await nothing_more(watch)


async def test_watch_from_the_middle_and_from_the_future(store: Store, keys: str) -> None:
    first = await store.create(keys + "a", b"1")
    second = await store.update(keys + "a", b"2", first)
    async with await store.watch(keys, second) as watch:
        assert [e.revision for e in await take(watch, 1)] == [second]
    async with await store.watch(keys, second + 2) as watch:
        await store.update(keys + "a", b"3", second)  # second + 1: before the start, not delivered
        fourth = await store.create(keys + "b", b"")
        assert [e.revision for e in await take(watch, 1)] == [fourth]


async def test_watch_sees_its_prefix_only(store: Store, keys: str) -> None:
    start = await store.current_revision() + 1
    async with await store.watch(keys + "a/", start) as watch:
        await store.create(keys + "ab/1", b"")
        await store.create(keys + "a", b"")
        mine = await store.create(keys + "a/1", b"")
        await store.create(keys + "b/1", b"")
        assert [(e.revision, e.kv.key) for e in await take(watch, 1)] == [(mine, keys + "a/1")]
        await nothing_more(watch)


async def test_watch_delivers_concurrent_writes_without_gaps_or_duplicates(store: Store, keys: str) -> None:
    start = await store.current_revision() + 1
    async with await store.watch(keys, start) as watch:
        revisions = await asyncio.gather(*(store.create(f"{keys}{i}", str(i).encode()) for i in range(200)))
        events = await take(watch, 200, timeout=30)
    assert [e.revision for e in events] == sorted(revisions)
    assert {e.kv.key for e in events} == {f"{keys}{i}" for i in range(200)}


async def test_compaction_keeps_latest_state_and_refuses_older_revisions(store: Store, keys: str) -> None:
    a = await store.create(keys + "a", b"1")
    a2 = await store.update(keys + "a", b"2", a)
    await store.create(keys + "b", b"b")
    dropped, _ = await store.delete(keys + "b")
    c = await store.create(keys + "c", b"c")
    await store.compact(c)

    assert await store.get(keys + "a") == KeyValue(keys + "a", b"2", a, a2, 2)
    assert await store.get(keys + "b") is None
    assert [kv.key for kv in (await store.list(keys))[0]] == [keys + "a", keys + "c"]
    assert [kv.key for kv in (await store.list(keys, revision=c))[0]] == [keys + "a", keys + "c"]

    with pytest.raises(Compacted) as caught:
        await store.get(keys + "a", revision=a)
    assert caught.value.compact_revision == c
    with pytest.raises(Compacted):
        await store.list(keys, revision=dropped)
    with pytest.raises(Compacted) as caught:
        await store.watch(keys, a)
    assert caught.value.compact_revision == c
    with pytest.raises(Compacted):
        await store.compact(c)

    # The compact revision itself stays readable and watchable.
    async with await store.watch(keys, c) as watch:
        assert [e.revision for e in await take(watch, 1)] == [c]


async def test_compacting_away_a_deleted_key(store: Store, keys: str) -> None:
    await store.create(keys + "a", b"1")
    deleted, _ = await store.delete(keys + "a")
    await store.compact(deleted)
    assert await store.get(keys + "a", revision=deleted) is None
    assert await store.list(keys, revision=deleted) == ([], deleted, False)
    # The key can live again, and a watch from just after the compact revision sees it.
    async with await store.watch(keys, deleted + 1) as watch:
        again = await store.create(keys + "a", b"2")
        [event] = await take(watch, 1)
    assert (event.revision, event.created, event.kv.version) == (again, True, 1)


async def test_concurrent_compare_and_swap_loses_no_update(store: Store, keys: str) -> None:
    key = keys + "counter"
    await store.create(key, b"0")
    conflicts = 0

    async def increment() -> None:
        nonlocal conflicts
        while True:
            current = await store.get(key)
            try:
                await store.update(key, str(int(current.value) + 1).encode(), current.mod_revision)
                return
            except Conflict:
                conflicts += 1

    await asyncio.gather(*(increment() for _ in range(100)))
    final = await store.get(key)
    assert final.value == b"100"
    assert final.version == 101
    assert conflicts > 0  # the writers did race


async def test_lease_expiry_deletes_with_an_event(store: Store, keys: str) -> None:
    leased = await store.create(keys + "leased", b"v", lease_ttl=1)
    kept = await store.create(keys + "kept", b"v")
    # An update keeps the key's lease: it still expires.
    updated = await store.update(keys + "leased", b"v2", leased)
    async with await store.watch(keys, leased) as watch:
        # etcd rounds a 1 s lease up to its minimum (about 2 s) and checks expiry twice a second.
        events = await take(watch, 4, timeout=8)
    assert [(e.type, e.revision) for e in events[:3]] == [(EventType.PUT, leased), (EventType.PUT, kept),
                                                          (EventType.PUT, updated)]
    assert events[3].type is EventType.DELETE
    assert events[3].kv.key == keys + "leased"
    assert events[3].prev_kv.value == b"v2"
    assert await store.get(keys + "leased") is None
    assert await store.get(keys + "kept") is not None


async def test_closing_a_watch_ends_its_iteration(store: Store, keys: str) -> None:
    watch = await store.watch(keys, await store.current_revision() + 1)
    reader = asyncio.create_task(take(watch, 1))
    await asyncio.sleep(0.1)
    await watch.close()
    assert await asyncio.wait_for(reader, 5) == []
