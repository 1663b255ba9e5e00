"""``Controller``: the harness of a reconcile loop (informers → work queue → N workers → ``sync(key)``).

A subclass registers its informers' handlers (which only enqueue keys) and implements ``sync(key)``, which
must be idempotent: it reads the desired and the actual state (from the caches) and makes one step towards
the desired one. A sync that raises is retried with the queue's per-key back-off; one that returns
normally is forgotten (its back-off resets). ``run()`` starts the informers, waits until they have synced,
then runs the workers until cancelled.

A key whose sync is expensive (a ReplicaSet of thousands of pods: every sync looks at all of them) is not
synced again at once for each of a storm of events: a sync reports its CPU cost with ``report_cost`` and
``enqueue`` delays the key so that its syncs take at most ``sync_share`` of the time. A cheap sync is never
delayed; the events in between coalesce into one sync.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from skiff.aiotasks import cancel_and_wait
from skiff.cluster.client.api import ApiClient
from skiff.cluster.client.informer import Informer
from skiff.cluster.client.workqueue import ShutDown, WorkQueue
from skiff.errors import SkiffError

log = logging.getLogger(__name__)


class Controller:
    name = "controller"
    workers = 2
    max_retries = 15  # after this many failed syncs in a row a key is dropped until its objects change again
    sync_share = 0.25  # the share of time one key's syncs may take when events for it never stop
    cheap_sync = 0.002  # seconds: syncs faster than this are never delayed

    def __init__(self, client: ApiClient, informers: list[Informer] | None = None) -> None:
        self.client = client
        self.queue = WorkQueue(self.name)
        self.informers: list[Informer] = list(informers or ())
        self._expensive: dict[str, tuple[float, float]] = {}  # key -> (when its last sync started, how long)

    async def sync(self, key: str) -> None:
        raise NotImplementedError

    def report_cost(self, key: str, seconds: float) -> None:
        """What ``key``'s sync cost in computation (not waiting): expensive keys are synced less often."""
        if seconds > self.cheap_sync:
            self._expensive[key] = (asyncio.get_running_loop().time(), seconds)
        else:
            self._expensive.pop(key, None)

    def enqueue(self, key: str) -> None:
        last = self._expensive.get(key)
        if last is not None:
            started, took = last
            wait = started + took / self.sync_share - asyncio.get_running_loop().time()
            if wait > 0:
                self.queue.add_after(key, wait)
                return
        self.queue.add(key)

    async def run(self) -> None:
        for informer in self.informers:
            informer.start()
        await asyncio.gather(*(informer.wait_synced() for informer in self.informers))
        log.info("%s: caches synced, %d workers", self.name, self.workers)
        workers = [asyncio.create_task(self._worker(), name=f"{self.name}-worker-{i}") for i in range(self.workers)]
        try:
            await asyncio.gather(*workers)
        finally:
            self.queue.shutdown()
            await cancel_and_wait(*workers)

    async def _worker(self) -> None:
        while True:
            try:
                key = await self.queue.get()
            except ShutDown:
                return
            try:
                await self.sync(key)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._retry(key, exc)
            else:
                self.queue.forget(key)
            finally:
                self.queue.done(key)

    def _retry(self, key: str, exc: Exception) -> None:
        if self.queue.num_requeues(key) < self.max_retries:
            # An API answer (a conflict, say) is routine; anything else is a bug worth its traceback.
            log.log(logging.INFO if isinstance(exc, SkiffError) else logging.WARNING, "%s: syncing %s failed "
                    "(%s: %s); retrying", self.name, key, type(exc).__name__, exc,
                    exc_info=not isinstance(exc, SkiffError))
            self.queue.add_rate_limited(key)
        else:
            log.warning("%s: dropping %s after %d failed syncs: %s", self.name, key, self.max_retries, exc)
            self.queue.forget(key)


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT: what a control-plane component run alone waits on before it stops."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop
