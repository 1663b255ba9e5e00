"""``ServiceProxy``: keeps the node's nftables table in step with Services and EndpointSlices.

Informer events only mark the table dirty; one loop rewrites it (``rules.ruleset``, one ``nft -f -``
transaction) at most every ``min_sync_interval`` seconds, so a storm of endpoint changes costs a few syncs,
not one per event (kube-proxy's ``minSyncPeriod``). The first sync after start, and the one after a failed
sync, is a full one (the table is deleted and made again in the same transaction: nothing stale survives a
crash); later ones rewrite only what changed (``rules``), keeping the ClientIP-affinity sets. ``stop()`` removes
the table. ``last_latency`` is the time from the first event a sync covers to that sync's commit.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

from skiff.aiotasks import cancel_and_wait
from skiff.cluster.client import Informer
from skiff.cluster.proxy import nft
from skiff.cluster.proxy.model import LocalTarget, service_ports
from skiff.cluster.proxy.rules import State, delete_script, ruleset
from skiff.errors import InvalidArgument, SkiffError

log = logging.getLogger(__name__)
DEFAULT_TABLE = "skiff-proxy"
# nft takes table names unquoted: a dash keeps them clear of its keywords (``tproxy``, ``nat``...)
_TABLE_NAME = re.compile(r"[a-zA-Z][a-zA-Z0-9_]*-[a-zA-Z0-9_-]+")


@dataclass
class ProxyOptions:
    node_name: str
    table: str = DEFAULT_TABLE
    local: LocalTarget | None = None  # a node-local server for one Service (the cluster DNS)
    nft_command: list[str] = field(default_factory=lambda: ["nft"])
    min_sync_interval: float = 0.1
    retry_interval: float = 2.0

    def check(self) -> None:
        if not _TABLE_NAME.fullmatch(self.table):
            raise InvalidArgument(f"proxy table name {self.table!r}: letters, digits, '_' and at least one '-'")


class ServiceProxy:
    def __init__(self, services: Informer, slices: Informer, options: ProxyOptions) -> None:
        options.check()
        self.services = services
        self.slices = slices
        self.options = options
        self.syncs = 0
        self.last_latency: float | None = None
        self._dirty = asyncio.Event()
        self._dirty_since: float | None = None
        self._state: State | None = None  # None: the next sync is a full one
        self._task: asyncio.Task[None] | None = None
        for informer in (services, slices):
            informer.on_add(self._changed)
            informer.on_update(self._changed)
            informer.on_delete(self._changed)

    def _changed(self, *_: Any) -> None:
        if self._dirty_since is None:
            self._dirty_since = time.monotonic()
        self._dirty.set()

    async def start(self) -> None:
        """Wait for both caches, write the whole table once (errors raise), then follow changes."""
        for informer in (self.services, self.slices):
            informer.start()
        await asyncio.gather(self.services.wait_synced(), self.slices.wait_synced())
        self._dirty.clear()
        self._dirty_since = time.monotonic()
        await self.sync()
        self._task = asyncio.create_task(self._run(), name=f"proxy-{self.options.table}")

    async def stop(self) -> None:
        """Stop following changes and remove the table."""
        await cancel_and_wait(self._task)
        self._task = None
        await nft.apply(delete_script(self.options.table), self.options.nft_command)
        self._state = None

    async def sync(self) -> None:
        started = self._dirty_since
        self._dirty_since = None
        ports = service_ports(self.services.list(), self.slices.list(), node_name=self.options.node_name,
                              local=self.options.local)
        full = self._state is None
        script, made = ruleset(self.options.table, ports, self._state, full=full)
        try:
            if script:
                await nft.apply(script, self.options.nft_command)
        except BaseException:
            self._state = None  # what the table holds is unknown now: the next sync starts over
            raise
        self._state = made
        self.syncs += 1
        if started is not None:
            self.last_latency = time.monotonic() - started
        log.debug("proxy: %s sync %d: %d service ports in %.1f ms", "full" if full else "partial", self.syncs,
                  len(ports), (self.last_latency or 0) * 1000)

    async def _run(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self.sync()
            except (SkiffError, OSError) as exc:
                log.warning("proxy: sync failed (%s); retrying in %.0f s", exc, self.options.retry_interval)
                self._changed()
                await asyncio.sleep(self.options.retry_interval)
                continue
            await asyncio.sleep(self.options.min_sync_interval)  # changes meanwhile wait and share one sync
