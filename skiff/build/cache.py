"""The builder's layer cache index: (parent image, step key) -> the image that step made.

Docker's legacy builder finds a cached step by scanning its images for a child of the parent whose
container config equals the probe. Images here record no parent, so the link is kept in a small SQLite
index (``<data root>/build/cache.db``; each write is one transaction, so a daemon killed at any moment
restarts with a consistent index, and the cache survives restarts). The index only *points*: a hit is used
only if the image still exists (``docker rmi``, prunes and ``builder prune`` remove images, not entries;
stale entries are replaced on the next miss).

The step key is a digest of everything the step's result depends on besides its parent: the probe config
(Docker's: the run config with the step's command, ``#(nop)`` text for metadata steps, ``|N ARG=v`` build
args for RUN, the source digest for COPY/ADD), so two steps share an entry only when Docker would reuse one.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time

_SCHEMA = """
CREATE TABLE IF NOT EXISTS steps (
    parent TEXT NOT NULL,
    key TEXT NOT NULL,
    image TEXT NOT NULL,
    manifest TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (parent, key)
);
"""


def step_key(probe: object) -> str:
    """A stable digest of a step's probe (any JSON value)."""
    data = json.dumps(probe, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(data.encode("utf-8", "surrogateescape")).hexdigest()


class CacheIndex:
    """Parent image ID + step key -> child image ID, on disk (see the module docstring)."""

    def __init__(self, root: str) -> None:
        os.makedirs(root, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(os.path.join(root, "cache.db"), isolation_level=None, check_same_thread=False,
                                   timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def lookup(self, parent: str, key: str) -> tuple[str, str] | None:
        """(image ID, manifest digest) of the step, if one was recorded."""
        with self._lock:
            row = self._db.execute("SELECT image, manifest FROM steps WHERE parent = ? AND key = ?",
                                   (parent, key)).fetchone()
        return (row[0], row[1]) if row else None

    def record(self, parent: str, key: str, image: str, manifest: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO steps (parent, key, image, manifest, created)"
                             " VALUES (?, ?, ?, ?, ?)", (parent, key, image, manifest, time.time()))

    def forget_missing(self, exists: object) -> int:
        """Drop entries whose image ``exists(manifest digest)`` denies (after a prune); the number dropped."""
        with self._lock:
            rows = self._db.execute("SELECT parent, key, manifest FROM steps").fetchall()
        stale = [(p, k) for p, k, manifest in rows if not exists(manifest)]  # type: ignore[operator]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("DELETE FROM steps WHERE parent = ? AND key = ?", stale)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return len(stale)

    def close(self) -> None:
        with self._lock:
            self._db.close()
