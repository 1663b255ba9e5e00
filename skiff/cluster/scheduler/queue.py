"""The scheduling queue (kube's PriorityQueue): pods waiting for a node, in three places.

* **active**: ready to be tried, highest priority first, then oldest;
* **backoff**: failed recently; each waits ``initial_backoff * 2^(attempts-1)`` (capped at ``max_backoff``)
  before it returns to active;
* **unschedulable**: no node fitted and nothing has changed since. A cluster event that could make room (a node
  added or changed, a pod deleted) moves them all back (through backoff when their wait is not over); so does
  ``unschedulable_timeout`` passing, in case an event was missed.

A pod that fails while an event arrived during its attempt goes to backoff rather than unschedulable, so the
event is not lost on it (kube's move request cycle).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

from skiff.cluster.scheduler.podinfo import PodInfo

ACTIVE, BACKOFF, UNSCHEDULABLE, IN_FLIGHT = "active", "backoff", "unschedulable", "in-flight"
LEFTOVER_FLUSH_INTERVAL = 30.0  # how often the unschedulable pool is searched for pods waiting too long


@dataclass(slots=True)
class QueuedPod:
    pod: PodInfo
    added: float  # when it first entered the queue
    attempts: int = 0
    where: str = ACTIVE
    seq: int = 0  # which heap entry is current (older ones are skipped)
    backoff_until: float = 0.0
    since: float = 0.0  # when it entered its current place
    cycle: int = 0  # the scheduling cycle it was popped in


class SchedulingQueue:
    def __init__(self, initial_backoff: float = 1.0, max_backoff: float = 10.0, unschedulable_timeout: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.initial_backoff, self.max_backoff = initial_backoff, max_backoff
        self.unschedulable_timeout = unschedulable_timeout
        self.clock = clock
        self.pods: dict[str, QueuedPod] = {}
        self._active: list[tuple[int, float, int, str]] = []  # (-priority, added, seq, key)
        self._backoff: list[tuple[float, int, str]] = []  # (until, seq, key)
        self.unschedulable: dict[str, QueuedPod] = {}
        self._seq = itertools.count()
        self._wakeup = asyncio.Event()
        self.scheduling_cycle = 0
        self._move_request_cycle = -1
        self._next_leftover_flush = 0.0
        self.closed = False

    def __len__(self) -> int:
        return len(self.pods)

    def counts(self) -> dict[str, int]:
        result = {ACTIVE: 0, BACKOFF: 0, UNSCHEDULABLE: 0, IN_FLIGHT: 0}
        for qp in self.pods.values():
            result[qp.where] += 1
        return result

    # Arrivals and departures --------------------------------------------------------------------------------

    def add(self, pod: PodInfo) -> None:
        """A pod that needs a node, new or updated. An update of a waiting pod may make it fit: it is retried."""
        qp = self.pods.get(pod.key)
        now = self.clock()
        if qp is None:
            self._to_active(QueuedPod(pod, now))
            return
        qp.pod = pod
        if qp.where == UNSCHEDULABLE:
            del self.unschedulable[pod.key]
            self._to_backoff_or_active(qp, now)

    def delete(self, key: str) -> None:
        qp = self.pods.pop(key, None)
        if qp is not None and qp.where == UNSCHEDULABLE:
            del self.unschedulable[key]
        # heap entries of a deleted pod are skipped when they surface

    def done(self, key: str) -> None:
        """The pod is placed (assumed): it leaves the queue."""
        self.pods.pop(key, None)

    # Failures and cluster events ----------------------------------------------------------------------------

    def requeue(self, qp: QueuedPod, unschedulable: bool) -> None:
        """``qp`` failed its attempt: to the unschedulable pool when no node fitted and nothing changed since it
        was popped, otherwise to backoff (a failed bind, an API error, or an event during the attempt)."""
        if self.pods.get(qp.pod.key) is not qp:
            return  # deleted meanwhile
        now = self.clock()
        qp.backoff_until = now + self.backoff_duration(qp.attempts)
        if unschedulable and self._move_request_cycle < qp.cycle:
            qp.where, qp.since = UNSCHEDULABLE, now
            self.unschedulable[qp.pod.key] = qp
        else:
            self._to_backoff_or_active(qp, now)

    def move_all_to_active_or_backoff(self) -> int:
        """A cluster event that may let unschedulable pods fit: they all get another try."""
        self._move_request_cycle = self.scheduling_cycle
        moved = list(self.unschedulable.values())
        self.unschedulable.clear()
        now = self.clock()
        for qp in moved:
            self._to_backoff_or_active(qp, now)
        return len(moved)

    def backoff_duration(self, attempts: int) -> float:
        return min(self.initial_backoff * 2 ** max(attempts - 1, 0), self.max_backoff)

    # Taking pods out ----------------------------------------------------------------------------------------

    def pop_nowait(self) -> QueuedPod | None:
        self._flush(self.clock())
        while self._active:
            _, _, seq, key = heapq.heappop(self._active)
            qp = self.pods.get(key)
            if qp is None or qp.seq != seq or qp.where != ACTIVE:
                continue
            self.scheduling_cycle += 1
            qp.where, qp.cycle = IN_FLIGHT, self.scheduling_cycle
            qp.attempts += 1
            return qp
        return None

    async def pop(self) -> QueuedPod | None:
        """The next pod to try, waiting for one; None once ``close()`` was called."""
        while not self.closed:
            qp = self.pop_nowait()
            if qp is not None:
                return qp
            self._wakeup.clear()
            timeout = self._next_due() - self.clock() if self._backoff or self.unschedulable else None
            try:
                await asyncio.wait_for(self._wakeup.wait(), None if timeout is None else max(timeout, 0.001))
            except TimeoutError:
                pass
        return None

    def close(self) -> None:
        self.closed = True
        self._wakeup.set()

    # Internals ----------------------------------------------------------------------------------------------

    def _to_active(self, qp: QueuedPod) -> None:
        qp.where, qp.seq, qp.since = ACTIVE, next(self._seq), self.clock()
        self.pods[qp.pod.key] = qp
        heapq.heappush(self._active, (-qp.pod.priority, qp.added, qp.seq, qp.pod.key))
        self._wakeup.set()

    def _to_backoff_or_active(self, qp: QueuedPod, now: float) -> None:
        if qp.backoff_until <= now:
            self._to_active(qp)
            return
        qp.where, qp.seq, qp.since = BACKOFF, next(self._seq), now
        heapq.heappush(self._backoff, (qp.backoff_until, qp.seq, qp.pod.key))
        self._wakeup.set()

    def _flush(self, now: float) -> None:
        while self._backoff and self._backoff[0][0] <= now:
            _, seq, key = heapq.heappop(self._backoff)
            qp = self.pods.get(key)
            if qp is not None and qp.seq == seq and qp.where == BACKOFF:
                self._to_active(qp)
        if self.unschedulable and now >= self._next_leftover_flush:
            self._next_leftover_flush = now + LEFTOVER_FLUSH_INTERVAL
            stale = [qp for qp in self.unschedulable.values() if now - qp.since >= self.unschedulable_timeout]
            for qp in stale:
                del self.unschedulable[qp.pod.key]
                self._to_backoff_or_active(qp, now)

    def _next_due(self) -> float:
        due = [self._backoff[0][0]] if self._backoff else []
        if self.unschedulable:
            due.append(min(qp.since for qp in self.unschedulable.values()) + self.unschedulable_timeout)
        return min(due)
