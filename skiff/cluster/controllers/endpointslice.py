"""The EndpointSlice controller: each Service with a selector gets ``discovery.k8s.io/v1`` EndpointSlices listing
the pods it selects (kube's endpointslice controller and its reconciler, in part).

A sync of one Service computes the desired endpoints from the caches: one per pod with an IP of the slice's
address family (the Service's ``ipFamilies``), not finished, with ``conditions`` ready (Ready, or any pod
with ``publishNotReadyAddresses``; never while terminating unless that is set), serving (the same, terminating
or not), terminating (being deleted); nodeName, zone (its node's ``topology.kubernetes.io/zone``), targetRef,
hostname. Pods answering on the same resolved ports share slices; a slice holds at most
``MAX_ENDPOINTS_PER_SLICE``. A Service without endpoints keeps one empty placeholder slice, as kube's does.

``plan_slices`` turns the existing slices and the desired endpoints into creates, updates and deletes with
little churn: an endpoint stays in the slice it is in; new ones fill slices being rewritten anyway, then
slices with room, then new slices; a slice that would be deleted while another is created is reused
instead. Only slices whose content differs are written (PUTs naming their resourceVersion).

Slices are labelled ``kubernetes.io/service-name`` and ``endpointslice.kubernetes.io/managed-by:
endpointslice-controller.k8s.io`` and owned by the Service (the server deletes them with it). Their names
are generated, so a sync run on a cache that does not yet show the slices the previous one wrote would make
twins: the controller remembers the resourceVersion of each write and waits until the cache has caught up
(kube's endpointSliceTracker).
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from skiff.cluster.client import ENDPOINT_SLICES, NODES, ApiClient, ApiStatusError
from skiff.cluster.client.informer import SharedInformers, split_key
from skiff.cluster.controllers.objects import Obj, is_deleting, is_pod_ready, owner_reference
from skiff.cluster.controllers.servicepods import (
    EndpointPort,
    ServicePodController,
    derived_labels,
    hostname_for,
    include_pod,
    ip_families,
    pod_ip,
    publishes_not_ready,
    resolve_ports,
    selects,
    target_ref,
)

log = logging.getLogger(__name__)
MAX_ENDPOINTS_PER_SLICE = 100  # kube's --max-endpoints-per-slice default
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
CONTROLLER_NAME = "endpointslice-controller.k8s.io"
ZONE_LABEL = "topology.kubernetes.io/zone"
STALE_CACHE_RETRY = 0.1  # seconds between looks at a cache that does not show our last writes yet
STALE_CACHE_GIVE_UP = 30.0  # after this, a write the cache never showed is forgotten (a relist replaced it)

PortsKey = tuple[str, tuple[EndpointPort, ...]]  # (addressType, resolved ports): the endpoints one slice may hold


@dataclass
class DesiredEndpoints:
    ports: tuple[EndpointPort, ...]
    endpoints: dict[str, Obj] = field(default_factory=dict)  # pod uid -> endpoint, in pod order


@dataclass
class SlicePlan:
    create: list[Obj] = field(default_factory=list)
    update: list[Obj] = field(default_factory=list)
    delete: list[Obj] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.create or self.update or self.delete)


class EndpointSliceController(ServicePodController):
    name = "endpointslice"
    workers = 4

    def __init__(self, client: ApiClient, informers: SharedInformers) -> None:
        super().__init__(client, informers)
        self.slices = informers.informer(ENDPOINT_SLICES)
        self.nodes = informers.informer(NODES)
        self.informers += [self.slices, self.nodes]
        if not self.slices.has_index(SERVICE_NAME_LABEL):
            self.slices.add_index(SERVICE_NAME_LABEL, _managed_service_key)
        self.slices.on_add(self._slice_changed)
        self.slices.on_update(lambda old, new: self._slice_changed(new))
        self.slices.on_delete(self._slice_changed)
        # service key -> slice name -> (resourceVersion written, or None: deleted; when)
        self._written: dict[str, dict[str, tuple[int | None, float]]] = {}

    def _slice_changed(self, endpoint_slice: Obj) -> None:
        for key in _managed_service_key(endpoint_slice):
            self.enqueue(key)

    def _zone_of(self, node_name: str | None) -> str | None:
        node = self.nodes.get(None, node_name) if node_name else None
        return None if node is None else (node["metadata"].get("labels") or {}).get(ZONE_LABEL)

    async def sync(self, key: str) -> None:
        namespace, name = split_key(key)
        svc = self.services.get(namespace, name)
        if svc is None or not selects(svc):
            return  # the server deletes a Service's slices with it; selector-less Services are mirrored, not ours
        if not self._cache_caught_up(key):
            self.queue.add_after(key, STALE_CACHE_RETRY)
            return
        started = time.perf_counter()
        desired = desired_endpoints(svc, self.selected_pods(svc), self._zone_of)
        plan = plan_slices(svc, self.slices.by_index(SERVICE_NAME_LABEL, key), desired)
        self.report_cost(key, time.perf_counter() - started)
        if plan:
            await self._apply(key, plan)

    async def _apply(self, key: str, plan: SlicePlan) -> None:
        written = self._written.setdefault(key, {})
        now = time.monotonic()
        writes = [(self.client.replace, body) for body in plan.update] + [(self.client.create, body)
                                                                         for body in plan.create]
        for write, body in writes:
            made = await write(ENDPOINT_SLICES, body)
            if (rv := _rv(made)) is not None:  # noted one by one: a later failure must not hide a creation
                written[made["metadata"]["name"]] = (rv, now)
        for endpoint_slice in plan.delete:
            meta = endpoint_slice["metadata"]
            try:
                await self.client.delete(ENDPOINT_SLICES, meta["name"], meta.get("namespace"),
                                         preconditions={"uid": meta["uid"]})
            except ApiStatusError as exc:
                if not (exc.not_found or exc.conflict):
                    raise
            written[meta["name"]] = (None, now)

    def _cache_caught_up(self, key: str) -> bool:
        """Does the slice cache show every write this controller made for ``key``? (Forgets those it shows.)"""
        written = self._written.get(key)
        if not written:
            return True
        namespace, _ = split_key(key)
        now = time.monotonic()
        for slice_name, (rv, at) in list(written.items()):
            cached = self.slices.get(namespace, slice_name)
            shown = cached is None if rv is None else cached is not None and (_rv(cached) or 0) >= rv
            if shown or now - at > STALE_CACHE_GIVE_UP:
                del written[slice_name]
        if not written:
            del self._written[key]
            return True
        return False


def _rv(obj: Obj) -> int | None:
    value = obj["metadata"].get("resourceVersion")
    return int(value) if value and str(value).isdigit() else None


def _managed_service_key(endpoint_slice: Obj) -> list[str]:
    meta = endpoint_slice["metadata"]
    labels = meta.get("labels") or {}
    if labels.get(MANAGED_BY_LABEL) != CONTROLLER_NAME or not labels.get(SERVICE_NAME_LABEL):
        return []
    return [f"{meta.get('namespace')}/{labels[SERVICE_NAME_LABEL]}"]


# --- the computation (pure) -----------------------------------------------------------------------------------

def slice_endpoint(svc: Obj, pod: Obj, ip: str, zone: str | None) -> Obj:
    publish = publishes_not_ready(svc)
    terminating = is_deleting(pod)
    serving = publish or is_pod_ready(pod)
    endpoint: Obj = {"addresses": [ip],
                     "conditions": {"ready": serving and (publish or not terminating), "serving": serving,
                                    "terminating": terminating}}
    if hostname := hostname_for(svc, pod):
        endpoint["hostname"] = hostname
    if node := (pod.get("spec") or {}).get("nodeName"):
        endpoint["nodeName"] = node
    if zone:
        endpoint["zone"] = zone
    endpoint["targetRef"] = target_ref(pod)
    return endpoint


def desired_endpoints(svc: Obj, pods: list[Obj], zone_of: Any = lambda node: None) -> dict[PortsKey, DesiredEndpoints]:
    """The endpoints of ``svc``, grouped by (addressType, resolved ports): each group goes into its own slices."""
    desired: dict[PortsKey, DesiredEndpoints] = {}
    for family in ip_families(svc):
        for pod in pods:
            if not include_pod(pod, include_terminating=True):
                continue
            ip = pod_ip(pod, family)
            if ip is None:
                continue
            ports = tuple(sorted(set(resolve_ports(svc, pod))))
            group = desired.setdefault((family, ports), DesiredEndpoints(ports))
            zone = zone_of((pod.get("spec") or {}).get("nodeName"))
            group.endpoints[pod["metadata"].get("uid") or ip] = slice_endpoint(svc, pod, ip, zone)
    return desired


def slice_ports(ports: tuple[EndpointPort, ...]) -> list[Obj]:
    rendered = []
    for port in ports:
        body: Obj = {"name": port.name, "port": port.port, "protocol": port.protocol}
        if port.app_protocol:
            body["appProtocol"] = port.app_protocol
        rendered.append(body)
    return rendered


def slice_labels(svc: Obj) -> dict[str, str]:
    labels = derived_labels(svc, dropped=(SERVICE_NAME_LABEL, MANAGED_BY_LABEL))
    labels[SERVICE_NAME_LABEL] = svc["metadata"]["name"]
    labels[MANAGED_BY_LABEL] = CONTROLLER_NAME
    return labels


def _ports_key(endpoint_slice: Obj) -> PortsKey:
    ports = tuple(sorted(EndpointPort(int(p.get("port") or 0), p.get("name") or "", p.get("protocol") or "TCP",
                                      p.get("appProtocol")) for p in endpoint_slice.get("ports") or ()))
    return endpoint_slice.get("addressType") or "", ports


def _endpoint_key(endpoint: Obj) -> str:
    return (endpoint.get("targetRef") or {}).get("uid") or next(iter(endpoint.get("addresses") or ()), "")


def _owned_by(endpoint_slice: Obj, svc: Obj) -> bool:
    return any(ref.get("uid") == svc["metadata"]["uid"] and ref.get("controller")
               for ref in endpoint_slice["metadata"].get("ownerReferences") or ())


def plan_slices(svc: Obj, existing: list[Obj], desired: dict[PortsKey, DesiredEndpoints],
                max_per_slice: int = MAX_ENDPOINTS_PER_SLICE) -> SlicePlan:
    """What to create, rewrite and delete so that ``existing`` (the Service's managed slices) hold ``desired``."""
    plan = SlicePlan()
    live = sorted((s for s in existing if not is_deleting(s)), key=lambda s: s["metadata"]["name"])
    by_key: dict[PortsKey, list[Obj]] = {}
    for endpoint_slice in live:
        if _owned_by(endpoint_slice, svc):
            by_key.setdefault(_ports_key(endpoint_slice), []).append(endpoint_slice)
        else:
            plan.delete.append(endpoint_slice)  # left by an earlier Service of the same name
    if not desired:
        desired = {(ip_families(svc)[0], ()): DesiredEndpoints(())}  # kube's placeholder: one empty slice
    for (address_type, ports), wanted in desired.items():
        shape = _SliceShape(svc, address_type, ports)
        _plan_group(plan, by_key.pop((address_type, ports), []), wanted, shape, max_per_slice)
    for stale in by_key.values():
        plan.delete.extend(stale)
    _reuse_deleted_slices(plan)
    return plan


class _SliceShape:
    """What every slice of one (Service, addressType, ports) group carries besides its endpoints."""

    def __init__(self, svc: Obj, address_type: str, ports: tuple[EndpointPort, ...]) -> None:
        self.namespace = svc["metadata"].get("namespace")
        self.address_type, self.ports = address_type, ports
        self.labels = slice_labels(svc)
        self.owner = owner_reference(svc, "Service", "v1")

    def is_current(self, endpoint_slice: Obj, endpoints: list[Obj]) -> bool:
        meta = endpoint_slice["metadata"]
        return (endpoints == (endpoint_slice.get("endpoints") or []) and (meta.get("labels") or {}) == self.labels
                and meta.get("ownerReferences") == [self.owner])

    def body(self, existing: Obj | None, endpoints: list[Obj]) -> Obj:
        if existing is None:
            metadata: Obj = {"generateName": f"{self.labels[SERVICE_NAME_LABEL][:57]}-", "namespace": self.namespace}
        else:
            metadata = copy.copy(existing["metadata"])
        metadata["labels"] = self.labels
        metadata["ownerReferences"] = [self.owner]
        body: Obj = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": metadata,
                     "addressType": self.address_type, "endpoints": endpoints}
        if self.ports:
            body["ports"] = slice_ports(self.ports)
        return body


def _plan_group(plan: SlicePlan, slices: list[Obj], wanted: DesiredEndpoints, shape: _SliceShape,
                max_per_slice: int) -> None:
    remaining = dict(wanted.endpoints)
    kept: list[tuple[Obj, list[Obj]]] = []  # (slice, its endpoints from now on): each endpoint stays where it is
    for endpoint_slice in slices:
        endpoints = []
        for endpoint in endpoint_slice.get("endpoints") or ():
            fresh = remaining.pop(_endpoint_key(endpoint), None)
            if fresh is not None:
                endpoints.append(fresh)
        kept.append((endpoint_slice, endpoints))
    # new endpoints go first where a write happens anyway, then to the fullest slices with room, then to new ones
    changed = [entry for entry in kept if not shape.is_current(*entry)]
    changed_ids = {id(entry) for entry in changed}
    unchanged = sorted((e for e in kept if id(e) not in changed_ids), key=lambda e: -len(e[1]))
    new = list(remaining.values())
    for _, endpoints in [*changed, *unchanged]:
        room = max_per_slice - len(endpoints)
        if new and room > 0:
            endpoints.extend(new[:room])
            del new[:room]
    placeholder_kept = False
    for endpoint_slice, endpoints in kept:
        if not endpoints and (wanted.endpoints or placeholder_kept):
            plan.delete.append(endpoint_slice)
            continue
        placeholder_kept = placeholder_kept or not endpoints
        if not shape.is_current(endpoint_slice, endpoints):
            plan.update.append(shape.body(endpoint_slice, endpoints))
    if not wanted.endpoints and not placeholder_kept:
        plan.create.append(shape.body(None, []))
    for start in range(0, len(new), max_per_slice):
        plan.create.append(shape.body(None, new[start:start + max_per_slice]))


def _reuse_deleted_slices(plan: SlicePlan) -> None:
    """A slice about to be deleted while another of the same addressType (immutable) is created is rewritten
    instead: one write, not two, as kube's reconciler does."""
    for body in list(plan.create):
        doomed = next((s for s in plan.delete if s.get("addressType") == body["addressType"]), None)
        if doomed is None:
            continue
        plan.delete.remove(doomed)
        plan.create.remove(body)
        body["metadata"] = {**doomed["metadata"], "labels": body["metadata"]["labels"],
                            "ownerReferences": body["metadata"]["ownerReferences"]}
        plan.update.append(body)
