"""Patch metadata of the built-in Kubernetes types: how each field merges.

Strategic merge patch and server-side apply both need to know, per field, what kube's Go struct tags and
OpenAPI extensions say: a list is either atomic (replaced whole), a set of scalars, or a list of objects keyed
by one or more fields; a map is either a struct (its fields merge) or a granular string map (labels); a
struct may be atomic for apply (a label selector is owned as one field). Only the fields that differ from the
default (objects merge key by key, lists are replaced) are listed; an unknown field gets the default, which is
what kube does for every field without a ``patchStrategy`` tag.

The data mirrors ``k8s.io/api`` (``patchStrategy``/``patchMergeKey`` tags, ``+listType``/``+listMapKey``/
``+structType`` markers) for the types Skiff serves.
"""

from __future__ import annotations

from dataclasses import dataclass

ATOMIC = "atomic"  # replaced as a whole (no patchStrategy, or +listType=atomic)
SET = "set"  # a list of scalars merged as a set (patchStrategy=merge on []string)
KEYED = "keyed"  # a list of objects merged by key (patchStrategy=merge, patchMergeKey=...)


@dataclass(frozen=True)
class Field:
    """How one field of a struct merges."""

    type: str | None = None  # struct type of the value, or of each list item
    list: str | None = None  # None (not a list), ATOMIC, SET or KEYED
    merge_key: str | None = None  # strategic merge patch key (KEYED only)
    keys: tuple[str, ...] = ()  # server-side apply keys (KEYED only; kube's +listMapKey)
    granular_map: bool = False  # a map[string]T whose entries are fields of their own (labels, data)
    atomic_struct: bool = False  # owned as one field by server-side apply (+structType=atomic)
    replace_struct: bool = False  # strategic merge replaces it whole (patchStrategy=replace)

    @property
    def apply_keys(self) -> tuple[str, ...]:
        return self.keys or ((self.merge_key,) if self.merge_key else ())


DEFAULT = Field()
STRING_MAP = Field(granular_map=True)

# Values kube's defaulting fills into apply keys the client may leave out (a port's protocol).
KEY_DEFAULTS = {"protocol": "TCP"}


def _struct(name: str, *, atomic: bool = False) -> Field:
    return Field(type=name, atomic_struct=atomic)


def _keyed(key: str, item_type: str | None = None, *, keys: tuple[str, ...] = ()) -> Field:
    return Field(type=item_type, list=KEYED, merge_key=key, keys=keys)


_SET_LIST = Field(list=SET)
_CONDITIONS = _keyed("type")

TYPES: dict[str, dict[str, Field]] = {
    "ObjectMeta": {
        "labels": STRING_MAP,
        "annotations": STRING_MAP,
        "finalizers": _SET_LIST,
        "ownerReferences": _keyed("uid"),
        "managedFields": Field(list=ATOMIC),
    },
    "LabelSelector": {"matchLabels": STRING_MAP},
    "PodTemplateSpec": {"metadata": _struct("ObjectMeta"), "spec": _struct("PodSpec")},
    "PodSpec": {
        "volumes": _keyed("name"),
        "initContainers": _keyed("name", "Container"),
        "containers": _keyed("name", "Container"),
        "ephemeralContainers": _keyed("name", "Container"),
        "imagePullSecrets": _keyed("name"),
        "hostAliases": _keyed("ip"),
        "nodeSelector": STRING_MAP,
        "overhead": STRING_MAP,
        "topologySpreadConstraints": _keyed("topologyKey", keys=("topologyKey", "whenUnsatisfiable")),
        "schedulingGates": _keyed("name"),
        "resourceClaims": _keyed("name"),
    },
    "Container": {
        "ports": _keyed("containerPort", keys=("containerPort", "protocol")),
        "env": _keyed("name"),
        "volumeMounts": _keyed("mountPath"),
        "volumeDevices": _keyed("devicePath"),
        "resources": _struct("ResourceRequirements"),
    },
    "ResourceRequirements": {"limits": STRING_MAP, "requests": STRING_MAP},
    "PodStatus": {
        "conditions": _CONDITIONS,
        "podIPs": _keyed("ip"),
        "hostIPs": _keyed("ip"),
        "resourceClaimStatuses": _keyed("name"),
    },
    "Pod": {"spec": _struct("PodSpec"), "status": _struct("PodStatus")},
    "PodTemplate": {"template": _struct("PodTemplateSpec")},
    "ServiceSpec": {
        "ports": _keyed("port", keys=("port", "protocol")),
        "selector": STRING_MAP,
    },
    "ServiceStatus": {"conditions": _CONDITIONS},
    "Service": {"spec": _struct("ServiceSpec"), "status": _struct("ServiceStatus")},
    "NodeSpec": {"podCIDRs": _SET_LIST},
    "NodeStatus": {
        "conditions": _CONDITIONS,
        "addresses": _keyed("type"),
        "capacity": STRING_MAP,
        "allocatable": STRING_MAP,
    },
    "Node": {"spec": _struct("NodeSpec"), "status": _struct("NodeStatus")},
    "Namespace": {"status": _struct("ConditionedStatus")},
    "ComponentStatus": {"conditions": _CONDITIONS},
    "ConditionedStatus": {"conditions": _CONDITIONS},
    "ConfigMap": {"data": STRING_MAP, "binaryData": STRING_MAP},
    "Secret": {"data": STRING_MAP, "stringData": STRING_MAP},
    "ServiceAccount": {"secrets": _keyed("name")},
    "ReplicationController": {
        "spec": _struct("ReplicationControllerSpec"),
        "status": _struct("ConditionedStatus"),
    },
    "ReplicationControllerSpec": {"selector": STRING_MAP, "template": _struct("PodTemplateSpec")},
    "PersistentVolumeClaim": {"status": _struct("ConditionedStatus")},
    "WorkloadSpec": {
        "selector": _struct("LabelSelector", atomic=True),
        "template": _struct("PodTemplateSpec"),
    },
    # Deployment, ReplicaSet, StatefulSet, DaemonSet, Job: a selector, a pod template, status conditions.
    "Workload": {"spec": _struct("WorkloadSpec"), "status": _struct("ConditionedStatus")},
    "CronJob": {"spec": _struct("CronJobSpec")},
    "CronJobSpec": {"jobTemplate": _struct("JobTemplateSpec")},
    "JobTemplateSpec": {"metadata": _struct("ObjectMeta"), "spec": _struct("WorkloadSpec")},
    "PodDisruptionBudget": {"spec": _struct("PodDisruptionBudgetSpec"), "status": _struct("ConditionedStatus")},
    "PodDisruptionBudgetSpec": {"selector": Field(type="LabelSelector", atomic_struct=True, replace_struct=True)},
    "HorizontalPodAutoscaler": {"status": _struct("ConditionedStatus")},
    # Kinds whose fields all merge by default (rbac rules and subjects, endpoints, slices are atomic lists).
    "Object": {},
}

# (group, kind) -> root type. Every root type also has ``metadata: ObjectMeta``.
KINDS: dict[tuple[str, str], str] = {
    ("", "Pod"): "Pod",
    ("", "PodTemplate"): "PodTemplate",
    ("", "Service"): "Service",
    ("", "Node"): "Node",
    ("", "Namespace"): "Namespace",
    ("", "ConfigMap"): "ConfigMap",
    ("", "Secret"): "Secret",
    ("", "ServiceAccount"): "ServiceAccount",
    ("", "Endpoints"): "Object",
    ("", "Event"): "Object",
    ("", "ReplicationController"): "ReplicationController",
    ("", "PersistentVolumeClaim"): "PersistentVolumeClaim",
    ("", "PersistentVolume"): "Object",
    ("", "LimitRange"): "Object",
    ("", "ComponentStatus"): "ComponentStatus",
    ("", "ResourceQuota"): "Object",
    ("apps", "Deployment"): "Workload",
    ("apps", "ReplicaSet"): "Workload",
    ("apps", "StatefulSet"): "Workload",
    ("apps", "DaemonSet"): "Workload",
    ("apps", "ControllerRevision"): "Object",
    ("batch", "Job"): "Workload",
    ("batch", "CronJob"): "CronJob",
    ("autoscaling", "Scale"): "Object",
    ("policy", "PodDisruptionBudget"): "PodDisruptionBudget",
    ("rbac.authorization.k8s.io", "Role"): "Object",
    ("rbac.authorization.k8s.io", "ClusterRole"): "Object",
    ("rbac.authorization.k8s.io", "RoleBinding"): "Object",
    ("rbac.authorization.k8s.io", "ClusterRoleBinding"): "Object",
    ("coordination.k8s.io", "Lease"): "Object",
    ("discovery.k8s.io", "EndpointSlice"): "Object",
    ("events.k8s.io", "Event"): "Object",
    ("networking.k8s.io", "Ingress"): "Object",
    ("autoscaling", "HorizontalPodAutoscaler"): "HorizontalPodAutoscaler",
    ("networking.k8s.io", "NetworkPolicy"): "Object",
    ("storage.k8s.io", "StorageClass"): "Object",
}

_METADATA = _struct("ObjectMeta")


def root_type(gvk: tuple[str, str, str]) -> str | None:
    """The root type name for a (group, version, kind), or None when kube has no patch metadata for it."""
    group, _version, kind = gvk
    return KINDS.get((group, kind))


def field_of(type_name: str | None, name: str) -> Field:
    """The merge behaviour of field ``name`` inside a value of type ``type_name`` (None: unknown type)."""
    if type_name is None:
        return DEFAULT
    if name == "metadata" and type_name in _ROOT_TYPES:
        return _METADATA
    return TYPES.get(type_name, {}).get(name, DEFAULT)


_ROOT_TYPES = frozenset(KINDS.values())
