"""The cluster store: SQLite backend against etcd (the peer), through the same ``Store`` interface.

    python bench/store.py [--ops N] [--concurrency C] [--keep-temp]

Starts a private etcd on free loopback ports (skipped, with a note, when etcd is not installed) and
opens SQLite stores in a temp dir, twice: ``synchronous=NORMAL`` (the default: survives a process
crash, no fsync per commit) and ``FULL`` (fsync per group commit, etcd's own durability level).
Each operation runs N times one at a time (latency p50/p99) and N times with C callers at once
(throughput). Ratios are SQLite / etcd: above 1 for ops/s and below 1 for latency mean SQLite is
faster. Everything is local: the client overhead (aiohttp JSON for etcd, a thread hop for SQLite)
is part of what is measured, as the API server would pay it.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from skiff.cluster.store import Store  # noqa: E402
from skiff.cluster.store.etcd import EtcdStore  # noqa: E402
from skiff.cluster.store.etcd_process import EtcdProcess, etcd_binary  # noqa: E402
from skiff.cluster.store.sqlite import SQLiteStore  # noqa: E402

VALUE = b'{"kind":"Pod","metadata":{"name":"x"},' + b'"spec":' + b"x" * 900 + b"}"  # about a small Pod
LIST_KEYS = 100  # keys a list call returns


def percentile(samples: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)  # seconds, one caller at a time
    throughput: float = 0.0  # ops/s with many callers

    def row(self) -> tuple[float, float, float]:
        return (percentile(self.latencies, 50) * 1e3, percentile(self.latencies, 99) * 1e3, self.throughput)


async def sequential(op: Callable[[int], Awaitable[object]], n: int) -> list[float]:
    samples = []
    for i in range(n):
        start = time.perf_counter()
        await op(i)
        samples.append(time.perf_counter() - start)
    return samples


async def concurrent(op: Callable[[int], Awaitable[object]], n: int, callers: int) -> float:
    """ops/s of ``n`` calls spread over ``callers`` tasks."""
    indices = iter(range(n))

    async def caller() -> None:
        for i in indices:
            await op(i)

    start = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    return n / (time.perf_counter() - start)


async def bench_store(store: Store, n: int, callers: int) -> dict[str, Result]:
    """create, get, update (CAS with the known revision) and list, each sequential then concurrent."""
    results: dict[str, Result] = {}
    revisions: dict[str, int] = {}

    async def create(i: int, run: str) -> None:
        revisions[f"/bench/{run}/{i:06}"] = await store.create(f"/bench/{run}/{i:06}", VALUE)

    async def get(i: int, run: str) -> None:
        assert await store.get(f"/bench/{run}/{i:06}") is not None

    async def update(i: int, run: str) -> None:
        key = f"/bench/{run}/{i:06}"
        revisions[key] = await store.update(key, VALUE, revisions[key])

    async def list_page(i: int, run: str) -> None:
        items, _, _ = await store.list("/bench/list/", limit=LIST_KEYS)
        assert len(items) == LIST_KEYS

    for i in range(LIST_KEYS):
        await store.create(f"/bench/list/{i:04}", VALUE)
    for name, op in (("create", create), ("get", get), ("update", update), ("list", list_page)):
        result = results[name] = Result()
        result.latencies = await sequential(lambda i, op=op: op(i, "seq"), n)
        result.throughput = await concurrent(lambda i, op=op: op(i, "par"), n, callers)
    return results


async def run_sqlite(directory: Path, synchronous: str, n: int, callers: int) -> dict[str, Result]:
    async with await SQLiteStore.open(directory / f"{synchronous}.db", synchronous=synchronous) as store:
        return await bench_store(store, n, callers)


async def run_etcd(directory: Path, n: int, callers: int) -> dict[str, Result] | None:
    if etcd_binary() is None:
        print("etcd is not installed (Debian package etcd-server): no peer to compare with")
        return None
    server = EtcdProcess(directory / "etcd")
    await asyncio.to_thread(server.start)
    try:
        async with await EtcdStore.open(server.url) as store:
            return await bench_store(store, n, callers)
    finally:
        await asyncio.to_thread(server.stop)


def report(subjects: dict[str, dict[str, Result]], n: int, callers: int) -> None:
    print(f"\n{n} ops per measurement; throughput with {callers} concurrent callers; value {len(VALUE)} bytes; "
          f"list returns {LIST_KEYS} keys")
    header = f"{'op':<8}{'store':<16}{'p50 ms':>9}{'p99 ms':>9}{'ops/s':>10}"
    peer = subjects.get("etcd")
    print(header + ("   vs etcd: p50   p99  ops/s" if peer else ""))
    for op in ("create", "get", "update", "list"):
        for name, results in subjects.items():
            p50, p99, ops = results[op].row()
            line = f"{op:<8}{name:<16}{p50:>9.3f}{p99:>9.3f}{ops:>10.0f}"
            if peer and name != "etcd":
                e50, e99, eops = peer[op].row()
                line += f"   {p50 / e50:>10.2f}x{p99 / e99:>5.2f}x{ops / eops:>6.2f}x"
            print(line)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=1000, help="operations per measurement")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent callers for throughput")
    parser.add_argument("--keep-temp", action="store_true", help="leave the temp dir (databases, etcd log)")
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="skiff-bench-store-"))
    try:
        subjects: dict[str, dict[str, Result]] = {}
        for synchronous in ("NORMAL", "FULL"):
            print(f"sqlite synchronous={synchronous} ...", flush=True)
            subjects[f"sqlite {synchronous.lower()}"] = await run_sqlite(directory, synchronous, args.ops,
                                                                         args.concurrency)
        print("etcd ...", flush=True)
        peer = await run_etcd(directory, args.ops, args.concurrency)
        if peer is not None:
            subjects["etcd"] = peer
        report(subjects, args.ops, args.concurrency)
    finally:
        if args.keep_temp:
            print(f"kept {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
