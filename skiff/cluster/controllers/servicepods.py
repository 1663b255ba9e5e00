"""Which pods back a Service, at which address and ports: what the Endpoints and EndpointSlice controllers share.

kube's ``endpointutil`` and ``podutil.FindPort``, over API objects as dicts:

- ``selects``/``selected_pods``: a Service's ``spec.selector`` (a plain label map) against cached pods. A
  Service without one is left alone by both controllers: its Endpoints are the user's.
- ``include_pod``: a pod is an endpoint once it has an IP and is not finished; pods being deleted only when
  the caller asks (slices report them ``terminating``, Endpoints drop them unless publishNotReadyAddresses).
- ``resolve_ports``: each Service port's ``targetPort`` on one pod (a name is looked up in that pod's
  containerPorts of the same protocol, so pods of one Service may answer on different numbers).
- ``ServicePodController``: the event wiring both controllers have: a Service changing, or a pod a Service
  selects changing in a way that matters to an endpoint, enqueues the Service's key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from skiff.cluster.client import PODS, SERVICES, ApiClient, Controller, object_key
from skiff.cluster.client.informer import SharedInformers
from skiff.cluster.controllers.objects import Obj, is_deleting, is_pod_ready, labels_of

HEADLESS_LABEL = "service.kubernetes.io/headless"


@dataclass(frozen=True, order=True)
class EndpointPort:
    """A Service port resolved on one pod: what clients of the Service reach there."""
    port: int
    name: str = ""
    protocol: str = "TCP"
    app_protocol: str | None = None


# --- services -------------------------------------------------------------------------------------------------

def selector_of(svc: Obj) -> dict[str, str]:
    """The Service's selector; empty when it has none (an empty map is dropped by the API as Go's omitempty)."""
    return (svc.get("spec") or {}).get("selector") or {}


def selects(svc: Obj) -> bool:
    """Does a controller compute this Service's endpoints? (Not for ExternalName or selector-less ones.)"""
    spec = svc.get("spec") or {}
    return bool(selector_of(svc)) and spec.get("type") != "ExternalName"


def is_headless(svc: Obj) -> bool:
    return (svc.get("spec") or {}).get("clusterIP") == "None"


def publishes_not_ready(svc: Obj) -> bool:
    return bool((svc.get("spec") or {}).get("publishNotReadyAddresses"))


def ip_families(svc: Obj) -> list[str]:
    return list((svc.get("spec") or {}).get("ipFamilies") or ["IPv4"])


def derived_labels(svc: Obj, dropped: tuple[str, ...] = ()) -> dict[str, str]:
    """The Service's labels as its Endpoints and slices carry them, with the headless marker."""
    labels = {k: v for k, v in labels_of(svc).items() if k not in dropped and k != HEADLESS_LABEL}
    if is_headless(svc):
        labels[HEADLESS_LABEL] = ""
    return labels


# --- pods -----------------------------------------------------------------------------------------------------

def include_pod(pod: Obj, include_terminating: bool) -> bool:
    """kube's ShouldPodBeInEndpoints: an address, not finished, and (unless asked) not being deleted."""
    status = pod.get("status") or {}
    if not status.get("podIP") or status.get("phase") in ("Succeeded", "Failed"):
        return False
    return include_terminating or not is_deleting(pod)


def pod_ip(pod: Obj, family: str) -> str | None:
    """The pod's address of ``family`` (IPv4 or IPv6), from ``podIPs`` (or ``podIP`` when that is absent)."""
    status = pod.get("status") or {}
    addresses = [entry.get("ip") for entry in status.get("podIPs") or ()] or [status.get("podIP")]
    for address in addresses:
        if address and (":" in address) == (family == "IPv6"):
            return address
    return None


def target_ref(pod: Obj) -> Obj:
    meta = pod["metadata"]
    return {"kind": "Pod", "namespace": meta.get("namespace"), "name": meta["name"], "uid": meta.get("uid")}


def hostname_for(svc: Obj, pod: Obj) -> str | None:
    """A pod's ``spec.hostname`` is published only when its ``subdomain`` is this Service (kube's rule)."""
    spec = pod.get("spec") or {}
    if spec.get("hostname") and spec.get("subdomain") == svc["metadata"]["name"]:
        return spec["hostname"]
    return None


def find_port(pod: Obj, service_port: Obj) -> int | None:
    """kube's FindPort: a numeric targetPort as is; a named one in the pod's containerPorts (and its restartable
    init containers'), same protocol; None when the pod has no such port."""
    target = service_port.get("targetPort", service_port.get("port"))
    if isinstance(target, int):
        return target
    if isinstance(target, str) and target.isdigit():
        return int(target)
    protocol = service_port.get("protocol") or "TCP"
    spec = pod.get("spec") or {}
    sidecars = [c for c in spec.get("initContainers") or () if c.get("restartPolicy") == "Always"]
    for container in [*(spec.get("containers") or ()), *sidecars]:
        for port in container.get("ports") or ():
            if port.get("name") == target and (port.get("protocol") or "TCP") == protocol:
                return int(port["containerPort"])
    return None


def resolve_ports(svc: Obj, pod: Obj) -> list[EndpointPort]:
    """Each Service port this pod answers, with its number on the pod (ports the pod lacks are left out)."""
    resolved = []
    for service_port in (svc.get("spec") or {}).get("ports") or ():
        number = find_port(pod, service_port)
        if number is not None:
            resolved.append(EndpointPort(number, service_port.get("name") or "", service_port.get("protocol") or "TCP",
                                         service_port.get("appProtocol")))
    return resolved


def _endpoint_facts(pod: Obj) -> tuple[Any, ...]:
    """What of a pod an endpoint is made of: a change to anything else does not touch Endpoints or slices."""
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    ports = [(c.get("name"), c.get("ports")) for c in spec.get("containers") or ()]
    return (status.get("podIP"), status.get("podIPs"), status.get("phase"), is_pod_ready(pod), is_deleting(pod),
            spec.get("nodeName"), spec.get("hostname"), spec.get("subdomain"), ports)


# --- the shared event wiring ----------------------------------------------------------------------------------

class ServicePodController(Controller):
    """A controller keyed by Service (``namespace/name``) that follows Services and the pods they select."""

    def __init__(self, client: ApiClient, informers: SharedInformers) -> None:
        self.services = informers.informer(SERVICES)
        self.pods = informers.informer(PODS)
        super().__init__(client, [self.services, self.pods])
        self.services.on_add(lambda svc: self.enqueue(object_key(svc)))
        self.services.on_update(lambda old, new: self.enqueue(object_key(new)))
        self.services.on_delete(lambda svc: self.enqueue(object_key(svc)))
        self.pods.on_add(self._pod_added)
        self.pods.on_update(self._pod_updated)
        self.pods.on_delete(self._pod_added)

    def selected_pods(self, svc: Obj) -> list[Obj]:
        selector = selector_of(svc)
        return [pod for pod in self.pods.list(svc["metadata"].get("namespace") or "")
                if selector.items() <= labels_of(pod).items()]

    def _services_of(self, pod: Obj) -> set[str]:
        labels = labels_of(pod)
        return {object_key(svc) for svc in self.services.list(pod["metadata"].get("namespace") or "")
                if selects(svc) and selector_of(svc).items() <= labels.items()}

    def _pod_added(self, pod: Obj) -> None:
        for key in self._services_of(pod):
            self.enqueue(key)

    def _pod_updated(self, old: Obj, new: Obj) -> None:
        if labels_of(old) != labels_of(new):
            keys = self._services_of(old) | self._services_of(new)  # selected before, after, or both
        elif _endpoint_facts(old) != _endpoint_facts(new):
            keys = self._services_of(new)
        else:
            return
        for key in keys:
            self.enqueue(key)
