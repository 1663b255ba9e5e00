"""The kubelet's resource figures (``GET /stats/summary``, a subset of kube's Summary API), which the API server
turns into ``metrics.k8s.io`` for ``kubectl top`` and the horizontal pod autoscaler, as metrics-server does.

``StatsSampler`` reads every running container's cumulative CPU time and memory working set (usage less
inactive file pages, as cAdvisor counts it) through the Engine API's one-shot stats, and the node's from
``/proc``, every ``--housekeeping-interval`` (10 s, cAdvisor's); a CPU figure is the rate between a container's
last two readings. So a summary is answered at once from the last readings, however many containers there
are, instead of waiting for a fresh pair. Sampling starts with the first summary asked for (that one waits
for a pair a second apart): a node nobody asks about samples nothing. Everything but the node's own figures
goes through the Engine API, so it works on a plain dockerd too.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from skiff.aiotasks import cancel_and_wait
from skiff.cluster.kubelet import naming
from skiff.cluster.kubelet.runtime import EngineRuntime

log = logging.getLogger(__name__)
HOUSEKEEPING_INTERVAL = 10.0  # seconds between two readings (cAdvisor's --housekeeping_interval)
FIRST_PAIR_GAP = 1.0  # seconds between the two readings the first summary waits for
PARALLEL_READS = 8  # engine stats calls at once (each one a thread)


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _node_memory_working_set() -> int:
    info = {}
    with open("/proc/meminfo") as f:
        for line in f:
            name, _, rest = line.partition(":")
            info[name] = int(rest.split()[0]) * 1024
    return info["MemTotal"] - info.get("MemAvailable", info.get("MemFree", 0))


def container_reading(stats: dict[str, Any]) -> tuple[int, int]:
    """(cumulative CPU nanoseconds, memory working set bytes) from one Engine API stats document."""
    cpu_ns = int(((stats.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage", 0))
    memory = stats.get("memory_stats") or {}
    detail = memory.get("stats") or {}
    inactive = detail.get("total_inactive_file", detail.get("inactive_file", 0))
    return cpu_ns, max(0, int(memory.get("usage", 0)) - int(inactive))


def _stamp(wall: float) -> str:
    return datetime.datetime.fromtimestamp(wall, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class _Reading:
    at: float  # monotonic seconds
    wall: float  # time.time() of the same moment
    cpu_ns: int  # cumulative CPU time (for the node: busy jiffies, with ``total`` the jiffies of all states)
    memory: int  # working set bytes
    total: int = 0


@dataclass
class _Series:
    """One container's (or the node's) last two readings, and what a summary says of the container."""
    labels: dict[str, str]
    last: _Reading
    previous: _Reading | None = None

    def add(self, reading: _Reading) -> None:
        self.previous, self.last = self.last, reading


class StatsSampler:
    def __init__(self, runtime: EngineRuntime, node_name: str, interval: float = HOUSEKEEPING_INTERVAL) -> None:
        self.runtime = runtime
        self.node_name = node_name
        self.interval = interval
        self._containers: dict[str, _Series] = {}  # container id -> its readings
        self._node: _Series | None = None
        self._lock = asyncio.Lock()  # one reading at a time
        self._starting = asyncio.Lock()  # one first pair, however many summaries are asked for at once
        self._task: asyncio.Task[None] | None = None

    async def summary(self) -> dict[str, Any]:
        """The node's and its running pods' CPU and memory: from the last two readings, taken now (a second
        apart) when there are none yet or sampling stopped."""
        async with self._starting:
            if self._task is None or self._task.done():
                await self.sample()
                await asyncio.sleep(FIRST_PAIR_GAP)
                await self.sample()
                self._task = asyncio.create_task(self._run(), name=f"stats-sampler-{self.node_name}")
        return self._build()

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.sample()
            except Exception as exc:  # the engine is away: the next reading tries again
                log.warning("stats: reading the containers failed: %s", exc)

    async def sample(self) -> None:
        """One reading of every running container of this node and of the node."""
        async with self._lock:
            filters = {"label": [f"{naming.NODE_NAME}={self.node_name}",
                                 f"{naming.CONTAINER_TYPE}={naming.TYPE_CONTAINER}"]}
            listed = await self.runtime.call(self.runtime.api.containers, filters=filters)  # running ones
            gate = asyncio.Semaphore(PARALLEL_READS)

            async def read(container_id: str) -> tuple[float, float, dict[str, Any]] | None:
                async with gate:
                    with contextlib.suppress(Exception):  # gone meanwhile: no reading
                        doc = await asyncio.to_thread(self.runtime.api.stats, container_id, stream=False,
                                                      one_shot=True)
                        return time.monotonic(), time.time(), doc
                    return None
            answers = await asyncio.gather(*(read(item["Id"]) for item in listed))
            seen = set()
            for item, answer in zip(listed, answers, strict=True):
                if answer is None or not isinstance(answer[2], dict):
                    continue
                at, wall, doc = answer
                cpu_ns, memory = container_reading(doc)
                reading = _Reading(at, wall, cpu_ns, memory)
                seen.add(item["Id"])
                series = self._containers.get(item["Id"])
                if series is None:
                    self._containers[item["Id"]] = _Series(item.get("Labels") or {}, reading)
                else:
                    series.add(reading)
            for gone in set(self._containers) - seen:
                del self._containers[gone]
            busy, total = _cpu_times()
            node = _Reading(time.monotonic(), time.time(), busy, _node_memory_working_set(), total)
            if self._node is None:
                self._node = _Series({}, node)
            else:
                self._node.add(node)

    def _build(self) -> dict[str, Any]:
        pods: dict[str, dict[str, Any]] = {}
        for series in self._containers.values():
            if series.previous is None:
                continue  # one reading: no rate yet
            labels, last, before = series.labels, series.last, series.previous
            nanocores = _rate(last.cpu_ns - before.cpu_ns, last.at - before.at)
            pod = pods.setdefault(labels.get(naming.POD_UID, ""), _pod_entry(labels))
            stamp = _stamp(last.wall)
            pod["containers"].append({"name": labels.get(naming.CONTAINER_NAME, ""),
                                      "cpu": {"time": stamp, "usageNanoCores": nanocores,
                                              "usageCoreNanoSeconds": last.cpu_ns},
                                      "memory": {"time": stamp, "workingSetBytes": last.memory}})
        node: dict[str, Any] = {"nodeName": self.node_name}
        if self._node is not None and self._node.previous is not None:
            last, before = self._node.last, self._node.previous
            share = (last.cpu_ns - before.cpu_ns) / max(1, last.total - before.total)
            stamp = _stamp(last.wall)
            node["cpu"] = {"time": stamp, "usageNanoCores": int(share * (os.cpu_count() or 1) * 1e9)}
            node["memory"] = {"time": stamp, "workingSetBytes": last.memory}
        return {"node": node, "pods": list(pods.values())}


def _rate(cpu_ns: int, seconds: float) -> int:
    """Nanocores: CPU nanoseconds used per second (0 across a restart, where the counter went back)."""
    return int(cpu_ns / seconds) if cpu_ns > 0 and seconds > 0 else 0


def _pod_entry(labels: dict[str, str]) -> dict[str, Any]:
    return {"podRef": {"name": labels.get(naming.POD_NAME, ""), "namespace": labels.get(naming.POD_NAMESPACE, ""),
                       "uid": labels.get(naming.POD_UID, "")}, "containers": []}
