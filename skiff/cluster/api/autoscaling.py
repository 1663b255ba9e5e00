"""HorizontalPodAutoscaler (``autoscaling/v2``, as kept): the defaults and checks kube-apiserver applies.

Defaults: ``minReplicas`` 1; no metrics means 80% average CPU utilization; a ``behavior`` given in part gets
the rest of kube's default rules (scale up by at most 4 pods or 100% per 15 s, whichever is more, with no
stabilization; scale down by at most 100% per 15 s after a 300 s stabilization window).
"""

from __future__ import annotations

from typing import Any

from skiff.cluster.api.status import FieldError

Errors = list[FieldError]
DEFAULT_CPU_UTILIZATION = 80
METRIC_TYPES = ("ContainerResource", "External", "Object", "Pods", "Resource")
TARGET_TYPES = ("AverageValue", "Utilization", "Value")
POLICY_TYPES = ("Percent", "Pods")
SELECT_POLICIES = ("Disabled", "Max", "Min")
MAX_STABILIZATION_SECONDS = 3600
MAX_PERIOD_SECONDS = 1800


def default_scale_up() -> dict[str, Any]:
    return {"stabilizationWindowSeconds": 0, "selectPolicy": "Max",
            "policies": [{"type": "Pods", "value": 4, "periodSeconds": 15},
                         {"type": "Percent", "value": 100, "periodSeconds": 15}]}


def default_scale_down() -> dict[str, Any]:
    return {"stabilizationWindowSeconds": 300, "selectPolicy": "Max",
            "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}]}


def default_hpa(obj: dict[str, Any]) -> None:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return
    spec.setdefault("minReplicas", 1)
    if not spec.get("metrics"):
        spec["metrics"] = [{"type": "Resource", "resource": {
            "name": "cpu", "target": {"type": "Utilization", "averageUtilization": DEFAULT_CPU_UTILIZATION}}}]
    behavior = spec.get("behavior")
    if isinstance(behavior, dict):
        for direction, defaults in (("scaleUp", default_scale_up()), ("scaleDown", default_scale_down())):
            rules = behavior.get(direction)
            if rules is None:
                behavior[direction] = defaults
            elif isinstance(rules, dict):
                for key, value in defaults.items():
                    rules.setdefault(key, value)
    obj.setdefault("status", {"currentReplicas": 0, "desiredReplicas": 0})


def validate_hpa(obj: dict[str, Any], old: dict[str, Any] | None) -> Errors:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [FieldError("spec", "Required")]
    errors = _target_ref(spec.get("scaleTargetRef"), "spec.scaleTargetRef")
    low, high = spec.get("minReplicas"), spec.get("maxReplicas")
    if not isinstance(low, int) or low < 1:
        errors.append(FieldError("spec.minReplicas", "Invalid", "must be greater than or equal to 1", low))
    if not isinstance(high, int) or high < 1:
        errors.append(FieldError("spec.maxReplicas", "Invalid", "must be greater than 0", high))
    elif isinstance(low, int) and high < low:
        errors.append(FieldError("spec.maxReplicas", "Invalid", "must be greater than or equal to `minReplicas`",
                                 high))
    metrics = spec.get("metrics")
    for i, metric in enumerate(metrics if isinstance(metrics, list) else ()):
        errors += _metric(metric, f"spec.metrics[{i}]")
    behavior = spec.get("behavior")
    if isinstance(behavior, dict):
        for direction in ("scaleUp", "scaleDown"):
            errors += _rules(behavior.get(direction), f"spec.behavior.{direction}")
    return errors


def _supported(values: tuple[str, ...]) -> str:
    return "supported values: " + ", ".join(f'"{value}"' for value in values)


def _target_ref(ref: Any, path: str) -> Errors:
    ref = ref if isinstance(ref, dict) else {}
    errors = []
    for key in ("kind", "name"):
        value = ref.get(key)
        if not value:
            errors.append(FieldError(f"{path}.{key}", "Required"))
        elif not isinstance(value, str) or "/" in value or "%" in value or value in (".", ".."):
            errors.append(FieldError(f"{path}.{key}", "Invalid", "may not contain '/', '%' or be '.' or '..'",
                                     value))
    return errors


def _metric(metric: Any, path: str) -> Errors:
    metric = metric if isinstance(metric, dict) else {}
    kind = metric.get("type")
    if not kind:
        return [FieldError(f"{path}.type", "Required", "must specify a metric source type")]
    if kind not in METRIC_TYPES:
        return [FieldError(f"{path}.type", "NotSupported",
                           _supported(METRIC_TYPES), kind)]
    if kind not in ("Resource", "ContainerResource"):
        return []  # custom and external metrics have no provider here: the controller reports them
    source_key = "resource" if kind == "Resource" else "containerResource"
    source = metric.get(source_key)
    if not isinstance(source, dict):
        return [FieldError(f"{path}.{source_key}", "Required", f"must populate information for the given metric "
                                                               f"source (type {kind})")]
    errors = []
    if not source.get("name"):
        errors.append(FieldError(f"{path}.{source_key}.name", "Required", "must specify a resource name"))
    if kind == "ContainerResource" and not source.get("container"):
        errors.append(FieldError(f"{path}.{source_key}.container", "Required", "must specify a container"))
    return errors + _target(source.get("target"), f"{path}.{source_key}.target")


def _target(target: Any, path: str) -> Errors:
    target = target if isinstance(target, dict) else {}
    kind = target.get("type")
    if not kind:
        return [FieldError(f"{path}.type", "Required", "must specify a metric target type")]
    if kind not in TARGET_TYPES:
        return [FieldError(f"{path}.type", "NotSupported",
                           _supported(TARGET_TYPES), kind)]
    if kind == "Utilization":
        value = target.get("averageUtilization")
        if value is None:
            return [FieldError(f"{path}.averageUtilization", "Required",
                               "must set either a target raw value or a target utilization")]
        if not isinstance(value, int) or value < 1:
            return [FieldError(f"{path}.averageUtilization", "Invalid", "must be greater than 0", value)]
    elif not target.get("averageValue" if kind == "AverageValue" else "value"):
        field = "averageValue" if kind == "AverageValue" else "value"
        return [FieldError(f"{path}.{field}", "Required", "must set either a target raw value or a target "
                                                          "utilization")]
    return []


def _rules(rules: Any, path: str) -> Errors:
    if not isinstance(rules, dict):
        return []
    errors = []
    window = rules.get("stabilizationWindowSeconds")
    if window is not None and (not isinstance(window, int) or window < 0):
        errors.append(FieldError(f"{path}.stabilizationWindowSeconds", "Invalid", "must be greater than or equal "
                                                                                  "to zero", window))
    elif isinstance(window, int) and window > MAX_STABILIZATION_SECONDS:
        errors.append(FieldError(f"{path}.stabilizationWindowSeconds", "Invalid",
                                 f"must be less than or equal to {MAX_STABILIZATION_SECONDS}", window))
    select = rules.get("selectPolicy")
    if select is not None and select not in SELECT_POLICIES:
        errors.append(FieldError(f"{path}.selectPolicy", "NotSupported",
                                 _supported(SELECT_POLICIES),
                                 select))
    policies = rules.get("policies")
    if isinstance(policies, list) and not policies and select != "Disabled":
        errors.append(FieldError(f"{path}.policies", "Required", "must specify at least one Policy"))
    for i, policy in enumerate(policies if isinstance(policies, list) else ()):
        errors += _policy(policy, f"{path}.policies[{i}]")
    return errors


def _policy(policy: Any, path: str) -> Errors:
    policy = policy if isinstance(policy, dict) else {}
    errors = []
    if policy.get("type") not in POLICY_TYPES:
        errors.append(FieldError(f"{path}.type", "NotSupported",
                                 _supported(POLICY_TYPES),
                                 policy.get("type")))
    value = policy.get("value")
    if not isinstance(value, int) or value <= 0:
        errors.append(FieldError(f"{path}.value", "Invalid", "must be greater than zero", value))
    period = policy.get("periodSeconds")
    if not isinstance(period, int) or period <= 0:
        errors.append(FieldError(f"{path}.periodSeconds", "Invalid", "must be greater than zero", period))
    elif period > MAX_PERIOD_SECONDS:
        errors.append(FieldError(f"{path}.periodSeconds", "Invalid",
                                 f"must be less than or equal to {MAX_PERIOD_SECONDS}", period))
    return errors
