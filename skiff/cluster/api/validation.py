"""Defaults and validation per type, as kube-apiserver's strategies apply them on create and update.

``default(t, obj)`` fills the fields kube fills (a Pod's restartPolicy, a Deployment's strategy, a
Service's protocols...). ``validate(t, obj, old)`` returns every ``FieldError`` it finds, each naming
its field as kube does (``spec.template.spec.containers[0].image: Required value``); the REST layer
turns a non-empty list into a 422 ``Invalid`` Status.
"""

from __future__ import annotations

import base64
import binascii
import copy
import re
from collections.abc import Callable
from typing import Any

from skiff.cluster.api.autoscaling import default_hpa, validate_hpa
from skiff.cluster.api.batch import default_cronjob, default_job, validate_cronjob, validate_job
from skiff.cluster.api.resources import ResourceType
from skiff.cluster.api.selectors import LabelSelector
from skiff.cluster.api.status import FieldError

_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1035 = r"[a-z]([-a-z0-9]*[a-z0-9])?"
SUBDOMAIN_MSG = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
                 "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
                 f"validation is '{_SUBDOMAIN}')")
LABEL_MSG = ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start "
             f"and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation "
             f"is '{_LABEL}')")
DNS1035_MSG = ("a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
               "alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', "
               f"regex used for validation is '{_DNS1035}')")
_QUALIFIED = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
Errors = list[FieldError]


def is_subdomain(name: str) -> bool:
    return len(name) <= 253 and re.fullmatch(_SUBDOMAIN, name) is not None


def is_label(name: str) -> bool:
    return len(name) <= 63 and re.fullmatch(_LABEL, name) is not None


def _name_check(plural: str) -> Callable[[str], str | None]:
    """The name rule of a type: the message when ``name`` breaks it, else None."""
    if plural in ("namespaces",):
        return lambda n: None if is_label(n) else LABEL_MSG
    if plural == "services":
        return lambda n: None if len(n) <= 63 and re.fullmatch(_DNS1035, n) else DNS1035_MSG
    if plural in ("roles", "clusterroles", "rolebindings", "clusterrolebindings"):
        return lambda n: next((f"may not contain '{c}'" for c in ("/", "%") if c in n), None) \
            if n not in (".", "..") else f"may not be '{n}'"
    return lambda n: None if is_subdomain(n) else SUBDOMAIN_MSG


def validate_metadata(t: ResourceType, obj: dict[str, Any]) -> Errors:
    errors: Errors = []
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return [FieldError("metadata", "Required")]
    name = meta.get("name")
    if not name:
        errors.append(FieldError("metadata.name", "Required", "name or generateName is required"))
    elif not isinstance(name, str):
        errors.append(FieldError("metadata.name", "Invalid", "must be a string", name))
    else:
        problem = _name_check(t.plural)(name)
        if problem:
            errors.append(FieldError("metadata.name", "Invalid", problem, name))
    errors += _validate_labels(meta.get("labels"), "metadata.labels")
    annotations = meta.get("annotations")
    if annotations is not None and not (isinstance(annotations, dict)
                                        and all(isinstance(v, str) for v in annotations.values())):
        errors.append(FieldError("metadata.annotations", "Invalid", "must be a map of string to string", annotations))
    return errors


def _validate_labels(labels: Any, path: str) -> Errors:
    if labels is None:
        return []
    if not isinstance(labels, dict):
        return [FieldError(path, "Invalid", "must be a map of string to string", labels)]
    errors: Errors = []
    for key, value in labels.items():
        prefix, _, short = key.rpartition("/")
        if not short or len(short) > 63 or not _QUALIFIED.match(short) or (prefix and not is_subdomain(prefix)):
            errors.append(FieldError(path, "Invalid", "name part must consist of alphanumeric characters, '-', '_' "
                                     "or '.', and must start and end with an alphanumeric character", key))
        if not isinstance(value, str) or len(value) > 63 or (value and not _QUALIFIED.match(value)):
            errors.append(FieldError(f"{path}", "Invalid", "a valid label must be an empty string or consist of "
                                     "alphanumeric characters, '-', '_' or '.', and must start and end with an "
                                     "alphanumeric character", value))
    return errors


# Pods and pod templates --------------------------------------------------------------------------------------

def default_pod_spec(spec: dict[str, Any]) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        if not isinstance(container, dict):
            continue
        image = str(container.get("image") or "")
        tag = image.rsplit("/", 1)[-1]
        latest = "@" not in image and (":" not in tag or tag.endswith(":latest"))
        container.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        container.setdefault("resources", {})
        for port in container.get("ports") or []:
            if isinstance(port, dict):
                port.setdefault("protocol", "TCP")


def validate_pod_spec(spec: Any, path: str) -> Errors:
    if not isinstance(spec, dict):
        return [FieldError(path, "Required")]
    errors: Errors = []
    containers = spec.get("containers")
    if not containers:
        errors.append(FieldError(f"{path}.containers", "Required"))
    seen: set[str] = set()
    for kind in ("initContainers", "containers"):
        for i, c in enumerate(spec.get(kind) or []):
            errors += _validate_container(c, f"{path}.{kind}[{i}]", seen)
    policy = spec.get("restartPolicy")
    if policy not in (None, "Always", "OnFailure", "Never"):
        errors.append(FieldError(f"{path}.restartPolicy", "NotSupported",
                                 'supported values: "Always", "OnFailure", "Never"', policy))
    grace = spec.get("terminationGracePeriodSeconds")
    if grace is not None and (not isinstance(grace, int) or grace < 0):
        errors.append(FieldError(f"{path}.terminationGracePeriodSeconds", "Invalid",
                                 "must be greater than or equal to 0", grace))
    return errors


def _validate_container(c: Any, path: str, seen: set[str]) -> Errors:
    if not isinstance(c, dict):
        return [FieldError(path, "Invalid", "must be an object", c)]
    errors: Errors = []
    name = c.get("name")
    if not name:
        errors.append(FieldError(f"{path}.name", "Required"))
    elif not isinstance(name, str) or not is_label(name):
        errors.append(FieldError(f"{path}.name", "Invalid", LABEL_MSG, name))
    elif name in seen:
        errors.append(FieldError(f"{path}.name", "Duplicate", value=name))
    else:
        seen.add(name)
    if not c.get("image"):
        errors.append(FieldError(f"{path}.image", "Required"))
    for j, port in enumerate(c.get("ports") or []):
        number = port.get("containerPort") if isinstance(port, dict) else None
        if not isinstance(number, int) or not 0 < number < 65536:
            errors.append(FieldError(f"{path}.ports[{j}].containerPort", "Required" if number is None else "Invalid",
                                     "" if number is None else "must be between 1 and 65535, inclusive", number))
        protocol = port.get("protocol") if isinstance(port, dict) else None
        if protocol not in (None, "TCP", "UDP", "SCTP"):
            errors.append(FieldError(f"{path}.ports[{j}].protocol", "NotSupported",
                                     'supported values: "SCTP", "TCP", "UDP"', protocol))
    policy = c.get("imagePullPolicy")
    if policy not in (None, "Always", "IfNotPresent", "Never"):
        errors.append(FieldError(f"{path}.imagePullPolicy", "NotSupported",
                                 'supported values: "Always", "IfNotPresent", "Never"', policy))
    return errors


NOT_READY_TAINT, UNREACHABLE_TAINT = "node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"


def default_toleration_seconds(pod: dict[str, Any], not_ready: int, unreachable: int) -> None:
    """kube-apiserver's DefaultTolerationSeconds admission (pods being created): a pod that tolerates neither
    the not-ready nor the unreachable NoExecute taint gets a toleration of it for ``not_ready`` /
    ``unreachable`` seconds, so the taint eviction controller moves it off a failed node after that long."""
    spec = pod.get("spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("tolerations") or [], list):
        return  # validation reports it
    tolerations = spec.get("tolerations") or []

    def tolerated(key: str) -> bool:
        return any(isinstance(t, dict) and (t.get("key") or key) == key and (t.get("effect") or "NoExecute")
                   == "NoExecute" for t in tolerations)
    added = [{"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": seconds}
             for key, seconds in ((NOT_READY_TAINT, not_ready), (UNREACHABLE_TAINT, unreachable))
             if not tolerated(key)]
    if added:
        spec["tolerations"] = [*tolerations, *added]


def _default_pod(obj: dict[str, Any]) -> None:
    spec = obj.setdefault("spec", {})
    if isinstance(spec, dict):
        default_pod_spec(spec)
        spec.setdefault("serviceAccountName", "default")
        spec.setdefault("serviceAccount", spec["serviceAccountName"])
        spec.setdefault("enableServiceLinks", True)
        spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
        spec.setdefault("priority", 0)
    status = obj.setdefault("status", {})
    if isinstance(status, dict):
        status.setdefault("phase", "Pending")
        status.setdefault("qosClass", "BestEffort")


def _validate_pod(obj: dict[str, Any], old: dict[str, Any] | None) -> Errors:
    errors = validate_pod_spec(obj.get("spec"), "spec")
    if old is not None and not errors:
        errors += _pod_update_limits(obj["spec"], old.get("spec") or {})
    return errors


def _pod_update_limits(new: dict[str, Any], old: dict[str, Any]) -> Errors:
    """Pods are immutable but for images, a few timing fields and the node binding (kube's rule)."""
    def mutable_blanked(spec: dict[str, Any]) -> dict[str, Any]:
        spec = copy.deepcopy(spec)
        for c in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]:
            c.pop("image", None)
        for field in ("activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds"):
            spec.pop(field, None)
        if not old.get("nodeName"):
            spec.pop("nodeName", None)
        return spec
    if mutable_blanked(new) != mutable_blanked(old):
        return [FieldError("spec", "Forbidden", "pod updates may not change fields other than `spec.containers[*]"
                           ".image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` "
                           "(only additions to existing tolerations),`spec.terminationGracePeriodSeconds` "
                           "(allow it to be set to 1 if it was previously negative)")]
    return []


# Workloads ---------------------------------------------------------------------------------------------------

def _default_workload(obj: dict[str, Any], deployment: bool) -> None:
    spec = obj.setdefault("spec", {})
    if not isinstance(spec, dict):
        return
    spec.setdefault("replicas", 1)
    spec.setdefault("revisionHistoryLimit", 10) if deployment else None
    if deployment:
        spec.setdefault("progressDeadlineSeconds", 600)
        strategy = spec.setdefault("strategy", {})
        if isinstance(strategy, dict):
            strategy.setdefault("type", "RollingUpdate")
            if strategy["type"] == "RollingUpdate":
                rolling = strategy.setdefault("rollingUpdate", {})
                rolling.setdefault("maxUnavailable", "25%")
                rolling.setdefault("maxSurge", "25%")
    default_pod_template(spec.get("template"))
    obj.setdefault("status", {})


def default_pod_template(template: Any) -> None:
    """A workload's pod template: metadata present, the pod spec defaulted."""
    if isinstance(template, dict):
        template.setdefault("metadata", {})
        if isinstance(template.get("spec"), dict):
            default_pod_spec(template["spec"])


def _default_daemonset(obj: dict[str, Any]) -> None:
    spec = obj.setdefault("spec", {})
    if not isinstance(spec, dict):
        return
    spec.setdefault("revisionHistoryLimit", 10)
    strategy = spec.setdefault("updateStrategy", {})
    if isinstance(strategy, dict):
        strategy.setdefault("type", "RollingUpdate")
        if strategy["type"] == "RollingUpdate":
            rolling = strategy.setdefault("rollingUpdate", {})
            rolling.setdefault("maxUnavailable", 1)
            rolling.setdefault("maxSurge", 0)
    default_pod_template(spec.get("template"))
    obj.setdefault("status", {"currentNumberScheduled": 0, "numberMisscheduled": 0, "desiredNumberScheduled": 0,
                              "numberReady": 0})


def _validate_daemonset(obj: dict[str, Any], old: dict[str, Any] | None) -> Errors:
    spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
    errors = _validate_workload({**obj, "spec": {**spec, "replicas": 0}}, old)
    strategy = (spec.get("updateStrategy") or {}).get("type")
    if strategy not in ("RollingUpdate", "OnDelete"):
        errors.append(FieldError("spec.updateStrategy.type", "NotSupported",
                                 'supported values: "OnDelete", "RollingUpdate"', strategy))
    policy = (((spec.get("template") or {}).get("spec")) or {}).get("restartPolicy")
    if policy not in (None, "Always"):
        errors.append(FieldError("spec.template.spec.restartPolicy", "NotSupported", 'supported values: "Always"',
                                 policy))
    return errors


def _default_statefulset(obj: dict[str, Any]) -> None:
    spec = obj.setdefault("spec", {})
    if not isinstance(spec, dict):
        return
    spec.setdefault("replicas", 1)
    spec.setdefault("podManagementPolicy", "OrderedReady")
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("persistentVolumeClaimRetentionPolicy", {"whenDeleted": "Retain", "whenScaled": "Retain"})
    strategy = spec.setdefault("updateStrategy", {})
    if isinstance(strategy, dict):
        strategy.setdefault("type", "RollingUpdate")
        if strategy["type"] == "RollingUpdate":
            strategy.setdefault("rollingUpdate", {}).setdefault("partition", 0)
    default_pod_template(spec.get("template"))
    obj.setdefault("status", {"replicas": 0, "availableReplicas": 0})


def _validate_statefulset(obj: dict[str, Any], old: dict[str, Any] | None) -> Errors:
    spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
    errors = _validate_workload(obj, None)
    if spec.get("volumeClaimTemplates"):
        errors.append(FieldError("spec.volumeClaimTemplates", "Forbidden",
                                 "PersistentVolumeClaims are not supported by this server yet"))
    if spec.get("podManagementPolicy") not in ("OrderedReady", "Parallel"):
        errors.append(FieldError("spec.podManagementPolicy", "NotSupported",
                                 'supported values: "OrderedReady", "Parallel"', spec.get("podManagementPolicy")))
    strategy = (spec.get("updateStrategy") or {}).get("type")
    if strategy not in ("RollingUpdate", "OnDelete"):
        errors.append(FieldError("spec.updateStrategy.type", "NotSupported",
                                 'supported values: "OnDelete", "RollingUpdate"', strategy))
    if old is not None:
        before = old.get("spec") or {}
        for field in ("selector", "serviceName", "podManagementPolicy", "volumeClaimTemplates"):
            if spec.get(field) != before.get(field):
                errors.append(FieldError("spec", "Forbidden", "updates to statefulset spec for fields other than "
                                         "'replicas', 'ordinals', 'template', 'updateStrategy', "
                                         "'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden"))
                break
    return errors


def _validate_workload(obj: dict[str, Any], old: dict[str, Any] | None) -> Errors:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [FieldError("spec", "Required")]
    errors: Errors = []
    replicas = spec.get("replicas")
    if not isinstance(replicas, int) or replicas < 0:
        errors.append(FieldError("spec.replicas", "Invalid", "must be greater than or equal to 0", replicas))
    selector = spec.get("selector")
    template = spec.get("template")
    if not isinstance(selector, dict) or not (selector.get("matchLabels") or selector.get("matchExpressions")):
        errors.append(FieldError("spec.selector", "Required" if not selector else "Invalid",
                                 "" if not selector else "empty selector is invalid for deployment", selector))
    if not isinstance(template, dict):
        errors.append(FieldError("spec.template", "Required"))
        return errors
    labels = (template.get("metadata") or {}).get("labels") or {}
    errors += _validate_labels(labels, "spec.template.metadata.labels")
    if isinstance(selector, dict) and selector and not LabelSelector.from_label_selector(selector).matches(labels):
        errors.append(FieldError("spec.template.metadata.labels", "Invalid",
                                 "`selector` does not match template `labels`", labels))
    errors += validate_pod_spec(template.get("spec"), "spec.template.spec")
    if old is not None and (old.get("spec") or {}).get("selector") != selector:
        errors.append(FieldError("spec.selector", "Invalid", "field is immutable", selector))
    return errors


# Services ----------------------------------------------------------------------------------------------------

SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")


def _default_service(obj: dict[str, Any]) -> None:
    spec = obj.setdefault("spec", {})
    if not isinstance(spec, dict):
        return
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    if spec["type"] != "ExternalName":
        spec.setdefault("internalTrafficPolicy", "Cluster")
    if spec["type"] in ("NodePort", "LoadBalancer"):
        spec.setdefault("externalTrafficPolicy", "Cluster")
    for port in spec.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")
            if "port" in port:
                port.setdefault("targetPort", port["port"])
    obj.setdefault("status", {"loadBalancer": {}})


def _validate_service(obj: dict[str, Any], old: dict[str, Any] | None) -> Errors:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [FieldError("spec", "Required")]
    errors: Errors = []
    kind = spec.get("type")
    if kind not in SERVICE_TYPES:
        errors.append(FieldError("spec.type", "NotSupported", "supported values: " +
                                 ", ".join(f'"{t}"' for t in SERVICE_TYPES), kind))
    ports = spec.get("ports") or []
    if kind == "ExternalName":
        if not spec.get("externalName"):
            errors.append(FieldError("spec.externalName", "Required"))
    elif not ports and spec.get("clusterIP") != "None":
        errors.append(FieldError("spec.ports", "Required"))
    names: set[str] = set()
    for i, port in enumerate(ports):
        if not isinstance(port, dict):
            errors.append(FieldError(f"spec.ports[{i}]", "Invalid", "must be an object", port))
            continue
        number = port.get("port")
        if not isinstance(number, int) or not 0 < number < 65536:
            errors.append(FieldError(f"spec.ports[{i}].port", "Required" if number is None else "Invalid",
                                     "" if number is None else "must be between 1 and 65535, inclusive", number))
        name = port.get("name")
        if len(ports) > 1 and not name:
            errors.append(FieldError(f"spec.ports[{i}].name", "Required"))
        elif name in names:
            errors.append(FieldError(f"spec.ports[{i}].name", "Duplicate", value=name))
        names.add(name)
        if port.get("protocol") not in ("TCP", "UDP", "SCTP"):
            errors.append(FieldError(f"spec.ports[{i}].protocol", "NotSupported",
                                     'supported values: "SCTP", "TCP", "UDP"', port.get("protocol")))
        node_port = port.get("nodePort")
        if node_port is not None and kind not in ("NodePort", "LoadBalancer"):
            errors.append(FieldError(f"spec.ports[{i}].nodePort", "Forbidden",
                                     "may not be used when `type` is 'ClusterIP'"))
    if old is not None:
        before = (old.get("spec") or {}).get("clusterIP")
        if before and spec.get("clusterIP") not in (None, before) and kind != "ExternalName":
            errors.append(FieldError("spec.clusterIPs[0]", "Invalid", "may not change once set",
                                     spec.get("clusterIP")))
    return errors


# Config, secrets, namespaces, discovery, RBAC ----------------------------------------------------------------

def _validate_config_keys(obj: dict[str, Any], fields: tuple[str, ...]) -> Errors:
    errors: Errors = []
    for field in fields:
        data = obj.get(field)
        if data is None:
            continue
        if not isinstance(data, dict):
            errors.append(FieldError(field, "Invalid", "must be a map", data))
            continue
        for key in data:
            if not _CONFIG_KEY.match(key) or key in (".", "..") or len(key) > 253:
                errors.append(FieldError(f"{field}[{key}]", "Invalid", "a valid config key must consist of "
                                         "alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME', "
                                         " or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')", key))
    return errors


def _validate_configmap(obj: dict[str, Any], old: dict[str, Any] | None) -> Errors:
    errors = _validate_config_keys(obj, ("data", "binaryData"))
    for key, value in (obj.get("data") or {}).items() if isinstance(obj.get("data"), dict) else ():
        if not isinstance(value, str):
            errors.append(FieldError(f"data[{key}]", "Invalid", "must be a string", value))
    return errors


def _default_secret(obj: dict[str, Any]) -> None:
    obj.setdefault("type", "Opaque")
    string_data = obj.pop("stringData", None)  # kube folds stringData into data on write
    if isinstance(string_data, dict):
        data = obj.setdefault("data", {}) or {}
        obj["data"] = data
        for key, value in string_data.items():
            data[key] = base64.b64encode(str(value).encode()).decode()


def _validate_secret(obj: dict[str, Any], old: dict[str, Any] | None) -> Errors:
    errors = _validate_config_keys(obj, ("data",))
    for key, value in (obj.get("data") or {}).items() if isinstance(obj.get("data"), dict) else ():
        try:
            base64.b64decode(value or "", validate=True)
        except (binascii.Error, TypeError, ValueError):
            errors.append(FieldError(f"data[{key}]", "Invalid", "illegal base64 data", value))
    if old is not None and old.get("type") != obj.get("type"):
        errors.append(FieldError("type", "Invalid", "field is immutable", obj.get("type")))
    return errors


def _default_namespace(obj: dict[str, Any]) -> None:
    name = obj.get("metadata", {}).get("name")
    if isinstance(name, str) and name:
        obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = name
    obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
    obj.setdefault("status", {}).setdefault("phase", "Active")


def _validate_endpointslice(obj: dict[str, Any], old: dict[str, Any] | None) -> Errors:
    kind = obj.get("addressType")
    if kind is None:
        return [FieldError("addressType", "Required")]
    if kind not in ("IPv4", "IPv6", "FQDN"):
        return [FieldError("addressType", "NotSupported", 'supported values: "FQDN", "IPv4", "IPv6"', kind)]
    return []


def _validate_role(obj: dict[str, Any], old: dict[str, Any] | None) -> Errors:
    errors: Errors = []
    for i, rule in enumerate(obj.get("rules") or []):
        if not isinstance(rule, dict) or not rule.get("verbs"):
            errors.append(FieldError(f"rules[{i}].verbs", "Required", "verbs must contain at least one value"))
    return errors


def _validate_binding(obj: dict[str, Any], old: dict[str, Any] | None) -> Errors:
    ref = obj.get("roleRef")
    errors: Errors = []
    if not isinstance(ref, dict):
        return [FieldError("roleRef", "Required")]
    if ref.get("kind") not in ("Role", "ClusterRole"):
        errors.append(FieldError("roleRef.kind", "NotSupported", 'supported values: "Role", "ClusterRole"',
                                 ref.get("kind")))
    if not ref.get("name"):
        errors.append(FieldError("roleRef.name", "Required"))
    for i, subject in enumerate(obj.get("subjects") or []):
        if not isinstance(subject, dict) or subject.get("kind") not in ("User", "Group", "ServiceAccount"):
            errors.append(FieldError(f"subjects[{i}].kind", "NotSupported",
                                     'supported values: "Group", "ServiceAccount", "User"',
                                     subject.get("kind") if isinstance(subject, dict) else subject))
        elif not subject.get("name"):
            errors.append(FieldError(f"subjects[{i}].name", "Required"))
    if old is not None and old.get("roleRef") != ref:
        errors.append(FieldError("roleRef", "Invalid", "cannot change roleRef", ref))
    return errors


def _default_port_protocols(ports: Any) -> None:
    """Endpoints' and EndpointSlices' ports are TCP unless they say otherwise (kube's defaulting)."""
    for port in ports if isinstance(ports, list) else ():
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")


def _default_endpoints(obj: dict[str, Any]) -> None:
    for subset in obj.get("subsets") if isinstance(obj.get("subsets"), list) else ():
        if isinstance(subset, dict):
            _default_port_protocols(subset.get("ports"))


_DEFAULTS: dict[str, Callable[[dict[str, Any]], None]] = {
    "endpoints": _default_endpoints,
    "endpointslices": lambda o: _default_port_protocols(o.get("ports")),
    "pods": _default_pod,
    "deployments": lambda o: _default_workload(o, True),
    "replicasets": lambda o: _default_workload(o, False),
    "services": _default_service,
    "secrets": _default_secret,
    "namespaces": _default_namespace,
    "horizontalpodautoscalers": default_hpa,
    "jobs": lambda o: default_job(o, default_pod_template),
    "cronjobs": lambda o: default_cronjob(o, default_pod_template),
    "daemonsets": _default_daemonset,
    "statefulsets": _default_statefulset,
}
_VALIDATORS: dict[str, Callable[[dict[str, Any], dict[str, Any] | None], Errors]] = {
    "pods": _validate_pod,
    "deployments": _validate_workload,
    "replicasets": _validate_workload,
    "services": _validate_service,
    "configmaps": _validate_configmap,
    "secrets": _validate_secret,
    "endpointslices": _validate_endpointslice,
    "roles": _validate_role,
    "clusterroles": _validate_role,
    "rolebindings": _validate_binding,
    "clusterrolebindings": _validate_binding,
    "horizontalpodautoscalers": validate_hpa,
    "jobs": lambda o, old: validate_job(o, old, validate_pod_spec),
    "cronjobs": lambda o, old: validate_cronjob(o, old, validate_pod_spec),
    "daemonsets": _validate_daemonset,
    "statefulsets": _validate_statefulset,
}


def default(t: ResourceType, obj: dict[str, Any]) -> None:
    fill = _DEFAULTS.get(t.plural)
    if fill is not None:
        fill(obj)


def validate(t: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None = None) -> Errors:
    errors = validate_metadata(t, obj)
    check = _VALIDATORS.get(t.plural)
    if check is not None:
        errors += check(obj, old)
    return errors
