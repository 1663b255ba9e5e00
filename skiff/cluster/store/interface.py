"""The store's contract: a revisioned key-value store with watch, as the Kubernetes API server needs it.

The semantics are etcd v3's, so that the SQLite backend and a real etcd are interchangeable:

* One global **revision** counts every change to the store. Each create, update and delete makes
  exactly one new revision; reads never do. It only grows (across restarts too), so the API server
  uses it as ``resourceVersion``.
* Each live key has a **create_revision** (the revision that created it), a **mod_revision** (the
  revision of its last change) and a **version** (1 at creation, +1 per update). Deleting a key ends
  its life: creating it again starts over at version 1 with a new create_revision.
* Reads may ask for a past ``revision``: they see the store as it was right after that revision.
  Old revisions stay readable until ``compact(revision)`` discards history older than it; after that,
  reading or watching below the compact revision raises ``Compacted`` (the API server's 410 Gone).
* A **watch** delivers every change under a prefix from a start revision on: in revision order,
  without gaps or duplicates, first the history, then live changes as they commit.

Keys are ``str`` (Kubernetes keys are paths such as ``/registry/pods/default/web-1``); values are
``bytes``, stored and returned unchanged.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType

from skiff.errors import InvalidArgument, SkiffError


class Compacted(SkiffError):
    """The revision asked for is older than the store's compact revision: its history is gone.

    The API server answers this with 410 Gone (``reason: Expired``); clients then list afresh.
    ``compact_revision`` is the oldest revision still readable.
    """

    def __init__(self, compact_revision: int, requested: int | None = None) -> None:
        self.compact_revision = compact_revision
        self.requested = requested
        asked = f"revision {requested}" if requested is not None else "the revision asked for"
        super().__init__(f"{asked} has been compacted (oldest readable revision: {compact_revision})")


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key as of some revision.

    ``create_revision == mod_revision`` (and ``version == 1``) exactly when this state is the key's
    creation. In the ``kv`` of a DELETE event only ``key`` and ``mod_revision`` (the deleting
    revision) are meaningful: the other fields are zero and ``value`` is empty, as in etcd.
    """

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int


class EventType(enum.Enum):
    PUT = "PUT"  # a create or an update
    DELETE = "DELETE"  # an explicit delete or a lease's expiry


@dataclass(frozen=True, slots=True)
class Event:
    """One change, as a watch delivers it.

    ``prev_kv`` is the key's state before the change: None for a creation, the deleted state for a
    DELETE. The API server turns these into ADDED/MODIFIED/DELETED with ``created``.
    """

    type: EventType
    kv: KeyValue
    prev_kv: KeyValue | None

    @property
    def revision(self) -> int:
        """The revision this change made."""
        return self.kv.mod_revision

    @property
    def created(self) -> bool:
        """True for the PUT that created the key (etcd's rule: its create and mod revisions agree)."""
        return self.type is EventType.PUT and self.kv.create_revision == self.kv.mod_revision


class Watch(abc.ABC):
    """An open watch: an async iterator of ``Event`` that must be closed (``async with`` does it).

    Iteration ends (StopAsyncIteration) when the watch or its store is closed. It raises
    ``Compacted`` if the history it still has to deliver was compacted away meanwhile (etcd cancels
    such a watch; the SQLite backend does when a watcher fell so far behind that its buffered
    events were dropped and the revision to resume from is gone).
    """

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    @abc.abstractmethod
    async def __anext__(self) -> Event:
        """The next change in revision order; waits for it."""

    def ready(self) -> list[Event]:
        """The next changes that are already at hand, in order, without waiting (maybe none): a reader that
        drains them after each ``__anext__`` handles a burst in one go. The default has none at hand."""
        return []

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop watching and release what the watch holds (buffers, an HTTP stream). Idempotent."""

    async def __aenter__(self) -> Watch:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()


class Store(abc.ABC):
    """A revisioned key-value store with watch (see the module docstring for the model).

    Every method is a coroutine that never blocks the event loop. Errors: ``NotFound``,
    ``AlreadyExists`` and ``Conflict`` from ``skiff.errors`` by meaning, ``Compacted`` for history
    that is gone, ``InvalidArgument`` for a revision in the future or a malformed argument.
    """

    @abc.abstractmethod
    async def get(self, key: str, revision: int | None = None) -> KeyValue | None:
        """The key's state at ``revision`` (default: now), or None if it did not exist then."""

    @abc.abstractmethod
    async def list(self, prefix: str, revision: int | None = None, limit: int | None = None,
                   start_after: str | None = None) -> tuple[list[KeyValue], int, bool]:
        """Keys starting with ``prefix`` in key order, as ``(items, snapshot_revision, more)``.

        ``snapshot_revision`` is the revision the items were read at: ``revision`` if given, else the
        current one. Paging, as Kubernetes' limit/continue does it: pass the first page's snapshot
        revision and the last key seen as ``start_after`` to get the next page of the *same* snapshot,
        whatever was written meanwhile. ``more`` says whether keys beyond ``limit`` remain.
        """

    @abc.abstractmethod
    async def count(self, prefix: str) -> int:
        """How many keys start with ``prefix`` now."""

    @abc.abstractmethod
    async def create(self, key: str, value: bytes, lease_ttl: int | None = None) -> int:
        """Create ``key``; return the new revision. ``AlreadyExists`` if it exists.

        With ``lease_ttl`` (seconds) the key is deleted by the store about that long after creation,
        with a DELETE event like any delete. Backends may round short TTLs up (etcd's minimum is a
        couple of seconds).
        """

    @abc.abstractmethod
    async def update(self, key: str, value: bytes, expected_mod_revision: int,
                     lease_ttl: int | None = None) -> int:
        """Compare-and-swap: replace the value if the key's mod_revision is ``expected_mod_revision``.

        Returns the new revision. ``NotFound`` if the key does not exist, ``Conflict`` if it changed
        since (read it again and retry: the optimistic concurrency Kubernetes' updates rely on).
        The key keeps its lease (its expiry) unless ``lease_ttl`` gives it a new one.
        """

    @abc.abstractmethod
    async def delete(self, key: str, expected_mod_revision: int | None = None) -> tuple[int, KeyValue]:
        """Delete ``key``; return ``(revision, state_before)``.

        ``NotFound`` if it does not exist; with ``expected_mod_revision``, ``Conflict`` if the key
        changed since that revision (Kubernetes' preconditioned delete).
        """

    @abc.abstractmethod
    async def watch(self, prefix: str, start_revision: int) -> Watch:
        """Watch keys starting with ``prefix`` from ``start_revision`` on (inclusive).

        History from ``start_revision`` is replayed first, then live changes follow. Raises
        ``Compacted`` at once if ``start_revision`` is below the compact revision; a start in the
        future simply waits for that revision.

        Starting exactly *at* the compact revision is allowed, but there etcd is lossy: its
        compaction drops a DELETE made at that revision and the previous value of any change there
        (the SQLite backend keeps both). Kubernetes watches from ``resourceVersion + 1``, after it.
        """

    @abc.abstractmethod
    async def compact(self, revision: int) -> None:
        """Discard history older than ``revision``; the latest state of every key stays.

        Afterwards reads and watches at revisions >= ``revision`` work as before and older ones raise
        ``Compacted``. Compacting at or below the current compact revision raises ``Compacted``; a
        revision in the future raises ``InvalidArgument``.
        """

    @abc.abstractmethod
    async def current_revision(self) -> int:
        """The revision of the last change (the revision a read now would see)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections, threads and files; open watches end. Idempotent."""

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()


# Argument checks both backends make before touching storage, so both refuse the same things alike.

def check_key(key: str) -> None:
    if not isinstance(key, str) or not key:
        raise InvalidArgument(f"a key must be a non-empty string, not {key!r}")


def check_value(value: bytes) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise InvalidArgument(f"a value must be bytes, not {type(value).__name__}")
    return bytes(value)


def check_revision(revision: int | None) -> None:
    """Revisions are positive (an empty store is at revision 1, as in etcd); None means "now"."""
    if revision is not None and (not isinstance(revision, int) or revision < 1):
        raise InvalidArgument(f"a revision must be a positive integer, not {revision!r}")


def check_limit(limit: int | None) -> None:
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise InvalidArgument(f"limit must be a positive integer, not {limit!r}")


def check_ttl(lease_ttl: int | None) -> int | None:
    if lease_ttl is not None and (not isinstance(lease_ttl, int) or lease_ttl < 1):
        raise InvalidArgument(f"lease_ttl must be a positive number of seconds, not {lease_ttl!r}")
    return lease_ttl
