"""The arithmetic of the horizontal pod autoscaler, free of I/O (kube's replica_calculator.go and the
behavior half of horizontal.go), so each rule can be checked alone.

- ``group_pods``: which pods count. Terminating and failed pods are ignored; pending pods and, for CPU, pods
  that are not Ready are *unready* (their CPU is start-up noise); pods with no figures are *missing*.
- ``utilization_replicas`` / ``average_value_replicas``: the replica count that brings the ready pods' usage to
  the target. Within ``tolerance`` (10%) of it nothing changes. When pods are missing or unready the count is
  checked again assuming the least helpful value for them (missing pods at their request when scaling down, at
  zero when scaling up; unready pods at zero), and when that flips the direction nothing changes.
- ``stabilize``: the proposal, held by the recent proposals (the lowest of the scale-up window, the highest of
  the scale-down window), so a dip does not scale down at once.
- ``limit_rate``: the scaling policies (4 pods or 100% per 15 s up, 100% per 15 s down by default), measured
  against the changes already made within each policy's period, then ``minReplicas``/``maxReplicas``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from skiff.cluster.scheduler.quantity import resource_value

Obj = dict[str, Any]
LONGEST_PERIOD = 1800  # seconds: the longest policy period the API allows, so the most history a limit needs
STABILIZED_MESSAGES = {
    "ReadyForNewScale": "recommended size matches current size",
    "ScaleUpStabilized": "recent recommendations were lower than current one, applying the lowest recent "
                         "recommendation",
    "ScaleDownStabilized": "recent recommendations were higher than current one, applying the highest recent "
                           "recommendation",
}
_DECIMAL_SUFFIXES = ("", "k", "M", "G", "T", "P", "E")


class MetricError(Exception):
    """A metric could not give a replica count (no figures, a missing request...): the reason, in kube's words."""


def amount(resource: str, value: Any) -> int:
    """A quantity in the unit counted here: millicores for ``cpu``, whole units (bytes) for the rest."""
    return resource_value(resource, value)


def format_amount(resource: str, value: int) -> str:
    """``amount``'s inverse as a canonical quantity: ``250m``, ``2``, ``64M``, ``52428800``."""
    if resource == "cpu":
        if value % 1000:
            return f"{value}m"
        value //= 1000
    exponent = 0
    while value and value % 1000 == 0 and exponent < len(_DECIMAL_SUFFIXES) - 1:
        value //= 1000
        exponent += 1
    return f"{value}{_DECIMAL_SUFFIXES[exponent]}"


# Pods and their figures -------------------------------------------------------------------------------------

@dataclass
class PodGroups:
    ready: list[str]  # counted: their figures decide
    unready: list[str]
    missing: list[str]
    ignored: list[str]


def pod_usage(usage: dict[str, dict[str, dict[str, int]]], resource: str, container: str | None) -> dict[str, int]:
    """pod name -> its usage of ``resource`` (all containers', or the named container's)."""
    found = {}
    for pod, containers in usage.items():
        if container is not None:
            if container in containers and resource in containers[container]:
                found[pod] = containers[container][resource]
        elif containers and all(resource in figures for figures in containers.values()):
            found[pod] = sum(figures[resource] for figures in containers.values())
    return found


def group_pods(pods: list[Obj], usage: dict[str, int], resource: str) -> PodGroups:
    groups = PodGroups([], [], [], [])
    for pod in pods:
        name, status = pod["metadata"]["name"], pod.get("status") or {}
        phase = status.get("phase")
        if pod["metadata"].get("deletionTimestamp") or phase in ("Failed", "Succeeded"):
            groups.ignored.append(name)
        elif phase == "Pending" or not phase:
            groups.unready.append(name)
        elif name not in usage:
            groups.missing.append(name)
        elif resource == "cpu" and not _ready(pod):
            groups.unready.append(name)
        else:
            groups.ready.append(name)
    return groups


def pod_requests(pods: list[Obj], names: list[str], resource: str, container: str | None) -> dict[str, int]:
    """pod name -> its containers' request of ``resource``; MetricError if a container has none."""
    by_name = {pod["metadata"]["name"]: pod for pod in pods}
    requests = {}
    for name in names:
        total = 0
        for c in (by_name[name].get("spec") or {}).get("containers") or ():
            if container is not None and c.get("name") != container:
                continue
            wanted = ((c.get("resources") or {}).get("requests") or {}).get(resource)
            if wanted is None:
                raise MetricError(f"missing request for {resource} in container {c.get('name')} of Pod {name}")
            total += amount(resource, wanted)
        requests[name] = total
    return requests


def _ready(pod: Obj) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or ())


# Replica counts ---------------------------------------------------------------------------------------------

@dataclass
class Proposal:
    replicas: int
    average: int  # the ready pods' average usage (millicores or bytes)
    utilization: int = 0  # their usage as a percentage of their requests (Utilization targets)


def utilization_replicas(groups: PodGroups, usage: dict[str, int], requests: dict[str, int], target: int,
                         current: int, tolerance: float) -> Proposal:
    metrics = {name: usage[name] for name in groups.ready}
    if not metrics:
        raise MetricError("did not receive metrics for targeted pods (pods might be unready)")

    def percent(figures: dict[str, int]) -> int:
        requested = sum(requests[name] for name in figures)
        if requested == 0:
            raise MetricError("no metrics returned matched known pods")
        return sum(figures.values()) * 100 // requested

    def ratio(figures: dict[str, int]) -> float:
        return percent(figures) / target

    def fallback(name: str) -> int:  # a missing pod when scaling down: at its request, or the target if above
        return requests[name] * target // 100 if target > 100 else requests[name]
    replicas = _replicas(metrics, groups, current, tolerance, ratio, fallback)
    return Proposal(replicas, sum(metrics.values()) // len(metrics), percent(metrics))


def average_value_replicas(groups: PodGroups, usage: dict[str, int], target: int, current: int,
                           tolerance: float) -> Proposal:
    metrics = {name: usage[name] for name in groups.ready}
    if not metrics:
        raise MetricError("did not receive metrics for targeted pods (pods might be unready)")
    if target <= 0:
        raise MetricError("the target average value must be positive")

    def ratio(figures: dict[str, int]) -> float:
        return sum(figures.values()) / len(figures) / target
    replicas = _replicas(metrics, groups, current, tolerance, ratio, lambda _name: target)
    return Proposal(replicas, sum(metrics.values()) // len(metrics))


def _replicas(metrics: dict[str, int], groups: PodGroups, current: int, tolerance: float,
              ratio_of: Callable[[dict[str, int]], float], fallback: Callable[[str], int]) -> int:
    ratio = ratio_of(metrics)
    up_with_unready = bool(groups.unready) and ratio > 1.0
    if not up_with_unready and not groups.missing:
        if abs(1.0 - ratio) <= tolerance:
            return current
        return math.ceil(ratio * len(metrics))
    assumed = dict(metrics)
    for name in groups.missing:
        assumed[name] = fallback(name) if ratio < 1.0 else 0
    if up_with_unready:
        for name in groups.unready:
            assumed[name] = 0
    again = ratio_of(assumed)
    if abs(1.0 - again) <= tolerance or (ratio < 1.0 < again) or (ratio > 1.0 > again):
        return current  # the pods without figures could reverse the change: wait for them
    replicas = math.ceil(again * len(assumed))
    if (again < 1.0 and replicas > current) or (again > 1.0 and replicas < current):
        return current
    return replicas


# Behavior ---------------------------------------------------------------------------------------------------

def default_rules(direction: str, down_window: float) -> Obj:
    if direction == "scaleUp":
        return {"stabilizationWindowSeconds": 0, "selectPolicy": "Max",
                "policies": [{"type": "Pods", "value": 4, "periodSeconds": 15},
                             {"type": "Percent", "value": 100, "periodSeconds": 15}]}
    return {"stabilizationWindowSeconds": down_window, "selectPolicy": "Max",
            "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}]}


def behavior_of(behavior: Any, down_window: float) -> dict[str, Obj]:
    """Both directions' rules: the HPA's (the API filled what it left out), else the defaults with the
    controller's scale-down stabilization window."""
    given = behavior if isinstance(behavior, dict) else {}
    return {direction: given.get(direction) or default_rules(direction, down_window)
            for direction in ("scaleUp", "scaleDown")}


def stabilize(proposals: list[tuple[float, int]], now: float, proposed: int, current: int,
              behavior: dict[str, Obj]) -> tuple[int, str]:
    """The recommendation the recent proposals allow, and kube's AbleToScale reason for it; records
    ``proposed`` in ``proposals`` (pruned to the longer window)."""
    up_window = float(behavior["scaleUp"].get("stabilizationWindowSeconds") or 0)
    down_window = float(behavior["scaleDown"].get("stabilizationWindowSeconds") or 0)
    up, down = proposed, proposed
    for when, value in proposals:
        if when > now - up_window:
            up = min(up, value)
        if when > now - down_window:
            down = max(down, value)
    recommendation = min(max(current, up), down)
    proposals.append((now, proposed))
    horizon = now - max(up_window, down_window)
    proposals[:] = [p for p in proposals if p[0] > horizon]
    if recommendation == proposed:
        return recommendation, "ReadyForNewScale"
    return recommendation, "ScaleUpStabilized" if recommendation < proposed else "ScaleDownStabilized"


def limit_rate(desired: int, current: int, low: int, high: int, now: float, behavior: dict[str, Obj],
               ups: list[tuple[float, int]], downs: list[tuple[float, int]]) -> tuple[int, str, str]:
    """``desired`` within the scaling policies and min/max: (count, ScalingLimited reason, message); the reason
    is "" when nothing limited it."""
    if desired > current:
        allowed = max(_scale_up_limit(current, ups, behavior["scaleUp"], now), current)
        reason, message = "ScaleUpLimit", "the desired replica count is increasing faster than the maximum scale rate"
        if allowed > high:
            allowed = high
            reason, message = "TooManyReplicas", "the desired replica count is more than the maximum replica count"
        if desired > allowed:
            return allowed, reason, message
    elif desired < current:
        allowed = min(_scale_down_limit(current, downs, behavior["scaleDown"], now), current)
        reason, message = "ScaleDownLimit", "the desired replica count is decreasing faster than the maximum scale rate"
        if allowed < low:
            allowed = low
            reason, message = "TooFewReplicas", "the desired replica count is less than the minimum replica count"
        if desired < allowed:
            return allowed, reason, message
    return desired, "", ""


def _changed_within(events: list[tuple[float, int]], now: float, period: float) -> int:
    return sum(change for when, change in events if when > now - period)


def _scale_up_limit(current: int, ups: list[tuple[float, int]], rules: Obj, now: float) -> int:
    select = rules.get("selectPolicy") or "Max"
    if select == "Disabled":
        return current
    proposals = []
    for policy in rules.get("policies") or ():
        start = current - _changed_within(ups, now, float(policy["periodSeconds"]))
        if policy["type"] == "Pods":
            proposals.append(start + int(policy["value"]))
        else:
            proposals.append(math.ceil(start * (1 + int(policy["value"]) / 100)))
    if not proposals:
        return current
    return max(proposals) if select == "Max" else min(proposals)


def _scale_down_limit(current: int, downs: list[tuple[float, int]], rules: Obj, now: float) -> int:
    select = rules.get("selectPolicy") or "Max"
    if select == "Disabled":
        return current
    proposals = []
    for policy in rules.get("policies") or ():
        start = current + _changed_within(downs, now, float(policy["periodSeconds"]))
        if policy["type"] == "Pods":
            proposals.append(start - int(policy["value"]))
        else:
            proposals.append(int(start * (1 - int(policy["value"]) / 100)))
    if not proposals:
        return current
    # "Max" selects the policy allowing the biggest change: the lowest count
    return min(proposals) if select == "Max" else max(proposals)
