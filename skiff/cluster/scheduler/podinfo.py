"""What the scheduler needs to know about a pod, read from its JSON once: requests, ports, selectors,
affinity, tolerations, spread constraints, owner.

``PodInfo.of(pod)`` does all the parsing, so filters and scores only compare numbers and look up labels.
``class_key`` names everything a node-local decision depends on: replicas of one template share it, so a
node's answer for one of them holds for the next until the node changes (see ``tables.VerdictTable``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from skiff.cluster.scheduler.quantity import resource_value
from skiff.cluster.scheduler.terms import LabelSelector, NodeSelector, NodeSelectorTerm, node_selector_term
from skiff.errors import InvalidArgument

# kube's non-zero defaults: a container without a request still counts this much when scoring spreads load
DEFAULT_MILLI_CPU = 100
DEFAULT_MEMORY = 200 * 1024 * 1024
HOSTNAME_LABEL = "kubernetes.io/hostname"
ZONE_LABEL = "topology.kubernetes.io/zone"


@dataclass(frozen=True, slots=True)
class Toleration:
    key: str
    operator: str  # Equal or Exists
    value: str
    effect: str  # "" tolerates every effect

    def tolerates(self, taint: Taint) -> bool:
        if self.effect and self.effect != taint.effect:
            return False
        if self.key and self.key != taint.key:
            return False
        return self.operator == "Exists" or self.value == taint.value


@dataclass(frozen=True, slots=True)
class Taint:
    key: str
    value: str
    effect: str  # NoSchedule, PreferNoSchedule, NoExecute


@dataclass(frozen=True, slots=True)
class AffinityTerm:
    """A pod (anti-)affinity term: pods matching ``selector`` in ``namespaces`` (empty: all), grouped by the
    value of ``topology_key`` on their nodes."""

    selector: LabelSelector
    namespaces: frozenset[str]
    all_namespaces: bool
    topology_key: str
    weight: int = 0

    def matches(self, pod: PodInfo) -> bool:
        if not self.all_namespaces and pod.namespace not in self.namespaces:
            return False
        return self.selector.matches(pod.labels)


@dataclass(frozen=True, slots=True)
class SpreadConstraint:
    max_skew: int
    topology_key: str
    hard: bool  # whenUnsatisfiable: DoNotSchedule
    selector: LabelSelector
    min_domains: int = 1
    honor_node_affinity: bool = True  # nodeAffinityPolicy: Honor (the default)
    honor_taints: bool = False  # nodeTaintsPolicy: Ignore (the default)
    owner: str | None = None  # the system default constraints count the pods of one owner


@dataclass(slots=True)
class PodInfo:
    key: str  # namespace/name
    uid: str
    namespace: str
    name: str
    labels: dict[str, str]
    node_name: str = ""
    scheduler_name: str = "default-scheduler"
    priority: int = 0
    terminating: bool = False
    milli_cpu: int = 0
    memory: int = 0
    scalar: tuple[tuple[str, int], ...] = ()  # other resources (ephemeral-storage, extended), sorted by name
    nonzero_cpu: int = DEFAULT_MILLI_CPU
    nonzero_memory: int = DEFAULT_MEMORY
    host_ports: tuple[tuple[str, str, int], ...] = ()  # (protocol, hostIP, hostPort)
    node_selector: dict[str, str] = field(default_factory=dict)
    required_node_affinity: NodeSelector | None = None
    preferred_node_affinity: tuple[tuple[int, NodeSelectorTerm], ...] = ()
    tolerations: tuple[Toleration, ...] = ()
    affinity: tuple[AffinityTerm, ...] = ()
    anti_affinity: tuple[AffinityTerm, ...] = ()
    preferred_affinity: tuple[AffinityTerm, ...] = ()
    preferred_anti_affinity: tuple[AffinityTerm, ...] = ()
    spread: tuple[SpreadConstraint, ...] = ()
    owner: str | None = None  # the controller ownerReference's uid
    class_key: str = ""

    @property
    def has_pod_affinity(self) -> bool:
        return bool(self.affinity or self.anti_affinity or self.preferred_affinity or self.preferred_anti_affinity)

    @classmethod
    def of(cls, pod: Mapping[str, Any]) -> PodInfo:
        """Parse ``pod``; InvalidArgument when a quantity in it is malformed (kube's validation refuses those)."""
        meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
        namespace, name = meta.get("namespace") or "default", meta.get("name") or ""
        info = cls(f"{namespace}/{name}", meta.get("uid") or "", namespace, name, dict(meta.get("labels") or {}),
                   node_name=spec.get("nodeName") or "",
                   scheduler_name=spec.get("schedulerName") or "default-scheduler",
                   priority=int(spec.get("priority") or 0), terminating=bool(meta.get("deletionTimestamp")))
        info.owner = next((r.get("uid") for r in meta.get("ownerReferences") or () if r.get("controller")), None)
        _read_requests(info, spec)
        info.host_ports = tuple((p.get("protocol") or "TCP", p.get("hostIP") or "0.0.0.0", int(p["hostPort"]))
                                for c in spec.get("containers") or () for p in c.get("ports") or ()
                                if p.get("hostPort"))
        info.node_selector = dict(spec.get("nodeSelector") or {})
        info.tolerations = tuple(Toleration(t.get("key") or "", t.get("operator") or "Equal", t.get("value") or "",
                                            t.get("effect") or "") for t in spec.get("tolerations") or ())
        _read_affinity(info, spec.get("affinity") or {})
        info.spread = _spread_constraints(info, spec.get("topologySpreadConstraints") or ())
        info.class_key = _class_key(info, spec)
        return info


def _container_requests(container: Mapping[str, Any]) -> dict[str, int]:
    resources = container.get("resources") or {}
    # a limit without a request is also the request (kube's defaulting)
    merged = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
    try:
        return {name: resource_value(name, value) for name, value in merged.items()}
    except InvalidArgument as exc:
        raise InvalidArgument(f"container {container.get('name')!r}: {exc}") from None


def _read_requests(info: PodInfo, spec: Mapping[str, Any]) -> None:
    """kube's PodRequests: containers (and restartable init containers, the sidecars) add up; an ordinary init
    container runs alone, so only the largest of those counts against the sum; the pod's overhead adds on."""
    total: dict[str, int] = {}
    nonzero = [0, 0]
    for c in spec.get("containers") or ():
        req = _container_requests(c)
        for k, v in req.items():
            total[k] = total.get(k, 0) + v
        nonzero[0] += req.get("cpu") or DEFAULT_MILLI_CPU
        nonzero[1] += req.get("memory") or DEFAULT_MEMORY
    sidecars: dict[str, int] = {}
    for c in spec.get("initContainers") or ():
        req = _container_requests(c)
        if c.get("restartPolicy") == "Always":
            for k, v in req.items():
                sidecars[k] = sidecars.get(k, 0) + v
                total[k] = total.get(k, 0) + v
            continue
        for k, v in req.items():  # an init container runs beside the sidecars started before it
            total[k] = max(total.get(k, 0), v + sidecars.get(k, 0))
        nonzero[0] = max(nonzero[0], req.get("cpu") or DEFAULT_MILLI_CPU)
        nonzero[1] = max(nonzero[1], req.get("memory") or DEFAULT_MEMORY)
    for k, v in (spec.get("overhead") or {}).items():
        total[k] = total.get(k, 0) + resource_value(k, v)
    info.milli_cpu, info.memory = total.pop("cpu", 0), total.pop("memory", 0)
    total.pop("pods", None)
    info.scalar = tuple(sorted(total.items()))
    info.nonzero_cpu, info.nonzero_memory = nonzero


def _affinity_term(term: Mapping[str, Any], namespace: str, weight: int = 0) -> AffinityTerm:
    namespaces = frozenset(term.get("namespaces") or ())
    # namespaceSelector {} selects every namespace; a non-empty one would need the namespaces' labels, which the
    # scheduler does not watch: such a term is held to the namespaces listed (or the pod's own)
    all_namespaces = term.get("namespaceSelector") == {}
    if not namespaces and not all_namespaces:
        namespaces = frozenset([namespace])
    return AffinityTerm(LabelSelector.compile(term.get("labelSelector")), namespaces, all_namespaces,
                        term.get("topologyKey") or "", weight)


def _read_affinity(info: PodInfo, affinity: Mapping[str, Any]) -> None:
    node = affinity.get("nodeAffinity") or {}
    required = node.get("requiredDuringSchedulingIgnoredDuringExecution")
    if required is not None:
        info.required_node_affinity = NodeSelector.compile(required)
    preferred = []
    for p in node.get("preferredDuringSchedulingIgnoredDuringExecution") or ():
        term = node_selector_term(p.get("preference"))
        if term is not None and p.get("weight"):
            preferred.append((int(p["weight"]), term))
    info.preferred_node_affinity = tuple(preferred)
    for kind, required_attr, preferred_attr in (("podAffinity", "affinity", "preferred_affinity"),
                                                ("podAntiAffinity", "anti_affinity", "preferred_anti_affinity")):
        section = affinity.get(kind) or {}
        setattr(info, required_attr, tuple(_affinity_term(t, info.namespace) for t in
                                           section.get("requiredDuringSchedulingIgnoredDuringExecution") or ()))
        setattr(info, preferred_attr, tuple(
            _affinity_term(p.get("podAffinityTerm") or {}, info.namespace, int(p.get("weight") or 0))
            for p in section.get("preferredDuringSchedulingIgnoredDuringExecution") or ()))


def _spread_constraints(info: PodInfo, constraints: Any) -> tuple[SpreadConstraint, ...]:
    result = []
    for c in constraints:
        selector = dict(c.get("labelSelector") or {}) if c.get("labelSelector") is not None else None
        keys = [k for k in c.get("matchLabelKeys") or () if k in info.labels]
        if keys and selector is not None:  # matchLabelKeys: the pod's own values join the selector
            selector["matchExpressions"] = [*(selector.get("matchExpressions") or ()),
                                            *({"key": k, "operator": "In", "values": [info.labels[k]]} for k in keys)]
        result.append(SpreadConstraint(
            int(c.get("maxSkew") or 1), c.get("topologyKey") or "", c.get("whenUnsatisfiable") != "ScheduleAnyway",
            LabelSelector.compile(selector), int(c.get("minDomains") or 1),
            c.get("nodeAffinityPolicy", "Honor") != "Ignore", c.get("nodeTaintsPolicy") == "Honor"))
    if not result and info.owner:
        # kube's system default constraints, with the pod's owner standing for the selectors of the services
        # and controllers that select it: spread over hosts (skew 3) and zones (skew 5), never refusing
        result = [SpreadConstraint(3, HOSTNAME_LABEL, False, LabelSelector(()), owner=info.owner),
                  SpreadConstraint(5, ZONE_LABEL, False, LabelSelector(()), owner=info.owner)]
    return tuple(result)


def _class_key(info: PodInfo, spec: Mapping[str, Any]) -> str:
    """Everything a node-local filter or score reads from the pod, as one string (JSON only for the parts
    that are nested, which most pods lack)."""
    affinity = (spec.get("affinity") or {}).get("nodeAffinity")
    tolerations = spec.get("tolerations")
    nested = json.dumps([affinity, tolerations], sort_keys=True, separators=(",", ":")) if affinity or tolerations \
        else ""
    return (f"{info.milli_cpu},{info.memory},{info.nonzero_cpu},{info.nonzero_memory},{info.scalar},"
            f"{info.host_ports},{sorted(info.node_selector.items())},{nested}")
