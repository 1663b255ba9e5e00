"""Conversion between the versions of a resource served from one storage version.

kube-apiserver keeps each resource in one version and converts what other versions' endpoints send and
answer. Here that is HorizontalPodAutoscaler: kept as ``autoscaling/v2``, also served as ``autoscaling/v1``
(the version ``kubectl autoscale`` 1.32 posts). v1 can say less than v2 (one CPU target, no behavior, no
conditions), so a write through v1 keeps what v1 cannot say from the object it replaces, and a read through v1
leaves it out.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from skiff.cluster.api.resources import ResourceType

Obj = dict[str, Any]
# (group, kind, served version) -> (to storage(obj, live or None), from storage(obj))
_CONVERTERS: dict[tuple[str, str, str], tuple[Callable[[Obj, Obj | None], Obj], Callable[[Obj], Obj]]] = {}


def to_storage(t: ResourceType, obj: Any, live: Obj | None = None) -> Any:
    """``obj`` as sent to ``t``'s endpoint, in the form it is kept in; ``live`` is the object it replaces."""
    if not t.storage_version or not isinstance(obj, dict):
        return obj
    into, _ = _CONVERTERS[(t.group, t.kind, t.version)]
    return into(obj, live)


def from_storage(t: ResourceType, obj: Obj) -> Obj:
    """A kept object as ``t``'s endpoint answers it."""
    if not t.storage_version:
        return obj
    _, out = _CONVERTERS[(t.group, t.kind, t.version)]
    return out(obj)


# HorizontalPodAutoscaler: autoscaling/v1 <-> autoscaling/v2 ---------------------------------------------------

_HPA_V2 = "autoscaling/v2"
_HPA_V1 = "autoscaling/v1"


def _is_cpu_utilization(metric: Any) -> bool:
    if not isinstance(metric, dict):
        return False
    resource = metric.get("resource") or {}
    return metric.get("type") == "Resource" and resource.get("name") == "cpu" and \
        (resource.get("target") or {}).get("type") == "Utilization"


def _is_cpu_current(metric: Any) -> bool:
    return isinstance(metric, dict) and metric.get("type") == "Resource" and \
        ((metric.get("resource") or {}).get("name") == "cpu")


def _head(obj: Obj, api_version: str) -> Obj:
    out = {key: copy.deepcopy(value) for key, value in obj.items() if key not in ("spec", "status")}
    out["apiVersion"] = api_version
    return out


def hpa_v1_to_v2(obj: Obj, live: Obj | None) -> Obj:
    spec1 = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
    live_spec = (live or {}).get("spec") or {}
    out = _head(obj, _HPA_V2)
    spec = {key: copy.deepcopy(spec1[key]) for key in ("scaleTargetRef", "minReplicas", "maxReplicas") if key in spec1}
    others = [copy.deepcopy(m) for m in live_spec.get("metrics") or () if not _is_cpu_utilization(m)]
    target = spec1.get("targetCPUUtilizationPercentage")
    cpu = [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization",
                                                                         "averageUtilization": target}}}]
    metrics = (cpu if target is not None else []) + others
    if metrics:
        spec["metrics"] = metrics
    if "behavior" in live_spec:
        spec["behavior"] = copy.deepcopy(live_spec["behavior"])
    out["spec"] = spec
    status1 = obj.get("status") if isinstance(obj.get("status"), dict) else None
    if status1 is not None:
        out["status"] = _hpa_status_to_v2(status1, (live or {}).get("status") or {})
    return out


def _hpa_status_to_v2(status1: Obj, live_status: Obj) -> Obj:
    status = {key: copy.deepcopy(status1[key]) for key in
              ("observedGeneration", "lastScaleTime", "currentReplicas", "desiredReplicas") if key in status1}
    current = [copy.deepcopy(m) for m in live_status.get("currentMetrics") or () if not _is_cpu_current(m)]
    utilization = status1.get("currentCPUUtilizationPercentage")
    if utilization is not None:
        kept = next((m for m in live_status.get("currentMetrics") or () if _is_cpu_current(m)), None)
        cpu = copy.deepcopy(kept) if kept else {"type": "Resource", "resource": {"name": "cpu", "current": {}}}
        cpu["resource"].setdefault("current", {})["averageUtilization"] = utilization
        current.insert(0, cpu)
    if current:
        status["currentMetrics"] = current
    if live_status.get("conditions"):
        status["conditions"] = copy.deepcopy(live_status["conditions"])
    return status


def hpa_v2_to_v1(obj: Obj) -> Obj:
    spec2 = obj.get("spec") or {}
    out = _head(obj, _HPA_V1)
    spec = {key: copy.deepcopy(spec2[key]) for key in ("scaleTargetRef", "minReplicas", "maxReplicas") if key in spec2}
    cpu = next((m for m in spec2.get("metrics") or () if _is_cpu_utilization(m)), None)
    if cpu is not None and "averageUtilization" in cpu["resource"]["target"]:
        spec["targetCPUUtilizationPercentage"] = cpu["resource"]["target"]["averageUtilization"]
    out["spec"] = spec
    status2 = obj.get("status") or {}
    status = {key: copy.deepcopy(status2[key]) for key in
              ("observedGeneration", "lastScaleTime", "currentReplicas", "desiredReplicas") if key in status2}
    status.setdefault("currentReplicas", 0)
    status.setdefault("desiredReplicas", 0)
    current = next((m for m in status2.get("currentMetrics") or () if _is_cpu_current(m)), None)
    utilization = ((current or {}).get("resource") or {}).get("current", {}).get("averageUtilization")
    if utilization is not None:
        status["currentCPUUtilizationPercentage"] = utilization
    out["status"] = status
    return out


_CONVERTERS[("autoscaling", "HorizontalPodAutoscaler", "v1")] = (hpa_v1_to_v2, hpa_v2_to_v1)
