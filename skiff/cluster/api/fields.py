"""Known fields, for ``fieldValidation``: kubectl sends ``Strict`` and expects a typo such as ``spec.replica``
to be refused (400 ``strict decoding error: unknown field "spec.replica"``); other clients get a warning.

The field lists are kube 1.32's for the levels checked: each kind's top level, ObjectMeta, and the specs
people write by hand (Pod, Container, ContainerPort, Deployment, ReplicaSet, pod templates, Service,
ServicePort). Below those levels (volumes, probes, affinity...) fields are not checked.
"""

from __future__ import annotations

from typing import Any

_BASE = ("apiVersion", "kind", "metadata")
META = frozenset({"name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
                  "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels", "annotations",
                  "ownerReferences", "finalizers", "managedFields"})
POD_SPEC = frozenset({
    "volumes", "initContainers", "containers", "ephemeralContainers", "restartPolicy", "terminationGracePeriodSeconds",
    "activeDeadlineSeconds", "dnsPolicy", "nodeSelector", "serviceAccountName", "serviceAccount",
    "automountServiceAccountToken", "nodeName", "hostNetwork", "hostPID", "hostIPC", "shareProcessNamespace",
    "securityContext", "imagePullSecrets", "hostname", "subdomain", "affinity", "schedulerName", "tolerations",
    "hostAliases", "priorityClassName", "priority", "dnsConfig", "readinessGates", "runtimeClassName",
    "enableServiceLinks", "preemptionPolicy", "overhead", "topologySpreadConstraints", "setHostnameAsFQDN", "os",
    "hostUsers", "schedulingGates", "resourceClaims", "resources"})
CONTAINER = frozenset({
    "name", "image", "command", "args", "workingDir", "ports", "envFrom", "env", "resources", "resizePolicy",
    "restartPolicy", "volumeMounts", "volumeDevices", "livenessProbe", "readinessProbe", "startupProbe", "lifecycle",
    "terminationMessagePath", "terminationMessagePolicy", "imagePullPolicy", "securityContext", "stdin", "stdinOnce",
    "tty"})
CONTAINER_PORT = frozenset({"name", "hostPort", "containerPort", "protocol", "hostIP"})
TEMPLATE = frozenset({"metadata", "spec"})
DEPLOYMENT_SPEC = frozenset({"replicas", "selector", "template", "strategy", "minReadySeconds",
                             "revisionHistoryLimit", "paused", "progressDeadlineSeconds"})
REPLICASET_SPEC = frozenset({"replicas", "minReadySeconds", "selector", "template"})
SERVICE_SPEC = frozenset({
    "ports", "selector", "clusterIP", "clusterIPs", "type", "externalIPs", "sessionAffinity", "loadBalancerIP",
    "loadBalancerSourceRanges", "externalName", "externalTrafficPolicy", "healthCheckNodePort",
    "publishNotReadyAddresses", "sessionAffinityConfig", "ipFamilies", "ipFamilyPolicy",
    "allocateLoadBalancerNodePorts", "loadBalancerClass", "internalTrafficPolicy", "trafficDistribution"})
SERVICE_PORT = frozenset({"name", "protocol", "appProtocol", "port", "targetPort", "nodePort"})
TOP_LEVEL: dict[str, frozenset[str]] = {kind: frozenset({*_BASE, *extra}) for kind, extra in {
    "Pod": ("spec", "status"), "Deployment": ("spec", "status"), "ReplicaSet": ("spec", "status"),
    "Service": ("spec", "status"), "Namespace": ("spec", "status"), "Node": ("spec", "status"),
    "Lease": ("spec",), "ConfigMap": ("data", "binaryData", "immutable"),
    "Secret": ("data", "stringData", "type", "immutable"),
    "ServiceAccount": ("secrets", "imagePullSecrets", "automountServiceAccountToken"),
    "Endpoints": ("subsets",), "EndpointSlice": ("addressType", "endpoints", "ports"),
    "Event": ("involvedObject", "reason", "message", "source", "firstTimestamp", "lastTimestamp", "count", "type",
              "eventTime", "series", "action", "related", "reportingComponent", "reportingInstance"),
    "Role": ("rules",), "ClusterRole": ("rules", "aggregationRule"), "RoleBinding": ("subjects", "roleRef"),
    "ClusterRoleBinding": ("subjects", "roleRef"),
}.items()}


def unknown_fields(kind: str, obj: dict[str, Any]) -> list[str]:
    """The paths of fields ``obj`` has that its kind does not (at the levels checked), in kube's notation."""
    found: list[str] = []
    _check(obj, TOP_LEVEL.get(kind), "", found)
    _check(obj.get("metadata"), META, "metadata", found)
    spec = obj.get("spec")
    if kind == "Pod":
        _pod_spec(spec, "spec", found)
    elif kind in ("Deployment", "ReplicaSet"):
        _check(spec, DEPLOYMENT_SPEC if kind == "Deployment" else REPLICASET_SPEC, "spec", found)
        template = spec.get("template") if isinstance(spec, dict) else None
        _check(template, TEMPLATE, "spec.template", found)
        if isinstance(template, dict):
            _check(template.get("metadata"), META, "spec.template.metadata", found)
            _pod_spec(template.get("spec"), "spec.template.spec", found)
    elif kind == "Service":
        _check(spec, SERVICE_SPEC, "spec", found)
        _each(spec, "ports", SERVICE_PORT, "spec", found)
    return found


def _pod_spec(spec: Any, path: str, found: list[str]) -> None:
    _check(spec, POD_SPEC, path, found)
    if not isinstance(spec, dict):
        return
    for group in ("initContainers", "containers", "ephemeralContainers"):
        for i, container in enumerate(spec.get(group) or []):
            _check(container, CONTAINER, f"{path}.{group}[{i}]", found)
            _each(container, "ports", CONTAINER_PORT, f"{path}.{group}[{i}]", found)


def _each(parent: Any, field: str, known: frozenset[str], path: str, found: list[str]) -> None:
    if isinstance(parent, dict) and isinstance(parent.get(field), list):
        for i, item in enumerate(parent[field]):
            _check(item, known, f"{path}.{field}[{i}]", found)


def _check(value: Any, known: frozenset[str] | None, path: str, found: list[str]) -> None:
    if known is None or not isinstance(value, dict):
        return
    found.extend(f"{path}.{key}" if path else key for key in value if key not in known)
