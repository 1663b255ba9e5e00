"""The resource types control-plane clients talk about: where each one lives in the API.

A ``Resource`` is what a URL needs (group, version, plural, scope) plus its kind, so a client can build
paths without discovery. The constants cover what the scheduler, controllers and node agents use;
``resource_for`` finds one from an object's ``apiVersion`` and ``kind``.
"""

from __future__ import annotations

from dataclasses import dataclass

from skiff.errors import NotFound


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        """``/api/v1/namespaces/NS/pods/NAME/SUB``; without a namespace, the all-namespaces collection."""
        base = f"/apis/{self.group}/{self.version}" if self.group else "/api/v1"
        if self.namespaced and namespace:
            base = f"{base}/namespaces/{namespace}"
        path = f"{base}/{self.plural}"
        if name:
            path = f"{path}/{name}"
            if subresource:
                path = f"{path}/{subresource}"
        return path


PODS = Resource("", "v1", "pods", "Pod")
NODES = Resource("", "v1", "nodes", "Node", namespaced=False)
NAMESPACES = Resource("", "v1", "namespaces", "Namespace", namespaced=False)
SERVICES = Resource("", "v1", "services", "Service")
ENDPOINTS = Resource("", "v1", "endpoints", "Endpoints")
EVENTS = Resource("", "v1", "events", "Event")
CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap")
SECRETS = Resource("", "v1", "secrets", "Secret")
SERVICE_ACCOUNTS = Resource("", "v1", "serviceaccounts", "ServiceAccount")
ENDPOINT_SLICES = Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice")
LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease")
DEPLOYMENTS = Resource("apps", "v1", "deployments", "Deployment")
REPLICASETS = Resource("apps", "v1", "replicasets", "ReplicaSet")
HORIZONTAL_POD_AUTOSCALERS = Resource("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler")
JOBS = Resource("batch", "v1", "jobs", "Job")
CRONJOBS = Resource("batch", "v1", "cronjobs", "CronJob")
DAEMONSETS = Resource("apps", "v1", "daemonsets", "DaemonSet")
STATEFULSETS = Resource("apps", "v1", "statefulsets", "StatefulSet")
POD_METRICS = Resource("metrics.k8s.io", "v1beta1", "pods", "PodMetrics")

KNOWN: tuple[Resource, ...] = (PODS, NODES, NAMESPACES, SERVICES, ENDPOINTS, EVENTS, CONFIGMAPS, SECRETS,
                               SERVICE_ACCOUNTS, ENDPOINT_SLICES, LEASES, DEPLOYMENTS, REPLICASETS,
                               HORIZONTAL_POD_AUTOSCALERS, JOBS, CRONJOBS,
                               DAEMONSETS, STATEFULSETS)
_BY_KIND = {(r.group, r.kind): r for r in KNOWN}


def resource_for(api_version: str, kind: str) -> Resource:
    """The known resource of ``kind`` in ``api_version`` (``"apps/v1"``, ``"v1"``); NotFound otherwise."""
    group, _, version = api_version.rpartition("/")
    known = _BY_KIND.get((group, kind))
    if known is None:
        raise NotFound(f'no known resource for kind "{kind}" in version "{api_version}"')
    return known if known.version == version else Resource(group, version, known.plural, kind, known.namespaced)
