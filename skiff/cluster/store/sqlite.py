"""The embedded backend: the store in one SQLite file, kine's log design (see ``sqllog``).

Where the work happens, so that the event loop never waits on a disk:

* one **writer** owns the only write connection and group-commits: it takes every write waiting,
  applies each change in its own savepoint inside one ``BEGIN IMMEDIATE`` transaction, commits, then
  publishes the new events to the watches and resolves the writers' futures. So a caller whose write
  returned has its event in every watch already, and watches need no polling. It also deletes keys
  whose lease expired. With ``synchronous=NORMAL`` a commit is a few write(2)s into the page cache
  (no fsync), so the writer runs on the event loop itself (``_LoopWriter``); with ``FULL`` a commit
  fsyncs, so it runs in a thread (``_ThreadWriter``) that hands its results to the loop.
* a small **reader pool**, one connection per thread; WAL lets reads run beside the writer, each on
  a consistent snapshot.
* a **checkpointer thread** folds the WAL back into the database file (SQLite's automatic checkpoint
  is off). Done inside a commit, as SQLite would, a checkpoint copies ~1000 pages and fsyncs twice:
  15-25 ms on a virtual disk every few hundred writes, which was the store's whole p99. A PASSIVE
  checkpoint from a connection of its own copies committed pages while the writer goes on, and its
  fsyncs never happen on the event loop.

Durability: ``synchronous=NORMAL`` by default. In WAL mode a commit has written its frames to the WAL
file with write(2) before it returns, so once a write is acknowledged the data is in the kernel: a
SIGKILL of this process, or any crash of it, loses nothing. What NORMAL gives up is the fsync per
commit, so a power loss or kernel crash can lose the last transactions (never corrupting the file:
checkpoints fsync the WAL before copying it). That is k3s's choice too: kine opens SQLite with
``_journal=WAL`` and go-sqlite3's default ``synchronous=NORMAL``. ``synchronous="FULL"`` fsyncs the
WAL on every commit (group commit amortises it: one fsync per batch) when the host's power is the
concern.

One process owns a store file at a time (an exclusive ``flock`` on ``<path>.lock``): the in-process
watch fan-out and the writer's revision counter rely on being the only writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import heapq
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from skiff.cluster.store import sqllog
from skiff.cluster.store.interface import (
    Event,
    KeyValue,
    Store,
    Watch,
    check_key,
    check_limit,
    check_revision,
    check_ttl,
    check_value,
)
from skiff.cluster.store.localwatch import LocalWatch, WatchHub
from skiff.errors import Conflict, InvalidArgument, SkiffError, SystemFailure

T = TypeVar("T")
log = logging.getLogger(__name__)
MAX_BATCH = 256  # changes per group commit
COMPACT_SPAN = 1_000  # revisions per compaction transaction (a few ms), so writes interleave with compaction
CHECKPOINT_INTERVAL = 1.0  # seconds between background checkpoints while writes come in
WAL_LIMIT = sqllog.WAL_KEPT_BYTES  # bytes of WAL past which the writer pauses for a checkpoint to end it
HOLD_TIMEOUT = 5.0  # seconds the checkpointer waits for the writer to pause
_STOP = object()  # queued to the writer thread: finish and end


# What a write answered: its future on the loop, and a result or an error for it.
Outcome = tuple[asyncio.Future[Any], Any, BaseException | None]


@dataclass
class _Job:
    """A write for the writer: ``apply`` runs in its transaction, the outcome goes to ``future``."""

    apply: Callable[[sqllog.LogWriter], Any]
    future: asyncio.Future[Any]
    in_transaction: bool = True  # False for maintenance that SQLite refuses inside one (checkpoints)


@dataclass
class _Batch:
    """What one group commit produced: events to publish, then outcomes to hand back."""

    events: list[Event] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)


class _GroupCommit:
    """Group commit over the one write connection: whatever writes are waiting go into one transaction,
    each change in a savepoint of its own; lease expiry rides along. The subclasses differ in where this
    runs: on the event loop (``_LoopWriter``) or in a thread (``_ThreadWriter``)."""

    def __init__(self, path: str, synchronous: str, loop: asyncio.AbstractEventLoop,
                 deliver: Callable[[_Batch], None], committed: Callable[[], None]) -> None:
        self._path, self._synchronous = path, synchronous
        self._loop, self._deliver, self._committed = loop, deliver, committed
        self._leases: list[tuple[int, str]] = []  # heap of (expiry_ms, key)
        self._scheduled: set[tuple[int, str]] = set()

    def _open(self) -> sqllog.LogWriter:
        log = sqllog.LogWriter(sqllog.connect(self._path, self._synchronous))
        for expiry, key in log.leases():
            self._schedule(expiry, key)
        return log

    def _process(self, log: sqllog.LogWriter, jobs: list[_Job]) -> None:
        batch = _Batch()
        due = self._due_leases()
        changes = [j for j in jobs if j.in_transaction]
        if changes or due:
            self._commit(log, changes, due, batch)
        for job in jobs:
            if not job.in_transaction:
                batch.outcomes.append(self._run_alone(log, job))
        if batch.outcomes or batch.events:
            self._hand_over(batch)
        if jobs or batch.events:
            self._committed()  # the WAL grew

    def _hand_over(self, batch: _Batch) -> None:
        raise NotImplementedError

    def _commit(self, log: sqllog.LogWriter, jobs: list[_Job], due: list[tuple[int, str]], batch: _Batch) -> None:
        """One transaction for the whole batch; each change succeeds or fails on its own."""
        start = log.revision
        outcomes: list[Outcome] = []
        try:
            log.begin()
            for job in jobs:
                outcomes.append(self._apply(log, job))
            for expiry, key in due:
                with log.operation():
                    log.expire(key, expiry)
            rows = log.commit()
        except Exception as exc:  # SQLite itself failed (disk full, I/O error): nothing of the batch happened
            log.rollback(start)
            for expiry, key in due:
                self._schedule(expiry, key)  # try again with the next batch
            error = SystemFailure(f"store write failed: {exc}")
            batch.outcomes.extend((job.future, None, error) for job in jobs)
            return
        batch.outcomes.extend(outcomes)
        batch.events.extend(row.event() for row in rows)
        for row in rows:
            if row.lease and not row.deleted:
                self._schedule(row.lease, row.name)

    @staticmethod
    def _apply(log: sqllog.LogWriter, job: _Job) -> Outcome:
        try:
            with log.operation():
                return job.future, job.apply(log), None
        except SkiffError as exc:  # the change's own refusal (conflict, not found...): the batch goes on
            return job.future, None, exc

    @staticmethod
    def _run_alone(log: sqllog.LogWriter, job: _Job) -> Outcome:
        try:
            return job.future, job.apply(log), None
        except Exception as exc:
            return job.future, None, exc if isinstance(exc, SkiffError) else SystemFailure(str(exc))

    def hold(self) -> bool:
        """Thread-safe, blocking: stop committing between two batches (writes wait) until ``release()``.
        False if the writer did not pause in time (then it is not held)."""
        raise NotImplementedError

    def release(self) -> None:
        """Thread-safe: commit again, starting with the writes that waited."""
        raise NotImplementedError

    def _schedule(self, expiry: int, key: str) -> None:
        if (expiry, key) not in self._scheduled:
            self._scheduled.add((expiry, key))
            heapq.heappush(self._leases, (expiry, key))

    def _next_expiry(self) -> float | None:
        """Seconds until the next lease expires (None: no lease)."""
        return max(0.0, self._leases[0][0] / 1000 - time.time()) if self._leases else None

    def _due_leases(self) -> list[tuple[int, str]]:
        now = int(time.time() * 1000)
        due = []
        while self._leases and self._leases[0][0] <= now:
            entry = heapq.heappop(self._leases)
            self._scheduled.discard(entry)
            due.append(entry)
        return due


class _LoopWriter(_GroupCommit):
    """Group commit on the event loop itself, for ``synchronous=NORMAL``.

    There a commit is a few write(2)s into the page cache and no fsync (checkpoints, which fsync, run
    in the checkpointer's thread), about as costly as the thread hop it replaces. Writes made while
    the loop runs other callbacks are committed together by one ``call_soon`` callback, and the
    callers' futures resolve in that same callback: no thread to wake, no GIL to pass back and forth,
    and no waiting for a second thread to get a CPU when the machine is busy.
    """

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._log: sqllog.LogWriter | None = None
        self._pending: list[_Job] = []
        self._flush_handle: asyncio.Handle | None = None
        self._lease_timer: asyncio.TimerHandle | None = None
        self._held = False

    async def start(self) -> int:
        try:
            self._log = self._open()
        except Exception as exc:
            raise SystemFailure(f"cannot open store {self._path}: {exc}") from None
        self._arm_lease_timer()
        return self._log.revision

    def submit(self, apply: Callable[[sqllog.LogWriter], T], in_transaction: bool = True) -> asyncio.Future[T]:
        if self._log is None:
            raise Conflict("the store is closed")
        job = _Job(apply, self._loop.create_future(), in_transaction)
        self._pending.append(job)
        if self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush)
        return job.future

    def hold(self) -> bool:
        paused = threading.Event()

        def pause() -> None:
            self._held = True
            paused.set()
        try:
            self._loop.call_soon_threadsafe(pause)
        except RuntimeError:  # the loop is closed
            return False
        if paused.wait(HOLD_TIMEOUT):
            return True
        self.release()  # in case the pause comes after all
        return False

    def release(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._resume)

    async def stop(self) -> None:
        self._held = False
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        if self._lease_timer is not None:
            self._lease_timer.cancel()
        if self._log is not None:
            self._flush()
            self._log.conn.close()
            self._log = None

    def _resume(self) -> None:
        self._held = False
        if self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        if self._log is None or self._held:
            return  # ``_resume`` flushes
        while True:  # in batches, as the thread takes them
            jobs, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            self._process(self._log, jobs)
            if not self._pending:
                break
        self._arm_lease_timer()

    def _hand_over(self, batch: _Batch) -> None:
        self._deliver(batch)

    def _arm_lease_timer(self) -> None:
        if self._lease_timer is not None:
            self._lease_timer.cancel()
        delay = self._next_expiry()
        self._lease_timer = None if delay is None else self._loop.call_later(delay + 0.001, self._flush)


class _ThreadWriter(_GroupCommit):
    """Group commit in a thread of its own, for ``synchronous=FULL`` (whose commits fsync): writes queue
    to it; it takes whatever has queued up, commits, then hands the loop one callback that publishes
    the events and resolves the writers' futures."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._committing = threading.Lock()  # held around each batch, and by hold()
        self._thread = threading.Thread(target=self._run, name="skiff-store-writer", daemon=True)
        self._started: asyncio.Future[int] = self._loop.create_future()

    async def start(self) -> int:
        """Start the thread; return the store's revision once the schema is in place."""
        self._thread.start()
        return await self._started

    def submit(self, apply: Callable[[sqllog.LogWriter], T], in_transaction: bool = True) -> asyncio.Future[T]:
        job = _Job(apply, self._loop.create_future(), in_transaction)
        self._queue.put(job)
        return job.future

    def hold(self) -> bool:
        return self._committing.acquire(timeout=HOLD_TIMEOUT)

    def release(self) -> None:
        self._committing.release()

    async def stop(self) -> None:
        """Finish the queued writes, then end the thread."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            await asyncio.to_thread(self._thread.join)

    def _run(self) -> None:
        try:
            log = self._open()
        except Exception as exc:  # startup failed: tell open(), then end
            self._call_loop(self._started.set_exception, SystemFailure(f"cannot open store {self._path}: {exc}"))
            return
        self._call_loop(self._started.set_result, log.revision)
        try:
            while True:
                jobs, stop = self._take()
                with self._committing:
                    self._process(log, jobs)
                if stop:
                    return
        finally:
            log.conn.close()

    def _take(self) -> tuple[list[_Job], bool]:
        """Wait for writes (or the next lease expiry); take everything queued, up to a batch.
        ``(jobs, stop)``."""
        try:
            items = [self._queue.get(timeout=self._next_expiry())]
        except queue.Empty:
            return [], False
        while len(items) < MAX_BATCH:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return [j for j in items if isinstance(j, _Job)], _STOP in items

    def _hand_over(self, batch: _Batch) -> None:
        self._call_loop(self._deliver, batch)

    def _call_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            self._loop.call_soon_threadsafe(fn, *args)


class _Checkpointer:
    """Folds the WAL back into the database file from a thread and a connection of its own.

    After a commit it waits ``CHECKPOINT_INTERVAL`` (so one checkpoint serves many commits), then runs a
    PASSIVE checkpoint, which copies every committed frame without blocking the writer. The WAL
    restarts from its beginning only when a write transaction begins with *all* of it copied, which
    commits made during the checkpoint prevent; so once the WAL passes ``WAL_LIMIT`` the writer pauses
    between two batches while a second checkpoint copies the few frames left (writes wait a few ms once
    per tens of MiB written; reads go on).
    """

    def __init__(self, path: str, synchronous: str, writer: Callable[[], _GroupCommit | None]) -> None:
        self._path, self._synchronous, self._writer = path, synchronous, writer
        self._dirty = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="skiff-store-checkpoint", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def committed(self) -> None:
        """Thread-safe: the WAL has grown."""
        self._dirty.set()

    def stop(self) -> None:
        """Blocking: end the thread (a checkpoint under way finishes first)."""
        self._stopping.set()
        self._dirty.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        conn = sqllog.connect(self._path, self._synchronous)
        try:
            limit = WAL_LIMIT // sqllog.page_size(conn)
            while True:
                self._dirty.wait()
                if self._stopping.wait(CHECKPOINT_INTERVAL):
                    return
                self._dirty.clear()
                if self._stopping.is_set():  # stop() came between the wait and the clear: its wake-up is gone
                    return
                try:
                    progress = sqllog.checkpoint(conn)
                    # "All copied" only means all that was committed when the checkpoint began: with
                    # writes still coming, only a checkpoint while the writer pauses ends the WAL.
                    if progress is not None and progress[0] > limit:
                        self._checkpoint_alone(conn)
                except sqlite3.Error as exc:  # the next commit tries again
                    log.warning("store checkpoint failed: %s", exc)
        finally:
            conn.close()


    def _checkpoint_alone(self, conn: sqlite3.Connection) -> None:
        writer = self._writer()
        if writer is not None and writer.hold():
            try:
                sqllog.checkpoint(conn)
            finally:
                writer.release()


class _Readers:
    """A small thread pool for reads, each thread with its own connection (a consistent snapshot per read)."""

    def __init__(self, path: str, synchronous: str, size: int) -> None:
        self._path, self._synchronous = path, synchronous
        self._pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="skiff-store-read")
        self._local = threading.local()
        self._readers: list[sqllog.LogReader] = []
        self._lock = threading.Lock()

    async def run(self, fn: Callable[[sqllog.LogReader], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._call, fn)

    def _call(self, fn: Callable[[sqllog.LogReader], T]) -> T:
        reader = getattr(self._local, "reader", None)
        if reader is None:
            reader = self._local.reader = sqllog.LogReader(sqllog.connect(self._path, self._synchronous))
            with self._lock:
                self._readers.append(reader)
        return fn(reader)

    def close(self) -> None:
        """Blocking: wait for running reads, then close every connection."""
        self._pool.shutdown(wait=True)
        for reader in self._readers:
            reader.conn.close()


class SQLiteStore(Store):
    """The ``Store`` contract over one SQLite file. Open with ``await SQLiteStore.open(path)``."""

    def __init__(self, path: str, synchronous: str, readers: int) -> None:
        self.path = path
        self._synchronous = synchronous
        self._hub = WatchHub()
        self._readers = _Readers(path, synchronous, readers)
        self._writer: _LoopWriter | _ThreadWriter | None = None
        self._checkpointer = _Checkpointer(path, synchronous, lambda: self._writer)
        self._revision = 0
        self._lock_fd = -1
        self._closed = False

    @classmethod
    async def open(cls, path: str | os.PathLike[str], *, synchronous: str = "NORMAL", readers: int = 4) -> SQLiteStore:
        """Open (creating if needed) the store at ``path``. ``synchronous``: NORMAL or FULL (see the
        module docstring). ``Conflict`` if another process has it open."""
        if synchronous.upper() not in ("NORMAL", "FULL"):
            raise InvalidArgument(f"synchronous must be NORMAL or FULL, not {synchronous!r}")
        store = cls(os.fspath(path), synchronous.upper(), readers)
        store._lock_fd = _lock_exclusively(store.path + ".lock")
        _create_private(store.path)
        try:
            kind = _LoopWriter if store._synchronous == "NORMAL" else _ThreadWriter
            store._writer = kind(store.path, store._synchronous, asyncio.get_running_loop(), store._deliver,
                                 store._checkpointer.committed)
            store._revision = await store._writer.start()
            store._checkpointer.start()  # after the writer made the schema
        except BaseException:
            await store.close()
            raise
        return store

    async def get(self, key: str, revision: int | None = None) -> KeyValue | None:
        check_key(key)
        check_revision(revision)
        return await self._read(lambda r: r.get(key, revision))

    async def list(self, prefix: str, revision: int | None = None, limit: int | None = None,
                   start_after: str | None = None) -> tuple[list[KeyValue], int, bool]:
        check_revision(revision)
        check_limit(limit)
        return await self._read(lambda r: r.list(prefix, revision, limit, start_after))

    async def count(self, prefix: str) -> int:
        return await self._read(lambda r: r.count(prefix))

    async def create(self, key: str, value: bytes, lease_ttl: int | None = None) -> int:
        check_key(key)
        value, expiry = check_value(value), _expiry(lease_ttl) or 0
        row = await self._write(lambda log: log.create(key, value, expiry))
        return row.id

    async def update(self, key: str, value: bytes, expected_mod_revision: int,
                     lease_ttl: int | None = None) -> int:
        check_key(key)
        value, expiry = check_value(value), _expiry(lease_ttl)
        check_revision(expected_mod_revision)
        row = await self._write(lambda log: log.update(key, value, expected_mod_revision, expiry))
        return row.id

    async def delete(self, key: str, expected_mod_revision: int | None = None) -> tuple[int, KeyValue]:
        check_key(key)
        check_revision(expected_mod_revision)
        row = await self._write(lambda log: log.delete(key, expected_mod_revision))
        prev = row.event().prev_kv
        assert prev is not None  # a tombstone always carries the state it ended
        return row.id, prev

    async def watch(self, prefix: str, start_revision: int) -> Watch:
        check_revision(start_revision)
        self._check_open()
        watch = LocalWatch(self._hub, self._read_events, prefix, start_revision)
        try:
            await self._read(lambda r: r.check_watchable(start_revision))
        except BaseException:
            await watch.close()
            raise
        return watch

    async def compact(self, revision: int) -> None:
        check_revision(revision)
        await self._write(lambda log: log.check_compactable(revision))
        while not await self._write(lambda log: log.compact_step(revision, COMPACT_SPAN)):
            pass
        await self._write(lambda log: log.reclaim_space(), in_transaction=False)

    async def current_revision(self) -> int:
        self._check_open()
        return self._revision

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._hub.close()
        await asyncio.to_thread(self._checkpointer.stop)
        if self._writer is not None:
            await self._writer.stop()
        await asyncio.to_thread(self._readers.close)
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1

    def _deliver(self, batch: _Batch) -> None:
        """On the loop, for each group commit: events to the watches first, then the writers' answers."""
        if batch.events:
            self._revision = max(self._revision, batch.events[-1].revision)
            self._hub.publish(batch.events)
        for future, result, error in batch.outcomes:
            if future.done():  # the caller was cancelled; the write happened all the same
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

    async def _read(self, fn: Callable[[sqllog.LogReader], T]) -> T:
        self._check_open()
        return await self._readers.run(fn)

    async def _write(self, apply: Callable[[sqllog.LogWriter], T], in_transaction: bool = True) -> T:
        self._check_open()
        assert self._writer is not None
        return await self._writer.submit(apply, in_transaction)

    async def _read_events(self, prefix: str, start_revision: int, limit: int) -> list[Event]:
        return await self._read(lambda r: r.events(prefix, start_revision, limit))

    def _check_open(self) -> None:
        if self._closed:
            raise Conflict("the store is closed")


def _create_private(path: str) -> None:
    """Create the database file readable by its owner only, before SQLite does: it will hold the
    cluster's Secrets, and SQLite gives the -wal and -shm files the database file's mode."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))


def _lock_exclusively(path: str) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise Conflict(f"the store {path.removesuffix('.lock')} is open in another process") from None
    return fd


def _expiry(lease_ttl: int | None) -> int | None:
    return None if check_ttl(lease_ttl) is None else sqllog.expiry_ms(lease_ttl)
