"""The kubelet's resource figures (``GET /stats/summary``, a subset of kube's Summary API), which the API server
turns into ``metrics.k8s.io`` for ``kubectl top``, as metrics-server does.

Per container: CPU in nanocores from the engine's stats (``stream=false`` gives two samples a second apart:
the container's CPU time over the host's, times the CPUs, as ``docker stats`` computes its percentage) and the
memory working set (usage less inactive file pages, as cAdvisor counts it). For the node: CPU from
``/proc/stat`` over the same second, memory as MemTotal less MemAvailable. Everything through the Engine API but
the node's own figures, so it works on a plain dockerd too.
"""

from __future__ import annotations

import asyncio
import datetime
import os
from typing import Any

from skiff.cluster.kubelet import naming
from skiff.cluster.kubelet.runtime import EngineContainer, EngineRuntime


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


def container_usage(stats: dict[str, Any]) -> tuple[int, int]:
    """(CPU nanocores, memory working set bytes) from one Engine API stats document."""
    cpu, pre = stats.get("cpu_stats") or {}, stats.get("precpu_stats") or {}
    used = (cpu.get("cpu_usage") or {}).get("total_usage", 0) - (pre.get("cpu_usage") or {}).get("total_usage", 0)
    system = cpu.get("system_cpu_usage", 0) - pre.get("system_cpu_usage", 0)
    cpus = cpu.get("online_cpus") or len((cpu.get("cpu_usage") or {}).get("percpu_usage") or ()) or 1
    nanocores = int(used / system * cpus * 1e9) if used > 0 and system > 0 else 0
    memory = stats.get("memory_stats") or {}
    detail = memory.get("stats") or {}
    inactive = detail.get("total_inactive_file", detail.get("inactive_file", 0))
    return nanocores, max(0, int(memory.get("usage", 0)) - int(inactive))


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def summary(runtime: EngineRuntime, node_name: str) -> dict[str, Any]:
    """The node's and its running pods' CPU and memory, sampled over about a second."""
    found = await runtime.containers({naming.NODE_NAME: node_name, naming.CONTAINER_TYPE: naming.TYPE_CONTAINER})
    running = [c for c in found if c.running]
    busy_before, total_before = _cpu_times()
    # Each answer takes the engine's second between its two samples: off the runtime's pool, whose threads the
    # pod syncs need meanwhile (failures come back as the engine client raised them: that container is skipped).
    samples = await asyncio.gather(*(asyncio.to_thread(runtime.api.stats, c.id, stream=False) for c in running),
                                   return_exceptions=True)
    busy_after, total_after = _cpu_times()
    node_cpu = int((busy_after - busy_before) / max(1, total_after - total_before) * (os.cpu_count() or 1) * 1e9)
    stamp = _now()
    pods: dict[str, dict[str, Any]] = {}
    for container, sample in zip(running, samples, strict=True):
        if isinstance(sample, BaseException) or not isinstance(sample, dict):
            continue  # gone meanwhile
        pod = pods.setdefault(container.labels.get(naming.POD_UID, ""), _pod_entry(container))
        nanocores, working_set = container_usage(sample)
        pod["containers"].append({"name": container.container_name, "startTime": container.started_at,
                                  "cpu": {"time": stamp, "usageNanoCores": nanocores},
                                  "memory": {"time": stamp, "workingSetBytes": working_set}})
    return {"node": {"nodeName": node_name, "cpu": {"time": stamp, "usageNanoCores": node_cpu},
                     "memory": {"time": stamp, "workingSetBytes": _node_memory_working_set()}},
            "pods": list(pods.values())}


def _pod_entry(container: EngineContainer) -> dict[str, Any]:
    labels = container.labels
    return {"podRef": {"name": labels.get(naming.POD_NAME, ""), "namespace": labels.get(naming.POD_NAMESPACE, ""),
                       "uid": labels.get(naming.POD_UID, "")}, "containers": []}
