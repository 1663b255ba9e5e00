"""Plain-dict Nodes and Pods for the scheduler's tests, shaped as the API server returns them."""

from __future__ import annotations

from typing import Any

Obj = dict[str, Any]


def node(name: str, cpu: str = "4", memory: str = "8Gi", pods: int = 110, labels: dict[str, str] | None = None,
         taints: list[Obj] | None = None, ready: str = "True", unschedulable: bool = False) -> Obj:
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
            "spec": {"taints": taints or [], **({"unschedulable": True} if unschedulable else {})},
            "status": {"allocatable": {"cpu": cpu, "memory": memory, "pods": str(pods)},
                       "capacity": {"cpu": cpu, "memory": memory, "pods": str(pods)},
                       "conditions": [{"type": "Ready", "status": ready}]}}


def pod(name: str, cpu: str | None = None, memory: str | None = None, labels: dict[str, str] | None = None,
        owner: str | None = None, namespace: str = "default", **spec: Any) -> Obj:
    requests = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v is not None}
    container: Obj = {"name": "c", "image": "busybox", "resources": {"requests": requests} if requests else {}}
    if "ports" in spec:
        container["ports"] = spec.pop("ports")
    meta: Obj = {"name": name, "namespace": namespace, "uid": f"uid-{namespace}-{name}", "labels": labels or {}}
    if owner:
        meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": owner, "uid": f"uid-{owner}",
                                    "controller": True}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"containers": [container], "schedulerName": "default-scheduler", **spec}}


def taint(key: str, value: str = "", effect: str = "NoSchedule") -> Obj:
    return {"key": key, "value": value, "effect": effect}
