"""Watches served inside one process: the committed changes fanned out to every open watch.

The store's writer hands each batch of committed events to ``WatchHub.publish`` on the event loop,
before it acknowledges the writes, so nothing polls. A ``LocalWatch`` first replays history from the
log, then follows the events published to it; because it registers with the hub *before* it reads
the log, every change is in the log read or in its buffer (or both: duplicates are dropped by
revision), so there is no gap between history and live events.

A watcher that stops reading does not grow without bound: past ``MAX_BUFFERED`` events its buffer is
dropped and it goes back to reading the log from where it was, which costs a read but loses nothing
(unless that history has been compacted meanwhile: then it raises ``Compacted``, as etcd would).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable

from skiff.cluster.store.interface import Event, Watch
from skiff.cluster.store.keys import in_range, prefix_end

MAX_BUFFERED = 10_000
REPLAY_PAGE = 500

# (prefix, start_revision, limit) -> up to limit events from the log, raising Compacted if gone.
ReadEvents = Callable[[str, int, int], Awaitable[list[Event]]]


class WatchHub:
    """The set of open watches of one store; lives on the store's event loop."""

    def __init__(self) -> None:
        self._watches: set[LocalWatch] = set()
        self.closed = False

    def publish(self, events: list[Event]) -> None:
        """Hand freshly committed events (in revision order) to every open watch."""
        for watch in self._watches:
            watch.offer(events)

    def add(self, watch: LocalWatch) -> None:
        self._watches.add(watch)

    def discard(self, watch: LocalWatch) -> None:
        self._watches.discard(watch)

    def close(self) -> None:
        """End every open watch: their iterations stop."""
        self.closed = True
        for watch in list(self._watches):
            watch.end()
        self._watches.clear()


class LocalWatch(Watch):
    """One watch of a prefix: log replay, then the hub's live events, in revision order."""

    def __init__(self, hub: WatchHub, read_events: ReadEvents, prefix: str, start_revision: int) -> None:
        self._hub = hub
        self._read_events = read_events
        self._prefix, self._end = prefix, prefix_end(prefix)
        self._next = start_revision  # the revision the next event must have at least
        self._replayed: collections.deque[Event] = collections.deque()  # from the log, in order
        self._live: collections.deque[Event] = collections.deque()  # from the hub, in order
        self._must_read_log = True
        self._overflows = 0  # bumped whenever the live buffer is dropped
        self._wakeup = asyncio.Event()
        self._ended = False
        hub.add(self)

    def offer(self, events: list[Event]) -> None:
        """Called by the hub: keep the events this watch wants, or fall back to the log if too many."""
        if self._ended:
            return
        self._live.extend(e for e in events if e.revision >= self._next and in_range(e.kv.key, self._prefix, self._end))
        if len(self._live) > MAX_BUFFERED:
            self._live.clear()
            self._must_read_log = True
            self._overflows += 1
        self._wakeup.set()

    def end(self) -> None:
        self._ended = True
        self._wakeup.set()

    async def __anext__(self) -> Event:
        while not self._ended:
            event = await self._next_pending()
            if event is not None:
                self._next = event.revision + 1
                return event
            self._wakeup.clear()
            await self._wakeup.wait()
        raise StopAsyncIteration

    def ready(self) -> list[Event]:
        """What is buffered and in order now: the replayed page, then (once the log is caught up) live events."""
        ready: list[Event] = []
        if self._ended:
            return ready
        for buffer in (self._replayed, self._live):
            if buffer is self._live and (self._replayed or self._must_read_log):
                break  # live events may be ahead of history not read yet
            while buffer:
                event = buffer.popleft()
                if event.revision >= self._next:
                    ready.append(event)
                    self._next = event.revision + 1
        return ready

    async def _next_pending(self) -> Event | None:
        """The next event not yet delivered, from the log or the live buffer; None if there is none yet."""
        if not self._replayed and self._must_read_log:
            await self._read_log_page()
        while self._replayed:
            event = self._replayed.popleft()
            if event.revision >= self._next:
                return event
        while self._live:
            event = self._live.popleft()
            if event.revision >= self._next:
                return event
        return None

    async def _read_log_page(self) -> None:
        # State changes only after the read, so a cancelled __anext__ loses nothing.
        overflows = self._overflows
        page = await self._read_events(self._prefix, self._next, REPLAY_PAGE)
        self._replayed.extend(page)
        # Caught up unless the page was full (more history) or the buffer overflowed while we read.
        if len(page) < REPLAY_PAGE and self._overflows == overflows:
            self._must_read_log = False

    async def close(self) -> None:
        self.end()
        self._hub.discard(self)
        self._replayed.clear()
        self._live.clear()
