"""The Endpoints controller: each Service with a selector gets an Endpoints object of its name listing the pods
it selects (kube's endpoints_controller.go).

A sync of one Service reads it and its pods from the caches and computes the subsets:

- each pod with an IP that is not finished (and not being deleted, unless ``publishNotReadyAddresses``) is an
  address: IP, nodeName, targetRef (kind Pod, name, namespace, uid), hostname when its subdomain is the
  Service; ready pods (all pods, with ``publishNotReadyAddresses``) go under ``addresses``, the others under
  ``notReadyAddresses``;
- each Service port is resolved on each pod (a named targetPort against that pod's containerPorts; a pod
  without it is left out of that port); a headless Service without ports lists its pods with no ports;
- addresses are then packed as kube's ``RepackSubsets`` does: the ports served by exactly the same
  addresses form one subset;
- beyond ``MAX_ADDRESSES`` the subsets are truncated (ready addresses first, each subset in proportion) and
  the object says so in ``endpoints.kubernetes.io/over-capacity: truncated`` (its slices list them all).

The object is written only when its subsets or labels differ from what is there (a PUT naming the
resourceVersion it was decided on, so a stale cache costs a 409 and a retry, never a lost update). When the
Service is deleted, its Endpoints go too. Services without a selector are not touched: their Endpoints are
the user's (the API server keeps the ``kubernetes`` Service's own).
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

from skiff.cluster.client import ENDPOINTS, ApiClient, ApiStatusError, object_key
from skiff.cluster.client.informer import SharedInformers, split_key
from skiff.cluster.controllers.objects import Obj, is_pod_ready
from skiff.cluster.controllers.servicepods import (
    EndpointPort,
    ServicePodController,
    derived_labels,
    hostname_for,
    include_pod,
    ip_families,
    is_headless,
    pod_ip,
    publishes_not_ready,
    resolve_ports,
    selects,
    target_ref,
)

log = logging.getLogger(__name__)
MAX_ADDRESSES = 1000  # kube's maxCapacity: beyond this an Endpoints object is truncated (slices have them all)
OVER_CAPACITY = "endpoints.kubernetes.io/over-capacity"
_NO_PORT = EndpointPort(-1)  # the sentinel port of a headless Service's portless addresses (kube's, too)


class EndpointsController(ServicePodController):
    name = "endpoints"
    workers = 4

    def __init__(self, client: ApiClient, informers: SharedInformers) -> None:
        super().__init__(client, informers)
        self.endpoints = informers.informer(ENDPOINTS)
        self.informers.append(self.endpoints)
        # someone else deleted or edited a Service's Endpoints: put them back
        self.endpoints.on_update(lambda old, new: self._endpoints_changed(new))
        self.endpoints.on_delete(self._endpoints_changed)

    def _endpoints_changed(self, endpoints: Obj) -> None:
        meta = endpoints["metadata"]
        svc = self.services.get(meta.get("namespace"), meta["name"])
        if svc is not None and selects(svc):
            self.enqueue(object_key(svc))

    async def sync(self, key: str) -> None:
        namespace, name = split_key(key)
        svc = self.services.get(namespace, name)
        if svc is None:
            await self._delete(namespace, name)
            return
        if not selects(svc):
            return
        current = self.endpoints.get(namespace, name)
        started = time.perf_counter()
        subsets = endpoint_subsets(svc, self.selected_pods(svc))
        truncated = truncate(subsets, MAX_ADDRESSES)
        self.report_cost(key, time.perf_counter() - started)
        labels = derived_labels(svc)
        if current is None:
            body: Obj = {"apiVersion": "v1", "kind": "Endpoints",
                         "metadata": {"name": name, "namespace": namespace, "labels": labels}}
        else:
            if (current.get("subsets") or []) == subsets and (current["metadata"].get("labels") or {}) == labels \
                    and (OVER_CAPACITY in (current["metadata"].get("annotations") or {})) == truncated:
                return  # nothing to write: no write storm from events that change nothing here
            body = copy.copy(current)
            body["metadata"] = {**current["metadata"], "labels": labels}
        annotations = {k: v for k, v in (body["metadata"].get("annotations") or {}).items() if k != OVER_CAPACITY}
        if truncated:
            annotations[OVER_CAPACITY] = "truncated"
        if annotations:
            body["metadata"]["annotations"] = annotations
        else:
            body["metadata"].pop("annotations", None)
        if subsets:
            body["subsets"] = subsets
        else:
            body.pop("subsets", None)  # Go's omitempty: no subsets is no field
        if current is None:
            await self.client.create(ENDPOINTS, body, namespace)  # AlreadyExists: a stale cache, retried
        else:
            await self.client.replace(ENDPOINTS, body)

    async def _delete(self, namespace: str | None, name: str) -> None:
        """The Service is gone: so are its Endpoints (asked even if the cache has none: it may lag)."""
        try:
            await self.client.delete(ENDPOINTS, name, namespace)
        except ApiStatusError as exc:
            if not exc.not_found:
                raise


# --- the computation (pure) -----------------------------------------------------------------------------------

def endpoint_address(svc: Obj, pod: Obj, ip: str) -> Obj:
    address: Obj = {"ip": ip}
    if hostname := hostname_for(svc, pod):
        address["hostname"] = hostname
    if node := (pod.get("spec") or {}).get("nodeName"):
        address["nodeName"] = node
    address["targetRef"] = target_ref(pod)
    return address


def endpoint_subsets(svc: Obj, pods: list[Obj]) -> list[Obj]:
    """The Endpoints' ``subsets`` for ``svc`` over the pods its selector matches, packed and sorted."""
    publish = publishes_not_ready(svc)
    family = ip_families(svc)[0]
    has_ports = bool((svc.get("spec") or {}).get("ports"))
    # port -> {address key: (address, ready)}: kube's portToAddrReadyMap
    by_port: dict[EndpointPort, dict[tuple[str, str], tuple[Obj, bool]]] = {}
    for pod in pods:
        if not include_pod(pod, include_terminating=publish):
            continue
        ip = pod_ip(pod, family)
        if ip is None:
            continue
        address = endpoint_address(svc, pod, ip)
        ready = publish or is_pod_ready(pod)
        ports = resolve_ports(svc, pod) if has_ports else ([_NO_PORT] if is_headless(svc) else [])
        for port in ports:
            by_port.setdefault(port, {})[(ip, pod["metadata"].get("uid") or "")] = (address, ready)
    return repack(by_port)


def repack(by_port: dict[EndpointPort, dict[tuple[str, str], tuple[Obj, bool]]]) -> list[Obj]:
    """kube's RepackSubsets: the ports offered by exactly the same addresses (with the same readiness) become
    one subset; addresses sorted by IP then uid, ports by number, subsets by their first port and address."""
    groups: dict[frozenset[Any], tuple[dict[tuple[str, str], tuple[Obj, bool]], list[EndpointPort]]] = {}
    for port, addresses in by_port.items():
        signature = frozenset((key, ready) for key, (_, ready) in addresses.items())
        group = groups.setdefault(signature, (addresses, []))
        if port != _NO_PORT:
            group[1].append(port)
    subsets = []
    for addresses, ports in groups.values():
        ordered = [addresses[key] for key in sorted(addresses)]
        subset: Obj = {}
        ready = [address for address, is_ready in ordered if is_ready]
        not_ready = [address for address, is_ready in ordered if not is_ready]
        if ready:
            subset["addresses"] = ready
        if not_ready:
            subset["notReadyAddresses"] = not_ready
        if ports:
            subset["ports"] = [_port_object(p) for p in sorted(ports)]
        subsets.append(subset)
    return sorted(subsets, key=_subset_order)


def truncate(subsets: list[Obj], limit: int) -> bool:
    """Cut ``subsets`` (in place) to at most ``limit`` addresses, as kube's endpoints controller does: ready ones
    are kept first, and each subset loses its share in proportion to its size. True if any were cut."""
    ready = sum(len(s.get("addresses") or ()) for s in subsets)
    not_ready = sum(len(s.get("notReadyAddresses") or ()) for s in subsets)
    if ready + not_ready <= limit:
        return False
    if ready >= limit:
        for subset in subsets:
            subset.pop("notReadyAddresses", None)
        field_name, budget, total = "addresses", limit, ready
    else:
        field_name, budget, total = "notReadyAddresses", limit - ready, not_ready
    for subset in subsets:
        addresses = subset.get(field_name) or []
        keep = len(addresses) * budget // total
        taken = min(keep, budget)
        budget, total = budget - taken, total - len(addresses)
        if taken:
            subset[field_name] = addresses[:taken]
        else:
            subset.pop(field_name, None)
    subsets[:] = [s for s in subsets if s.get("addresses") or s.get("notReadyAddresses")]
    return True


def _port_object(port: EndpointPort) -> Obj:
    body: Obj = {"port": port.port, "protocol": port.protocol}
    if port.name:
        body["name"] = port.name
    if port.app_protocol:
        body["appProtocol"] = port.app_protocol
    return body


def _subset_order(subset: Obj) -> tuple[Any, ...]:
    first_port = next(iter(subset.get("ports") or ()), {})
    first = next(iter(subset.get("addresses") or subset.get("notReadyAddresses") or ()), {})
    return first_port.get("port", -1), first_port.get("name", ""), first.get("ip", "")
