"""``metrics.k8s.io/v1beta1`` (NodeMetrics, PodMetrics): what ``kubectl top`` reads, served by the API server
itself from the kubelets' ``/stats/summary`` (metrics-server's job, which k3s ships by default).

Figures are gathered per request from every node that has pods or was asked for (in parallel; each kubelet
answers from its last readings, so only the first request to a node waits a second for a pair; an unreachable
kubelet's node and pods are left out, as metrics-server leaves out what it could not scrape). Selection follows
the request: a namespace, a name (404 when it has no metrics, kube's message), and ``labelSelector`` over the
pods' or nodes' own labels.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from typing import Any

from skiff.cluster.api.objects import Obj
from skiff.cluster.api.podproxy import PodProxy
from skiff.cluster.api.resources import BY_PATH, METRICS_GROUP, ResourceType
from skiff.cluster.api.rest import Registry
from skiff.cluster.api.selectors import Filter
from skiff.cluster.api.status import ApiError

log = logging.getLogger(__name__)
API_VERSION = f"{METRICS_GROUP}/v1beta1"
WINDOW = "10s"  # each CPU figure is a rate between two kubelet readings, its --housekeeping-interval apart
NODES, PODS = BY_PATH[("", "v1", "nodes")], BY_PATH[("", "v1", "pods")]


def cpu_quantity(nanocores: int) -> str:
    return f"{max(0, int(nanocores))}n"


def memory_quantity(size: int) -> str:
    return f"{max(0, int(size)) // 1024}Ki"


class MetricsApi:
    def __init__(self, registry: Registry, proxy: PodProxy) -> None:
        self.registry = registry
        self.proxy = proxy

    async def serve(self, t: ResourceType, namespace: str | None, name: str, query: Any) -> dict[str, Any]:
        flt = Filter.from_query(query, t.plural)
        if t.kind == "NodeMetrics":
            nodes = await self._nodes(name, flt)
            items = [self._node_item(node, summary) for node, summary in await self._summaries(nodes)]
        else:
            pods, _, _ = await self.registry.list(PODS, namespace, Filter.from_query(query, "pods"))
            pods = [p for p in pods if not name or p["metadata"]["name"] == name]
            wanted = {p["metadata"].get("uid"): p for p in pods if (p.get("status") or {}).get("phase") == "Running"}
            node_names = {(p.get("spec") or {}).get("nodeName") for p in wanted.values()} - {None}
            nodes = [n for n in await self._nodes("", Filter.from_query({}, "nodes"))
                     if n["metadata"]["name"] in node_names]
            summaries = await self._summaries(nodes)
            items = [item for _node, summary in summaries for item in self._pod_items(summary, wanted)]
        if name:
            if not items:
                raise ApiError(404, "NotFound", f'{t.plural}.{METRICS_GROUP} "{name}" not found')
            return items[0]
        return {"kind": f"{t.kind}List", "apiVersion": API_VERSION, "metadata": {}, "items": items}

    async def _nodes(self, name: str, flt: Filter) -> list[Obj]:
        if name:
            return [await self.registry.get(NODES, None, name)]
        nodes, _, _ = await self.registry.list(NODES, None, flt)
        return nodes

    async def _summaries(self, nodes: list[Obj]) -> list[tuple[Obj, dict[str, Any]]]:
        answers = await asyncio.gather(*(self.proxy.kubelet_json(node, "/stats/summary") for node in nodes),
                                       return_exceptions=True)
        found = []
        for node, answer in zip(nodes, answers, strict=True):
            if isinstance(answer, BaseException) or not isinstance(answer, dict):
                log.info("metrics: node %s: %s", node["metadata"]["name"], answer)
                continue
            found.append((node, answer))
        return found

    @staticmethod
    def _node_item(node: Obj, summary: dict[str, Any]) -> dict[str, Any]:
        figures = summary.get("node") or {}
        meta = node["metadata"]
        return {"kind": "NodeMetrics", "apiVersion": API_VERSION,
                "metadata": {"name": meta["name"], "labels": meta.get("labels") or {},
                             "creationTimestamp": _now()},
                "timestamp": (figures.get("cpu") or {}).get("time") or _now(), "window": WINDOW,
                "usage": _usage(figures)}

    @staticmethod
    def _pod_items(summary: dict[str, Any], wanted: dict[str, Obj]) -> list[dict[str, Any]]:
        items = []
        for entry in summary.get("pods") or ():
            pod = wanted.get((entry.get("podRef") or {}).get("uid"))
            if pod is None or not entry.get("containers"):
                continue
            meta = pod["metadata"]
            containers = entry["containers"]
            items.append({"kind": "PodMetrics", "apiVersion": API_VERSION,
                          "metadata": {"name": meta["name"], "namespace": meta.get("namespace"),
                                       "labels": meta.get("labels") or {}, "creationTimestamp": _now()},
                          "timestamp": (containers[0].get("cpu") or {}).get("time") or _now(), "window": WINDOW,
                          "containers": [{"name": c.get("name"), "usage": _usage(c)} for c in containers]})
        return items


def _usage(figures: dict[str, Any]) -> dict[str, str]:
    return {"cpu": cpu_quantity((figures.get("cpu") or {}).get("usageNanoCores") or 0),
            "memory": memory_quantity((figures.get("memory") or {}).get("workingSetBytes") or 0)}


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
