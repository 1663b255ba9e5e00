"""SQLite against etcd, side by side: the same random operations on both must give the same answers.

Revisions differ in absolute value (etcd is shared by the session), so every revision is compared
relative to the revision each store was at when the run began.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from skiff.cluster.store import Compacted, Event, KeyValue, Store
from skiff.cluster.store.etcd import EtcdStore
from skiff.cluster.store.etcd_process import EtcdProcess
from skiff.cluster.store.sqlite import SQLiteStore
from skiff.errors import SkiffError
from tests.cluster.events import take

pytestmark = pytest.mark.asyncio
NAMES = ["a", "b", "c", "d/1", "d/2", "d0", "e/x/y"]
PREFIXES = ["", "d/", "d", "e/", "zz"]


class Subject:
    """One backend under a key prefix, with revisions translated to offsets from its start."""

    def __init__(self, store: Store, prefix: str, base: int) -> None:
        self.store, self.prefix, self.base = store, prefix, base

    def rel(self, revision: int) -> int:
        return revision - self.base if revision else 0

    def abs(self, relative: int) -> int:
        return relative + self.base

    def kv(self, kv: KeyValue | None) -> tuple[Any, ...] | None:
        if kv is None:
            return None
        return (kv.key.removeprefix(self.prefix), kv.value, self.rel(kv.create_revision), self.rel(kv.mod_revision),
                kv.version)

    def event(self, e: Event) -> tuple[Any, ...]:
        return e.type.value, self.kv(e.kv), self.kv(e.prev_kv)

    async def outcome(self, call: Callable[[], Awaitable[Any]], shape: Callable[[Any], Any]) -> Any:
        """What an operation answered, in a backend-neutral form; errors by kind."""
        try:
            return "ok", shape(await call())
        except Compacted as exc:
            return "Compacted", self.rel(exc.compact_revision)
        except SkiffError as exc:
            return type(exc).__name__


class Run:
    """Random operations generated once and applied to each subject alike."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.now = 0  # relative revision both stores are at
        self.compacted = 0

    def revision(self) -> int:
        """A relative revision to read at: mostly readable ones, now and then a compacted one."""
        if self.compacted > 1 and self.rng.random() < 0.1:
            return self.rng.randint(max(1, self.compacted - 3), self.compacted - 1)
        return self.rng.randint(max(self.compacted, 1), max(self.now, 1))

    def step(self) -> tuple[str, dict[str, Any]]:
        rng = self.rng
        op = rng.choices(["create", "update", "delete", "get", "list", "count", "compact"],
                         [5, 6, 3, 4, 4, 1, 1])[0]
        name = rng.choice(NAMES)
        if op == "create":
            return op, {"name": name, "value": rng.randbytes(rng.randint(0, 20))}
        if op == "update":
            return op, {"name": name, "value": rng.randbytes(5), "expected": "current" if rng.random() < 0.7
                        else self.revision()}
        if op == "delete":
            return op, {"name": name, "expected": rng.choice([None, "current", self.revision()])}
        if op == "get":
            return op, {"name": name, "revision": rng.choice([None, self.revision()])}
        if op == "list":
            return op, {"prefix": rng.choice(PREFIXES), "revision": rng.choice([None, self.revision()]),
                        "limit": rng.choice([None, 1, 2, 3]), "start_after": rng.choice([None, *NAMES])}
        if op == "count":
            return op, {"prefix": rng.choice(PREFIXES)}
        return op, {"revision": self.revision()}


async def apply(s: Subject, op: str, a: dict[str, Any]) -> Any:
    store, p = s.store, s.prefix
    if op == "create":
        return await s.outcome(lambda: store.create(p + a["name"], a["value"]), s.rel)
    if op in ("update", "delete"):
        expected = a["expected"]
        if expected == "current":
            kv = await store.get(p + a["name"])
            expected = kv.mod_revision if kv else s.abs(1)
        elif expected is not None:
            expected = s.abs(expected)
        if op == "update":
            return await s.outcome(lambda: store.update(p + a["name"], a["value"], expected), s.rel)
        return await s.outcome(lambda: store.delete(p + a["name"], expected), lambda r: (s.rel(r[0]), s.kv(r[1])))
    if op == "get":
        revision = a["revision"] and s.abs(a["revision"])
        return await s.outcome(lambda: store.get(p + a["name"], revision), s.kv)
    if op == "list":
        revision = a["revision"] and s.abs(a["revision"])
        after = a["start_after"] and p + a["start_after"]
        return await s.outcome(lambda: store.list(p + a["prefix"], revision, a["limit"], after),
                               lambda r: ([s.kv(kv) for kv in r[0]], s.rel(r[1]), r[2]))
    if op == "count":
        return await s.outcome(lambda: store.count(p + a["prefix"]), lambda n: n)
    return await s.outcome(lambda: store.compact(s.abs(a["revision"])), lambda r: r)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_sqlite_and_etcd_answer_alike(seed: int, tmp_path: Path, etcd_server: EtcdProcess) -> None:
    async with await SQLiteStore.open(tmp_path / "store.db") as sqlite, await EtcdStore.open(etcd_server.url) as etcd:
        subjects = [Subject(sqlite, f"/diff{seed}/", await sqlite.current_revision()),
                    Subject(etcd, f"/diff{seed}/", await etcd.current_revision())]
        run = Run(seed)
        for i in range(150):
            op, args = run.step()
            answers = [await apply(s, op, args) for s in subjects]
            assert answers[0] == answers[1], f"step {i}: {op} {args}"
            run.now = subjects[0].rel(await sqlite.current_revision())
            if op == "compact" and answers[0][0] == "ok":
                run.compacted = args["revision"]

        # The history both would stream from just after the compact revision (etcd is lossy *at* it).
        start = run.compacted + 1
        histories = []
        for s in subjects:
            async with await s.store.watch(s.prefix, s.abs(start)) as watch:
                histories.append([s.event(e) for e in await take(watch, run.now - start + 1)])
        assert histories[0] == histories[1]
