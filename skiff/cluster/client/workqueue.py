"""``WorkQueue``: the rate-limited work queue of client-go (and the sample-controller pattern).

Keys, not objects, are queued: a key added while it is already waiting is not added twice, and a key being
processed is never handed to a second worker; if it is added meanwhile it is queued again when the first
worker calls ``done``. ``add_rate_limited`` re-adds a failed key after the larger of a per-key exponential
back-off (``base_delay`` doubling per failure up to ``max_delay``) and an overall token bucket (``qps``,
``burst``), so one broken object backs off alone while a storm of failures cannot flood the server;
``forget`` resets a key's back-off once it succeeds.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable


class ShutDown(Exception):
    """The queue was shut down: workers stop."""


class TokenBucket:
    """``qps`` tokens a second, at most ``burst`` saved: ``reserve()`` says how long to wait for the next."""

    def __init__(self, qps: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.qps = qps
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()

    def reserve(self) -> float:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.qps)
        self._last = now
        self._tokens -= 1
        return 0.0 if self._tokens >= 0 else -self._tokens / self.qps


class WorkQueue:
    def __init__(self, name: str = "", *, base_delay: float = 0.005, max_delay: float = 300.0, qps: float = 10.0,
                 burst: int = 100) -> None:
        self.name = name
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._bucket = TokenBucket(qps, burst)
        self._queue: deque[str] = deque()
        self._dirty: set[str] = set()  # waiting to be processed (in _queue, or to be requeued after done)
        self._processing: set[str] = set()
        self._failures: dict[str, int] = {}
        self._waiting: dict[str, tuple[float, asyncio.TimerHandle]] = {}  # add_after: key -> (when, timer)
        self._getters: deque[asyncio.Future[None]] = deque()  # workers waiting in get()
        self._shutting_down = False

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    def add(self, key: str) -> None:
        if self._shutting_down or key in self._dirty:
            return
        self._dirty.add(key)
        if key in self._processing:
            return  # requeued by done()
        self._queue.append(key)
        self._notify()

    def _notify(self) -> None:
        """Wake one waiting worker."""
        while self._getters:
            waiter = self._getters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def get(self) -> str:
        """The next key (waiting until there is one); ``ShutDown`` once the queue is shut down."""
        while not self._queue and not self._shutting_down:
            waiter = asyncio.get_running_loop().create_future()
            self._getters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._notify()  # woken for a key it will not take: pass the turn on
                raise
        if self._shutting_down:
            raise ShutDown(self.name)
        key = self._queue.popleft()
        self._processing.add(key)
        self._dirty.discard(key)
        return key

    def done(self, key: str) -> None:
        """The worker finished ``key``: if it was added meanwhile, it is queued again now."""
        self._processing.discard(key)
        if key in self._dirty and not self._shutting_down:
            self._queue.append(key)
            self._notify()

    def add_after(self, key: str, delay: float) -> None:
        """Add ``key`` in ``delay`` seconds (an earlier pending add wins; a later one is superseded)."""
        if self._shutting_down:
            return
        if delay <= 0:
            self.add(key)
            return
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        pending = self._waiting.get(key)
        if pending is not None:
            if pending[0] <= when:
                return
            pending[1].cancel()
        self._waiting[key] = (when, loop.call_at(when, self._fire, key))

    def _fire(self, key: str) -> None:
        self._waiting.pop(key, None)
        self.add(key)

    def add_rate_limited(self, key: str) -> None:
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        backoff = min(self.base_delay * (2 ** min(failures, 60)), self.max_delay)
        self.add_after(key, max(backoff, self._bucket.reserve()))

    def forget(self, key: str) -> None:
        """``key`` succeeded: its next failure backs off from the start again."""
        self._failures.pop(key, None)

    def num_requeues(self, key: str) -> int:
        return self._failures.get(key, 0)

    def shutdown(self) -> None:
        """Wake every waiting worker with ``ShutDown``; later adds are ignored."""
        self._shutting_down = True
        for _, timer in self._waiting.values():
            timer.cancel()
        self._waiting.clear()
        while self._getters:
            waiter = self._getters.popleft()
            if not waiter.done():
                waiter.set_result(None)
