"""``HorizontalPodAutoscalerController``: scales a workload's replicas to hold its pods' CPU or memory at a
target, as kube-controller-manager's horizontal-pod-autoscaler does.

Every HPA is looked at once per sync period (``--horizontal-pod-autoscaler-sync-period``, 15 s): the target's
``scale`` subresource gives its replicas and pod selector, ``metrics.k8s.io`` (which the API server serves from
the kubelets) the pods' usage. Each metric proposes a replica count (``replicas``, kube's replica calculator);
the largest wins, then the HPA's ``behavior`` (or kube's defaults) shapes it: recent proposals within a
stabilization window keep it from flapping, and scaling policies limit how fast it may move. The outcome goes
to ``scale``, a ``SuccessfulRescale`` event and the HPA's status with kube's conditions (AbleToScale,
ScalingActive, ScalingLimited), which ``kubectl describe hpa`` shows.

The proposals and scale events behind stabilization and rate limits live in this process, as in kube: a
restarted controller starts with none.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from skiff.cluster.client import (
    HORIZONTAL_POD_AUTOSCALERS,
    POD_METRICS,
    PODS,
    ApiClient,
    ApiStatusError,
    Controller,
    SharedInformers,
    object_key,
    resource_for,
    split_key,
)
from skiff.cluster.controllers import replica_calculator as calc
from skiff.cluster.controllers.events import EventRecorder
from skiff.cluster.controllers.objects import Obj, now_rfc3339, write_status
from skiff.cluster.controllers.options import ControllerOptions
from skiff.cluster.controllers.replica_calculator import MetricError
from skiff.errors import NotFound

log = logging.getLogger(__name__)
COMPONENT = "horizontal-pod-autoscaler"
HPAS = HORIZONTAL_POD_AUTOSCALERS


@dataclass
class _History:
    """What one HPA's stabilization and rate limits remember: (time, proposal) and (time, replica change)."""
    proposals: list[tuple[float, int]] = field(default_factory=list)
    scale_ups: list[tuple[float, int]] = field(default_factory=list)
    scale_downs: list[tuple[float, int]] = field(default_factory=list)


class HorizontalPodAutoscalerController(Controller):
    name = "horizontalpodautoscaling"

    def __init__(self, client: ApiClient, informers: SharedInformers, options: ControllerOptions) -> None:
        self.hpas = informers.informer(HPAS)
        super().__init__(client, [self.hpas])
        self.options = options
        self.recorder = EventRecorder(client, COMPONENT)
        self.history: dict[str, _History] = {}
        self.clock = time.monotonic
        self.hpas.on_add(lambda hpa: self.enqueue(object_key(hpa)))
        # Status writes (this controller's own) come back as updates: only a spec change is looked at before the
        # next period, so each HPA's metrics are fetched once a period, as kube's fixed-interval queue does.
        self.hpas.on_update(lambda old, new: self.enqueue(object_key(new)) if old.get("spec") != new.get("spec")
                            else None)
        self.hpas.on_delete(lambda hpa: self.history.pop(object_key(hpa), None))

    async def sync(self, key: str) -> None:
        namespace, name = split_key(key)
        hpa = self.hpas.get(namespace, name)
        if hpa is None:
            self.history.pop(key, None)
            return
        try:
            await self._reconcile(key, hpa)
        finally:
            self.queue.add_after(key, self.options.horizontal_pod_autoscaler_sync_period)

    async def _reconcile(self, key: str, hpa: Obj) -> None:
        spec, namespace = hpa.get("spec") or {}, hpa["metadata"]["namespace"]
        low, high = spec.get("minReplicas", 1), spec["maxReplicas"]
        status = _Status(hpa)
        try:
            scale = await self._scale(hpa)
        except (ApiStatusError, NotFound) as exc:
            status.condition("AbleToScale", False, "FailedGetScale",
                             f"the HPA controller was unable to get the target's current scale: {_reason(exc)}")
            self.recorder.warning(hpa, "FailedGetScale", _reason(exc))
            await self._write_status(hpa, status)
            return
        current = int((scale.get("spec") or {}).get("replicas") or 0)
        status.current_replicas = current
        rescale_reason = ""
        if current == 0 and low != 0:
            desired = 0
            status.condition("ScalingActive", False, "ScalingDisabled",
                             "scaling is disabled since the replica count of the target is zero")
        elif current > high:
            desired, rescale_reason = high, "Current number of replicas above Spec.MaxReplicas"
        elif current < low:
            desired, rescale_reason = low, "Current number of replicas below Spec.MinReplicas"
        else:
            selector = (scale.get("status") or {}).get("selector") or ""
            proposal = await self._propose(hpa, namespace, selector, current, status)
            if proposal is None:
                await self._write_status(hpa, status)
                return
            proposed, metric_name = proposal
            desired = self._shape(key, hpa, current, proposed, status)
            if desired != current:
                rescale_reason = f"{metric_name} above target" if desired > current else "All metrics below target"
        if desired != current:
            try:
                await self.client.patch(_target(spec), spec["scaleTargetRef"]["name"],
                                        {"spec": {"replicas": desired}}, namespace=namespace, subresource="scale")
            except ApiStatusError as exc:
                status.condition("AbleToScale", False, "FailedUpdateScale",
                                 f"the HPA controller was unable to update the target scale: {_reason(exc)}")
                self.recorder.warning(hpa, "FailedRescale",
                                      f"New size: {desired}; reason: {rescale_reason}; error: {_reason(exc)}")
                await self._write_status(hpa, status)
                return
            self._remember_scale(key, current, desired)
            status.condition("AbleToScale", True, "SucceededRescale",
                             f"the HPA controller was able to update the target scale to {desired}")
            self.recorder.normal(hpa, "SuccessfulRescale", f"New size: {desired}; reason: {rescale_reason}")
            log.info("hpa %s: %d -> %d (%s)", key, current, desired, rescale_reason)
            status.last_scale_time = now_rfc3339()
        elif not status.has("AbleToScale"):
            status.condition("AbleToScale", True, "ReadyForNewScale", "recommended size matches current size")
        status.desired_replicas = desired
        await self._write_status(hpa, status)

    async def _scale(self, hpa: Obj) -> Obj:
        ref = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
        return await self.client.request("GET", _target(hpa["spec"]).path(hpa["metadata"]["namespace"], ref["name"],
                                                                             "scale"))

    # Metrics -------------------------------------------------------------------------------------------------

    async def _propose(self, hpa: Obj, namespace: str, selector: str, current: int,
                       status: _Status) -> tuple[int, str] | None:
        """The largest replica count the metrics ask for and which metric asked; None (conditions and events
        set) when no metric could give one."""
        try:
            pods = (await self.client.list(PODS, namespace, label_selector=selector))["items"]
            usage = await self._pod_usage(namespace, selector)
        except ApiStatusError as exc:
            pods, usage = [], {}
            failure: str | None = f"unable to get metrics: {_reason(exc)}"
        else:
            failure = None
        best: tuple[int, str] | None = None
        errors: list[tuple[str, str]] = []
        for metric in (hpa.get("spec") or {}).get("metrics") or ():
            try:
                if failure is not None:
                    raise MetricError(failure)
                replicas, name, current_metric = self._evaluate(metric, pods, usage, current)
            except MetricError as exc:
                errors.append(_metric_failure(metric, str(exc)))
                continue
            status.current_metrics.append(current_metric)
            if best is None or replicas > best[0]:
                best = (replicas, name)
        # as kube: with any metric failing, only a scale up is trusted (a failing metric could want more)
        if errors and (best is None or best[0] < current):
            reason, message = errors[0]
            status.condition("ScalingActive", False, reason, f"the HPA was unable to compute the replica count: "
                                                             f"{message}")
            self.recorder.warning(hpa, reason, message)
            self.recorder.warning(hpa, "FailedComputeMetricsReplicas", f"invalid metrics ({len(errors)} invalid out "
                                  f"of {len(errors) + len(status.current_metrics)}), first error is: {message}")
            return None
        if best is None:
            return None
        status.condition("ScalingActive", True, "ValidMetricFound", f"the HPA was able to successfully calculate a "
                                                                     f"replica count from {best[1]}")
        return best

    async def _pod_usage(self, namespace: str, selector: str) -> dict[str, dict[str, dict[str, int]]]:
        """pod name -> container name -> {"cpu": millicores, "memory": bytes}, from the metrics API."""
        listed = await self.client.list(POD_METRICS, namespace, label_selector=selector)
        usage: dict[str, dict[str, dict[str, int]]] = {}
        for item in listed.get("items") or ():
            containers = usage.setdefault(item["metadata"]["name"], {})
            for container in item.get("containers") or ():
                figures = container.get("usage") or {}
                containers[container.get("name", "")] = {
                    name: calc.amount(name, value) for name, value in figures.items()}
        return usage

    def _evaluate(self, metric: Obj, pods: list[Obj], usage: dict[str, dict[str, dict[str, int]]],
                  current: int) -> tuple[int, str, Obj]:
        kind = metric.get("type")
        if kind not in ("Resource", "ContainerResource"):
            raise MetricError(f"the {kind} metric source needs a custom or external metrics API, which is not "
                              f"served here")
        key = "resource" if kind == "Resource" else "containerResource"
        source = metric.get(key) or {}
        resource, container = source.get("name", ""), source.get("container")
        target = source.get("target") or {}
        pod_usage = calc.pod_usage(usage, resource, container)
        if not pod_usage:
            raise MetricError(f"unable to get metrics for resource {resource}: no metrics returned from resource "
                              f"metrics API")
        label = f"{resource} {'container ' if container else ''}resource"
        groups = calc.group_pods(pods, pod_usage, resource)
        if target.get("type") == "Utilization":
            requests = calc.pod_requests(pods, groups.ready + groups.missing + groups.unready, resource, container)
            result = calc.utilization_replicas(groups, pod_usage, requests, int(target["averageUtilization"]),
                                               current, self.options.horizontal_pod_autoscaler_tolerance)
            current_figures = {"averageUtilization": result.utilization,
                               "averageValue": calc.format_amount(resource, result.average)}
            label += " utilization (percentage of request)"
        else:
            wanted = calc.amount(resource, target.get("averageValue") or "0")
            result = calc.average_value_replicas(groups, pod_usage, wanted, current,
                                                 self.options.horizontal_pod_autoscaler_tolerance)
            current_figures = {"averageValue": calc.format_amount(resource, result.average)}
        reported: Obj = {"name": resource, "current": current_figures}
        if container:
            reported["container"] = container
        return result.replicas, label, {"type": kind, key: reported}

    # Behavior: stabilization and rate limits -----------------------------------------------------------------

    def _shape(self, key: str, hpa: Obj, current: int, proposed: int, status: _Status) -> int:
        spec = hpa.get("spec") or {}
        low, high = spec.get("minReplicas", 1), spec["maxReplicas"]
        behavior = calc.behavior_of(spec.get("behavior"),
                                    self.options.horizontal_pod_autoscaler_downscale_stabilization)
        history = self.history.setdefault(key, _History())
        now = self.clock()
        stabilized, reason = calc.stabilize(history.proposals, now, proposed, current, behavior)
        if reason:
            status.condition("AbleToScale", True, reason, calc.STABILIZED_MESSAGES[reason])
        desired, limit_reason, limit_message = calc.limit_rate(stabilized, current, low, high, now, behavior,
                                                               history.scale_ups, history.scale_downs)
        if limit_reason:
            status.condition("ScalingLimited", True, limit_reason, limit_message)
        else:
            status.condition("ScalingLimited", False, "DesiredWithinRange",
                             "the desired count is within the acceptable range")
        return desired

    def _remember_scale(self, key: str, current: int, desired: int) -> None:
        history = self.history.setdefault(key, _History())
        now = self.clock()
        if desired > current:
            history.scale_ups.append((now, desired - current))
        else:
            history.scale_downs.append((now, current - desired))
        horizon = now - calc.LONGEST_PERIOD
        history.scale_ups[:] = [e for e in history.scale_ups if e[0] >= horizon]
        history.scale_downs[:] = [e for e in history.scale_downs if e[0] >= horizon]

    # Status --------------------------------------------------------------------------------------------------

    async def _write_status(self, hpa: Obj, status: _Status) -> None:
        # gone, or changed since the cache saw it: the next period (or the spec change's event) looks again
        await write_status(self.client, HPAS, hpa, status.build(), tolerate=(404, 409))


class _Status:
    """The status one sync writes: figures and conditions, each condition keeping its lastTransitionTime
    while its status stays."""

    def __init__(self, hpa: Obj) -> None:
        old = hpa.get("status") or {}
        self.old = old
        self.observed_generation = hpa["metadata"].get("generation")
        self.current_replicas = old.get("currentReplicas", 0)
        self.desired_replicas = old.get("desiredReplicas", 0)
        self.last_scale_time = old.get("lastScaleTime")
        self.current_metrics: list[Obj] = []
        self.conditions: dict[str, tuple[bool, str, str]] = {}

    def condition(self, kind: str, ok: bool, reason: str, message: str) -> None:
        self.conditions[kind] = (ok, reason, message)

    def has(self, kind: str) -> bool:
        return kind in self.conditions

    def build(self) -> Obj:
        before = {c.get("type"): c for c in self.old.get("conditions") or ()}
        conditions = []
        for kind in ("AbleToScale", "ScalingActive", "ScalingLimited"):
            if kind not in self.conditions:
                if kind in before:
                    conditions.append(before[kind])
                continue
            ok, reason, message = self.conditions[kind]
            text = "True" if ok else "False"
            previous = before.get(kind) or {}
            since = previous.get("lastTransitionTime") if previous.get("status") == text else None
            conditions.append({"type": kind, "status": text, "lastTransitionTime": since or now_rfc3339(),
                               "reason": reason, "message": message})
        status: Obj = {"currentReplicas": self.current_replicas, "desiredReplicas": self.desired_replicas}
        if self.observed_generation is not None:
            status["observedGeneration"] = self.observed_generation
        if self.last_scale_time:
            status["lastScaleTime"] = self.last_scale_time
        if self.current_metrics:
            status["currentMetrics"] = self.current_metrics
        elif self.old.get("currentMetrics") and self.conditions.get("ScalingActive", (True,))[0]:
            status["currentMetrics"] = self.old["currentMetrics"]
        if conditions:
            status["conditions"] = conditions
        return status


def _target(spec: Obj) -> Any:
    ref = spec.get("scaleTargetRef") or {}
    return resource_for(ref.get("apiVersion") or "apps/v1", ref.get("kind", ""))


def _reason(exc: Exception) -> str:
    return getattr(exc, "message", None) or str(exc)


def _metric_failure(metric: Obj, message: str) -> tuple[str, str]:
    """The event reason and message for a metric that gave no count, as kube names them."""
    kind = metric.get("type")
    resource = (metric.get("resource") or metric.get("containerResource") or {}).get("name", "")
    if kind == "Resource":
        return "FailedGetResourceMetric", f"failed to get {resource} utilization: {message}"
    if kind == "ContainerResource":
        return "FailedGetContainerResourceMetric", f"failed to get {resource} utilization: {message}"
    return f"FailedGet{kind}Metric", message

