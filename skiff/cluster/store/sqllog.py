"""The SQLite log under ``SQLiteStore``: kine's append-only table, read and written synchronously.

Every change appends one row whose ``id`` is its revision: a creation (``created=1``), an update, or
a tombstone (``deleted=1``). A key's state at revision R is its row with the largest id <= R, so past
revisions stay readable until compaction removes superseded rows. Each row carries what a watch event
needs (``old_value``, and the version, which kine does not keep but etcd's API has), so events replay
from the log alone even when the row they superseded is compacted away.

Differences from kine, each for a reason:

* ``lease`` holds the absolute expiry time in Unix milliseconds (0: none) rather than a TTL, so an
  expiry survives restarts exactly instead of restarting the clock.
* The compact revision lives in a one-row ``kine_meta`` table, not in a log row: compacting then does
  not consume a revision, as in etcd.
* One writer thread owns all writes (``LogWriter``) and assigns ids itself, so revisions have no
  gaps and a compare-and-swap is a read and an insert inside one ``BEGIN IMMEDIATE`` transaction.
  ``UNIQUE(name, prev_revision)`` stays as kine has it: the database itself refuses two changes built
  on the same predecessor, should a bug ever try.

This module is thread-confined: each connection is used by the one thread that owns it.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

from skiff.cluster.store.interface import Compacted, Event, EventType, KeyValue
from skiff.cluster.store.keys import prefix_end
from skiff.errors import AlreadyExists, Conflict, InvalidArgument, NotFound

SCHEMA = """
CREATE TABLE IF NOT EXISTS kine (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- the revision of this change
    name TEXT NOT NULL,
    created INTEGER NOT NULL,              -- 1: this row created the key
    deleted INTEGER NOT NULL,              -- 1: a tombstone
    create_revision INTEGER NOT NULL,
    prev_revision INTEGER NOT NULL,        -- id of the row this one supersedes (0: none)
    lease INTEGER NOT NULL,                -- expiry in Unix ms (0: none)
    value BLOB,
    old_value BLOB,                        -- the superseded row's value, for watch's prev_kv
    version INTEGER NOT NULL               -- etcd's version; a tombstone keeps the deleted one's
);
CREATE INDEX IF NOT EXISTS kine_name_id_index ON kine (name, id);
CREATE UNIQUE INDEX IF NOT EXISTS kine_name_prev_revision_uindex ON kine (name, prev_revision);
CREATE INDEX IF NOT EXISTS kine_lease_index ON kine (lease) WHERE lease != 0;
CREATE TABLE IF NOT EXISTS kine_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO kine_meta (key, value) VALUES ('compact_revision', 0);
-- An empty store is at revision 1 and the first change makes 2, as in etcd.
INSERT INTO sqlite_sequence (name, seq) SELECT 'kine', 1
    WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'kine');
"""

# A WAL that restarts is cut back to this size. As large as the store lets the WAL grow (sqlite.WAL_LIMIT),
# so that it is reused in place: cutting it back on every restart and growing it again made the commit
# that cut it wait 50-100 ms on the file system while other work kept the disk busy.
WAL_KEPT_BYTES = 64 * 1024 * 1024
COLUMNS = "id, name, created, deleted, create_revision, prev_revision, lease, value, old_value, version"
# One rule for "the row that is the key's state at revision ?": the newest at or below it.
_LATEST_AT = "id = (SELECT MAX(l.id) FROM kine AS l WHERE l.name = k.name AND l.id <= ?)"


@dataclass(frozen=True, slots=True)
class Row:
    """One log row: a change at revision ``id``."""

    id: int
    name: str
    created: int
    deleted: int
    create_revision: int
    prev_revision: int
    lease: int
    value: bytes | None
    old_value: bytes | None
    version: int

    def kv(self) -> KeyValue:
        """The key's state this row establishes (only meaningful for a non-tombstone)."""
        return KeyValue(self.name, self.value or b"", self.create_revision, self.id, self.version)

    def event(self) -> Event:
        """This change as a watch delivers it."""
        if self.deleted:
            gone = KeyValue(self.name, self.old_value or b"", self.create_revision, self.prev_revision, self.version)
            return Event(EventType.DELETE, KeyValue(self.name, b"", 0, self.id, 0), gone)
        if self.created:
            return Event(EventType.PUT, self.kv(), None)
        before = KeyValue(self.name, self.old_value or b"", self.create_revision, self.prev_revision,
                          self.version - 1)
        return Event(EventType.PUT, self.kv(), before)


def connect(path: str, synchronous: str) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit) with the store's pragmas.

    WAL lets readers run beside the one writer. ``synchronous`` is the durability choice (see
    ``SQLiteStore``). ``check_same_thread`` is off because the store closes connections from another
    thread once their owner is gone; it never shares one between live threads.
    """
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # effective on a new file only: lets compaction shrink it
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    return conn


def _range_clause(prefix: str, start_after: str | None = None) -> tuple[str, list[object]]:
    """SQL condition and parameters for "k.name starts with prefix (and sorts after start_after)"."""
    if start_after is not None and start_after >= prefix:
        clauses, params = ["k.name > ?"], [start_after]
    else:
        clauses, params = ["k.name >= ?"], [prefix]
    end = prefix_end(prefix)
    if end is not None:
        clauses.append("k.name < ?")
        params.append(end)
    return " AND ".join(clauses), params


class LogReader:
    """Reads the log through one connection; every method sees one consistent snapshot."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        conn.execute("PRAGMA query_only = 1")

    @contextmanager
    def _snapshot(self) -> Iterator[tuple[int, int]]:
        """A read transaction, yielding ``(current_revision, compact_revision)`` as of its snapshot."""
        self.conn.execute("BEGIN")
        try:
            yield current_revision(self.conn), compact_revision(self.conn)
        finally:
            self.conn.execute("COMMIT")

    def get(self, name: str, revision: int | None) -> KeyValue | None:
        with self._snapshot() as (current, compact):
            rev = checked_revision(revision, current, compact)
            row = _one(self.conn, f"SELECT {COLUMNS} FROM kine WHERE name = ? AND id <= ? ORDER BY id DESC LIMIT 1",
                       (name, rev))
        return None if row is None or row.deleted else row.kv()

    def list(self, prefix: str, revision: int | None, limit: int | None,
             start_after: str | None) -> tuple[list[KeyValue], int, bool]:
        where, params = _range_clause(prefix, start_after)
        # Walks the (name, id) index in key order and stops after limit+1 live keys.
        sql = (f"SELECT {COLUMNS} FROM kine AS k WHERE {where} AND {_LATEST_AT} AND k.deleted = 0 "
               "ORDER BY k.name LIMIT ?")
        with self._snapshot() as (current, compact):
            rev = checked_revision(revision, current, compact)
            fetch = -1 if limit is None else limit + 1
            rows = [Row(*r) for r in self.conn.execute(sql, [*params, rev, fetch])]
        more = limit is not None and len(rows) > limit
        return [r.kv() for r in rows[:limit]], rev, more

    def count(self, prefix: str) -> int:
        where, params = _range_clause(prefix)
        with self._snapshot() as (current, _compact):
            sql = f"SELECT COUNT(*) FROM kine AS k WHERE {where} AND {_LATEST_AT} AND k.deleted = 0"
            return self.conn.execute(sql, [*params, current]).fetchone()[0]

    def events(self, prefix: str, start_revision: int, limit: int) -> list[Event]:
        """Up to ``limit`` changes under ``prefix`` from ``start_revision`` on, in revision order."""
        where, params = _range_clause(prefix)
        with self._snapshot() as (_current, compact):
            check_not_compacted(start_revision, compact)
            sql = f"SELECT {COLUMNS} FROM kine AS k WHERE k.id >= ? AND {where} ORDER BY k.id LIMIT ?"
            return [Row(*r).event() for r in self.conn.execute(sql, [start_revision, *params, limit])]

    def check_watchable(self, start_revision: int) -> None:
        """``Compacted`` if a watch from ``start_revision`` would miss compacted history."""
        with self._snapshot() as (_current, compact):
            check_not_compacted(start_revision, compact)


class LogWriter:
    """The only writer of the log. Call its changes between ``begin`` and ``commit``.

    It tracks the revision itself: ids are assigned here, so a change knows its revision (and a
    creation its create_revision) before the insert. After a rollback, ``revision`` must be reset
    to its value at ``begin``.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        # No checkpoint inside a commit: SQLite's automatic one would make the commit that crosses
        # 1000 WAL pages copy them and fsync twice. The store checkpoints from another thread.
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        conn.execute(f"PRAGMA journal_size_limit = {WAL_KEPT_BYTES}")
        conn.executescript(SCHEMA)
        self.revision = current_revision(conn)
        self.appended: list[Row] = []  # rows written since begin(), for the watchers once committed

    def begin(self) -> None:
        # IMMEDIATE takes the write lock up front, so the checks and the insert see the same state.
        self.conn.execute("BEGIN IMMEDIATE")
        self.appended = []

    def commit(self) -> list[Row]:
        """Commit; return the rows the transaction appended."""
        self.conn.execute("COMMIT")
        rows, self.appended = self.appended, []
        return rows

    def rollback(self, revision: int) -> None:
        """Undo the transaction; ``revision`` is the one ``begin`` started from."""
        self.revision, self.appended = revision, []
        if self.conn.in_transaction:
            with suppress(sqlite3.Error):  # SQLite may have rolled back on its own already
                self.conn.execute("ROLLBACK")

    @contextmanager
    def operation(self) -> Iterator[None]:
        """One change inside the batch's transaction, all or nothing on its own: a failed
        compare-and-swap leaves the other changes of the batch alone."""
        revision, appended = self.revision, len(self.appended)
        self.conn.execute("SAVEPOINT operation")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK TO operation")
            self.conn.execute("RELEASE operation")
            self.revision = revision
            del self.appended[appended:]
            raise
        self.conn.execute("RELEASE operation")

    def latest(self, name: str) -> Row | None:
        return _one(self.conn, f"SELECT {COLUMNS} FROM kine WHERE name = ? ORDER BY id DESC LIMIT 1", (name,))

    def create(self, name: str, value: bytes, lease: int) -> Row:
        last = self.latest(name)
        if last is not None and not last.deleted:
            raise AlreadyExists(f"key {name!r} exists")
        rev = self.revision + 1
        return self._append(Row(rev, name, 1, 0, rev, last.id if last else 0, lease, value, None, 1))

    def update(self, name: str, value: bytes, expected_mod_revision: int, lease: int | None) -> Row:
        last = self._live(name)
        if last.id != expected_mod_revision:
            raise Conflict(f"key {name!r} was modified at revision {last.id}, not {expected_mod_revision}")
        new_lease = last.lease if lease is None else lease
        return self._append(Row(self.revision + 1, name, 0, 0, last.create_revision, last.id, new_lease, value,
                                last.value, last.version + 1))

    def delete(self, name: str, expected_mod_revision: int | None) -> Row:
        last = self._live(name)
        if expected_mod_revision is not None and last.id != expected_mod_revision:
            raise Conflict(f"key {name!r} was modified at revision {last.id}, not {expected_mod_revision}")
        return self._tombstone(last)

    def expire(self, name: str, lease: int) -> Row | None:
        """Delete ``name`` if it still carries the lease that expired (it may have been deleted,
        recreated or given a new lease since)."""
        last = self.latest(name)
        if last is None or last.deleted or last.lease != lease:
            return None
        return self._tombstone(last)

    def leases(self) -> list[tuple[int, str]]:
        """``(expiry_ms, name)`` of every live key with a lease: the expiry schedule after a restart."""
        sql = (f"SELECT k.lease, k.name FROM kine AS k WHERE k.lease != 0 AND k.deleted = 0 "
               f"AND {_LATEST_AT}")
        return [(lease, name) for lease, name in self.conn.execute(sql, (self.revision,))]

    def check_compactable(self, revision: int) -> None:
        compact = compact_revision(self.conn)
        if revision <= compact:
            raise Compacted(compact, revision)
        if revision > self.revision:
            raise InvalidArgument(f"cannot compact at revision {revision}: the store is at {self.revision}")

    def compact_step(self, revision: int, span: int) -> bool:
        """Compact at most ``span`` revisions further towards ``revision``; True when there.

        Removes, among rows up to the new compact revision C, every row superseded by a row <= C and
        every tombstone below C. A tombstone *at* C stays until a later step: a watch may start at C
        and must still see that delete.
        """
        lo = compact_revision(self.conn)
        if lo >= revision:
            return True
        hi = min(revision, lo + span)
        self.conn.execute(
            "DELETE FROM kine WHERE id IN ("
            " SELECT prev_revision FROM kine WHERE id > ? AND id <= ? AND prev_revision != 0"
            " UNION SELECT id FROM kine WHERE id >= ? AND id < ? AND deleted = 1)", (lo, hi, lo, hi))
        self.conn.execute("UPDATE kine_meta SET value = ? WHERE key = 'compact_revision'", (hi,))
        return hi >= revision

    def reclaim_space(self) -> None:
        """After compaction: give freed pages back to the file system (outside any transaction), the
        answer to one of kine's most common complaints, a database file that only ever grows. (The
        other, a WAL that only grows, the store's checkpointer answers: see ``SQLiteStore``.)"""
        self.conn.execute("PRAGMA incremental_vacuum")

    def _live(self, name: str) -> Row:
        last = self.latest(name)
        if last is None or last.deleted:
            raise NotFound(f"key {name!r} not found")
        return last

    def _tombstone(self, last: Row) -> Row:
        return self._append(Row(self.revision + 1, last.name, 0, 1, last.create_revision, last.id, 0, None,
                                last.value, last.version))

    def _append(self, row: Row) -> Row:
        self.conn.execute(f"INSERT INTO kine ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                          (row.id, row.name, row.created, row.deleted, row.create_revision, row.prev_revision,
                           row.lease, row.value, row.old_value, row.version))
        self.revision = row.id
        self.appended.append(row)
        return row


def checkpoint(conn: sqlite3.Connection) -> tuple[int, int] | None:
    """A PASSIVE checkpoint: copy the committed WAL frames into the database file without waiting for
    (or blocking) the writer or readers. ``(frames in the WAL, frames copied so far)``, or None when
    another checkpoint was running. Once every frame is copied the next write restarts the WAL."""
    busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return None if busy else (frames, copied)


def page_size(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA page_size").fetchone()[0]


def current_revision(conn: sqlite3.Connection) -> int:
    """The newest revision ever assigned; AUTOINCREMENT's counter survives compaction deleting rows."""
    found = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'kine'").fetchone()
    return found[0] if found else 1


def compact_revision(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT value FROM kine_meta WHERE key = 'compact_revision'").fetchone()[0]


def check_not_compacted(revision: int, compact: int) -> None:
    if revision < compact:
        raise Compacted(compact, revision)


def checked_revision(revision: int | None, current: int, compact: int) -> int:
    """The revision a read runs at: ``revision`` if it is readable, else Compacted/InvalidArgument."""
    if revision is None:
        return current
    check_not_compacted(revision, compact)
    if revision > current:
        raise InvalidArgument(f"revision {revision} is in the future (the store is at {current})")
    return revision


def expiry_ms(ttl_seconds: int) -> int:
    """The lease column's value for a key created now with that TTL."""
    return int((time.time() + ttl_seconds) * 1000)


def _one(conn: sqlite3.Connection, sql: str, params: tuple[object, ...]) -> Row | None:
    found = conn.execute(sql, params).fetchone()
    return Row(*found) if found else None
