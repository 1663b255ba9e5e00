"""The catalogue of API types the server serves: group, version, kind, names, scope, verbs, subresources.

Discovery, OpenAPI, routing, storage keys and RBAC all read this one table, so a type is added in one
place. Storage keys follow kube-apiserver's layout: ``/registry/<plural>/<namespace>/<name>`` for
namespaced types and ``/registry/<plural>/<name>`` for cluster-scoped ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

METRICS_GROUP = "metrics.k8s.io"
VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
SUB_VERBS = {"status": ("get", "patch", "update"), "scale": ("get", "patch", "update"),
             "log": ("get",), "exec": ("create", "get"), "attach": ("create", "get"),
             "portforward": ("create", "get"), "binding": ("create",), "finalize": ("update",), "token": ("create",)}


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    kind: str
    plural: str
    singular: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    generation: bool = False  # metadata.generation counts spec changes (kube does it for these types)
    create_on_update: bool = False  # PUT of a missing object creates it
    verbs: tuple[str, ...] = VERBS
    stored: bool = True  # False for reviews: computed per request, never kept
    # Served from another version's storage: objects are kept in that version's form and converted on the way
    # in and out (``conversion``), as kube-apiserver keeps one storage version per resource.
    storage_version: str = ""

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def gvk(self) -> tuple[str, str, str]:
        return self.group, self.version, self.kind

    @property
    def list_kind(self) -> str:
        return self.kind + "List"

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources

    def key(self, namespace: str | None, name: str) -> str:
        return f"/registry/{self.plural}/{namespace}/{name}" if self.namespaced else f"/registry/{self.plural}/{name}"

    def prefix(self, namespace: str | None) -> str:
        """The key prefix of every object in ``namespace`` (None or "": all namespaces)."""
        if self.namespaced and namespace:
            return f"/registry/{self.plural}/{namespace}/"
        return f"/registry/{self.plural}/"

    def url(self, namespace: str | None, name: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else "/api/v1"
        scope = f"{base}/namespaces/{namespace}" if self.namespaced and namespace else base
        path = f"{scope}/{self.plural}"
        return f"{path}/{name}" if name else path


def _t(group: str, kind: str, plural: str, namespaced: bool = True, short: tuple[str, ...] = (),
       all_: bool = False, sub: tuple[str, ...] = (), version: str = "v1", **flags: Any) -> ResourceType:
    return ResourceType(group, version, kind, plural, kind.lower(), namespaced, short, ("all",) if all_ else (), sub,
                        **flags)


CATALOGUE: tuple[ResourceType, ...] = (
    _t("", "Namespace", "namespaces", False, ("ns",), sub=("status", "finalize")),
    _t("", "Pod", "pods", short=("po",), all_=True, sub=("status", "log", "exec", "attach", "portforward", "binding")),
    _t("", "Service", "services", short=("svc",), all_=True, sub=("status",)),
    _t("", "Endpoints", "endpoints", short=("ep",), create_on_update=True),
    _t("", "Node", "nodes", False, ("no",), sub=("status",)),
    _t("", "ConfigMap", "configmaps", short=("cm",)),
    _t("", "Secret", "secrets"),
    _t("", "Event", "events", short=("ev",)),
    _t("", "ServiceAccount", "serviceaccounts", short=("sa",), sub=("token",)),
    _t("apps", "Deployment", "deployments", short=("deploy",), all_=True, sub=("status", "scale"), generation=True),
    _t("apps", "ReplicaSet", "replicasets", short=("rs",), all_=True, sub=("status", "scale"), generation=True),
    _t("apps", "DaemonSet", "daemonsets", short=("ds",), all_=True, sub=("status",), generation=True),
    _t("apps", "StatefulSet", "statefulsets", short=("sts",), all_=True, sub=("status", "scale"), generation=True),
    _t("batch", "Job", "jobs", all_=True, sub=("status",), generation=True),
    _t("batch", "CronJob", "cronjobs", short=("cj",), all_=True, sub=("status",), generation=True),
    # autoscaling/v2 first: the preferred version, and the one kept; v1 (what `kubectl autoscale` 1.32 posts)
    # is converted to and from it
    _t("autoscaling", "HorizontalPodAutoscaler", "horizontalpodautoscalers", short=("hpa",), all_=True,
       sub=("status",), version="v2", generation=True),
    _t("autoscaling", "HorizontalPodAutoscaler", "horizontalpodautoscalers", short=("hpa",), all_=True,
       sub=("status",), generation=True, storage_version="v2"),
    _t("coordination.k8s.io", "Lease", "leases", create_on_update=True),
    _t("discovery.k8s.io", "EndpointSlice", "endpointslices"),
    _t("rbac.authorization.k8s.io", "Role", "roles"),
    _t("rbac.authorization.k8s.io", "ClusterRole", "clusterroles", False),
    _t("rbac.authorization.k8s.io", "RoleBinding", "rolebindings"),
    _t("rbac.authorization.k8s.io", "ClusterRoleBinding", "clusterrolebindings", False),
    # `kubectl auth can-i` and `kubectl auth whoami`: questions about the caller, answered and forgotten
    _t("authorization.k8s.io", "SelfSubjectAccessReview", "selfsubjectaccessreviews", False, verbs=("create",),
       stored=False),
    _t("authentication.k8s.io", "SelfSubjectReview", "selfsubjectreviews", False, verbs=("create",), stored=False),
    # `kubectl top`: what the nodes' kubelets measure, gathered per request (metrics-server's API, served here)
    ResourceType(METRICS_GROUP, "v1beta1", "NodeMetrics", "nodes", "", False, verbs=("get", "list"), stored=False),
    ResourceType(METRICS_GROUP, "v1beta1", "PodMetrics", "pods", "", True, verbs=("get", "list"), stored=False),
)
# Each kept resource once, in the version it is kept in (what walks the whole store iterates over)
STORED: tuple[ResourceType, ...] = tuple(t for t in CATALOGUE if t.stored and not t.storage_version)

BY_PATH: dict[tuple[str, str, str], ResourceType] = {(t.group, t.version, t.plural): t for t in CATALOGUE}
BY_KIND: dict[tuple[str, str], ResourceType] = {(t.group, t.kind): t for t in CATALOGUE if not t.storage_version}
GROUP_VERSIONS: tuple[tuple[str, str], ...] = tuple(dict.fromkeys((t.group, t.version) for t in CATALOGUE))


def lookup(group: str, version: str, plural: str) -> ResourceType | None:
    return BY_PATH.get((group, version, plural))


def storage_type(t: ResourceType) -> ResourceType:
    """The type ``t``'s objects are kept as (``t`` itself unless it is served from another version)."""
    return BY_PATH[(t.group, t.storage_version, t.plural)] if t.storage_version else t


def of_group_version(group: str, version: str) -> list[ResourceType]:
    return [t for t in CATALOGUE if t.group == group and t.version == version]
